r"""Vectorized trials: several runs of one model that differ only in numeric hyperparameters, trained as one program.

The trials' train states are stacked along a leading trial axis [T, ...] and one `jax.vmap` of the ordinary train
step (research.training.steps.make_train_step) advances all of them: one compile, one dispatch per step, and
batched matmuls instead of T small ones. What may differ between the trials of a group (VECTORIZABLE):

  seed                     per-trial init (the init is vmapped over the seeds), dropout rng and data order
  optimizer.learning_rate  per-trial learning-rate schedule (the trial's own schedule, tabulated per step)
  optimizer.weight_decay   a per-trial coefficient (a zero coefficient adds exactly 0)
  optimizer.l1, .l2        per-trial penalty coefficients
  model.dropout_rate       per-trial rate (layers.Dropout's rate is a static field: calls are intercepted, below)

Every other key changes the program itself (another architecture, optimizer, batch shape, step count) and is
refused with VectorizeError naming it. Each trial then gets the workdir of an ordinary run: config.json,
metrics.jsonl, a final Orbax checkpoint of its own state in the ordinary run's layout (experiments.evaluate and
experiments.train read it), and a run card whose costs are its share of the group's (docs/sweeps.md).

  group = build_group(configs)                   # checks, data, model, stacked state, compiled steps
  cards = train_group(configs, workdirs, trial_ids)
"""

import dataclasses
import os
import time
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research import checkpointing, cost, data, metrics as metrics_lib, models, run_card
from research import workdir as workdir_lib
from research.models import layers
from research.training import accounting, loop, optim, steps as steps_lib
from research.training import train_state as train_state_lib
from research.training.preemption import StopRequest
from research.training.train_state import TrainState

# Private pieces of the ordinary run, reused as they are so that a trial computes what its run computes.
# pylint: disable=protected-access
_init_fn, _reduce_metrics = train_state_lib._init_fn, loop._reduce_metrics
# pylint: enable=protected-access

# Config keys whose values may differ between the trials of a group.
VECTORIZABLE = ('seed', 'optimizer.learning_rate', 'optimizer.weight_decay', 'optimizer.l1', 'optimizer.l2',
                'model.dropout_rate')
# Keys that may differ without changing what a trial computes (where it writes, how it logs and reports progress).
_IGNORED = ('progress', 'dataset.data_dir')
# Models whose dropout is all layers.Dropout(model.dropout_rate) calls, so a per-trial rate can be intercepted.
DROPOUT_MODELS = ('mlp', 'cnn', 'cnn2d', 'lenet5', 'gru', 'lstm', 'transformer')
_WHY = {  # Why a key cannot differ within a group; the default names the vectorizable keys.
    'model.': 'another architecture is another program (other parameter shapes)',
    'optimizer.': 'another optimizer setting changes the update rule or the optimizer state\'s structure',
    'batch_size': 'another batch shape is another program',
    'steps': 'the trials of a group take the same steps together',
    'dataset.': 'the trials of a group read one dataset',
    'mesh.': 'a vectorized group runs on one device; its trials share the mesh setting',
    'budget.': 'budgets stop one run partway; a vectorized group trains every trial to config.steps',
}


class VectorizeError(ValueError):
  """Trials that cannot be trained as one vectorized program; the message names the key and why."""


class GroupStopped(RuntimeError):
  """SIGTERM/SIGINT stopped a group before its end; no checkpoint or card was written for its trials (they start
  over when run again)."""

  def __init__(self, signal: str, step: int, steps: int):
    super().__init__(f'received {signal} at step {step} of {steps}')
    self.signal = signal


def _flat(config) -> dict[str, Any]:
  return workdir_lib.flatten(config.to_dict())


def _why(key: str) -> str:
  for prefix, why in _WHY.items():
    if key.startswith(prefix) and key not in VECTORIZABLE:
      return why
  return f'only {", ".join(VECTORIZABLE)} may differ between the trials of a vectorized group'


