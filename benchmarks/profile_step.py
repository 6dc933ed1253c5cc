r"""Where a benchmark model's train step spends its time: a jax.profiler trace of a few steps, summed per XLA op.

    python benchmarks/profile_step.py --model=mnist_cnn
    python benchmarks/profile_step.py --model=lm_tiny --steps=20 --top=20

The model and step are experiments.benchmark's (the training loop's jitted step on one fixed batch). Prints, per
step, the time of the leaf operations that XLA:CPU's threads executed, grouped by kind (ynn_fusion: a matmul or
convolution run by YNNPACK with its fused elementwise ops; *_fusion: XLA's own loop fusions; concatenate, copy, ...)
and the single most expensive ops. Each op counts once, with the duration the thread that ran it saw: an op that
YNNPACK splits over both cores counts its wall time once, while independent ops that run side by side on two
threads both count (so the total can exceed the wall time printed first).
The trace is read with jax.profiler.ProfileData (research.benchmark.op_profile; no TensorBoard needed).
"""

import argparse
import time

from experiments import benchmark_cases as entry
from research import benchmark, host


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='lm_tiny', choices=list(entry.CASES))
  parser.add_argument('--steps', type=int, default=10, help='steps traced')
  parser.add_argument('--top', type=int, default=15, help='rows per table')
  args = parser.parse_args()
  host.keep_freed_memory()  # As experiments.train does.

  train, _, params = benchmark.jax_runner(entry.make_case(args.model))
  train(3)  # Compile and warm up.
  start = time.perf_counter()
  train(args.steps)
  wall_ms = (time.perf_counter() - start) / args.steps * 1e3
  prof = benchmark.op_profile(train, steps=args.steps, top=args.top)
  print(f'{args.model}: {params:,} params, {wall_ms:.2f} ms per step (wall, untraced); leaf ops sum to '
        f"{prof['ops_ms']:.2f} ms per step")
  print('', *benchmark.profile_tables(prof, ops=True), sep='\n')


if __name__ == '__main__':
  main()
