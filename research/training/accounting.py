"""What a run costs, as it goes: timers, the ledger saved with each checkpoint, budgets, and the card's cost section.

The figures come from research.cost (FLOPs, peak, memory, energy); this module decides when they are taken and adds
them up across sessions, so a run killed and resumed N times reports its totals and `restarts: N`.
"""

import dataclasses
import time
from typing import Any, NamedTuple

import jax
import numpy as np

from research import cost, models, sharding

BUDGETS = ('max_seconds', 'max_flops', 'max_joules')


@dataclasses.dataclass
class Timers:
  """Seconds this session spent per phase (train_s excludes the others)."""
  compile_s: float = 0.0
  train_s: float = 0.0
  eval_s: float = 0.0
  checkpoint_s: float = 0.0
  data_wait_s: float = 0.0  # Fetching batches while no step was in flight: the devices idle on the pipeline.

  def add_fetch(self, seconds: float, *, in_flight) -> None:
    """Counts `seconds` spent fetching the next batch as data wait unless a step ran on the devices all along.

    Steps are dispatched asynchronously: while step n runs, the host fetches batch n+1, and that time delays
    nothing. `in_flight` is an output of the last step dispatched (None before the first): if it is not ready once
    the batch is in hand, the devices were busy for the whole fetch and the wait is zero; otherwise the whole fetch
    counts (an upper bound: the step may have ended partway through it). Counting every fetch instead would charge
    the pipeline for host time that overlapped compute, ~6% of a 0.4-0.9 ms MNIST-1D step on 2 cores where the
    fetch competes with XLA's threads.
    """
    if in_flight is None or in_flight.is_ready():
      self.data_wait_s += seconds

  def end_train_segment(self, *, since: float) -> None:
    """Sets train_s to the time since `since` (when the step loop began) minus eval and checkpoint time."""
    self.train_s = time.time() - since - self.eval_s - self.checkpoint_s


class Ledger(NamedTuple):
  """Totals of the sessions before this one, restored from the newest checkpoint's `extra` JSON."""
  restarts: int = 0
  time: dict = {}  # Timers fields and wall_s, summed.
  joules: float = 0.0

  @classmethod
  def from_extra(cls, extra: dict | None) -> 'Ledger':
    """The ledger of a restored checkpoint (this session is one restart more); a fresh run's is empty."""
    if extra is None:
      return cls()
    return cls(restarts=extra.get('restarts', 0) + 1, time=extra.get('time', {}), joules=extra.get('joules', 0.0))


class StepCost(NamedTuple):
  """Per-step figures, fixed once the steps are compiled."""
  train_step_flops: float  # XLA's count, loop iterations included, all devices.
  train_step_flops_analytic: float
  eval_example_flops: float
  eval_example_flops_analytic: float
  predicted_bytes: int  # XLA's memory plan of the train step, per device.
  examples_per_step: int
  comm: dict  # Collectives of one train step per device (cost.collective_bytes).
  tokens_per_step: int | None = None  # Language models: next-token predictions per step.
  train_step_flops_model: float | None = None  # Language models: 6 N + 12 L T d per token (cost.model_flops_per_token).


def step_cost(config, costs: cost.StepCosts, *, input_shape: tuple[int, ...], num_classes: int) -> StepCost:
  """Combines XLA's figures for the compiled steps with the analytic formulas (docs/flops.md)."""
  analytic = dict(input_shape=input_shape, num_classes=num_classes)
  lm = {}
  if models.is_language_model(config.model.name):
    tokens = config.batch_size * input_shape[0]
    lm = dict(tokens_per_step=tokens, train_step_flops_model=tokens * cost.model_flops_per_token(
        config.model, seq_len=input_shape[0], vocab=num_classes))
  return StepCost(**lm,
      train_step_flops=costs.train_step_flops,
      train_step_flops_analytic=cost.analytic_train_step_flops(config.model, batch_size=config.batch_size,
                                                               **analytic),
      eval_example_flops=costs.eval_example_flops,
      eval_example_flops_analytic=cost.analytic_flops(config.model, **analytic),
      predicted_bytes=costs.train_memory_bytes, examples_per_step=config.batch_size, comm=costs.train_comm)


def energy_meter(config) -> cost.EnergyMeter:
  """A started EnergyMeter with the `accounting` group's source and assumed power."""
  meter = cost.EnergyMeter(config.accounting.energy_source, watts_per_core=config.accounting.watts_per_busy_core)
  meter.start()
  return meter


