"""Inference latency: per-call times of a compiled forward pass, at batch 1 or at a full batch, as percentiles."""

import time
from typing import Callable

import jax
import numpy as np


def batch1_latency_ms(forward: Callable, params, inputs: np.ndarray, *, examples: int = 100) -> dict:
  """Times `forward(params, x)` on one example at a time, transfers to and from the device included.

  Args:
    forward: a jitted `(params, inputs [1, ...]) -> outputs`.
    params: its params, already on the device it should run on.
    inputs: [N, ...] model-ready inputs; the first min(N, examples) are timed, after one warm-up call (the compile).
    examples: number of timed calls.

  Returns:
    {'p50_ms', 'p99_ms', 'timed_examples'}.
  """
  jax.device_get(forward(params, inputs[:1]))
  times = []
  for i in range(min(examples, len(inputs))):
    t0 = time.perf_counter()
    jax.device_get(forward(params, inputs[i:i + 1]))
    times.append(1e3 * (time.perf_counter() - t0))
  return {'p50_ms': float(np.percentile(times, 50)), 'p99_ms': float(np.percentile(times, 99)),
          'timed_examples': len(times)}


def call_latency_ms(fn: Callable, *args, calls: int = 20) -> dict:
  """Times `fn(*args)` (already compiled and run once), the result fetched to the host each call.

  Returns:
    {'p50_ms', 'p99_ms', 'calls'}.
  """
  times = []
  for _ in range(calls):
    t0 = time.perf_counter()
    jax.device_get(fn(*args))
    times.append(1e3 * (time.perf_counter() - t0))
  return {'p50_ms': float(np.percentile(times, 50)), 'p99_ms': float(np.percentile(times, 99)), 'calls': calls}
