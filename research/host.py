"""Process-wide settings of the host that change how fast a run goes, applied by the entry points."""

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h).
_KEEP_BYTES = 1 << 30


def keep_freed_memory() -> bool:
  """Makes glibc's malloc serve allocations up to 1 GiB from its heap and keep freed memory mapped.

  Why: XLA:CPU allocates each step's temporaries as one buffer (45 MiB for the tiny GPT's train step). glibc maps
  any allocation over its mmap threshold (at most 32 MiB) afresh and unmaps it when freed, so every step page-faults
  the whole buffer in again: ~11,800 faults and ~35 ms of system time per step measured here (benchmarks/gpt_step.py),
  as much as the step's arithmetic. With the heap keeping that memory, a step faults nothing; the process's peak
  memory is unchanged (the same buffer, reused), though its resident size no longer shrinks between steps. The
  equivalent environment setting is GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=1073741824.

  Returns:
    True if applied; False where the C library is not glibc (macOS, musl): nothing changes there.
  """
  if not sys.platform.startswith('linux'):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
