"""train_and_evaluate: data -> model -> state on a mesh -> jit steps -> metrics, checkpoints, run card."""

import dataclasses
import functools
import os
import time
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research import checkpointing, cost, data, metrics as metrics_lib, models, run_card, sharding
from research import workdir as workdir_lib
from research.compression import pruning, sources
from research.config import ConfigError
from research.training import accounting, losses, nonfinite, optim, steps as steps_lib
from research.training.preemption import StopRequest
from research.training.train_state import TrainState, abstract_train_state, create_train_state, shardings_of


class ModelAndState(NamedTuple):
  """What a config builds before any data is read: the model, its optimizer and the initial train state."""
  model: nn.Module
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  state: TrainState


def create_model_and_state(config, *, num_classes: int, input_shape: tuple[int, ...], mesh,
                           abstract: bool = False) -> ModelAndState:
  """Builds the model, optimizer and initial state of `config` on `mesh`.

  Training starts from this state; inference restores a checkpoint into its abstract twin, so both see one tree.

  Args:
    config: a validated config (model, optimizer, steps and seed are read).
    num_classes: number of output logits.
    input_shape: one example's shape, e.g. (40,).
    mesh: the device mesh; each leaf of the state is sharded by its logical axis names and `config.mesh.rules`.
    abstract: return the state's jax.ShapeDtypeStructs (with shardings) instead of arrays: a restore template
      that skips compiling and running the initialisation (seconds on CPU).

  Returns:
    ModelAndState(model, tx, schedule, state).
  """
  model = models.get_model(config.model, num_classes=num_classes)
  tx, schedule = optim.make_optimizer(config.optimizer, total_steps=config.steps)
  prune = pruning.from_config(config.compression)
  if prune is not None:
    tx = optax.chain(tx, prune)  # Last: it rewrites the final update so that pruned weights stay zero.
  make = abstract_train_state if abstract else functools.partial(create_train_state, seed=config.seed)
  state = make(model, tx, input_shape=input_shape, mesh=mesh, rules=config.mesh.rules)
  return ModelAndState(model, tx, schedule, state)


def make_jit_eval_step(model: nn.Module, mesh, params, *, compute_dtype: str = 'float32', qat_bits: int = 0):
  """The eval step jit-compiled with the params' shardings (of `params`: arrays or ShapeDtypeStructs) and the
  batch split over data x fsdp."""
  return jax.jit(steps_lib.make_eval_step(model, compute_dtype=compute_dtype, qat_bits=qat_bits),
                 in_shardings=(shardings_of(params), sharding.batch_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh))


def evaluate(eval_step, params, dataset: data.Dataset, split: str, *, batch_size: int, mesh,
             max_examples: int = 0) -> dict:
  """Mean loss and accuracy over one full pass of `split` (padded rows masked out); per token for a language
  model, with its perplexity and bits per byte. `max_examples` > 0: a fixed evenly spaced subset of the split."""
  totals = None
  for batch in data.eval_batches(dataset, split, batch_size=batch_size, max_examples=max_examples):
    sums = eval_step(params, sharding.put_global_batch(batch, mesh))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  out = {'loss': float(totals['loss_sum'] / totals['count']),
         'accuracy': float(totals['correct_sum'] / totals['count'])}
  if dataset.task == 'lm':
    out |= losses.language_model_metrics(out['loss'])
  return out


def final_metrics(task: str, last_train: dict, last_eval: dict) -> dict:
  """The card's final_metrics: train_loss, test_loss, test_accuracy for a classifier; train_loss, eval_loss
  (nats/token), eval_bits_per_byte, eval_perplexity, eval_accuracy (next token) for a language model."""
  if task == 'lm':
    return {'train_loss': last_train.get('loss'), **{f'eval_{k}': v for k, v in last_eval.items()}}
  return {'train_loss': last_train.get('loss'), 'test_loss': last_eval['loss'], 'test_accuracy': last_eval['accuracy']}


# Eval metrics the progress line shows (as test_* for classifiers, eval_* for language models).
_SHOWN = ('loss', 'accuracy', 'bits_per_byte')
# Per-step metrics reduced over a log interval by sum or max instead of the mean.
_SUMMED, _MAXED = ('skipped',), ('nonfinite_streak',)


