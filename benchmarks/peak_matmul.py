r"""The peak FLOP/s research.cost uses for MFU on this host, and the MFU of typical matmuls against it.

    JAX_PLATFORMS=cpu python benchmarks/peak_matmul.py          # the cached peak (measured on first use)
    JAX_PLATFORMS=cpu python benchmarks/peak_matmul.py --fresh  # measure again, ignoring the cache
    JAX_PLATFORMS=cpu python benchmarks/peak_matmul.py --update # measure again and replace the cached peak

The peak is measured once per host and cached; if other jobs loaded the cores at that moment it is too low and
every run's MFU reads high. `--update` re-measures it (on quiet cores) for all later runs.

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
  parser.add_argument('--update', action='store_true', help='measure again and replace the cached peak')
  args = parser.parse_args()
  if args.fresh:
    os.environ[peak.CACHE_ENV] = tempfile.mkdtemp()
  if args.update:
    path = os.path.join(peak._cache_dir(), peak._CACHE_FILE)  # pylint: disable=protected-access
    if os.path.exists(path):
      os.remove(path)  # The cache holds one entry per host configuration; the next call measures and rewrites it.
  value, source = cost.peak_flops_per_s()
  print(f'peak: {value / 1e9:,.1f} GFLOP/s ({source})')
  for size in (512, 1024, 1536, 2048, 3072):
    achieved = peak.measure_matmul_flops_per_s(size, repeats=5, reduce=statistics.median)
    print(f'{size}² f32 matmul, median of 5: {achieved / 1e9:,.1f} GFLOP/s, MFU {cost.mfu(achieved, 1.0, value):.2f}')


if __name__ == '__main__':
  main()
