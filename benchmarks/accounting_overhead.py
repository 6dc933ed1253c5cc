r"""How much slower a run is with cost accounting than without: runs the same training both ways, alternating.

"Without" replaces the loop's accounting.Tracker with one that reads no clock, no energy meter and checks no
budget, compiles no batch-1 forward (accounting.Batch1Forward compiles it in the background as the steps compile),
and skips the end-of-run cost section (peak lookup, memory, scale-out, batch-1 and eval-batch latency).
Compilation (which XLA's FLOP count needs anyway) is the same both ways. Reports min and median over repeats of
the session's wall time and of its train time, their ratios (target: <= 1.03), and the end-of-run section's time.

  JAX_PLATFORMS=cpu python benchmarks/accounting_overhead.py [--models=mlp,cnn] [--steps=3000] [--repeats=3]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import mnist1d  # pylint: disable=g-import-not-at-top,wrong-import-position
from research.training import accounting, loop  # pylint: disable=g-import-not-at-top,wrong-import-position


class _NoAccounting(accounting.Tracker):
  """A Tracker that does nothing per step and no energy reading."""

  def __init__(self, config, ledger, step_figures, *, t_start):  # pylint: disable=super-init-not-called
    self.config, self.ledger, self.step, self.t_start = config, ledger, step_figures, t_start

  def budget_reached(self, step, *, check_energy):
    return None

  def extra(self, timers):
    return {}


class _NoBatch1:
  """A Batch1Forward that compiles and times nothing."""

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def latency(self, *args, **kwargs):
    del args, kwargs
    return {}


class _TimedBatch1(accounting.Batch1Forward):
  """Batch1Forward whose end-of-run timing counts as part of the end-of-run section."""
  spent: list = []

  def latency(self, *args, **kwargs):
    t0 = time.perf_counter()
    try:
      return super().latency(*args, **kwargs)
    finally:
      self.spent.append(time.perf_counter() - t0)


_SECTION = ('card_costs', 'scale_out', 'eval_batch_latency')  # The end-of-run cost section, with batch-1 latency.


def _run(config, accounted: bool) -> tuple[float, float, float]:
  """(wall, train_s, seconds in the end-of-run cost section) of one run, with or without accounting."""
  spent = []

  def timed(fn):
    def call(*args, **kwargs):
      t0 = time.perf_counter()
      try:
        return fn(*args, **kwargs)
      finally:
        spent.append(time.perf_counter() - t0)
    return call

  def no_costs(tracker, timers, **_):
    del tracker
    return {'session_time': {'train_s': timers.train_s}, 'params': {'bytes': None}}

  _TimedBatch1.spent = spent
  if accounted:
    patches = {name: timed(getattr(accounting, name)) for name in _SECTION} | {'Batch1Forward': _TimedBatch1}
  else:
    patches = {name: lambda *a, **k: {} for name in _SECTION} | {
        'Tracker': _NoAccounting, 'card_costs': no_costs, 'Batch1Forward': _NoBatch1}
  saved = {name: getattr(accounting, name) for name in patches}
  for name, value in patches.items():
    setattr(accounting, name, value)
  try:
    with tempfile.TemporaryDirectory() as workdir:
      t0 = time.perf_counter()
      card = loop.train_and_evaluate(config, workdir)
      wall = time.perf_counter() - t0
  finally:
    for name, value in saved.items():
      setattr(accounting, name, value)
  return wall, card['session_time']['train_s'], sum(spent)


def _hook_cost(config) -> tuple[float, float]:
  """Microseconds per call of the loop's per-step budget check, without and with the energy reading."""
  figures = accounting.StepCost(1.0, 1.0, 1.0, 1.0, 1, config.batch_size, comm={})
  tracker = accounting.Tracker(config, accounting.Ledger(), figures, t_start=time.time())
  out = []
  for check_energy, calls in ((False, 100_000), (True, 1_000)):
    t0 = time.perf_counter()
    for step in range(calls):
      tracker.budget_reached(step, check_energy=check_energy)
    out.append(1e6 * (time.perf_counter() - t0) / calls)
  return out[0], out[1]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='mlp,cnn')
  parser.add_argument('--steps', type=int, default=3000)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  print(f'{args.steps} steps per run, {args.repeats} repeats alternating off/on after one warm-up run; '
        'seconds: min / median')
  print(f'{"model":8} {"wall off":>14} {"wall on":>14} {"ratio":>12} {"train off":>14} {"train on":>14} {"ratio":>12} '
        f'{"end-of-run section":>19}')
  for name in args.models.split(','):
    config = mnist1d.get_config(name)
    config.steps, config.progress = args.steps, False
    config.eval_every = config.checkpoint_every = args.steps
    _run(config, True)  # Warm-up: the first run in a process pays one-off costs (imports, thread pools, caches).
    results = {False: [], True: []}
    for _ in range(args.repeats):
      for accounted in (False, True):
        results[accounted].append(_run(config, accounted))
    cell = lambda xs: f'{min(xs):6.2f} / {statistics.median(xs):5.2f}'
    ratio = lambda on, off: f'{min(on) / min(off):5.3f} / {statistics.median(on) / statistics.median(off):5.3f}'
    wall = {k: [r[0] for r in v] for k, v in results.items()}
    train = {k: [r[1] for r in v] for k, v in results.items()}
    section = [r[2] for r in results[True]]
    print(f'{name:8} {cell(wall[False]):>14} {cell(wall[True]):>14} {ratio(wall[True], wall[False]):>12} '
          f'{cell(train[False]):>14} {cell(train[True]):>14} {ratio(train[True], train[False]):>12} '
          f'{cell(section):>19}', flush=True)
  check_us, energy_us = _hook_cost(mnist1d.get_config('mlp'))
  log_every = mnist1d.get_config('mlp').log_every
  print(f'per-step hook: budget check {check_us:.2f} us/step, + energy reading {energy_us:.0f} us every {log_every} '
        f'steps = {check_us + energy_us / log_every:.2f} us/step on average')


if __name__ == '__main__':
  main()