def check_group(configs: Sequence, trial_ids: Sequence[str]) -> list[str]:
  """Checks that `configs` can train as one vectorized program; returns the keys whose values differ.

  Raises:
    VectorizeError: a key outside VECTORIZABLE differs (named, with both values and why), or the group uses
      something vectorized training does not support (a language model, budgets, several processes, a per-trial
      dropout rate on a model outside DROPOUT_MODELS).
  """
  if not configs:
    raise VectorizeError('no trials to vectorize')
  first = _flat(configs[0])
  varying = set()
  for config, trial in zip(configs[1:], trial_ids[1:]):
    flat = _flat(config)
    for key in sorted(set(first) | set(flat)):
      if first.get(key) != flat.get(key) and key not in _IGNORED:
        if key not in VECTORIZABLE:
          raise VectorizeError(
              f'trial {trial}: {key} = {flat.get(key)!r} (trial {trial_ids[0]}: {first.get(key)!r}) cannot be '
              f'vectorized: {_why(key)}. Run this sweep without --vectorize')
        varying.add(key)
  config = configs[0]
  if models.is_language_model(config.model.name):
    raise VectorizeError(f'model.name = {config.model.name!r}: language models are not vectorized (only '
                         'classifiers); run this sweep without --vectorize')
  for key in accounting.BUDGETS:
    if config.budget[key]:
      raise VectorizeError(f'budget.{key} = {config.budget[key]!r} cannot be vectorized: {_WHY["budget."]}')
  for key in ('init_from', 'qat_bits', 'sparsity', 'teacher'):
    if config.compression[key]:
      raise VectorizeError(f'compression.{key} = {config.compression[key]!r}: compression is not vectorized; run '
                           'this sweep without --vectorize')
  if config.distributed.coordinator_address or config.distributed.auto_detect:
    raise VectorizeError('distributed.*: a vectorized group runs in one process; run this sweep without --vectorize')
  if 'model.dropout_rate' in varying and config.model.name not in DROPOUT_MODELS:
    raise VectorizeError(f'model.dropout_rate differs between trials of model {config.model.name!r}, whose '
                         f'dropout cannot be set per trial (supported: {", ".join(DROPOUT_MODELS)})')
  return sorted(varying)


class Hyperparams(NamedTuple):
  """Per-trial values, each with a leading trial axis [T] (the vmapped step sees one trial's scalars)."""
  lr_table: jax.Array  # [T, steps + 1] float32: the trial's learning-rate schedule at every optimizer step.
  weight_decay: jax.Array  # [T] float32
  l1: jax.Array  # [T] float32
  l2: jax.Array  # [T] float32
  keep_prob: jax.Array  # [T] float32: 1 - dropout_rate, rounded as flax rounds 1.0 - rate.


def lr_table(optimizer_config, *, total_steps: int) -> np.ndarray:
  """A trial's own schedule (optim.make_schedule) evaluated at optimizer steps 0..total_steps, float32."""
  if optimizer_config.schedule == 'constant':  # No compile: float32(lr), as the step itself rounds it.
    return np.full(total_steps + 1, optimizer_config.learning_rate, np.float32)
  schedule = optim.make_schedule(optimizer_config, total_steps=total_steps)
  at = jax.jit(jax.vmap(lambda count: jnp.asarray(schedule(count), jnp.float32)))
  return np.asarray(at(jnp.arange(total_steps + 1)))


def make_hyperparams(configs: Sequence) -> Hyperparams:
  """The trials' per-trial values, stacked."""
  opt = [c.optimizer for c in configs]
  f32 = lambda xs: jnp.asarray(np.asarray(xs, np.float32))
  return Hyperparams(
      lr_table=f32([lr_table(o, total_steps=c.steps) for o, c in zip(opt, configs)]),
      weight_decay=f32([o.weight_decay for o in opt]), l1=f32([o.l1 for o in opt]), l2=f32([o.l2 for o in opt]),
      keep_prob=f32([1.0 - c.model.get('dropout_rate', 0.0) for c in configs]))


