r"""Vectorized trials vs sequential trials: examples/s of T MNIST-1D configurations trained one after another or as
one jax.vmap program (research/vectorized.py).

  python benchmarks/vectorized_trials.py                          # 8 MLP learning rates, 500 steps, 3 repeats
  python benchmarks/vectorized_trials.py --model=cnn --steps=300 --repeats=5
  python benchmarks/vectorized_trials.py --subprocess             # also the real sweep, per-trial processes vs one
  python benchmarks/vectorized_trials.py --steps=5 --repeats=1    # a check that it runs

In-process (the fair compute comparison): each sequential trial is the ordinary jitted train step
(training.loop.make_jit_train_step on one device) fed by its own data stream; the vectorized group is
vectorized.build_group's compiled step. Both are timed over `steps` steps after compiling and two warm-up steps;
examples/s = trials x batch x steps / seconds (the sequential seconds summed over the trials). Compile times are
printed beside. --subprocess also times `python -m experiments.sweep` end to end (what a user waits for), with
and without --vectorize, in a fresh --out each time. Min and median over `repeats`.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

from configs import base, mnist1d  # pylint: disable=g-import-not-at-top,wrong-import-position
from research import data, sharding, vectorized  # pylint: disable=g-import-not-at-top,wrong-import-position
from research.config import validate  # pylint: disable=g-import-not-at-top,wrong-import-position
from research.training import loop  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEARNING_RATES = (1e-3, 2e-3, 3e-3, 5e-3, 1e-2, 2e-2, 3e-2, 5e-2)
WARMUP_STEPS = 2


def make_configs(model: str, trials: int, steps: int) -> list:
  """`trials` configurations of the MNIST-1D preset `model` on one device, differing in the learning rate."""
  configs = []
  for lr in (LEARNING_RATES * (trials // len(LEARNING_RATES) + 1))[:trials]:
    config = mnist1d.get_config(model)
    with config.unlocked():
      config.steps, config.progress = steps, False
      config.mesh.num_devices = config.mesh.data = 1
      config.optimizer.learning_rate = lr
    validate(config, base.get_base_config())
    configs.append(config)
  return configs


def _time_steps(step, state, next_batch, steps: int) -> float:
  for _ in range(WARMUP_STEPS):
    state, _ = step(state, next_batch())
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, _ = step(state, next_batch())
  jax.block_until_ready(state)
  return time.perf_counter() - t0


def sequential(configs: list, steps: int) -> tuple[float, float]:
  """(train seconds summed over the trials, compile seconds summed) of the ordinary step, trial after trial."""
  train_s = compile_s = 0.0
  for config in configs:
    mesh = sharding.make_mesh(config.mesh, batch_sizes={'batch_size': config.batch_size})
    dataset = data.load_dataset(config.dataset)
    t0 = time.perf_counter()
    model, tx, schedule, state = loop.create_model_and_state(config, num_classes=dataset.num_classes,
                                                             input_shape=dataset.input_shape, mesh=mesh)
    step = loop.make_jit_train_step(config, model, tx, schedule, mesh, state)
    batches = loop._train_iterator(config, dataset)  # pylint: disable=protected-access
    state, _ = step(state, next(batches))  # Compiles.
    jax.block_until_ready(state)
    compile_s += time.perf_counter() - t0
    train_s += _time_steps(step, state, lambda: next(batches), steps)
  return train_s, compile_s


def vectorized_group(configs: list, steps: int) -> tuple[float, float]:
  """(train seconds, compile seconds) of the same trials as one vectorized program."""
  t0 = time.perf_counter()
  group = vectorized.build_group(configs)
  compile_s = time.perf_counter() - t0
  step = lambda state, batch: group.train_step(group.hyperparams, state, batch)
  return _time_steps(step, group.state, group.next_batch, steps), compile_s


def sweep_seconds(model: str, steps: int, *, vectorize: bool) -> float:
  """Wall seconds of `python -m experiments.sweep` over configs/sweeps/lr_grid.py (8 trials) in a fresh --out."""
  with tempfile.TemporaryDirectory() as out:
    cmd = [sys.executable, '-m', 'experiments.sweep', f'--config=configs/mnist1d.py:{model}',
           '--sweep=configs/sweeps/lr_grid.py', f'--out={out}/sweep', *(['--vectorize'] if vectorize else []),
           '--', f'--config.steps={steps}', '--config.mesh.num_devices=1', '--config.progress=false']
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - t0


def _stats(values: list[float]) -> str:
  return f'min {min(values):.3g} s, median {statistics.median(values):.3g} s'


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--model', default='mlp', choices=['mlp', 'cnn'])
  parser.add_argument('--trials', type=int, default=8)
  parser.add_argument('--steps', type=int, default=500)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--subprocess', action='store_true', help='Also time the real sweep, with and without '
                      '--vectorize (8 trials of configs/sweeps/lr_grid.py).')
  args = parser.parse_args()
  configs = make_configs(args.model, args.trials, args.steps)
  examples = args.trials * configs[0].batch_size * args.steps
  print(f'{args.trials} MNIST-1D {args.model} trials (learning rates {[c.optimizer.learning_rate for c in configs]}), '
        f'batch {configs[0].batch_size}, {args.steps} timed steps each, {args.repeats} repeats; '
        f'{jax.devices()[0].device_kind}, {os.cpu_count()} cores')
  seq, vec, seq_compile, vec_compile = [], [], [], []
  for _ in range(args.repeats):
    train_s, compile_s = sequential(configs, args.steps)
    seq.append(train_s)
    seq_compile.append(compile_s)
    train_s, compile_s = vectorized_group(configs, args.steps)
    vec.append(train_s)
    vec_compile.append(compile_s)
  best = lambda xs: examples / min(xs)
  middle = lambda xs: examples / statistics.median(xs)
  print(f'sequential (in-process): {_stats(seq)} of train steps -> {best(seq):,.0f} examples/s (median '
        f'{middle(seq):,.0f}); compile {_stats(seq_compile)} over the {args.trials} trials')
  print(f'vectorized (one program): {_stats(vec)} of train steps -> {best(vec):,.0f} examples/s (median '
        f'{middle(vec):,.0f}); compile {_stats(vec_compile)}')
  print(f'throughput ratio vectorized / sequential: {min(seq) / min(vec):.2f}x (min times), '
        f'{statistics.median(seq) / statistics.median(vec):.2f}x (medians)')
  if args.subprocess:
    plain = [sweep_seconds(args.model, args.steps, vectorize=False) for _ in range(args.repeats)]
    fused = [sweep_seconds(args.model, args.steps, vectorize=True) for _ in range(args.repeats)]
    print(f'experiments.sweep, 8 trials of {args.steps} steps, end to end: one process per trial {_stats(plain)}; '
          f'--vectorize {_stats(fused)}; ratio {min(plain) / min(fused):.2f}x (min), '
          f'{statistics.median(plain) / statistics.median(fused):.2f}x (median)')


if __name__ == '__main__':
  main()