class Tracker:
  """Adds this session's time and energy to the ledger, and checks budgets.

  Budgets count the whole run (every session): wall seconds, train FLOPs (steps x FLOPs per step) and joules.
  Seconds and FLOPs are checked every step (a clock read); joules, whose reading costs more, at each log point.
  """

  def __init__(self, config, ledger: Ledger, step_figures: StepCost, *, t_start: float):
    self.config, self.ledger, self.step = config, ledger, step_figures
    self.t_start = t_start
    self.meter = energy_meter(config)
    self.rss_baseline = cost.reset_peak_rss()  # After compiling: the peak then is the training's own.
    budget = config.budget
    self._max_seconds = budget.max_seconds or float('inf')
    self._max_flops = budget.max_flops or float('inf')
    self._max_joules = budget.max_joules or float('inf')

  def wall_s(self) -> float:
    return self.ledger.time.get('wall_s', 0.0) + time.time() - self.t_start

  def joules(self) -> float:
    return self.ledger.joules + self.meter.read()['joules']

  def budget_reached(self, step: int, *, check_energy: bool) -> str | None:
    """The first budget key the run has reached after `step` steps, or None."""
    if self.wall_s() >= self._max_seconds:
      return 'budget.max_seconds'
    if step * self.step.train_step_flops >= self._max_flops:
      return 'budget.max_flops'
    if check_energy and self.joules() >= self._max_joules:
      return 'budget.max_joules'
    return None

  def extra(self, timers: Timers) -> dict:
    """The ledger as saved with a checkpoint: totals including this session up to now."""
    totals = {k: self.ledger.time.get(k, 0.0) + v for k, v in dataclasses.asdict(timers).items()}
    totals['wall_s'] = self.wall_s()
    return {'restarts': self.ledger.restarts, 'time': totals, 'joules': self.joules()}


def scale_out(config, mesh, state, step_figures: StepCost, *, param_bytes: int) -> dict:
  """The card's `scale_out` entry: where the run ran and what its sharding costs in communication.

  Args:
    config: the run's config.
    mesh: the device mesh.
    state: the final train state (its params' shardings are described).
    step_figures: the compiled step's figures (its collectives).
    param_bytes: the parameters' bytes (the card's params.bytes), for the textbook communication volume.
  """
  layout = sharding.describe_shardings(jax.tree.map(lambda x: x.sharding, state.params), state.params)
  comm = step_figures.comm
  return {
      'mesh': {axis: int(size) for axis, size in mesh.shape.items()},
      'processes': jax.process_count(),
      'accumulate_steps': config.accumulate_steps,
      'compute_dtype': config.compute_dtype,
      'sharded_params': layout['sharded_params'],
      'replicated_param_leaves': len(layout['replicated_leaves']),
      'comm_bytes_per_step': {
          'hlo': {'result_bytes': comm['total'], 'estimated_wire_bytes': comm['estimated_wire_bytes'],
                  'by_op': comm['by_op'], 'count': comm['count']},
          'analytic': cost.analytic_comm_bytes(param_bytes=param_bytes, mesh_shape=dict(mesh.shape)),
          'note': 'per device per train step; hlo: collectives of the compiled step (loop iterations counted), '
                  'wire bytes by ring-algorithm formulas; analytic: textbook data-parallel/FSDP volumes',
      },
  }


def card_costs(tracker: Tracker, timers: Timers, *, state, steps: int, session_steps: int,
               checkpoint_dir: str) -> dict:
  """The run card's cost section (keys documented in README, "What a run writes"); the caller adds `inference`
  (batch1_latency) after this reading of the memory peak."""
  config, step = tracker.config, tracker.step
  totals = tracker.extra(timers)
  energy = tracker.meter.read()
  energy['joules'] = totals['joules']
  peak, peak_source = cost.peak_flops_per_s()
  devices = jax.device_count()
  train_flops_session = session_steps * step.train_step_flops
  measured = cost.measured_peak_bytes()
  params = cost.param_stats(state.params)
  timed = session_steps and timers.train_s > 0
  per_s = lambda per_step: session_steps * per_step / timers.train_s if timed and per_step is not None else None
  return {
      'restarts': totals['restarts'],
      'params': {'count': params['count'], 'bytes': params['bytes'], 'by_dtype': params['by_dtype'],
                 'checkpoint_bytes': cost.dir_bytes(checkpoint_dir)},
      'flops': {'train_step': {'analytic': step.train_step_flops_analytic, 'xla': step.train_step_flops,
                               **_if_lm(step, model_6n=step.train_step_flops_model)},
                'eval_example': {'analytic': step.eval_example_flops_analytic, 'xla': step.eval_example_flops},
                'total_train': steps * step.train_step_flops},
      'time': totals['time'],
      'session_time': dataclasses.asdict(timers) | {'wall_s': time.time() - tracker.t_start},
      'throughput': {'examples_per_s': per_s(step.examples_per_step),
                     **_if_lm(step, tokens_per_s=per_s(step.tokens_per_step))},
      'mfu': {'value': cost.mfu(train_flops_session / devices, timers.train_s, peak) if timed else None,
              **_if_lm(step, model_6n_value=cost.mfu(session_steps * (step.train_step_flops_model or 0) / devices,
                                                     timers.train_s, peak) if timed else None),
              'peak_flops_per_s': peak, 'peak_source': peak_source,
              'note': "this session's XLA train-step FLOPs per device over its train_s (which includes the data "
                      'wait, not compile, eval or checkpoints); model_6n_value (language models): the same with '
                      'the 6N + 12LTd FLOPs per token of flops.train_step.model_6n'},
      'memory': {'predicted_bytes': step.predicted_bytes, 'predicted_per': 'device',
                 'measured_peak_bytes': measured.bytes, 'measured_source': measured.source,
                 'device_peak_bytes': cost.device_peak_bytes(),
                 'measured_rise_bytes': (measured.bytes - tracker.rss_baseline
                                         if tracker.rss_baseline is not None and measured.source.startswith('process')
                                         else None)},
      'energy': energy,
      'co2_g': cost.co2_grams(energy['joules'], config.accounting.grid_co2_g_per_kwh),
  }


