r"""The peak FLOP/s research.cost uses for MFU on this host, and the MFU of typical matmuls against it.

    JAX_PLATFORMS=cpu python benchmarks/peak_matmul.py          # the cached peak (measured on first use)
    JAX_PLATFORMS=cpu python benchmarks/peak_matmul.py --fresh  # measure again, ignoring the cache

Prints the peak and its source, then for a few square f32 matmuls the median FLOP/s over 5 calls as a fraction
of the peak (an honest peak puts them between 0.5 and 1).
"""

import argparse
import os
import statistics
import tempfile

from research import cost
from research.cost import peak


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--fresh', action='store_true', help='measure into a temporary cache')
  args = parser.parse_args()
  if args.fresh:
    os.environ[peak.CACHE_ENV] = tempfile.mkdtemp()
  value, source = cost.peak_flops_per_s()
  print(f'peak: {value / 1e9:,.1f} GFLOP/s ({source})')
  for size in (512, 1024, 1536, 2048, 3072):
    achieved = peak.measure_matmul_flops_per_s(size, repeats=5, reduce=statistics.median)
    print(f'{size}² f32 matmul, median of 5: {achieved / 1e9:,.1f} GFLOP/s, MFU {cost.mfu(achieved, 1.0, value):.2f}')


if __name__ == '__main__':
  main()
