"""Optimizer factory: every name builds, schedules have the documented shape, clipping and decay apply."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import base
from research.training import optim


def _config(**overrides) -> ml_collections.ConfigDict:
  config = base.get_base_config().optimizer
  config.update(overrides)
  return config


def _one_update(config, grads, params):
  tx, _ = optim.make_optimizer(config, total_steps=100)
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates


@pytest.mark.parametrize('name', optim.OPTIMIZERS)
def test_every_optimizer_descends_a_quadratic(name):
  config = _config(name=name, learning_rate=0.1)
  tx, _ = optim.make_optimizer(config, total_steps=100)
  params = {'w': jnp.array([3.0, -2.0])}
  state = tx.init(params)
  loss = lambda p: jnp.sum(p['w'] ** 2)
  start = float(loss(params))
  for _ in range(50):
    grads = {'w': 2 * params['w']}
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  assert float(loss(params)) < 0.5 * start


def test_sgd_update_is_minus_lr_times_grad():
  updates = _one_update(_config(name='sgd', learning_rate=0.5), {'w': jnp.array([2.0])}, {'w': jnp.array([1.0])})
  np.testing.assert_allclose(updates['w'], [-1.0])


def test_weight_decay_is_added_to_the_gradient_for_sgd():
  # PyTorch semantics: g + wd * w, then -lr * (.)
  updates = _one_update(_config(name='sgd', learning_rate=0.5, weight_decay=0.1),
                        {'w': jnp.array([2.0])}, {'w': jnp.array([10.0])})
  np.testing.assert_allclose(updates['w'], [-0.5 * (2.0 + 0.1 * 10.0)], rtol=1e-6)


def test_grad_clip_limits_the_global_norm():
  updates = _one_update(_config(name='sgd', learning_rate=1.0, grad_clip_norm=1.0),
                        {'w': jnp.array([30.0, 40.0])}, {'w': jnp.zeros(2)})
  np.testing.assert_allclose(updates['w'], [-0.6, -0.8], rtol=1e-6)


def test_schedules():
  cosine = optim.make_schedule(_config(schedule='warmup_cosine', learning_rate=1.0, warmup_steps=10,
                                       min_learning_rate=0.0), total_steps=110)
  np.testing.assert_allclose([cosine(0), cosine(5), cosine(10), cosine(60), cosine(110)],
                             [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)
  step = optim.make_schedule(_config(schedule='step', learning_rate=1.0, decay_every=10, decay_factor=0.5),
                             total_steps=100)
  np.testing.assert_allclose([step(0), step(9), step(10), step(25)], [1.0, 1.0, 0.5, 0.25], rtol=1e-6)
  constant = optim.make_schedule(_config(learning_rate=0.3), total_steps=100)
  assert float(constant(99)) == pytest.approx(0.3)
