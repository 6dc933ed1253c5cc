"""Pure, jit-able per-batch steps: `train_step(state, batch) -> (state, metrics)` and `eval_step(params, batch)`."""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from research.training import losses
from research.training.train_state import TrainState


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule, *,
                    l1: float = 0.0, l2: float = 0.0) -> Callable:
  """Returns a pure train step (jit it with donated state).

  Args:
    model: the classifier; logits [batch, num_classes].
    tx: the optimizer.
    schedule: learning-rate schedule, logged as `lr`.
    l1: L1 penalty coefficient added to the objective.
    l2: L2 penalty coefficient added to the objective.

  Returns:
    train_step(state, batch) -> (new_state, metrics) where batch = {"inputs": [B, ...], "labels": [B]} and metrics
    are scalars: loss (data loss, without the penalty), accuracy, grad_norm, param_norm, lr, skipped (1 when a
    non-finite gradient was skipped) and nonfinite_streak (consecutive skipped steps). `tx` must be wrapped in
    optax.apply_if_finite (optim.make_optimizer does this).
  """

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    # Per-step randomness from (rng, step): identical whether or not the run was restarted.
    dropout_rng = jax.random.fold_in(state.rng, state.step)

    def objective(params):
      logits = model.apply({'params': params}, batch['inputs'], train=True, rngs={'dropout': dropout_rng})
      loss = jnp.mean(losses.cross_entropy(logits, batch['labels']))
      return loss + losses.weight_penalty(params, l1=l1, l2=l2), (loss, logits)

    grads, (loss, logits) = jax.grad(objective, has_aux=True)(state.params)
    # A non-finite loss poisons the gradient, so the optimizer's finiteness guard (optax.apply_if_finite, see
    # optim.make_optimizer) skips the update even in the rare case where the gradient itself stayed finite.
    grads = jax.tree.map(lambda g: jnp.where(jnp.isfinite(loss), g, jnp.nan), grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        'loss': loss,
        'accuracy': jnp.mean(losses.correct(logits, batch['labels'])),
        'grad_norm': optax.global_norm(grads),
        'param_norm': optax.global_norm(params),
        'lr': jnp.asarray(schedule(state.step), jnp.float32),
        # 0/1 per step (its mean over a log interval is the skipped fraction) and the current run of skipped steps.
        'skipped': 1.0 - optax.tree_utils.tree_get(opt_state, 'last_finite').astype(jnp.float32),
        'nonfinite_streak': optax.tree_utils.tree_get(opt_state, 'notfinite_count'),
    }
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def make_eval_step(model: nn.Module) -> Callable:
  """Returns eval_step(params, batch) -> sums {loss_sum, correct_sum, count} over the real (mask=1) rows."""

  def eval_step(params, batch: dict) -> dict:
    logits = model.apply({'params': params}, batch['inputs'], train=False)
    mask = batch['mask']
    return {
        'loss_sum': jnp.sum(losses.cross_entropy(logits, batch['labels']) * mask),
        'correct_sum': jnp.sum(losses.correct(logits, batch['labels']) * mask),
        'count': jnp.sum(mask),
    }

  return eval_step