def _reduce_metrics(pending: list[dict]) -> dict:
  """The steps' scalar metrics since the last log point (one device->host transfer): means, except the number
  of skipped steps (sum) and the longest run of them (max)."""
  stacked = jax.device_get(jax.tree.map(lambda *xs: jnp.stack(xs), *pending))
  reduce = lambda k, v: np.sum(v) if k in _SUMMED else np.max(v) if k in _MAXED else np.mean(v)
  return {k: float(reduce(k, v)) for k, v in stacked.items()}


def make_jit_train_step(config, model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule, mesh,
                        state: TrainState, *, teacher: steps_lib.Teacher | None = None):
  """The train step of `config` jit-compiled with explicit shardings: the state's own (`state`: arrays or
  ShapeDtypeStructs) in and out, donated; the batch split over data x fsdp; metrics replicated. `teacher`: the
  distillation teacher already loaded (else it is loaded from config.compression.teacher, if set)."""
  teacher = teacher or sources.teacher(config.compression)
  state_shardings = shardings_of(state)
  step = steps_lib.make_train_step(model, tx, schedule, l1=config.optimizer.l1, l2=config.optimizer.l2,
                                   compute_dtype=config.compute_dtype, accumulate_steps=config.accumulate_steps,
                                   qat_bits=config.compression.qat_bits, teacher=teacher)
  return jax.jit(step, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)


def check_batches_fit(config, dataset: data.Dataset) -> None:
  """A batch larger than its split would repeat examples within a batch (train) or be mostly padding (eval)."""
  if config.batch_size > dataset.num_train:
    raise ConfigError('batch_size', config.batch_size,
                      f'at most the {dataset.num_train} training examples of {dataset.name}')
  if config.eval_batch_size > dataset.num_test:
    raise ConfigError('eval_batch_size', config.eval_batch_size,
                      f'at most the {dataset.num_test} test examples of {dataset.name}')


def _resume(ckpt: checkpointing.Checkpointer, state: TrainState, train_iter, *,
            changes: list[workdir_lib.Change]) -> tuple[TrainState, accounting.Ledger]:
  """Restores the newest usable checkpoint into `state` and `train_iter`, if there is one; returns the state and
  the ledger of the sessions before.

  Raises:
    workdir_lib.WorkdirError: there are checkpoints but none restores into `state` (all damaged, or accepted config
      `changes` gave the state another structure); nothing is written.
  """
  try:
    restored = ckpt.restore(state)
  except checkpointing.CheckpointError as e:
    hint = (f'the accepted config changes ({", ".join(c.key for c in changes)}) may have changed the saved state\'s '
            'structure; ' if changes else '')
    raise workdir_lib.WorkdirError(f'{" ".join(str(e).split())[:400]}\n{hint}start a new --workdir') from e
  if restored is None:
    return state, accounting.Ledger()
  train_iter.set_state(restored.data_state)
  print(f'Resuming from the checkpoint at step {restored.step} in {ckpt.directory}', flush=True)
  return restored.state, accounting.Ledger.from_extra(restored.extra)


def _train_iterator(config, dataset: data.Dataset):
  """This process's training stream: shard `process_index` of the train split, batch_size / processes rows."""
  return data.make_train_iterator(dataset, batch_size=config.batch_size // jax.process_count(), seed=config.seed,
                                  shard_index=jax.process_index(), shard_count=jax.process_count(),
                                  order=config.dataset.order)


def _write_config(workdir: str, config) -> None:
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')


@dataclasses.dataclass
class _Session:
  """The pieces the step loop drives, built by train_and_evaluate."""
  config: Any
  mesh: Any
  train_step: Callable
  run_eval: Callable  # params -> {'loss', 'accuracy'} on the test split.
  train_iter: Any
  ckpt: checkpointing.Checkpointer
  writer: metrics_lib.MetricWriter
  tracker: accounting.Tracker
  timers: accounting.Timers  # compile_s is already set; the loop adds the rest.
  eval_prefix: str = 'test'  # How the progress line names eval metrics ('eval' for language models).


class _Outcome(NamedTuple):
  state: TrainState
  step: int
  stop_reason: str  # 'steps' | 'preempted' | 'nonfinite' | 'budget.max_seconds' | ...
  last_train: dict
  last_eval: dict
  message: str | None  # Why the run stopped early, for the user.
  steps_run: int  # Train steps executed this session (before any rollback to an earlier checkpoint).


