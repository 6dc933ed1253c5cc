"""Peak FLOP/s of a device, the denominator of MFU: a datasheet table for accelerators, a measurement on CPUs.

A CPU's peak depends on its cores, vector units, clocks and the BLAS XLA links, so it is measured: the best of a
few large f32 matmuls, once per host (cached as JSON under $COSTLAB_CACHE_DIR, default ~/.cache/costlab, keyed by
CPU model, usable cores, jax version and matmul size). Accelerators use their datasheet's dense peak per device.
"""

import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import psutil

CACHE_ENV = 'COSTLAB_CACHE_DIR'
_CACHE_FILE = 'peak_flops.json'

# (device_kind substring, name, {dtype: dense FLOP/s per device}); the first match wins, so specific before general.
# JAX runs f32 matmuls on NVIDIA tensor cores as TF32 at default precision: MFU of f32 training there is
# meaningful against 'tfloat32'. TPUs multiply f32 at default precision as one bf16 pass: their f32 entry is the
# bf16 peak.
CHIP_PEAKS = (
    # NVIDIA H100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h100): SXM FP32 67 TF, TF32 989 TF and
    # BF16 1,979 TF with 2:4 sparsity, i.e. 494.7 and 989.4 dense; PCIe FP32 51 TF, TF32 756 / BF16 1,513 sparse.
    ('H100 PCIe', 'H100 PCIe', {'float32': 51e12, 'tfloat32': 378e12, 'bfloat16': 756e12, 'float16': 756e12}),
    ('H100', 'H100 SXM', {'float32': 67e12, 'tfloat32': 494.7e12, 'bfloat16': 989.4e12, 'float16': 989.4e12}),
    # NVIDIA H200 datasheet (nvidia.com/en-us/data-center/h200): same compute as the H100 SXM.
    ('H200', 'H200 SXM', {'float32': 67e12, 'tfloat32': 494.7e12, 'bfloat16': 989.4e12, 'float16': 989.4e12}),
    # NVIDIA A100 datasheet (nvidia.com/en-us/data-center/a100): FP32 19.5 TF, TF32 156 TF, BF16/FP16 312 TF dense.
    ('A100', 'A100', {'float32': 19.5e12, 'tfloat32': 156e12, 'bfloat16': 312e12, 'float16': 312e12}),
    # Cloud TPU system architecture pages (cloud.google.com/tpu/docs/v4, v5e, v5p, v6e): bf16 peak per chip,
    # one JAX device per chip. device_kind: 'TPU v4', 'TPU v5 lite' (v5e), 'TPU v5' / 'TPU v5p', 'TPU v6 lite'.
    ('TPU v4', 'TPU v4', {'bfloat16': 275e12, 'float32': 275e12}),
    ('TPU v5 lite', 'TPU v5e', {'bfloat16': 197e12, 'float32': 197e12}),
    ('TPU v5', 'TPU v5p', {'bfloat16': 459e12, 'float32': 459e12}),
    ('TPU v6', 'TPU v6e', {'bfloat16': 918e12, 'float32': 918e12}),
)


def table_peak(device_kind: str, dtype: str) -> tuple[float, str] | None:
  """The datasheet peak of an accelerator, or None if `device_kind` or `dtype` is not in CHIP_PEAKS.

  Args:
    device_kind: `jax.Device.device_kind`, e.g. 'NVIDIA H100 80GB HBM3' or 'TPU v5 lite'.
    dtype: 'float32', 'tfloat32', 'bfloat16' or 'float16'.

  Returns:
    (FLOP/s, source) e.g. (989.4e12, 'table: H100 SXM bfloat16 dense'), or None.
  """
  for pattern, name, peaks in CHIP_PEAKS:
    if pattern in device_kind:
      return (peaks[dtype], f'table: {name} {dtype} dense') if dtype in peaks else None
  return None


def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _usable_cores() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1


def measure_matmul_flops_per_s(size: int, *, repeats: int, dtype=jnp.float32, device=None,
                               reduce=min) -> float:
  """FLOP/s of a [size, size] @ [size, size] matmul (2 size^3 FLOPs), from `reduce` (min: best) of the timings.

  Args:
    size: the square matrices' side.
    repeats: timed calls, after one untimed compiling call.
    dtype: the operands' dtype.
    device: where to run; default the first device.
    reduce: how to summarise the times (min for the best, statistics.median for a typical call).

  Returns:
    2 size^3 / reduce(seconds per call).
  """
  device = device or jax.devices()[0]
  a = jax.device_put(jnp.ones((size, size), dtype), device)
  b = jax.device_put(jnp.full((size, size), 0.5, dtype), device)
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    matmul(a, b).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2.0 * size ** 3 / reduce(times)