class _Coefficient:
  """A per-trial penalty coefficient (a traced scalar) that losses.weight_penalty can test with `if l1:`.

  Truthy (the coefficients differ and are >= 0, so some trial uses the penalty): the term is built; it multiplies
  as its traced value, so a trial whose coefficient is 0 adds exactly 0 (as the sequential run, which skips it).
  """

  def __init__(self, value: jax.Array):
    self.value = value

  def __bool__(self) -> bool:
    return True

  def __mul__(self, other):
    return self.value * other

  __rmul__ = __mul__


def _dropout_interceptor(keep_prob: jax.Array) -> Callable:
  """Replaces layers.Dropout.__call__ (whose rate is a static field) by the same computation at a traced rate.

  The same draws as the module (layers.dropout(make_rng('dropout'), inputs, keep_prob)); a rate of 0 returns the
  inputs unchanged, as the module does.
  """

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if not isinstance(module, layers.Dropout) or context.method_name != '__call__':
      return next_fun(*args, **kwargs)
    inputs, *rest = args
    deterministic = nn.merge_param('deterministic', module.deterministic,
                                   kwargs.get('deterministic', rest[0] if rest else None))
    if deterministic:
      return inputs
    # A keep probability of 1 keeps every element and divides by exactly 1: the inputs unchanged, no select needed.
    return layers.dropout(module.make_rng(module.rng_collection), inputs, keep_prob)

  return interceptor


@dataclasses.dataclass(frozen=True)
class _Plan:
  """What the group's configs decide about its one program."""
  config: Any  # The first trial's config: everything but the varying keys.
  varying: frozenset[str]
  decay: bool  # The chain has add_decayed_weights (optim.make_chain's add_decay).

  def has(self, key: str) -> bool:
    return key in self.varying


def _plan(configs: Sequence, varying: Sequence[str]) -> _Plan:
  config = configs[0]
  decay = any(c.optimizer.weight_decay > 0 for c in configs) and config.optimizer.name != 'adamw'
  return _Plan(config, frozenset(varying), decay)


def _trial_pieces(plan: _Plan, model: nn.Module, h: Hyperparams):
  """One trial's optimizer, schedule and train step inside the vmapped function (h: that trial's scalars)."""
  opt = plan.config.optimizer
  if plan.has('optimizer.learning_rate'):
    last = h.lr_table.shape[-1] - 1
    schedule = lambda count: h.lr_table[jnp.minimum(count, last)]
  else:
    schedule = optim.make_schedule(opt, total_steps=plan.config.steps)
  weight_decay = h.weight_decay if plan.has('optimizer.weight_decay') else opt.weight_decay
  tx = optim.make_chain(opt, schedule=schedule, weight_decay=weight_decay, add_decay=plan.decay)
  penalty = lambda key: _Coefficient(getattr(h, key)) if plan.has(f'optimizer.{key}') else opt[key]
  step = steps_lib.make_train_step(model, tx, schedule, l1=penalty('l1'), l2=penalty('l2'),
                                   compute_dtype=plan.config.compute_dtype,
                                   accumulate_steps=plan.config.accumulate_steps)
  return tx, step


def make_vectorized_train_step(plan: _Plan, model: nn.Module, *, shared_batch: bool) -> Callable:
  """(hyperparams [T], state [T, ...], batch [T, B, ...] or [B, ...]) -> (state [T, ...], metrics [T]); jitted
  with the state donated. The ordinary train step, vmapped over the trials."""

  def one_trial(h: Hyperparams, state: TrainState, batch: dict):
    _, step = _trial_pieces(plan, model, h)
    if not plan.has('model.dropout_rate'):
      return step(state, batch)
    with nn.intercept_methods(_dropout_interceptor(h.keep_prob)):
      return step(state, batch)

  return jax.jit(jax.vmap(one_trial, in_axes=(0, 0, None if shared_batch else 0)), donate_argnums=1)


def make_vectorized_eval_step(model: nn.Module, *, compute_dtype: str) -> Callable:
  """(params [T, ...], batch [B, ...]) -> sums {loss_sum, correct_sum, count} [T]: the ordinary eval step, vmapped
  over the trials' params on one shared batch."""
  return jax.jit(jax.vmap(steps_lib.make_eval_step(model, compute_dtype=compute_dtype), in_axes=(0, None)))