def _train_steps(session: _Session, state: TrainState, start_step: int) -> _Outcome:
  """Steps from `start_step` to `config.steps`, logging, evaluating and checkpointing on the way.

  Stops early, after a checkpoint, on SIGTERM/SIGINT or at a budget; or after `max_consecutive_nonfinite` skipped
  steps in a row (with the last good checkpoint).
  """
  config, ckpt, writer, tracker, timers = (session.config, session.ckpt, session.writer, session.tracker,
                                           session.timers)
  stop = StopRequest()
  progress = metrics_lib.Progress(total=config.steps, initial=start_step,
                                  enabled=config.progress and jax.process_index() == 0)
  pending, last_train, last_eval, stop_reason, message, steps_run = [], {}, {}, 'steps', None, None
  step, t_train, in_flight = start_step, time.time(), None
  try:
    while step < config.steps:
      t0 = time.perf_counter()
      batch = sharding.put_batch(next(session.train_iter), session.mesh)
      timers.add_fetch(time.perf_counter() - t0, in_flight=in_flight)
      state, step_metrics = session.train_step(state, batch)
      in_flight = step_metrics['loss']
      step += 1
      pending.append(step_metrics)
      progress.update(step)
      # One reading of the stop flag per step: a signal arriving later in this iteration (say, during the eval)
      # waits for the next step rather than breaking out of this one without its checkpoint.
      stopping = stop.requested(step)
      budget = tracker.budget_reached(step, check_energy=step % config.log_every == 0)
      done = step == config.steps or stopping or budget is not None
      if step % config.log_every == 0 or done:
        last_train, pending = _reduce_metrics(pending), []
        writer.write(step, 'train', last_train)
        progress.report(step, {'loss': last_train['loss'], **{f'{session.eval_prefix}_{k}': v
                                                              for k, v in last_eval.items() if k in _SHOWN}})
        streak = int(last_train['nonfinite_streak'])
        if streak >= config.max_consecutive_nonfinite:
          steps_run = step - start_step
          state, restored_step = nonfinite.restore_last_good(ckpt, state, step, streak=streak)
          stop_reason, message = 'nonfinite', nonfinite.message(config, step, restored_step, streak)
          step, last_eval = restored_step or step, {}
          break
      if step % config.eval_every == 0 or done:
        t0 = time.time()
        train_time_s = tracker.ledger.time.get('train_s', 0.0) + t0 - t_train - timers.eval_s - timers.checkpoint_s
        last_eval = session.run_eval(state.params)
        timers.eval_s += time.time() - t0
        writer.write(step, 'eval', last_eval, train_time_s=train_time_s)
      if (step % config.checkpoint_every == 0 or done) and nonfinite.finite_now(step_metrics, step):
        t0 = time.time()
        timers.end_train_segment(since=t_train)
        ckpt.save(step, state, session.train_iter.get_state(), extra=tracker.extra(timers))
        timers.checkpoint_s += time.time() - t0
      if stopping:
        stop_reason = 'preempted'
        print(f'\nReceived {stop.reason}: stopped at step {step} with a checkpoint.', flush=True)
        break
      if budget is not None:
        stop_reason = budget
        print(f'\nReached {budget}={config.budget[budget.split(".")[1]]:g}: stopped at step {step} with a '
              'checkpoint.', flush=True)
        break
    t0 = time.time()
    ckpt.close()
    timers.checkpoint_s += time.time() - t0
    timers.end_train_segment(since=t_train)
  finally:
    progress.close()
    writer.close()
    stop.restore_handlers()
  steps_run = step - start_step if steps_run is None else steps_run
  return _Outcome(state, step, stop_reason, last_train, last_eval, message, steps_run)


