"""train_and_evaluate: data -> model -> state on a mesh -> jit steps -> metrics, checkpoints, run card."""

import dataclasses
import json
import os
import signal
import threading
import time
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research import checkpointing, data, metrics as metrics_lib, models, run_card, sharding
from research.training import optim, steps as steps_lib
from research.training.train_state import TrainState, create_train_state


class StopRequest:
  """Turns SIGTERM/SIGINT into a request to stop after the current step (checkpoint, run card, exit 0)."""

  def __init__(self):
    self.signal_name = None
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    del frame
    self.signal_name = signal.Signals(signum).name

  def restore_handlers(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


@dataclasses.dataclass
class Timers:
  """Seconds spent per phase (the run card reports them separately)."""
  compile_s: float = 0.0
  train_s: float = 0.0
  eval_s: float = 0.0
  checkpoint_s: float = 0.0


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
    mesh: the device mesh; the state is replicated over it.
    abstract: return the state's jax.ShapeDtypeStructs (with shardings) instead of arrays: a restore template
      that skips compiling and running the initialisation (seconds on CPU).

  Returns:
    ModelAndState(model, tx, schedule, state).
  """
  model = models.get_model(config.model, num_classes=num_classes)
  tx, schedule = optim.make_optimizer(config.optimizer, total_steps=config.steps)
  init = lambda: create_train_state(model, tx, input_shape=input_shape, seed=config.seed, mesh=mesh)
  if abstract:
    # eval_shape drops the shardings; create_train_state replicates every leaf.
    state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.replicated(mesh)),
                         jax.eval_shape(init))
  else:
    state = init()
  return ModelAndState(model, tx, schedule, state)


def make_jit_eval_step(model: nn.Module, mesh):
  """The eval step jit-compiled with replicated params and the batch split over the mesh's data axis."""
  replicated = sharding.replicated(mesh)
  return jax.jit(steps_lib.make_eval_step(model), in_shardings=(replicated, sharding.batch_sharding(mesh)),
                 out_shardings=replicated)


def evaluate(eval_step, params, dataset: data.Dataset, split: str, *, batch_size: int, mesh) -> dict:
  """Mean loss and accuracy over one full pass of `split` (padded rows masked out)."""
  totals = None
  for batch in data.eval_batches(dataset, split, batch_size=batch_size):
    sums = eval_step(params, sharding.put_batch(batch, mesh))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  return {'loss': float(totals['loss_sum'] / totals['count']),
          'accuracy': float(totals['correct_sum'] / totals['count'])}


def _mean_metrics(pending: list[dict]) -> dict:
  """Means of the steps' scalar metrics since the last log point (one device->host transfer)."""
  stacked = jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs)), *pending)
  return {k: float(v) for k, v in jax.device_get(stacked).items()}


def _resume(ckpt: checkpointing.Checkpointer, state: TrainState, train_iter) -> TrainState:
  """Restores the newest checkpoint into `state` and `train_iter`, if there is one; returns the state."""
  restored = ckpt.restore(state)
  if restored is None:
    return state
  state, data_state = restored
  train_iter.set_state(data_state)
  print(f'Resuming from the checkpoint at step {int(state.step)} in {ckpt.directory}', flush=True)
  return state


def _write_config(workdir: str, config) -> None:
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one.

  Args:
    config: a validated config (research.config.validate).
    workdir: run directory; receives config.json, metrics.jsonl, TensorBoard events, checkpoints/, run_card.json.

  Returns:
    The run card (also written to workdir/run_card.json).
  """
  t_start = time.time()
  mesh = sharding.make_mesh(config.mesh, batch_sizes={'batch_size': config.batch_size,
                                                      'eval_batch_size': config.eval_batch_size})
  dataset = data.load_dataset(config.dataset)
  model, tx, schedule, state = create_model_and_state(config, num_classes=dataset.num_classes,
                                                      input_shape=dataset.input_shape, mesh=mesh)
  train_iter = data.make_train_iterator(dataset, batch_size=config.batch_size, seed=config.seed)

  os.makedirs(workdir, exist_ok=True)  # Only now: a config that fails the checks above writes nothing.
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'), keep=config.keep_checkpoints)
  state = _resume(ckpt, state, train_iter)
  start_step = int(state.step)
  _write_config(workdir, config)
  writer = metrics_lib.MetricWriter(workdir, resume_step=start_step)

  replicated = sharding.replicated(mesh)
  train_step = jax.jit(
      steps_lib.make_train_step(model, tx, schedule, l1=config.optimizer.l1, l2=config.optimizer.l2),
      in_shardings=(replicated, sharding.batch_sharding(mesh)), out_shardings=(replicated, replicated),
      donate_argnums=0)
  eval_step = make_jit_eval_step(model, mesh)
  run_eval = lambda params: evaluate(eval_step, params, dataset, 'test', batch_size=config.eval_batch_size,
                                     mesh=mesh)

  timers, stop, progress = Timers(), StopRequest(), metrics_lib.Progress(
      total=config.steps, initial=start_step, enabled=config.progress)
  pending, last_train, last_eval, stop_reason = [], {}, {}, 'steps'
  step = start_step
  try:
    t_train = time.time()
    while step < config.steps:
      batch = sharding.put_batch(next(train_iter), mesh)
      if step == start_step:  # The first call compiles; time it on its own.
        t0 = time.time()
        state, step_metrics = train_step(state, batch)
        jax.block_until_ready(state)
        timers.compile_s = time.time() - t0
      else:
        state, step_metrics = train_step(state, batch)
      step += 1
      pending.append(step_metrics)
      progress.update(step)
      # One reading of the stop flag per step: a signal arriving later in this iteration (say, during the eval)
      # waits for the next step rather than breaking out of this one without its checkpoint.
      stopping = stop.signal_name is not None
      done = step == config.steps or stopping
      if step % config.log_every == 0 or done:
        last_train = _mean_metrics(pending)
        pending = []
        writer.write(step, 'train', last_train)
        progress.report(step, {'loss': last_train['loss'], **{f'test_{k}': v for k, v in last_eval.items()}})
      if step % config.eval_every == 0 or done:
        t0 = time.time()
        last_eval = run_eval(state.params)
        timers.eval_s += time.time() - t0
        writer.write(step, 'eval', last_eval)
      if step % config.checkpoint_every == 0 or done:
        t0 = time.time()
        ckpt.save(step, state, train_iter.get_state())
        timers.checkpoint_s += time.time() - t0
      if stopping:
        stop_reason = 'preempted'
        print(f'\nReceived {stop.signal_name}: stopped at step {step} with a checkpoint.', flush=True)
        break
    t0 = time.time()
    ckpt.close()
    timers.checkpoint_s += time.time() - t0
    timers.train_s = time.time() - t_train - timers.eval_s - timers.checkpoint_s - timers.compile_s
  finally:
    progress.close()
    writer.close()
    stop.restore_handlers()

  if not last_eval:  # Resumed at the final step: nothing left to train, evaluate the restored state.
    last_eval = run_eval(state.params)
  card = run_card.build(
      config, state, steps=step, stop_reason=stop_reason, resumed_from_step=start_step,
      wall_time_s=time.time() - t_start, time=dataclasses.asdict(timers),
      final_metrics={'train_loss': last_train.get('loss'), 'test_loss': last_eval['loss'],
                     'test_accuracy': last_eval['accuracy']})
  run_card.write(workdir, card)
  return card
