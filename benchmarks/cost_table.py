r"""Analytic vs XLA FLOPs, and predicted vs measured memory, of the MNIST-1D presets: the tables of docs/flops.md.

    JAX_PLATFORMS=cpu python benchmarks/cost_table.py            # both tables (~2 minutes on 2 cores)
    JAX_PLATFORMS=cpu python benchmarks/cost_table.py --no-memory --models=cnn,gru

FLOPs: the train step and eval step exactly as the training loop jits them (batch 100, eval batch 1000), compiled
once by research.cost.step_costs. Memory: each model in a fresh process, after 5 warm-up steps, the exact rise of
the heap during one step (research.cost.heap_peak: memray tracks every malloc and free; the largest of 3 steps,
each captured alone), against XLA's plan for the step's transient buffers (outputs + temporaries - aliased; the
arguments are resident before). The allocations live at the peak are filed by owner: XLA's buffers, the matmul
libraries' scratch (oneDNN, Eigen, YNNPACK), other (Python, the runtime). Then 3 steps dispatched ahead, as the
loop runs them. Needs memray (the [test] extra, in requirements.lock).
"""

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import ml_collections

from configs import mnist1d
from research import cost, sharding
from research.training import loop, steps

INPUT_SHAPE, NUM_CLASSES = (40,), 10
WARMUP_STEPS = 5
MEASURED_STEPS = 3
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


def _steps(compiled, holder, batch, *, n: int, sync: bool):
  """Runs n steps; `sync` waits for each step before dispatching the next."""
  state = holder['state']
  for _ in range(n):
    state, _ = compiled(state, batch)
    if sync:
      jax.block_until_ready(state)
  jax.block_until_ready(state)
  holder['state'] = state


def memory_child(name: str) -> None:
  """Runs in its own process; prints one JSON line."""
  config, _, _, abstract, train_step = _setup(name, abstract=True)
  compiled = train_step.lower(abstract, _batch(config.batch_size)).compile()
  transient = cost.transient_memory_bytes(compiled)
  holder = {'state': _setup(name, abstract=False)[3]}
  batch = {'inputs': jnp.ones((config.batch_size, *INPUT_SHAPE)), 'labels': jnp.zeros(config.batch_size, jnp.int32)}
  # The runtime's first executions allocate once (thread pools, per-thread state): not part of a step.
  _steps(compiled, holder, batch, n=WARMUP_STEPS, sync=True)
  gc.collect()
  process_peak = cost.measured_peak_bytes().bytes  # Before memray, whose native tracking resolves symbols (~250 MB here).
  capture = os.path.join(tempfile.mkdtemp(), 'memray.bin')
  # One step per capture: XLA:CPU frees a step's temporaries just after its outputs are ready, so a step started
  # at once can overlap them (the LSTM's read 2.0x its plan in one run of 3 steps in a row). Frees of buffers
  # allocated before a capture starts are not counted in it, so each capture holds one step's own peak.
  in_turn = max((cost.heap_peak(lambda: _steps(compiled, holder, batch, n=1, sync=True), path=capture)
                 for _ in range(MEASURED_STEPS)), key=lambda peak: peak.bytes)
  ahead = cost.heap_peak(lambda: _steps(compiled, holder, batch, n=MEASURED_STEPS, sync=False), path=capture)
  print(json.dumps({'predicted': cost.predicted_memory_bytes(compiled), 'transient': transient,
                    'heap_in_turn': in_turn.bytes, 'by_owner': in_turn.by_owner, 'heap_ahead': ahead.bytes,
                    'process_peak': process_peak}))


def memory_row(name: str) -> str:
  out = subprocess.run([sys.executable, __file__, f'--memory-child={name}'], check=True, capture_output=True,
                       text=True).stdout
  m = json.loads(out.strip().splitlines()[-1])
  mb = lambda b: f'{b / 2**20:,.2f}'
  owners = m['by_owner']
  libraries = owners['onednn'] + owners['eigen'] + owners['ynnpack']
  return (f'| {name} | {mb(m["predicted"])} | {mb(m["transient"])} | {mb(m["heap_in_turn"])} | '
          f'{m["heap_in_turn"] / m["transient"]:.2f} | {mb(owners["xla_buffers"])} | '
          f'{owners["xla_buffers"] / m["transient"]:.2f} | {mb(libraries)} | {mb(owners["other"])} | '
          f'{mb(m["heap_ahead"])} | {mb(m["process_peak"])} |')


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
    print('\n| model | predicted step (MiB) | predicted transient (MiB) | heap peak, steps in turn (MiB) | ratio '
          '| of which XLA buffers (MiB) | ratio | matmul libraries (MiB) | other (MiB) '
          '| heap peak, steps dispatched ahead (MiB) | process peak RSS (MiB) |')
    print('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
    for name in names:
      print(memory_row(name), flush=True)


if __name__ == '__main__':
  main()
