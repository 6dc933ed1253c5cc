"""Magnitude pruning: one shot after training, or gradual during training as an optax transformation.

    tx = optax.chain(optimizer, pruning.magnitude_pruning(0.9, start=0, end=600, every=50))
    pruned = pruning.prune(params, 0.9)  # One shot, no training.

Weights are the leaves with ndim >= 2 (kernels, embeddings); biases and norm gains are never pruned. A mask keeps
the weights whose magnitude is at least the threshold that zeroes the target fraction, over all weights at once
(`scope='global'`: layers end up with different sparsities) or within each weight (`'layer'`).

Gradual pruning follows Zhu & Gupta 2017 ("To prune, or not to prune"): the sparsity ramps from 0 at `start` to the
target at `end` as s_t = s (1 - (1 - (t - start) / (end - start))^3), the mask recomputed every `every` steps, and
pruned weights stay exactly zero (the transformation rewrites the update so that params + update is masked).

Why by hand: jaxpruner (Google's JAX pruning library, which has this schedule) is not on PyPI for our JAX version
(`pip download jaxpruner`: no matching distribution, 2026-12); the transformation below is its core, ~60 lines.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

SCOPES = ('global', 'layer')


def is_weight(x) -> bool:
  """Leaves that are pruned (and quantized): matrices and kernels, not biases or norm gains."""
  return x.ndim >= 2


def _check(sparsity: float, scope: str) -> None:
  if not 0.0 <= sparsity < 1.0:
    raise ValueError(f'sparsity ({sparsity}) must be a fraction in [0, 1)')
  if scope not in SCOPES:
    raise ValueError(f'scope ({scope!r}) must be one of {SCOPES}')


def _threshold(magnitudes: jax.Array, sparsity) -> jax.Array:
  """The smallest magnitude kept: the floor(sparsity * n)-th smallest (0-based), so that many fall below it."""
  k = jnp.floor(sparsity * magnitudes.size).astype(jnp.int32)
  return jnp.sort(magnitudes)[jnp.minimum(k, magnitudes.size - 1)]


def masks(params, sparsity, *, scope: str = 'global'):
  """Boolean keep-masks: a weight's own shape for weights, a scalar True for other leaves.

  Args:
    params: a params pytree.
    sparsity: fraction of weights to zero (a float or a traced scalar).
    scope: 'global' (one threshold over all weights) or 'layer' (the fraction within each weight).

  Returns:
    A pytree like `params` of bool arrays. Ties at the threshold are kept, so slightly fewer than the fraction
    may be zeroed when magnitudes repeat (e.g. weights that are already zero are counted among the pruned).
  """
  leaves, treedef = jax.tree.flatten(params)
  weights = [x for x in leaves if is_weight(x)]
  if scope == 'global' and weights:
    t = _threshold(jnp.concatenate([jnp.abs(w).ravel() for w in weights]), sparsity)
    thresholds = [t] * len(weights)
  else:
    thresholds = [_threshold(jnp.abs(w).ravel(), sparsity) for w in weights]
  it = iter(thresholds)
  out = [jnp.abs(x) >= next(it) if is_weight(x) else jnp.ones((), bool) for x in leaves]
  return jax.tree.unflatten(treedef, out)


def prune(params, sparsity: float, *, scope: str = 'global'):
  """One-shot magnitude pruning: `params` with the smallest `sparsity` fraction of weights set to zero."""
  _check(sparsity, scope)
  return jax.tree.map(lambda x, m: x * m, params, masks(params, sparsity, scope=scope))


def sparsity_at(step, *, target: float, start: int, end: int):
  """Zhu & Gupta's cubic ramp: 0 before `start`, `target` from `end` on (at `start` if end <= start)."""
  if end <= start:
    return jnp.where(step >= start, target, 0.0)
  progress = jnp.clip((step - start) / (end - start), 0.0, 1.0)
  return jnp.where(step >= start, target * (1.0 - (1.0 - progress) ** 3), 0.0)


class PruningState(NamedTuple):
  count: jax.Array  # Updates applied so far (the step of the next one).
  masks: Any  # masks(...) of the last recomputation; all True before the first.


def magnitude_pruning(target: float, *, start: int = 0, end: int = 0, every: int = 50,
                      scope: str = 'global') -> optax.GradientTransformation:
  """Gradual magnitude pruning as the last link of an optax chain (it needs `params` in update()).

  The mask is recomputed from |params + update| at steps start, start + every, ... up to the first step at or past
  `end`, then frozen; every update is rewritten so that params + update = (params + update) * mask, so pruned weights
  are zero after every step (the optimizer's moments for them keep running but never reach the weights).

  Args:
    target: final sparsity, in [0, 1).
    start: step of the first mask.
    end: step at which the target is reached; <= start: one shot at `start`.
    every: steps between recomputations, > 0.
    scope: 'global' or 'layer' (see `masks`).

  Returns:
    An optax.GradientTransformation whose state is a PruningState.
  """
  _check(target, scope)
  if every <= 0:
    raise ValueError(f'every ({every}) must be > 0')
  last = start + max(0, -(-(end - start) // every)) * every  # The first recomputation step at or past `end`.

  def init(params):
    return PruningState(count=jnp.zeros((), jnp.int32),
                        masks=jax.tree.map(lambda x: jnp.ones(x.shape if is_weight(x) else (), bool), params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError('magnitude_pruning needs params: call tx.update(grads, state, params)')
    new = optax.apply_updates(params, updates)
    step = state.count
    recompute = (step >= start) & (step <= last) & ((step - start) % every == 0)
    sparsity = sparsity_at(step, target=target, start=start, end=end)
    new_masks = jax.lax.cond(recompute, lambda: masks(new, sparsity, scope=scope), lambda: state.masks)
    updates = jax.tree.map(lambda n, p, m: (n * m - p).astype(p.dtype), new, params, new_masks)
    return updates, PruningState(count=step + 1, masks=new_masks)

  return optax.GradientTransformation(init, update)


def from_config(comp) -> optax.GradientTransformation | None:
  """magnitude_pruning for the `compression` config group, or None when compression.sparsity is 0."""
  if not comp.sparsity:
    return None
  return magnitude_pruning(comp.sparsity, start=comp.prune_start, end=comp.prune_end, every=comp.prune_every,
                           scope=comp.prune_scope)
