"""Train and eval steps: a step overfits one batch, compiles once, is deterministic, and eval masks padding."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from configs import base, mnist1d
from research import sharding
from research.training import loop, optim, steps, train_state
from research.training.train_state import create_train_state, state_sha256


class _Tiny(nn.Module):
  num_classes: int = 3
  dropout_rate: float = 0.1

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = nn.relu(nn.Dense(16)(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)


def _setup(n_devices=1, lr=1e-2):
  config = base.get_base_config()
  config.optimizer.learning_rate = lr
  mesh = sharding.make_mesh(ml_collections.ConfigDict({'data': n_devices, 'num_devices': n_devices}),
                            batch_sizes={'batch_size': 8})
  model = _Tiny()
  tx, schedule = optim.make_optimizer(config.optimizer, total_steps=100)
  state = create_train_state(model, tx, input_shape=(5,), seed=0, mesh=mesh)
  return model, tx, schedule, state, mesh


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  return {'inputs': rng.normal(size=(8, 5)).astype(np.float32), 'labels': rng.integers(0, 3, 8).astype(np.int32)}


def test_train_step_overfits_one_batch_and_compiles_once():
  model, tx, schedule, state, mesh = _setup()
  step_fn = jax.jit(chex.assert_max_traces(steps.make_train_step(model, tx, schedule), n=1), donate_argnums=0)
  batch = sharding.put_batch(_batch(), mesh)
  first = None
  for _ in range(200):
    state, metrics = step_fn(state, batch)
    first = first if first is not None else float(metrics['loss'])
  assert int(state.step) == 200
  assert float(metrics['loss']) < 0.1 * first
  assert float(metrics['accuracy']) == 1.0
  assert set(metrics) == {'loss', 'accuracy', 'grad_norm', 'param_norm', 'lr', 'skipped', 'nonfinite_streak'}
  np.testing.assert_allclose(float(metrics['lr']), 1e-2, rtol=1e-6)


def test_train_step_is_deterministic_and_sharding_invariant():
  # Same seed -> same bits; 8-way data parallel gives the same numbers as one device (up to float reassociation).
  finals = []
  for n_devices in (1, 1, 8):
    model, tx, schedule, state, mesh = _setup(n_devices)
    step_fn = jax.jit(steps.make_train_step(model, tx, schedule), donate_argnums=0,
                      in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)))
    for i in range(5):
      state, _ = step_fn(state, sharding.put_batch(_batch(i), mesh))
    finals.append(state)
  assert state_sha256(finals[0]) == state_sha256(finals[1])
  chex.assert_trees_all_close(finals[0].params, finals[2].params, atol=1e-6)


def test_dropout_randomness_depends_on_step_not_on_history():
  model, tx, schedule, state, mesh = _setup()
  train_step = steps.make_train_step(model, tx, schedule)
  batch = sharding.put_batch(_batch(), mesh)
  _, m1 = train_step(state.replace(step=jnp.int32(7)), batch)
  _, m2 = train_step(state.replace(step=jnp.int32(7)), batch)
  _, m3 = train_step(state.replace(step=jnp.int32(8)), batch)
  assert float(m1['loss']) == float(m2['loss']) != float(m3['loss'])


def test_eval_step_ignores_padded_rows():
  model, _, _, state, _ = _setup()
  eval_step = jax.jit(steps.make_eval_step(model))
  batch = _batch()
  padded = {'inputs': np.concatenate([batch['inputs'], 100 * np.ones((4, 5), np.float32)]),
            'labels': np.concatenate([batch['labels'], np.zeros(4, np.int32)]),
            'mask': np.concatenate([np.ones(8, np.float32), np.zeros(4, np.float32)])}
  full = eval_step(state.params, {**batch, 'mask': np.ones(8, np.float32)})
  masked = eval_step(state.params, padded)
  assert float(masked['count']) == 8.0
  np.testing.assert_allclose(float(masked['loss_sum']), float(full['loss_sum']), rtol=1e-5)
  assert float(masked['correct_sum']) == float(full['correct_sum'])


def test_a_non_finite_batch_is_skipped_and_counted():
  # A NaN in the inputs gives a NaN loss and gradient: params and optimizer state stay bit-identical, the step
  # counter advances (the data moves on), and the streak counts up until a finite step resets it.
  model, tx, schedule, state, mesh = _setup()
  step_fn = jax.jit(steps.make_train_step(model, tx, schedule))
  good = _batch()
  bad = dict(good, inputs=np.where(np.arange(5) == 0, np.nan, good['inputs']).astype(np.float32))
  state, _ = step_fn(state, good)
  guarded = lambda s: state_sha256(s.replace(opt_state=optax.tree_utils.tree_get(s.opt_state, 'inner_state')))
  before = guarded(state)
  streaks = []
  for _ in range(3):
    state, metrics = step_fn(state, bad)
    assert float(metrics['skipped']) == 1.0 and not np.isfinite(float(metrics['loss']))
    streaks.append(int(metrics['nonfinite_streak']))
  assert streaks == [1, 2, 3]
  assert guarded(state) == before and int(state.step) == 4
  state, metrics = step_fn(state, good)
  assert float(metrics['skipped']) == 0.0 and int(metrics['nonfinite_streak']) == 0
  assert guarded(state) != before
  assert int(optax.tree_utils.tree_get(state.opt_state, 'total_notfinite')) == 3


def test_quickly_compiled_init_gives_the_default_compilers_values():
  """train_state.INIT_COMPILER_OPTIONS only shortens compilation: the initial state is bit-identical."""
  config = mnist1d.get_config('transformer')
  mesh = sharding.make_mesh(ml_collections.ConfigDict({'data': 1, 'num_devices': 1}), batch_sizes={})
  model, tx, _, state = loop.create_model_and_state(config, num_classes=10, input_shape=(40,), mesh=mesh)
  init = train_state._init_fn(model, tx, (40,))
  default = jax.jit(lambda s: nn.unbox(init(s)), out_shardings=train_state.shardings_of(state))(config.seed)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), jax.device_get(default))
