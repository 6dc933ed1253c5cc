"""The training state pytree (step, params, opt_state, rng), its creation and shardings on a mesh, its fingerprint."""

import hashlib

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from research import models, sharding


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


# The initialisation runs once, so its code need not be fast, only quick to compile. XLA:CPU at LLVM opt level 1
# compiles it 2-3x faster than the default (MNIST-1D presets: 2.5 -> 1.1 s for the MLP, 3.8 -> 2.1 s for the
# Transformer; every run pays it) with bit-identical values (all MNIST-1D and MNIST presets checked;
# tests/steps_test.py checks one). Level 0 is faster still but changes the values' last bits (FMA contraction).
INIT_COMPILER_OPTIONS = {'xla_backend_optimization_level': 1}


def _init_fn(model: nn.Module, tx: optax.GradientTransformation, input_shape: tuple[int, ...]):
  """seed -> TrainState whose params (and the optimizer moments built on them) are flax `Partitioned` boxes."""

  def init(seed):
    key = jax.random.key_data(jax.random.key(seed))
    params_rng, train_rng = jax.random.split(key)
    dummy = models.dummy_input(model, input_shape)
    params = model.init({'params': params_rng}, dummy, train=False)['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=train_rng)

  return init


def abstract_train_state(model: nn.Module, tx: optax.GradientTransformation, *, input_shape: tuple[int, ...],
                         mesh: Mesh, rules=()) -> TrainState:
  """The state's shapes and dtypes as jax.ShapeDtypeStructs carrying their shardings on `mesh`; computes nothing.

  A restore template (Orbax reshards a checkpoint saved under any mesh into these shardings) and the source of the
  train step's in/out shardings.

  Args:
    model: the flax module; its parameters carry logical axis names (research/models/layers.py).
    tx: the optimizer.
    input_shape: one example's shape, e.g. (40,) or (28, 28, 1).
    mesh: the device mesh.
    rules: `config.mesh.rules` (logical name -> mesh axis); () replicates every leaf.
  """
  boxed = jax.eval_shape(_init_fn(model, tx, input_shape), 0)
  shardings = sharding.state_shardings(boxed, mesh, rules)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), nn.unbox(boxed), shardings)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, *, input_shape: tuple[int, ...],
                       seed: int, mesh: Mesh, rules=()) -> TrainState:
  """Initialises parameters and optimizer state directly on the mesh, each leaf with its sharding.

  Args:
    model: the flax module; called as model.apply({'params': p}, x, train=False).
    tx: the optimizer.
    input_shape: one example's shape, e.g. (40,) or (28, 28, 1).
    seed: the run's seed.
    mesh: the device mesh.
    rules: `config.mesh.rules`; () replicates every leaf.

  Returns:
    A TrainState of plain arrays (no boxes) whose leaves live on the mesh as `abstract_train_state` says.
  """
  abstract = abstract_train_state(model, tx, input_shape=input_shape, mesh=mesh, rules=rules)
  boxed_init = _init_fn(model, tx, input_shape)
  # jit with output shardings builds each shard in place on its device (no host copy; scales to big models).
  init = jax.jit(lambda s: nn.unbox(boxed_init(s)), out_shardings=shardings_of(abstract))
  return init.lower(seed).compile(compiler_options=INIT_COMPILER_OPTIONS)(seed)


def shardings_of(tree):
  """The `.sharding` of every leaf (arrays or ShapeDtypeStructs)."""
  return jax.tree.map(lambda x: x.sharding, tree)


def state_sha256(state: TrainState) -> str:
  """sha256 over the bytes of params and optimizer state, leaves in jax.tree flatten order."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(sharding.to_host((state.params, state.opt_state))):  # One transfer (and gather).
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()


def count_params(params) -> int:
  """Number of scalar parameters."""
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
