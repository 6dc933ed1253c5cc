r"""Analytic vs XLA FLOPs, and predicted vs measured memory, of the MNIST-1D presets: the tables of docs/flops.md.

    JAX_PLATFORMS=cpu python benchmarks/cost_table.py            # both tables (~2 minutes on 2 cores)
    JAX_PLATFORMS=cpu python benchmarks/cost_table.py --no-memory --models=cnn,gru

FLOPs: the train step and eval step exactly as the training loop jits them (batch 100, eval batch 1000), compiled
once by research.cost.step_costs. Memory: each model in a fresh process, glibc told to return freed buffers to
the OS (MALLOC_MMAP_THRESHOLD_): the rise of peak RSS over a baseline taken after 5 warm-up steps, while 5 more
steps run, against XLA's plan for the step's transient buffers (outputs + temporaries - aliased; the arguments
are resident before the baseline). Steps run in turn (each awaited) and, as the loop runs them, dispatched ahead.
"""

import argparse
import gc
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections

from configs import mnist1d
from research import cost, sharding
from research.training import loop, steps

INPUT_SHAPE, NUM_CLASSES = (40,), 10
WARMUP_STEPS = 5
FAMILIES = ('logreg', 'mlp', 'cnn', 'gru', 'lstm', 'transformer')


def _setup(name: str, *, abstract: bool):
  config = mnist1d.get_config(name)
  mesh = sharding.make_mesh(ml_collections.ConfigDict({'data': 1, 'num_devices': 1}), batch_sizes={})
  model, tx, schedule, state = loop.create_model_and_state(config, num_classes=NUM_CLASSES, input_shape=INPUT_SHAPE,
                                                           mesh=mesh, abstract=abstract)
  train_step = jax.jit(steps.make_train_step(model, tx, schedule), donate_argnums=0)
  return config, mesh, model, state, train_step


def _batch(size: int, *, mask: bool = False) -> dict:
  batch = {'inputs': jax.ShapeDtypeStruct((size, *INPUT_SHAPE), jnp.float32),
           'labels': jax.ShapeDtypeStruct((size,), jnp.int32)}
  return {**batch, 'mask': jax.ShapeDtypeStruct((size,), jnp.float32)} if mask else batch


def flops_row(name: str) -> str:
  config, mesh, model, state, train_step = _setup(name, abstract=True)
  batch = _batch(config.batch_size)
  costs = cost.step_costs(train_step, state, batch, eval_step=loop.make_jit_eval_step(model, mesh, state.params),
                          params=state.params, eval_batch=_batch(config.eval_batch_size, mask=True))
  raw = costs.train_step.cost_analysis()['flops']
  fwd = cost.analytic_flops(config.model, input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES)
  train = cost.analytic_train_step_flops(config.model, input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES,
                                         batch_size=config.batch_size)
  params = cost.param_stats(state.params)['count']
  return (f'| {name} | {params:,} | {fwd:,.0f} | {costs.eval_example_flops:,.0f} | '
          f'{fwd / costs.eval_example_flops:.3f} | {train / 1e6:,.2f} | {costs.train_step_flops / 1e6:,.2f} | '
          f'{train / costs.train_step_flops:.3f} | {raw / 1e6:,.2f} |')


def _rss_rise(compiled, state, batch, *, sync: bool):
  """Rise of peak RSS over the RSS before 5 steps; `sync` waits for each step before dispatching the next."""
  gc.collect()
  baseline = cost.reset_peak_rss()
  for _ in range(5):
    state, _ = compiled(state, batch)
    if sync:
      jax.block_until_ready(state)
  jax.block_until_ready(state)
  return cost.measured_peak_bytes().bytes - baseline, state


def memory_child(name: str) -> None:
  """Runs in its own process (started with MALLOC_MMAP_THRESHOLD_ set); prints one JSON line."""
  config, _, _, abstract, train_step = _setup(name, abstract=True)
  compiled = train_step.lower(abstract, _batch(config.batch_size)).compile()
  stats = compiled.memory_analysis()
  transient = stats.output_size_in_bytes + stats.temp_size_in_bytes - stats.alias_size_in_bytes
  state = _setup(name, abstract=False)[3]
  batch = {'inputs': jnp.ones((config.batch_size, *INPUT_SHAPE)), 'labels': jnp.zeros(config.batch_size, jnp.int32)}
  for _ in range(WARMUP_STEPS):  # The runtime's first executions allocate (thread pools, per-thread arenas).
    state, _ = compiled(state, batch)
  jax.block_until_ready(state)
  process_peak = cost.measured_peak_bytes().bytes
  rise_sync, state = _rss_rise(compiled, state, batch, sync=True)
  rise_async, state = _rss_rise(compiled, state, batch, sync=False)
  print(json.dumps({'predicted': cost.predicted_memory_bytes(compiled), 'transient': transient,
                    'rise_sync': rise_sync, 'rise_async': rise_async, 'process_peak': process_peak}))


def memory_row(name: str) -> str:
  # A fixed mmap threshold makes glibc return every freed buffer over 64 KiB to the OS, so a step's buffers show
  # in RSS each time; by default it raises the threshold as buffers are freed and keeps them for reuse (the RSS
  # then stays flat after the first steps and a rise measures nothing).
  env = {**os.environ, 'MALLOC_MMAP_THRESHOLD_': str(64 * 1024)}
  out = subprocess.run([sys.executable, __file__, f'--memory-child={name}'], check=True, capture_output=True,
                       text=True, env=env).stdout
  m = json.loads(out.strip().splitlines()[-1])
  mb = lambda b: f'{b / 2**20:,.2f}'
  return (f'| {name} | {mb(m["predicted"])} | {mb(m["transient"])} | {mb(m["rise_sync"])} | '
          f'{m["rise_sync"] / m["transient"]:.2f} | {mb(m["rise_async"])} | {mb(m["process_peak"])} |')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default=','.join(FAMILIES))
  parser.add_argument('--no-memory', action='store_true')
  parser.add_argument('--memory-child', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.memory_child:
    return memory_child(args.memory_child)
  names = args.models.split(',')
  print('| model | params | fwd/example analytic | fwd/example XLA | ratio | train step analytic (MFLOP) '
        '| train step XLA (MFLOP) | ratio | train step XLA uncorrected (MFLOP) |')
  print('|---|---:|---:|---:|---:|---:|---:|---:|---:|')
  for name in names:
    print(flops_row(name), flush=True)
  if not args.no_memory:
    print('\n| model | predicted step (MiB) | predicted transient (MiB) | RSS rise, steps in turn (MiB) | ratio '
          '| RSS rise, steps dispatched ahead (MiB) | process peak RSS (MiB) |')
    print('|---|---:|---:|---:|---:|---:|---:|')
    for name in names:
      print(memory_row(name), flush=True)


if __name__ == '__main__':
  main()