def _if_lm(step: StepCost, **entries) -> dict:
  """`entries` for a language model's card (step.tokens_per_step set), nothing for a classifier's."""
  return entries if step.tokens_per_step is not None else {}


class Batch1Forward:
  """The batch-1 forward on one device, compiled in a background thread from the start of the run.

  Why in the background: compiling it at the end of a run took 0.1-0.35 s (MNIST-1D MLP, CNN, GRU, Transformer), a
  fixed cost that made a few-second run 2-4% slower with accounting on. Started as training starts, it compiles on
  the core that a small model's training leaves free (XLA compiles with the GIL released), and the executable is
  ready when the run ends: wall time on/off 0.99-1.01 (benchmarks/accounting_overhead.py). Started next to the train
  step's compile instead, it lengthened compile_s by as much (the two compiles share the 2 cores). The compile's
  memory did not show in the card's RSS rise (noise of several MiB either way).
  """

  def __init__(self, model, params, example: np.ndarray):
    """Args: model: the flax module; params: its params (shapes and dtypes only are read); example: one
    preprocessed input [1, ...] of the kind that will be timed."""
    import concurrent.futures  # pylint: disable=g-import-not-at-top
    self.device = jax.local_devices()[0]
    placed = jax.sharding.SingleDeviceSharding(self.device)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=placed), params)
    x = jax.ShapeDtypeStruct(example.shape, example.dtype, sharding=placed)
    forward = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='batch1-compile')
    self._compiled = pool.submit(lambda: forward.lower(abstract, x).compile())
    pool.shutdown(wait=False)

  def latency(self, params, inputs: np.ndarray, *, examples: int = 100) -> dict:
    """The card's `inference` entry: batch-1 forward latency p50/p99 over the first `examples` of `inputs`."""
    compiled = self._compiled.result()  # Raises what the compile raised.
    timing = cost.batch1_latency_ms(compiled, jax.device_put(sharding.to_host(params), self.device), inputs,
                                    examples=examples)
    return {'batch1_p50_ms': timing['p50_ms'], 'batch1_p99_ms': timing['p99_ms'],
            'timed_examples': timing['timed_examples'], 'device': self.device.device_kind}


def batch1_latency(model, params, inputs: np.ndarray, *, examples: int = 100) -> dict:
  """The card's `inference` entry for `model` and `params` now (compiles first: Batch1Forward does it ahead)."""
  return Batch1Forward(model, params, np.asarray(inputs[:1])).latency(params, inputs, examples=examples)


def eval_batch_latency(eval_step, params, batch: dict, *, batch_size: int, seconds: float = float('inf')) -> dict:
  """The card's inference entries at the eval batch size: the compiled eval step (forward + loss sums) on one
  full batch, after the run's own evaluations warmed it up; 20 calls, or in a single-process run as many (at least
  5) as fit in `seconds` (the loop gives it 0.5% of the training time, so that a short run's card costs it little)."""
  first = cost.call_latency_ms(eval_step, params, batch, calls=1)['p50_ms']
  calls = int(np.clip(1e3 * seconds / max(first, 1e-6), 5, 20))
  if jax.process_count() > 1:
    # The eval step is one program across the processes: each must call it as often as the others, and their
    # clocks differ (a count from them hung tests/multiprocess_test.py).
    calls = 20
  timing = cost.call_latency_ms(eval_step, params, batch, calls=calls)
  return {'eval_batch_size': batch_size, 'eval_batch_p50_ms': timing['p50_ms'],
          'eval_batch_p99_ms': timing['p99_ms'], 'eval_examples_per_s': 1e3 * batch_size / timing['p50_ms'],
          'eval_batch_calls': calls}


def dry_run_estimate(step_figures: StepCost, *, seconds_per_step: float, joules_per_step: float, steps: int,
                     grid_co2_g_per_kwh: float) -> dict[str, Any]:
  """Projected totals for `steps` steps from a few timed steps."""
  joules = joules_per_step * steps
  return {'train_flops': steps * step_figures.train_step_flops, 'seconds': seconds_per_step * steps,
          'joules': joules, 'co2_g': cost.co2_grams(joules, grid_co2_g_per_kwh)}