def _build(config) -> tuple[Any, data.Dataset, ModelAndState]:
  """The mesh, the loaded dataset (checked against the batch sizes) and the model with its initial state."""
  if config.compression.int8_matmul:
    raise ConfigError('compression.int8_matmul', True, 'False when training (integer matmuls are for evaluating '
                      'an int8 model written by experiments.compress)')
  mesh = sharding.make_mesh(config.mesh, batch_sizes={'batch_size': config.batch_size,
                                                      'eval_batch_size': config.eval_batch_size})
  microbatch = config.batch_size // config.accumulate_steps
  shards = mesh.shape['data'] * mesh.shape['fsdp']
  if microbatch % shards:
    raise ConfigError('accumulate_steps', config.accumulate_steps,
                      f'a divisor of batch_size ({config.batch_size}) that leaves microbatches divisible by the '
                      f'{shards} batch shards (data x fsdp)')
  if config.batch_size % jax.process_count():
    raise ConfigError('batch_size', config.batch_size, f'a multiple of the {jax.process_count()} processes')
  dataset = data.load_dataset(config.dataset)
  check_batches_fit(config, dataset)
  return mesh, dataset, create_model_and_state(config, num_classes=dataset.num_classes,
                                               input_shape=dataset.input_shape, mesh=mesh)


def train_and_evaluate(config, workdir: str, *, allow_config_change: bool = False) -> dict:
  """Trains `config` in `workdir`, resuming from its latest usable checkpoint if there is one.

  Every check that can fail on the user's input (workdir writable, same config as a run already in it, batch
  sizes vs data and devices) runs before the workdir is created or changed.

  Args:
    config: a validated config (research.config.validate).
    workdir: run directory; receives config.json, metrics.jsonl, TensorBoard events, checkpoints/, run_card.json.
    allow_config_change: resume even if keys outside workdir.SAFE_TO_CHANGE differ from the saved config.

  Returns:
    The run card (also written to workdir/run_card.json).

  Raises:
    ConfigError, workdir.WorkdirError, data.DataUnavailableError: bad input; nothing was written.
  """
  t_start = time.time()
  workdir_lib.check_writable(workdir)
  changes = workdir_lib.check_config(workdir, config, allow_change=allow_config_change)
  mesh, dataset, (model, tx, schedule, state) = _build(config)
  train_iter = _train_iterator(config, dataset)
  # Compression sources are read now, so that a bad teacher or init_from fails before anything is written.
  teacher = sources.teacher(config.compression)
  init_params = (sources.init_params(config.compression.init_from, state.params)
                 if config.compression.init_from else None)

  os.makedirs(workdir, exist_ok=True)  # Only now: bad input fails the checks above and writes nothing.
  if changes:
    print(f'Config changes on resume: {workdir_lib.describe(changes)}', flush=True)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'), keep=config.keep_checkpoints)
  state, ledger = _resume(ckpt, state, train_iter, changes=changes)
  start_step = int(state.step)
  if start_step == 0 and init_params is not None:  # Fine-tuning; a resumed run has its own params.
    state = state.replace(params=init_params)
  lead = jax.process_index() == 0  # Only process 0 writes the config, logs and card; every process checkpoints.
  if lead:
    _write_config(workdir, config)
  t0 = time.time()
  train_step, eval_step, step_figures = _compile_steps(config, model, tx, schedule, state, dataset, mesh,
                                                       teacher=teacher)
  timers = accounting.Timers(compile_s=time.time() - t0)
  run_eval = lambda params: evaluate(eval_step, params, dataset, 'test', batch_size=config.eval_batch_size, mesh=mesh,
                                     max_examples=config.eval_examples)
  session = _Session(
      config=config, mesh=mesh, train_iter=train_iter, ckpt=ckpt, train_step=train_step, run_eval=run_eval,
      writer=metrics_lib.MetricWriter(workdir, resume_step=start_step) if lead else metrics_lib.NullWriter(),
      timers=timers, eval_prefix='eval' if dataset.task == 'lm' else 'test',
      tracker=accounting.Tracker(config, ledger, step_figures, t_start=t_start))
  test_inputs = dataset.test[np.arange(min(100, dataset.num_test))]['inputs']
  batch1 = accounting.Batch1Forward(model, state.params, test_inputs[:1])  # Compiles while the steps run.
  outcome = _train_steps(session, state, start_step)

  last_eval = outcome.last_eval or run_eval(outcome.state.params)  # Resumed at the end, or rolled back.
  costs = accounting.card_costs(
      session.tracker, timers, state=outcome.state, steps=outcome.step, session_steps=outcome.steps_run,
      checkpoint_dir=ckpt.directory)
  costs['scale_out'] = accounting.scale_out(config, mesh, outcome.state, session.tracker.step,
                                            param_bytes=costs['params']['bytes'])
  costs['inference'] = batch1.latency(outcome.state.params, test_inputs)
  eval_batch = sharding.put_global_batch(next(data.eval_batches(dataset, 'test', batch_size=config.eval_batch_size)),
                                         mesh)
  costs['inference'].update(accounting.eval_batch_latency(eval_step, outcome.state.params, eval_batch,
                                                          batch_size=config.eval_batch_size,
                                                          seconds=0.005 * timers.train_s))
  card = run_card.build(
      config, outcome.state, steps=outcome.step, stop_reason=outcome.stop_reason, resumed_from_step=start_step,
      wall_time_s=time.time() - t_start, costs=costs, checkpoints_skipped=ckpt.skipped, message=outcome.message,
      final_metrics=final_metrics(dataset.task, outcome.last_train, last_eval))
  if lead:
    run_card.write(workdir, card)
  return card


