"""Checkpointer: a state and data-iterator state round-trip exactly, with shardings; only the newest N are kept."""

import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax

from research import checkpointing, sharding
from research.training.train_state import create_train_state, state_sha256


class _Dense(nn.Module):
  features: int = 4

  @nn.compact
  def __call__(self, x, *, train: bool):
    del train
    return nn.Dense(self.features)(x)


def _state(seed, n_devices=8, size=3):
  mesh = sharding.make_mesh(ml_collections.ConfigDict({'data': n_devices}), batch_sizes={})
  return create_train_state(_Dense(features=size), optax.adam(1e-3), input_shape=(size,), seed=seed, mesh=mesh)


def test_round_trip_is_exact_and_keeps_shardings(tmp_path):
  state = _state(seed=1)
  ckpt = checkpointing.Checkpointer(str(tmp_path / 'ckpt'), keep=2)
  ckpt.save(10, state, {'next_index': 1234, 'epoch': [1, 2]})
  ckpt.wait()
  restored, data_state = ckpt.restore(_state(seed=2))
  assert data_state == {'next_index': 1234, 'epoch': [1, 2]}
  assert state_sha256(restored) == state_sha256(state)
  assert int(restored.step) == 0
  leaf = jax.tree.leaves(restored.params)[0]
  assert leaf.sharding.is_equivalent_to(jax.tree.leaves(state.params)[0].sharding, leaf.ndim)
  ckpt.close()


def test_keeps_newest_and_restores_latest(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path / 'ckpt'), keep=2)
  states = {s: _state(seed=s) for s in (1, 2, 3)}
  for s, state in states.items():
    ckpt.save(s, state, {'s': s})
  ckpt.close()
  assert sorted(os.listdir(tmp_path / 'ckpt')) == ['2', '3']
  reopened = checkpointing.Checkpointer(str(tmp_path / 'ckpt'), keep=2)
  assert reopened.latest_step() == 3
  restored, data_state = reopened.restore(_state(seed=0))
  assert data_state == {'s': 3} and state_sha256(restored) == state_sha256(states[3])
  assert reopened.restore(_state(seed=0), step=2)[1] == {'s': 2}
  reopened.close()


def test_restore_without_checkpoints_returns_none(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path / 'empty'), keep=1)
  assert ckpt.restore(_state(seed=0)) is None
  ckpt.close()


def test_a_save_right_after_another_is_not_skipped(tmp_path):
  # Orbax skips a save while an async one is in progress unless forced; the final checkpoint must never be lost.
  ckpt = checkpointing.Checkpointer(str(tmp_path / 'ckpt'), keep=5)
  state = _state(seed=1, size=2000)  # 4M params x 3 (Adam): a save slow enough to still be running.
  for step in (10, 11, 12):
    ckpt.save(step, state, {'s': step})
  ckpt.close()
  assert sorted(os.listdir(tmp_path / 'ckpt')) == ['10', '11', '12']
