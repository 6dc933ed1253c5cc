"""Pure, jit-able per-batch steps: `train_step(state, batch) -> (state, metrics)` and `eval_step(params, batch)`."""

from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from research.training import losses
from research.training.train_state import TrainState


COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def cast_floats(tree, dtype):
  """Floating leaves of `tree` cast to `dtype` (the gradient flows back through the cast in the params' dtype)."""
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def microbatched(batch: dict, k: int) -> dict:
  """[B, ...] -> [k, B / k, ...], microbatch i = rows i, i + k, i + 2k, ...

  Strided rather than contiguous: a device holding a contiguous block of rows of a batch split over the mesh holds
  an equal part of every microbatch (when B / (k x shards) is whole), so no microbatch waits on a few devices.
  """
  return jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1), batch)


def forward_params(params, qat_bits: int):
  """The params a forward pass sees: fake-quantized weights (straight-through gradient) under QAT, else as is."""
  if not qat_bits:
    return params
  from research.compression import quantize  # pylint: disable=g-import-not-at-top  (only QAT runs need it)
  return quantize.fake_quant_params(params, bits=qat_bits)


class Teacher(NamedTuple):
  """Distillation: logits(inputs) -> the teacher's logits (its params closed over), and the loss's settings."""
  logits: Callable
  temperature: float
  weight: float  # alpha: objective = alpha * T^2 KL + (1 - alpha) * cross-entropy.


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule, *,
                    l1: float = 0.0, l2: float = 0.0, compute_dtype: str = 'float32',
                    accumulate_steps: int = 1, qat_bits: int = 0, teacher: Teacher | None = None) -> Callable:
  """Returns a pure train step (jit it with donated state).

  Args:
    model: a classifier (logits [batch, num_classes]) or a language model (logits [batch, time, vocab]; labels
      [batch, time] next tokens, the loss and accuracy averaged over every token).
    tx: the optimizer.
    schedule: learning-rate schedule, logged as `lr`.
    l1: L1 penalty coefficient added to the objective.
    l2: L2 penalty coefficient added to the objective.
    compute_dtype: a key of COMPUTE_DTYPES: params and inputs are cast to it for the forward and backward passes
      (mixed precision); the loss, the gradients, the params and the optimizer state stay float32.
    accumulate_steps: k > 1 splits the batch into k microbatches (`microbatched`) run one after another in a
      `lax.scan`, their gradients averaged: the same update as the whole batch at 1/k of the activation memory.
      Dropout draws fold_in(step rng, i) in microbatch i.
    qat_bits: > 0: quantization-aware training, the forward pass sees `forward_params(params, qat_bits)`.
    teacher: distillation from the teacher's logits on the same batch; the logged loss stays the hard
      cross-entropy (comparable across runs), the objective adds the soft term.

  Returns:
    train_step(state, batch) -> (new_state, metrics) where batch = {"inputs": [B, ...], "labels": [B] or [B, T]}
    and metrics
    are scalars: loss (data loss, without the penalty), accuracy, grad_norm, param_norm, lr, skipped (1 when a
    non-finite gradient was skipped) and nonfinite_streak (consecutive skipped steps). `tx` must be wrapped in
    optax.apply_if_finite (optim.make_optimizer does this).
  """
  dtype = COMPUTE_DTYPES[compute_dtype]

  def grads_of(params, batch: dict, rng: jax.Array):
    """Gradient of the mean objective over `batch`, its mean data loss and its number of correct predictions."""

    def objective(params):
      logits = model.apply({'params': cast_floats(forward_params(params, qat_bits), dtype)},
                           cast_floats(batch['inputs'], dtype), train=True, rngs={'dropout': rng}).astype(jnp.float32)
      loss = jnp.mean(losses.cross_entropy(logits, batch['labels']))
      correct = jnp.sum(losses.correct(logits, batch['labels']))
      total = loss
      if teacher is not None:
        soft = jnp.mean(losses.distillation_kl(logits, teacher.logits(batch['inputs']), teacher.temperature))
        total = teacher.weight * soft + (1.0 - teacher.weight) * loss
      return total + losses.weight_penalty(params, l1=l1, l2=l2), (loss, correct)

    grads, (loss, correct) = jax.grad(objective, has_aux=True)(params)
    return grads, loss, correct

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    # Per-step randomness from (rng, step): identical whether or not the run was restarted.
    dropout_rng = jax.random.fold_in(state.rng, state.step)
    if accumulate_steps == 1:
      grads, loss, correct = grads_of(state.params, batch, dropout_rng)
    else:
      def accumulate(totals, microbatch):
        i, part = microbatch
        grads, loss, correct = grads_of(state.params, part, jax.random.fold_in(dropout_rng, i))
        return jax.tree.map(jnp.add, totals, (grads, loss, correct)), None

      zeros = (jax.tree.map(jnp.zeros_like, state.params), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
      parts = (jnp.arange(accumulate_steps), microbatched(batch, accumulate_steps))
      (grads, loss, correct), _ = jax.lax.scan(accumulate, zeros, parts)
      grads, loss = jax.tree.map(lambda g: g / accumulate_steps, grads), loss / accumulate_steps
    # A non-finite loss poisons the gradient, so the optimizer's finiteness guard (optax.apply_if_finite, see
    # optim.make_optimizer) skips the update even in the rare case where the gradient itself stayed finite.
    grads = jax.tree.map(lambda g: jnp.where(jnp.isfinite(loss), g, jnp.nan), grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        'loss': loss,
        'accuracy': correct / batch['labels'].size,
        'grad_norm': optax.global_norm(grads),
        'param_norm': optax.global_norm(params),
        'lr': jnp.asarray(schedule(state.step), jnp.float32),
        # 0/1 per step (its mean over a log interval is the skipped fraction) and the current run of skipped steps.
        'skipped': 1.0 - optax.tree_utils.tree_get(opt_state, 'last_finite').astype(jnp.float32),
        'nonfinite_streak': optax.tree_utils.tree_get(opt_state, 'notfinite_count'),
    }
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def make_eval_step(model: nn.Module, *, compute_dtype: str = 'float32', qat_bits: int = 0) -> Callable:
  """Returns eval_step(params, batch) -> sums {loss_sum, correct_sum, count} over the real (mask=1) rows: per
  example for a classifier, per token for a language model (labels [B, T]). qat_bits > 0 evaluates the
  fake-quantized weights, which equal the int8 model's (research/compression/quantize.py)."""
  dtype = COMPUTE_DTYPES[compute_dtype]

  def eval_step(params, batch: dict) -> dict:
    logits = model.apply({'params': cast_floats(forward_params(params, qat_bits), dtype)},
                         cast_floats(batch['inputs'], dtype), train=False).astype(jnp.float32)
    labels = batch['labels']
    mask = jnp.broadcast_to(batch['mask'].reshape(batch['mask'].shape + (1,) * (labels.ndim - 1)), labels.shape)
    return {
        'loss_sum': jnp.sum(losses.cross_entropy(logits, labels) * mask),
        'correct_sum': jnp.sum(losses.correct(logits, labels) * mask),
        'count': jnp.sum(mask),
    }

  return eval_step
