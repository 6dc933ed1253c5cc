"""Bytes: parameters in memory, checkpoints on disk, the memory XLA plans for a step, and the peak a process used.

Measured memory comes from the device allocator where it keeps statistics (GPU, TPU: `peak_bytes_in_use`) and
otherwise from the process's peak resident set (CPU). The latter includes the Python interpreter, the JAX runtime
and XLA's compiler (hundreds of MB before any model exists), so compare it with `predicted_memory_bytes` only as a
rise over a baseline: `reset_peak_rss()` after the first (compiling) step, the peak once the steps ran, and the
step's transient memory (outputs + temporaries - aliased) on the other side. `heap_peak` measures that rise exactly
(every malloc and free, by owner) for measurement scripts and tests; docs/flops.md shows the figures.
"""

import os
import resource
import sys
from typing import Any, NamedTuple

import jax
import numpy as np

_STATUS = '/proc/self/status'
_CLEAR_REFS = '/proc/self/clear_refs'


def param_stats(params: Any) -> dict:
  """Number and bytes of the parameters, in total and per dtype.

  Args:
    params: a pytree of arrays (or `jax.ShapeDtypeStruct`s).

  Returns:
    {'count': int, 'bytes': int, 'by_dtype': {'float32': {'count': int, 'bytes': int}, ...}}.
  """
  by_dtype: dict[str, dict[str, int]] = {}
  for leaf in jax.tree.leaves(params):
    dtype = np.dtype(leaf.dtype)
    entry = by_dtype.setdefault(dtype.name, {'count': 0, 'bytes': 0})
    size = int(np.prod(leaf.shape))
    entry['count'] += size
    entry['bytes'] += size * dtype.itemsize
  return {'count': sum(e['count'] for e in by_dtype.values()),
          'bytes': sum(e['bytes'] for e in by_dtype.values()), 'by_dtype': by_dtype}


