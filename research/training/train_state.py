"""The training state pytree (step, params, opt_state, rng), its creation on a mesh, and its fingerprint."""

import hashlib

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from research import sharding


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; a plain pytree (checkpointed whole).

  Attributes:
    step: int32 scalar, number of updates applied.
    params: model parameters.
    opt_state: optimizer state.
    rng: base PRNG key; the step's randomness is fold_in(rng, step), so it never depends on restarts.
  """
  step: jax.Array
  params: flax.core.FrozenDict | dict
  opt_state: optax.OptState
  rng: jax.Array


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, *, input_shape: tuple[int, ...],
                       seed: int, mesh: Mesh) -> TrainState:
  """Initialises parameters and optimizer state directly on the mesh (replicated).

  Args:
    model: the flax module; called as model.apply({'params': p}, x, train=False).
    tx: the optimizer.
    input_shape: one example's shape, e.g. (40,) or (28, 28, 1).
    seed: the run's seed.
    mesh: the device mesh.

  Returns:
    A TrainState whose arrays live on the mesh.
  """
  def init(seed):
    key = jax.random.key_data(jax.random.key(seed))
    params_rng, train_rng = jax.random.split(key)
    dummy = jnp.zeros((1, *input_shape), jnp.float32)
    params = model.init({'params': params_rng}, dummy, train=False)['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=train_rng)

  # jit with an output sharding builds the state in place on the devices (no host copy; scales to big models).
  return jax.jit(init, static_argnums=0, out_shardings=sharding.replicated(mesh))(seed)


def state_sha256(state: TrainState) -> str:
  """sha256 over the bytes of params and optimizer state, leaves in jax.tree flatten order."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves((state.params, state.opt_state)):
    digest.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
  return digest.hexdigest()


def count_params(params) -> int:
  """Number of scalar parameters."""
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
