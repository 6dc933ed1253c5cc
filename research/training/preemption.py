"""Turning SIGTERM/SIGINT (a preemption notice, Ctrl-C) into a stop after the current step, agreed by every host."""

import signal
import threading

import jax
from jax._src import distributed
from jax.experimental import multihost_utils
import numpy as np

# The coordination-service key that XLA's preemption sync manager (tsl preemption_sync_manager.cc) sets when a host
# catches SIGTERM.
_NOTICE_KEY = 'RECEIVED_PREEMPTION_NOTICE'


class StopRequest:
  """Asked once per step whether to stop there (checkpoint, run card, exit 0).

  One process: SIGTERM and SIGINT set a flag (the previous handlers come back with `restore_handlers`).
  Several processes: every host must stop at the same step, or the others hang in the next collective. JAX's
  coordination service catches SIGTERM on any host, tells the others, and picks a step all hosts still reach
  (`multihost_utils.reached_preemption_sync_point`); we leave SIGTERM to it, and install no handler (a local SIGINT
  flag would make one host stop alone, so Ctrl-C on one host of a multi-process run is not handled). The first
  call also catches a notice that came during startup, which JAX's sync point misses. tests/multiprocess_test.py
  sends SIGTERM to one of two processes: both stop at the same step with a checkpoint and exit 0.
  """

  def __init__(self):
    self.reason = None
    self._first_call = True
    self._multihost = jax.process_count() > 1
    self._previous = {}
    if threading.current_thread() is threading.main_thread() and not self._multihost:
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    del frame
    self.reason = signal.Signals(signum).name

  def requested(self, step: int) -> bool:
    """True if the run should stop after `step` (called once per step, by every host, with the same steps)."""
    if self._multihost and multihost_utils.reached_preemption_sync_point(step):
      self.reason = 'a preemption notice (all hosts stop at this step)'
    elif self._multihost and self._first_call and self._any_host_saw_a_notice():
      self.reason = 'a preemption notice before training began (all hosts stop at this step)'
    self._first_call = False
    return self.reason is not None

  def _any_host_saw_a_notice(self) -> bool:
    """Whether any host's coordination service already holds a preemption notice (one collective, all hosts).

    JAX's sync point is the hosts' largest step so far + 1; a notice that came before the first
    `reached_preemption_sync_point` call (while restoring or compiling) makes it 0 + 1, which a resumed run never
    reaches: without this check the notice would be ignored and the run killed at the end of its grace period.
    """
    try:
      distributed.global_state.client.key_value_try_get(_NOTICE_KEY)
      seen = True
    except jax.errors.JaxRuntimeError:  # NOT_FOUND: no host has caught SIGTERM.
      seen = False
    # Hosts may read the key on either side of its insertion; agreeing on "any" keeps them at the same step.
    return bool(np.any(multihost_utils.process_allgather(np.array(seen))))

  def restore_handlers(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
