r"""Where a benchmark model's train step spends its time: a jax.profiler trace of a few steps, summed per XLA op.

    python benchmarks/profile_step.py --model=mnist_cnn
    python benchmarks/profile_step.py --model=lm_tiny --steps=20 --top=20

The model and step are experiments.benchmark's (the training loop's jitted step on one fixed batch). Prints, per
step, the time of the leaf operations that XLA:CPU's threads executed, grouped by kind (ynn_fusion: a matmul or
convolution run by YNNPACK with its fused elementwise ops; *_fusion: XLA's own loop fusions; concatenate, copy, ...)
and the single most expensive ops. Each op counts once, with the duration the thread that ran it saw: an op that
YNNPACK splits over both cores counts its wall time once, while independent ops that run side by side on two
threads both count (so the total can exceed the wall time printed first).
The trace is read with jax.profiler.ProfileData (no TensorBoard needed); --trace_dir keeps it for TensorBoard/XProf.
"""

import argparse
import collections
import glob
import re
import tempfile
import time

import jax

from experiments import benchmark_cases as entry
from research import benchmark, host

_WRAPPERS = ('ThunkExecutor', 'SlinkyThreadPool', 'PjitFunction', 'CommonPjRt', '$')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='lm_tiny', choices=list(entry.CASES))
  parser.add_argument('--steps', type=int, default=10, help='steps traced')
  parser.add_argument('--top', type=int, default=15, help='rows per table')
  parser.add_argument('--trace_dir', default=None, help='keep the trace here (default: a temporary directory)')
  args = parser.parse_args()
  host.keep_freed_memory()  # As experiments.train does.

  train, _, params = benchmark.jax_runner(entry.make_case(args.model))
  train(3)  # Compile and warm up.
  start = time.perf_counter()
  train(args.steps)
  wall_ms = (time.perf_counter() - start) / args.steps * 1e3
  trace_dir = args.trace_dir or tempfile.mkdtemp(prefix='profile_step_')
  with jax.profiler.trace(trace_dir):
    train(args.steps)
  path = glob.glob(f'{trace_dir}/**/*.xplane.pb', recursive=True)[-1]
  kinds, counts, ops = collections.Counter(), collections.Counter(), collections.Counter()
  for plane in jax.profiler.ProfileData.from_file(path).planes:
    for line in plane.lines:
      if not line.name.startswith('tf_XLAEigen'):  # XLA:CPU's compute threads.
        continue
      for event in line.events:
        if event.name.startswith(_WRAPPERS):
          continue
        kind = re.sub(r'[._]\d+$', '', event.name)
        kinds[kind] += event.duration_ns
        counts[kind] += 1
        ops[event.name] += event.duration_ns
  per_step = lambda ns: ns / 1e6 / args.steps
  print(f'{args.model}: {params:,} params, {wall_ms:.2f} ms per step (wall, untraced); leaf ops of XLA\'s threads '
        f'{per_step(sum(kinds.values())):.2f} ms per step (summed over ops). Trace: {path}')
  print(f'\n| op kind | ms per step | ops per step |\n|---|---:|---:|')
  for kind, ns in kinds.most_common(args.top):
    print(f'| {kind} | {per_step(ns):.2f} | {counts[kind] / args.steps:.1f} |')
  print(f'\n| op | ms per step |\n|---|---:|')
  for name, ns in ops.most_common(args.top):
    print(f'| {name} | {per_step(ns):.2f} |')


if __name__ == '__main__':
  main()