def _cache_dir() -> str:
  return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser('~'), '.cache', 'costlab')


def peak_flops_per_s(dtype: str = 'float32', *, size: int = 2048, repeats: int = 5) -> tuple[float, str]:
  """Peak FLOP/s of one device of the default backend, and where the figure comes from.

  Accelerators in CHIP_PEAKS: the datasheet. Anything else (CPUs): measured with `size`-square matmuls, best of
  `repeats`, once per host and cached (the cache key names CPU model, cores, jax version and size). A measurement
  taken while the host was busy (`_host_busy`) is cached marked so, and replaced by the first call that finds
  the host quiet (keeping the higher of the two).

  Args:
    dtype: the matmul dtype the model runs in ('float32', 'tfloat32', 'bfloat16', 'float16').
    size: side of the measured matmul (2048: ~17 GFLOP, a quarter second per call on two cores).
    repeats: timed matmuls.

  Returns:
    (FLOP/s, source), e.g. (6.1e10, 'measured: 2048² float32 matmul, best of 5, 2 cores AMD EPYC') or
    (989.4e12, 'table: H100 SXM bfloat16 dense').
  """
  device = jax.devices()[0]
  if device.platform != 'cpu':
    found = table_peak(device.device_kind, dtype)
    if found:
      return found
  source = (f'measured: {size}² {dtype} matmul, best of {repeats}, '
            + (f'{_usable_cores()} cores {_cpu_model()}' if device.platform == 'cpu' else device.device_kind))
  key = f'{device.platform}|{device.device_kind}|{_cpu_model()}|{_usable_cores()} cores|jax {jax.__version__}|{source}'
  path = os.path.join(_cache_dir(), _CACHE_FILE)
  try:
    with open(path) as f:
      cache = json.load(f)
  except (OSError, ValueError):
    cache = {}
  entry = cache.get(key)
  if isinstance(entry, (int, float)):  # Written before busy hosts were recorded: trust it as measured.
    entry = {'flops_per_s': entry, 'busy': False}
  # Sampling the host's load takes 0.2 s: only when the cache has no quiet measurement (every run's card asks).
  busy = _host_busy() if entry is None or entry['busy'] else False
  if entry is None or (entry['busy'] and not busy):
    jnp_dtype = jnp.float32 if dtype == 'tfloat32' else jnp.dtype(dtype)
    measured = measure_matmul_flops_per_s(size, repeats=repeats, dtype=jnp_dtype, device=device)
    if entry is not None and entry['flops_per_s'] > measured:
      measured, busy = entry['flops_per_s'], entry['busy']  # Keep the better of two measurements.
    entry = cache[key] = {'flops_per_s': measured, 'busy': busy}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f'{path}.{os.getpid()}.tmp'
    with open(tmp, 'w') as f:
      json.dump(cache, f, indent=1, sort_keys=True)
    os.replace(tmp, path)  # Atomic: concurrent runs on one host never read half a file.
  if entry['busy']:
    source += ' (measured while other processes loaded the cores: may read low, MFU high; replaced when quiet)'
  return entry['flops_per_s'], source


def _host_busy() -> bool:
  """True if other processes keep the CPU over a quarter busy now (sampled for 0.2 s while this one sleeps).

  A peak measured then is too low and every MFU against it too high; it is cached marked busy, and measured again
  by the first later call that finds the host quiet. (The load average would count this process's own training,
  which has just stopped when the card asks for the peak.)
  """
  return psutil.cpu_percent(interval=0.2) > 25.0


def mfu(flops: float, seconds: float, peak: float) -> float:
  """Model FLOPs utilisation: achieved FLOP/s over the peak (Chowdhery et al. 2022, PaLM, appendix B).

  Args:
    flops: FLOPs done (per device, matching `peak`'s per-device figure).
    seconds: wall time they took.
    peak: peak FLOP/s, from `peak_flops_per_s`.

  Returns:
    flops / seconds / peak, in [0, 1] for an honest peak.

  Raises:
    ValueError: a non-positive time or peak.
  """
  if seconds <= 0 or peak <= 0:
    raise ValueError(f'mfu needs positive seconds ({seconds}) and peak ({peak})')
  return flops / seconds / peak