def create_group_state(plan: _Plan, model: nn.Module, h: Hyperparams, *, seeds: Sequence[int],
                       input_shape: tuple[int, ...]) -> TrainState:
  """The trials' initial states stacked [T, ...]: the ordinary init (train_state), vmapped over the seeds."""

  def init(h_t, seed):
    tx, _ = _trial_pieces(plan, model, h_t)
    return nn.unbox(_init_fn(model, tx, input_shape)(seed))

  seeds = jnp.asarray(seeds, jnp.int32)
  compiled = jax.jit(jax.vmap(init)).lower(h, seeds).compile(compiler_options=train_state_lib.INIT_COMPILER_OPTIONS)
  return compiled(h, seeds)


def trial_state(plan: _Plan, state: TrainState, index: int, trial_config) -> TrainState:
  """Trial `index`'s state in the ordinary run's layout (that of optim.make_optimizer for its own config)."""
  state = jax.tree.map(lambda x: x[index], state)
  if plan.decay and trial_config.optimizer.weight_decay == 0:  # The sequential chain has no decay step.
    opt_state = state.opt_state
    drop = 1 if plan.config.optimizer.grad_clip_norm > 0 else 0
    inner = tuple(s for i, s in enumerate(opt_state.inner_state) if i != drop)
    state = state.replace(opt_state=opt_state._replace(inner_state=inner))
  return state


def check_layout(state: TrainState, model: nn.Module, trial_config, input_shape: tuple[int, ...]) -> None:
  """Raises AssertionError unless `state` has the tree structure of an ordinary run of `trial_config`."""
  tx, _ = optim.make_optimizer(trial_config.optimizer, total_steps=trial_config.steps)
  expected = jax.eval_shape(lambda: nn.unbox(_init_fn(model, tx, input_shape)(0)))
  if jax.tree.structure(expected) != jax.tree.structure(state):
    raise AssertionError(f'vectorized trial state {jax.tree.structure(state)} does not have the layout of an '
                         f'ordinary run {jax.tree.structure(expected)}')


class Group(NamedTuple):
  """A group ready to train: its model, stacked state and hyperparameters, compiled steps and data streams."""
  plan: _Plan
  model: nn.Module
  dataset: data.Dataset
  hyperparams: Hyperparams
  state: TrainState  # [T, ...]
  train_step: Callable  # Compiled make_vectorized_train_step.
  eval_step: Callable  # Compiled make_vectorized_eval_step.
  seeds: tuple[int, ...]  # Per trial.
  iterators: dict[int, Any]  # Seed -> its training stream (data.make_train_iterator).
  train_step_flops: float  # XLA's FLOPs of one vectorized step (all trials).
  eval_example_flops: float  # XLA's FLOPs per example per trial of the eval step.
  predicted_bytes: int  # XLA's memory plan of the vectorized step.

  def next_batch(self) -> dict:
    """The trials' next batches: [B, ...] shared when the trials share one seed, else stacked [T, B, ...]."""
    if len(self.iterators) == 1:
      return next(self.iterators[self.seeds[0]])
    batches = {seed: next(it) for seed, it in self.iterators.items()}
    return jax.tree.map(lambda *xs: np.stack(xs), *[batches[s] for s in self.seeds])