def dir_bytes(path: str) -> int:
  """Bytes of the files under `path` (a checkpoint's size on disk); symbolic links are not followed.

  Raises:
    FileNotFoundError: `path` is not a directory.
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{path} is not a directory (expected a checkpoint directory)')
  total = 0
  for root, _, files in os.walk(path):
    for name in files:
      full = os.path.join(root, name)
      if not os.path.islink(full):
        total += os.path.getsize(full)
  return total


def predicted_memory_bytes(compiled: jax.stages.Compiled) -> int:
  """Device memory XLA plans for one execution: arguments + outputs + temporaries - aliased (donated) buffers.

  Aliased bytes are counted in both the arguments and the outputs that reuse them, so they are subtracted once.
  The generated code is left out (0 on CPU; outside the buffer allocator's peak on GPU).

  Args:
    compiled: from `jax.jit(f).lower(*args).compile()`.

  Returns:
    Bytes per device.
  """
  return int(compiled.memory_analysis().argument_size_in_bytes) + transient_memory_bytes(compiled)


def transient_memory_bytes(compiled: jax.stages.Compiled) -> int:
  """What one execution allocates beyond its arguments, per XLA's plan: outputs + temporaries - aliased (donated)
  buffers. The figure to compare with a measured rise, since the arguments are resident before the call."""
  stats = compiled.memory_analysis()
  return int(stats.output_size_in_bytes + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


class MemoryReading(NamedTuple):
  """A measured number of bytes and what it is (a device allocator's peak, or a process's resident set)."""
  bytes: int
  source: str


def _status_bytes(key: str) -> int | None:
  """A 'kB' field of /proc/self/status (Linux), e.g. VmRSS (resident now) or VmHWM (peak resident)."""
  try:
    with open(_STATUS) as f:
      for line in f:
        if line.startswith(key + ':'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def device_peak_bytes() -> list[int] | None:
  """Each local device's allocator peak (`peak_bytes_in_use`; GPU/TPU), in device order; None where a device keeps
  no statistics (CPU)."""
  stats = [d.memory_stats() for d in jax.local_devices()]
  if all(s and 'peak_bytes_in_use' in s for s in stats):
    return [int(s['peak_bytes_in_use']) for s in stats]
  return None


def measured_peak_bytes() -> MemoryReading:
  """Peak memory so far: the device allocator's where it keeps statistics, else the process's resident set.

  Returns:
    MemoryReading(bytes, source): the largest `peak_bytes_in_use` over local devices (GPU/TPU), or the peak RSS
    since the process started or since `reset_peak_rss()` (Linux VmHWM; `ru_maxrss` elsewhere, not resettable).
  """
  devices = jax.local_devices()
  stats = [d.memory_stats() for d in devices]
  if all(s and 'peak_bytes_in_use' in s for s in stats):
    return MemoryReading(max(s['peak_bytes_in_use'] for s in stats),
                         f'device: peak_bytes_in_use, max over {len(devices)} {devices[0].device_kind}')
  hwm = _status_bytes('VmHWM')
  if hwm is not None:
    return MemoryReading(hwm, 'process: peak RSS (VmHWM)')
  # ru_maxrss is in KiB on Linux, bytes on macOS.
  maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return MemoryReading(maxrss if sys.platform == 'darwin' else maxrss * 1024, 'process: peak RSS (ru_maxrss)')


def reset_peak_rss() -> int | None:
  """Resets the process's peak-RSS mark to its current RSS (Linux >= 4.0) and returns that RSS as a baseline.

  Returns:
    The resident bytes now, or None where the mark cannot be reset (then the peak counts from process start).
  """
  try:
    with open(_CLEAR_REFS, 'w') as f:
      f.write('5')  # proc(5): "5" resets the peak resident set size ("high water mark") to the current RSS.
  except OSError:
    return None
  return _status_bytes('VmRSS')


# Where heap_peak files an allocation, by the first match in its native stack (innermost frame first). XLA's own
# buffers come from its CPU allocator; the matmul libraries that XLA:CPU calls allocate packing blocks and
# scratch themselves, per call and per worker thread, outside the buffer plan that `memory_analysis()` reports.
_HEAP_OWNERS = (
    ('xla_buffers', ('CpuDeviceMemory', 'BufferAlloc', 'AlignedAllocator')),
    ('onednn', ('dnnl::',)),
    ('eigen', ('Eigen::TensorContraction',)),
    ('ynnpack', ('slinky::', 'ynn_', 'xnn_')),
)


class HeapPeak(NamedTuple):
  """Peak bytes a function allocated on the heap while it ran (over what was allocated before), and by whom."""
  bytes: int
  by_owner: dict[str, int]  # the allocations live at the peak: xla_buffers, onednn, eigen, ynnpack, other.


def _owner(stack: list[str]) -> str:
  for owner, markers in _HEAP_OWNERS:
    if any(marker in frame for frame in stack for marker in markers):
      return owner
  return 'other'


def heap_peak(fn, *, path: str) -> HeapPeak:
  """Runs `fn()` under memray's allocation tracker and returns the heap's peak rise while it ran, by owner.

  Why memray (Bloomberg's memory profiler, the `[test]` extra): it intercepts every malloc/free in the process,
  XLA's and the kernel libraries' included, so the figure is exact to the byte. The resident set (`reset_peak_rss`)
  moves in pages and with glibc's arena growth: the MNIST-1D CNN's step (1.08 MiB planned) read 1.09-2.22 MiB
  over four identical runs. Tracking slows the traced calls several-fold: for measurements, not training runs.

  Args:
    fn: what to measure; wait for its device work inside it (`jax.block_until_ready`).
    path: a file that does not exist yet, for memray's capture (deleted afterwards).

  Returns:
    HeapPeak: the largest total of bytes allocated and not yet freed while `fn` ran, and those live allocations
    filed by owner (the first frame of their native stack that names XLA's allocator or a matmul library).
  """
  import memray  # pylint: disable=g-import-not-at-top  (optional: measurement scripts and tests only)

  try:
    with memray.Tracker(path, native_traces=True):
      fn()
    reader = memray.FileReader(path)
    by_owner = {owner: 0 for owner, _ in _HEAP_OWNERS} | {'other': 0}
    for record in reader.get_high_watermark_allocation_records(merge_threads=True):
      frames = [frame[0] for frame in record.native_stack_trace()]
      by_owner[_owner(frames)] += record.size
    return HeapPeak(int(reader.metadata.peak_memory), by_owner)
  finally:
    if os.path.exists(path):
      os.remove(path)
