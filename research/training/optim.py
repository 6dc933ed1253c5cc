"""Optimizer factory: the `optimizer` config group -> an optax GradientTransformation and its schedule."""

from typing import Callable

import jax
import optax

OPTIMIZERS = ('sgd', 'momentum', 'nesterov', 'adagrad', 'rmsprop', 'adam', 'adamw')
SCHEDULES = ('constant', 'warmup_cosine', 'step')
_NEVER_GIVE_UP = 2**31 - 2  # apply_if_finite applies a non-finite update after this many; the loop stops long before.


def make_schedule(config, *, total_steps: int) -> optax.Schedule:
  """Builds the learning-rate schedule.

  Args:
    config: the `optimizer` config group.
    total_steps: training length, the horizon of warmup_cosine.

  Returns:
    step -> learning rate.
  """
  lr = config.learning_rate
  if config.schedule == 'constant':
    return optax.constant_schedule(lr)
  if config.schedule == 'warmup_cosine':
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=config.warmup_steps,
        decay_steps=max(total_steps, config.warmup_steps + 1), end_value=config.min_learning_rate)
  if config.schedule == 'step':
    return optax.exponential_decay(
        lr, transition_steps=config.decay_every, decay_rate=config.decay_factor, staircase=True)
  raise ValueError(f'optimizer.schedule={config.schedule!r} is not one of {SCHEDULES}')


def _base_optimizer(config, schedule: Callable, weight_decay) -> optax.GradientTransformation:
  name = config.name
  if name == 'sgd':
    return optax.sgd(schedule)
  if name in ('momentum', 'nesterov'):
    return optax.sgd(schedule, momentum=config.momentum, nesterov=name == 'nesterov')
  if name == 'adagrad':
    return optax.adagrad(schedule, eps=config.eps)
  if name == 'rmsprop':
    return optax.rmsprop(schedule, decay=config.decay, eps=config.eps, momentum=config.momentum or None)
  if name == 'adam':
    return optax.adam(schedule, b1=config.b1, b2=config.b2, eps=config.eps)
  if name == 'adamw':
    # Decoupled decay of weight matrices and kernels only (ndim >= 2), not of biases and norm gains: GPT-2's and
    # nanoGPT's practice, and the set losses.weight_penalty penalises.
    return optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=weight_decay,
                       mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params))
  raise ValueError(f'optimizer.name={name!r} is not one of {OPTIMIZERS}')


def make_optimizer(config, *, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optimizer named by `config.name` with clipping and weight decay.

  Order: clip the global gradient norm, add `weight_decay * w` to the gradient (PyTorch's `weight_decay` for
  SGD/AdaGrad/RMSprop/Adam; AdamW instead decays decoupled from the gradient, Loshchilov & Hutter 2019), then the
  optimizer's update. The whole chain is wrapped in `optax.apply_if_finite`: a gradient with a NaN or Inf is
  skipped (zero update, optimizer state unchanged) and counted in the state's `notfinite_count` (consecutive) and
  `total_notfinite`; the training loop stops after `max_consecutive_nonfinite` in a row, so the wrapper's own
  give-up threshold is never reached.

  Args:
    config: the `optimizer` config group.
    total_steps: training length (for schedules).

  Returns:
    (optimizer, schedule); the schedule is returned so the step can log the learning rate.
  """
  schedule = make_schedule(config, total_steps=total_steps)
  return make_chain(config, schedule=schedule), schedule


def make_chain(config, *, schedule: optax.Schedule, weight_decay=None,
               add_decay: bool | None = None) -> optax.GradientTransformation:
  """make_optimizer's chain with the schedule given; research/vectorized.py passes per-trial values.

  Args:
    config: the `optimizer` config group.
    schedule: step -> learning rate.
    weight_decay: the decay coefficient (a traced per-trial value allowed); None: config.weight_decay.
    add_decay: whether the chain has the add_decayed_weights step (never for adamw, whose decay is its own);
      None: when config.weight_decay > 0. A vectorized group forces it so that every trial's state has one
      structure (a zero coefficient adds exactly 0).
  """
  weight_decay = config.weight_decay if weight_decay is None else weight_decay
  add_decay = config.weight_decay > 0 if add_decay is None else add_decay
  parts = []
  if config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if add_decay and config.name != 'adamw':
    parts.append(optax.add_decayed_weights(weight_decay))
  parts.append(_base_optimizer(config, schedule, weight_decay))
  return optax.apply_if_finite(optax.chain(*parts), max_consecutive_errors=_NEVER_GIVE_UP)
