"""research/training/accounting.py: what counts as data wait."""

import jax
import jax.numpy as jnp

from research.training import accounting


class _Output:
  def __init__(self, ready: bool):
    self.ready = ready

  def is_ready(self) -> bool:
    return self.ready


def test_a_fetch_counts_as_data_wait_only_when_no_step_was_in_flight():
  timers = accounting.Timers()
  timers.add_fetch(0.5, in_flight=None)  # Before the first step: the devices wait for the batch.
  timers.add_fetch(0.25, in_flight=_Output(ready=True))  # The last step had finished: idle devices.
  timers.add_fetch(2.0, in_flight=_Output(ready=False))  # A step ran throughout the fetch: no delay.
  assert timers.data_wait_s == 0.75
  timers.add_fetch(0.125, in_flight=jax.block_until_ready(jnp.ones(3)))  # A real jax.Array, finished.
  assert timers.data_wait_s == 0.875
