"""Turning SIGTERM/SIGINT (a preemption notice, Ctrl-C) into a stop after the current step, agreed by every host."""

import signal
import threading

import jax
from jax.experimental import multihost_utils


class StopRequest:
  """Asked once per step whether to stop there (checkpoint, run card, exit 0).

  One process: SIGTERM and SIGINT set a flag (the previous handlers come back with `restore_handlers`).
  Several processes: every host must stop at the same step, or the others hang in the next collective. JAX's
  coordination service catches SIGTERM on any host, tells the others, and picks a step all hosts still reach
  (`multihost_utils.reached_preemption_sync_point`); we leave SIGTERM to it, and install no handler (a local SIGINT
  flag would make one host stop alone). Untested until multi-process training
  lands (issue 7): the single-process path is the one the tests exercise.
  """

  def __init__(self):
    self.reason = None
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
    return self.reason is not None

  def restore_handlers(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
