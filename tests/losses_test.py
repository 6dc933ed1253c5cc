"""Losses: cross-entropy against a hand computation, accuracy, and the L1/L2 penalties."""

import jax.numpy as jnp
import numpy as np

from research.training import losses


def test_cross_entropy_matches_log_softmax():
  logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
  labels = jnp.array([0, 2])
  expected = [-(2.0 - np.log(np.exp(2) + 1 + np.exp(-1))), np.log(3.0)]
  np.testing.assert_allclose(losses.cross_entropy(logits, labels), expected, rtol=1e-6)


def test_correct():
  logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [5.0, 1.0]])
  np.testing.assert_array_equal(losses.correct(logits, jnp.array([0, 1, 1])), [1.0, 1.0, 0.0])


def test_weight_penalty_skips_biases():
  params = {'dense': {'kernel': jnp.array([[1.0, -2.0]]), 'bias': jnp.array([100.0])}}
  assert float(losses.weight_penalty(params, l1=1.0, l2=0.0)) == 3.0
  assert float(losses.weight_penalty(params, l1=0.0, l2=1.0)) == 2.5
  assert float(losses.weight_penalty(params, l1=0.0, l2=0.0)) == 0.0