def build_group(configs: Sequence, trial_ids: Sequence[str] | None = None) -> Group:
  """Checks the trials (check_group), loads the data, builds the model and stacked state, compiles the steps.

  Raises:
    VectorizeError: see check_group. ConfigError, DataUnavailableError: as training raises them.
  """
  trial_ids = list(trial_ids or [str(i) for i in range(len(configs))])
  plan = _plan(configs, check_group(configs, trial_ids))
  config = plan.config
  dataset = data.load_dataset(config.dataset)
  loop.check_batches_fit(config, dataset)
  if plan.has('model.dropout_rate'):  # A non-zero placeholder: the interceptor applies each trial's own rate.
    model = models.get_model({**config.model.to_dict(), 'dropout_rate': 0.5}, num_classes=dataset.num_classes)
  else:
    model = models.get_model(config.model, num_classes=dataset.num_classes)
  h = make_hyperparams(configs)
  seeds = tuple(int(c.seed) for c in configs)
  state = create_group_state(plan, model, h, seeds=seeds, input_shape=dataset.input_shape)
  iterators = {s: data.make_train_iterator(dataset, batch_size=config.batch_size, seed=s, order=config.dataset.order)
               for s in dict.fromkeys(seeds)}
  example = dataset.train[np.arange(config.batch_size)]
  shared = len(iterators) == 1
  batch = {k: jax.ShapeDtypeStruct(v.shape if shared else (len(configs), *v.shape), v.dtype)
           for k, v in example.items()}
  train = make_vectorized_train_step(plan, model, shared_batch=shared).lower(h, state, batch).compile()
  eval_batch = next(data.eval_batches(dataset, 'test', batch_size=config.eval_batch_size))
  evaluate = make_vectorized_eval_step(model, compute_dtype=config.compute_dtype).lower(
      state.params, eval_batch).compile()
  return Group(plan, model, dataset, h, state, train, evaluate, seeds, iterators,
               train_step_flops=cost.compiled_flops(train),
               eval_example_flops=cost.compiled_flops(evaluate) / (len(configs) * config.eval_batch_size),
               predicted_bytes=cost.predicted_memory_bytes(train))