def _compile_steps(config, model, tx, schedule, state: TrainState, dataset: data.Dataset, mesh, *,
                   teacher: steps_lib.Teacher | None = None):
  """Compiles the train and eval steps ahead of time and reads their FLOPs and memory from XLA.

  Returns:
    (train_step, eval_step, accounting.StepCost): the compiled executables, called like the jitted functions.
  """
  train_step = make_jit_train_step(config, model, tx, schedule, mesh, state, teacher=teacher)
  example = dataset.train[np.arange(config.batch_size)]
  batch_shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding.batch_sharding(mesh))
                  for k, v in example.items()}
  eval_batch = next(iter(data.eval_batches(dataset, 'test', batch_size=config.eval_batch_size)))
  eval_step = make_jit_eval_step(model, mesh, state.params, compute_dtype=config.compute_dtype,
                                 qat_bits=config.compression.qat_bits)
  costs = cost.step_costs(train_step, state, batch_shapes, eval_step=eval_step, params=state.params,
                          eval_batch=sharding.put_global_batch(eval_batch, mesh))
  figures = accounting.step_cost(config, costs, input_shape=dataset.input_shape, num_classes=dataset.num_classes)
  return costs.train_step, costs.eval_step, figures


def dry_run(config, *, timed_steps: int = 20) -> dict:
  """Compiles the steps and times a few of them on real batches, writing nothing: what the run would cost.

  Args:
    config: a validated config.
    timed_steps: train steps timed (after two warm-up steps) to project the time and energy of `config.steps`.

  Returns:
    {'params', 'flops', 'predicted_bytes', 'compile_s', 'step_s', 'estimate': {train_flops, seconds, joules, co2_g},
     'energy': {source, assumptions}, 'mesh': {axis: size}}.
  """
  mesh, dataset, (model, tx, schedule, state) = _build(config)
  params = cost.param_stats(state.params)
  t0 = time.time()
  train_step, _, figures = _compile_steps(config, model, tx, schedule, state, dataset, mesh)
  compile_s = time.time() - t0
  train_iter = _train_iterator(config, dataset)
  meter = accounting.energy_meter(config)
  for i in range(2 + timed_steps):
    if i == 2:  # After the warm-up steps.
      jax.block_until_ready(state)
      t0, j0 = time.perf_counter(), meter.read()['joules']
    state, _ = train_step(state, sharding.put_batch(next(train_iter), mesh))
  jax.block_until_ready(state)
  step_s = (time.perf_counter() - t0) / timed_steps
  energy = meter.read()
  estimate = accounting.dry_run_estimate(
      figures, seconds_per_step=step_s, joules_per_step=(energy['joules'] - j0) / timed_steps, steps=config.steps,
      grid_co2_g_per_kwh=config.accounting.grid_co2_g_per_kwh)
  return {'params': params, 'flops': figures._asdict(), 'predicted_bytes': figures.predicted_bytes,
          'compile_s': compile_s, 'step_s': step_s, 'timed_steps': timed_steps, 'estimate': estimate,
          'mesh': {axis: int(size) for axis, size in mesh.shape.items()},
          'energy': {'source': energy['source'], 'assumptions': energy['assumptions']}}