def evaluate(group: Group, params) -> list[dict]:
  """Per trial {'loss', 'accuracy'} over the test split (loop.evaluate's sums and divisions, per trial)."""
  config, totals = group.plan.config, None
  for batch in data.eval_batches(group.dataset, 'test', batch_size=config.eval_batch_size,
                                 max_examples=config.eval_examples):
    sums = group.eval_step(params, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  return [{'loss': float(totals['loss_sum'][t] / totals['count'][t]),
           'accuracy': float(totals['correct_sum'][t] / totals['count'][t])} for t in range(len(group.seeds))]


class _Progress(NamedTuple):
  """Each trial's last reduced train metrics and eval metrics, and the step where its non-finite streak reached
  config.max_consecutive_nonfinite (None: never)."""
  state: TrainState
  last_train: list[dict]
  last_eval: list[dict]
  nonfinite_at: list[int | None]


def _train_steps(group: Group, writers: Sequence, timers: accounting.Timers) -> _Progress:
  """config.steps vectorized steps, logging every log_every and evaluating every eval_every, per trial.

  Raises:
    GroupStopped: SIGTERM/SIGINT arrived (checked once per step).
  """
  config, n = group.plan.config, len(group.seeds)
  state, pending = group.state, []
  last_train, last_eval, nonfinite_at = [{}] * n, [{}] * n, [None] * n
  stop = StopRequest()
  progress = metrics_lib.Progress(total=config.steps, initial=0, enabled=config.progress)
  t_train, in_flight = time.time(), None
  try:
    for step in range(1, config.steps + 1):
      t0 = time.perf_counter()
      batch = group.next_batch()
      timers.add_fetch(time.perf_counter() - t0, in_flight=in_flight)
      state, step_metrics = group.train_step(group.hyperparams, state, batch)
      in_flight = step_metrics['loss']
      pending.append(step_metrics)
      progress.update(step)
      done = step == config.steps
      if step % config.log_every == 0 or done:
        host, pending = jax.device_get(pending), []
        for t in range(n):
          last_train[t] = _reduce_metrics([{k: v[t] for k, v in m.items()} for m in host])
          writers[t].write(step, 'train', last_train[t])
          if last_train[t]['nonfinite_streak'] >= config.max_consecutive_nonfinite and nonfinite_at[t] is None:
            nonfinite_at[t] = step
        progress.report(step, {'loss': float(np.mean([m['loss'] for m in last_train]))})
      if step % config.eval_every == 0 or done:
        t0 = time.time()
        train_time_s = (t0 - t_train - timers.eval_s) / n  # Each trial's share, as its card's times are.
        last_eval = evaluate(group, state.params)
        timers.eval_s += time.time() - t0
        for t in range(n):
          writers[t].write(step, 'eval', last_eval[t], train_time_s=train_time_s)
      if stop.requested(step) and not done:
        raise GroupStopped(stop.reason, step, config.steps)
    timers.end_train_segment(since=t_train)
  finally:
    progress.close()
    stop.restore_handlers()
  return _Progress(state, last_train, last_eval, nonfinite_at)


TIME_NOTE = ('vectorized: this trial trained in one program with the other trials of its group; every time here is '
             "the group's time divided by the number of trials (vectorized.group_size), as are the energy and the "
             'FLOPs; vectorized.shared_wall_s is the whole group\'s wall time')


def _trial_costs(group: Group, state: TrainState, *, timers: accounting.Timers, wall_s: float, energy: dict,
                 peak: tuple[float, str], rss_baseline: int | None, checkpoint_dir: str, inference: dict) -> dict:
  """Trial t's cost section (the keys of accounting.card_costs): its 1/T share of the group's time, FLOPs and
  energy; MFU, throughput per unit of its time share, and memory are the group's."""
  config, n = group.plan.config, len(group.seeds)
  input_shape, num_classes = group.dataset.input_shape, group.dataset.num_classes
  (peak, peak_source), measured = peak, cost.measured_peak_bytes()
  params = cost.param_stats(state.params)
  times = {k: v / n for k, v in dataclasses.asdict(timers).items()} | {'wall_s': wall_s / n}
  timed = timers.train_s > 0
  joules = energy['joules'] / n
  return {
      'restarts': 0,
      'params': {'count': params['count'], 'bytes': params['bytes'], 'by_dtype': params['by_dtype'],
                 'checkpoint_bytes': cost.dir_bytes(checkpoint_dir)},
      'flops': {'train_step': {'analytic': cost.analytic_train_step_flops(
                    config.model, input_shape=input_shape, num_classes=num_classes, batch_size=config.batch_size),
                               'xla': group.train_step_flops / n},
                'eval_example': {'analytic': cost.analytic_flops(config.model, input_shape=input_shape,
                                                                 num_classes=num_classes),
                                 'xla': group.eval_example_flops},
                'total_train': config.steps * group.train_step_flops / n},
      'time': times | {'note': TIME_NOTE},
      'session_time': times,
      'throughput': {'examples_per_s': config.steps * config.batch_size * n / timers.train_s if timed else None},
      'mfu': {'value': cost.mfu(config.steps * group.train_step_flops, timers.train_s, peak) if timed else None,
              'peak_flops_per_s': peak, 'peak_source': peak_source,
              'note': "the vectorized group's XLA train-step FLOPs (all trials) over its train_s (one device)"},
      'memory': {'predicted_bytes': group.predicted_bytes, 'predicted_per': 'device (the whole vectorized group)',
                 'measured_peak_bytes': measured.bytes, 'measured_source': measured.source,
                 'device_peak_bytes': cost.device_peak_bytes(),
                 'measured_rise_bytes': (measured.bytes - rss_baseline if rss_baseline is not None and
                                         measured.source.startswith('process') else None)},
      'energy': energy | {'joules': joules},
      'co2_g': cost.co2_grams(joules, config.accounting.grid_co2_g_per_kwh),
      'scale_out': {'mesh': {'data': 1, 'fsdp': 1, 'tensor': 1}, 'processes': 1,
                    'accumulate_steps': config.accumulate_steps, 'compute_dtype': config.compute_dtype},
      'inference': inference,
  }


def _nonfinite_message(config, step: int) -> str:
  return (f'{config.max_consecutive_nonfinite} consecutive steps with a non-finite loss or gradient by step {step} '
          '(vectorized: the group trained on; the skipped steps left this trial\'s state at its last finite update, '
          'which is what its checkpoint holds)')


def _write_trials(group: Group, configs: Sequence, workdirs: Sequence[str], trial_ids: Sequence[str],
                  progress: _Progress, *, timers: accounting.Timers, t_start: float, meter: cost.EnergyMeter,
                  rss_baseline: int | None) -> list[dict]:
  """Each trial's final checkpoint (the ordinary layout, with its data stream's state) and run card."""
  n, steps = len(configs), group.plan.config.steps
  states = [trial_state(group.plan, progress.state, t, configs[t]) for t in range(n)]
  for state, config in zip(states, configs):
    check_layout(state, group.model, config, group.dataset.input_shape)
  t0 = time.time()
  ledger = lambda: {'restarts': 0, 'joules': meter.read()['joules'] / n,
                    'time': {k: v / n for k, v in dataclasses.asdict(timers).items()} | {
                        'wall_s': (time.time() - t_start) / n}}
  checkpointers = []
  for t, (state, workdir) in enumerate(zip(states, workdirs)):
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'), keep=configs[t].keep_checkpoints)
    ckpt.save(steps, state, group.iterators[group.seeds[t]].get_state(), extra=ledger())
    checkpointers.append(ckpt)
  for ckpt in checkpointers:
    ckpt.close()
  timers.checkpoint_s += time.time() - t0
  test_inputs = group.dataset.test[np.arange(min(100, group.dataset.num_test))]['inputs']
  # One architecture, so one latency: measured on trial 0 (dropout, the only model field that may differ, is off).
  inference = accounting.batch1_latency(group.model, states[0].params, test_inputs) | {
      'note': 'batch-1 latency measured once per vectorized group, on its first trial (same architecture)'}
  peak = cost.peak_flops_per_s()  # Once: on CPU each call samples the host's load for 0.2 s.
  energy, wall_s, cards = meter.read(), time.time() - t_start, []
  for t, (state, config, workdir) in enumerate(zip(states, configs, workdirs)):
    costs = _trial_costs(group, state, timers=timers, wall_s=wall_s, energy=energy, peak=peak,
                         rss_baseline=rss_baseline, checkpoint_dir=checkpointers[t].directory, inference=inference)
    failed_at = progress.nonfinite_at[t]
    card = run_card.build(
        config, state, steps=steps, stop_reason='nonfinite' if failed_at else 'steps', resumed_from_step=0,
        wall_time_s=wall_s / n, costs=costs, message=_nonfinite_message(config, failed_at) if failed_at else None,
        final_metrics=loop.final_metrics(group.dataset.task, progress.last_train[t], progress.last_eval[t]))
    card['vectorized'] = {'group_size': n, 'shared_wall_s': wall_s, 'trial_index': t, 'trials': list(trial_ids),
                          'note': TIME_NOTE}
    run_card.write(workdir, card)
    cards.append(card)
  return cards


def train_group(configs: Sequence, workdirs: Sequence[str], trial_ids: Sequence[str]) -> list[dict]:
  """Trains `configs` as one vectorized program and writes each trial's workdir like an ordinary run's.

  No checkpoints are written during training: each trial gets one at the end (with its card). A group stopped
  by SIGTERM/SIGINT writes no checkpoint or card and starts over when run again.

  Args:
    configs: the trials' validated configs; they may differ only in VECTORIZABLE keys.
    workdirs: each trial's run directory (config.json, metrics.jsonl, TensorBoard events, checkpoints/, run card).
    trial_ids: the trials' names, for messages and the cards' `vectorized.trials`.

  Returns:
    The trials' run cards, in order.

  Raises:
    VectorizeError, ConfigError, WorkdirError, DataUnavailableError: bad input; nothing was written.
    GroupStopped: a signal stopped training; config.json and metrics.jsonl were written, no card.
  """
  t_start = time.time()
  for workdir, config in zip(workdirs, configs):
    workdir_lib.check_writable(workdir)
    workdir_lib.check_config(workdir, config, allow_change=False)
  t0 = time.time()
  group = build_group(configs, trial_ids)
  timers = accounting.Timers(compile_s=time.time() - t0)  # Data loading and init included.
  writers = []
  for workdir, config in zip(workdirs, configs):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')
    writers.append(metrics_lib.MetricWriter(workdir))
  meter = accounting.energy_meter(group.plan.config)
  rss_baseline = cost.reset_peak_rss()
  try:
    progress = _train_steps(group, writers, timers)
  finally:
    for writer in writers:
      writer.close()
  return _write_trials(group, configs, workdirs, trial_ids, progress, timers=timers, t_start=t_start, meter=meter,
                       rss_baseline=rss_baseline)
