"""Layers shared by several model families: fast convolution and pooling for XLA:CPU, sequence views of inputs, the
choice of initialisation (flax's defaults or PyTorch's), and the logical axis names of parameters.

Logical axis names (flax partitioning; research/sharding.py maps them to mesh axes by `config.mesh.rules`):
  embed        a layer's input features / the model width (FSDP splits it)
  mlp          a hidden layer's units (tensor parallel splits them)
  heads, kv    attention heads (tensor parallel) and the features of one head
  classes      logits
  conv_window  a convolution's kernel taps

Each fast layer computes exactly the same function, with the same parameters, as its flax counterpart
(`nn.Conv`, `nn.max_pool`); tests/models_test.py checks forward values and gradients against them.
"""

import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp


INITS = ('flax', 'pytorch')


def check_init(init: str) -> None:
  if init not in INITS:
    raise ValueError(f'model.weight_init ({init!r}) must be one of {INITS}')


def uniform(bound: float) -> nn.initializers.Initializer:
  """U(-bound, bound), PyTorch's default for weights (kaiming_uniform with a=sqrt(5) gives 1/sqrt(fan_in)) and
  biases of nn.Linear / nn.Conv*, and for every weight and bias of nn.GRU / nn.LSTM (bound 1/sqrt(hidden))."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def logical(init: nn.initializers.Initializer, *names: str | None) -> nn.initializers.Initializer:
  """`init`, its result boxed with the logical axis names of its dimensions (values and rng use are unchanged)."""
  return nn.with_logical_partitioning(init, names)


def dense(features: int, *, init: str, fan_in: int, name: str | None = None,
          axes: tuple[str, str] = ('embed', 'mlp')) -> nn.Dense:
  """nn.Dense initialised as flax does (lecun_normal weights, zero biases) or as PyTorch's nn.Linear does.

  Why both: the same architecture trains to different accuracies from the two inits; the MNIST-1D paper's numbers
  come from PyTorch's (README, Results).

  Args:
    features: output features.
    init: 'flax' or 'pytorch'.
    fan_in: input features (PyTorch's bound is 1/sqrt(fan_in)).
    name: the module name.
    axes: logical names of the kernel's (input, output) dimensions; the bias takes the output's.
  """
  check_init(init)
  if init == 'flax':
    kernel_init, bias_init = nn.initializers.lecun_normal(), nn.initializers.zeros_init()
  else:
    kernel_init = bias_init = uniform(fan_in ** -0.5)
  return nn.Dense(features, kernel_init=logical(kernel_init, *axes), bias_init=logical(bias_init, axes[1]),
                  name=name)


@jax.custom_vjp
def _cpu_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  return x @ w


def _cpu_matmul_fwd(x, w):
  return x @ w, (x, w)


def _cpu_matmul_bwd(residuals, g):
  x, w = residuals
  return g @ w.T, jax.lax.optimization_barrier(x.T) @ g


_cpu_matmul.defvjp(_cpu_matmul_fwd, _cpu_matmul_bwd)


def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """x @ w ([rows, in] @ [in, out]) whose weight gradient XLA:CPU runs through YNNPACK; plain x @ w elsewhere.

  Why: autodiff's weight gradient x^T g is a dot contracting both operands' first dimension, which XLA:CPU gives to
  Eigen at ~45 GFLOP/s per core; transposing x first (materialised by the optimisation barrier) makes it a plain
  matmul that YNNPACK runs at ~80 (the GPT's 768x128 by 768x512: 1.9 -> 1.3 ms; cnn2d's im2col conv, whose
  patches are [73728, 288] per batch of 128: train step 103 -> 94 ms). Same math as autodiff's.
  """
  return _cpu_matmul(x, w) if jax.default_backend() == 'cpu' else x @ w


class Im2colConv(nn.Module):
  """N-D convolution as one matmul over extracted patches ("im2col"); same params and math as `nn.Conv`.

  Why: on XLA:CPU a convolution with one input channel is slow, and so is the weight gradient of a wide
  convolution (cnn2d's 3x3 32 -> 64: ~0.35 s per batch of 100 through `lax.conv`). Strided slices plus one matmul
  make a training step (batch 100) 1.2x (paper CNN), 1.5x (LeNet-5) and 2.7x (cnn2d) faster. For wide convs the
  patch matrix costs more than `lax.conv` in a forward-only pass, so callers may pass im2col=False there (cnn2d
  at eval); both paths are tested equal to `nn.Conv`.

  Attributes:
    features: output channels.
    kernel_size: window per spatial dim, e.g. (5,) or (3, 3).
    strides: step per spatial dim; None means 1 everywhere.
    padding: zeros added on both sides of every spatial dim (0 is 'VALID').
    weight_init: 'flax' (nn.Conv's lecun_normal weights, zero biases) or 'pytorch' (nn.Conv*'s U(+-1/sqrt(fan_in))).
  """

  features: int
  kernel_size: tuple[int, ...]
  strides: tuple[int, ...] | None = None
  padding: int = 0
  weight_init: str = 'flax'

  @nn.compact
  def __call__(self, x: jax.Array, *, im2col: bool = True) -> jax.Array:
    """Args: x: [batch, *spatial, channels]; im2col: False uses `lax.conv`. Returns: [batch, *out, features]."""
    ndim = len(self.kernel_size)
    strides = self.strides or (1,) * ndim
    check_init(self.weight_init)
    kernel_shape = (*self.kernel_size, x.shape[-1], self.features)
    if self.weight_init == 'flax':
      kernel_init, bias_init = nn.initializers.lecun_normal(), nn.initializers.zeros_init()
    else:
      kernel_init = bias_init = uniform((kernel_shape[-2] * math.prod(self.kernel_size)) ** -0.5)
    kernel = self.param('kernel', logical(kernel_init, *['conv_window'] * ndim, 'embed', 'mlp'), kernel_shape)
    bias = self.param('bias', logical(bias_init, 'mlp'), (self.features,))
    if not im2col:
      spatial = 'HWD'[:ndim]
      return jax.lax.conv_general_dilated(x, kernel, strides, [(self.padding,) * 2] * ndim,
                                          dimension_numbers=(f'N{spatial}C', f'{spatial}IO', f'N{spatial}C')) + bias
    patches = extract_patches(x, self.kernel_size, strides, self.padding)  # [batch, *out, taps * channels]
    rows = matmul(patches.reshape(-1, patches.shape[-1]), kernel.reshape(-1, self.features))
    return rows.reshape(*patches.shape[:-1], self.features) + bias


def extract_patches(x: jax.Array, kernel_size: tuple[int, ...], strides: tuple[int, ...], padding: int) -> jax.Array:
  """The patches of `x` that a convolution's kernel, flattened as kernel.reshape(-1, features), multiplies.

  Args:
    x: [batch, *spatial, channels].
    kernel_size, strides: per spatial dim.
    padding: zeros added on both sides of every spatial dim.

  Returns:
    [batch, *out, prod(kernel_size) * channels].
  """
  ndim = len(kernel_size)
  x = jnp.pad(x, [(0, 0)] + [(padding, padding)] * ndim + [(0, 0)])
  out = [(n - k) // s + 1 for n, k, s in zip(x.shape[1:-1], kernel_size, strides)]
  # One strided slice per kernel tap, in the row-major tap order of kernel.reshape(-1, features).
  taps = [x[(slice(None), *(slice(o, o + s * (n - 1) + 1, s) for o, s, n in zip(offset, strides, out)))]
          for offset in itertools.product(*map(range, kernel_size))]
  return jnp.concatenate(taps, axis=-1)


_DROPOUT_LEVELS = 1 << 16  # Keep probabilities are multiples of 1/65536.


def dropout(rng: jax.Array, x: jax.Array, keep_prob) -> jax.Array:
  """Inverted dropout: x / keep where kept, else 0, each element kept with probability `keep` = keep_prob rounded to
  a multiple of 1/65536 (a rate of 0.2 keeps 52429/65536 = 0.800003; 0 and 1 are exact).

  Why not flax's nn.Dropout: it draws one 32-bit threefry word per element (jax.random.bernoulli); on XLA:CPU that
  is 59 ms for one [64, 256, 384] activation of the small GPT, 13 of which make ~0.8 s of its 9 s step. Here each
  32-bit word gives two 16-bit uniforms: 5.8 ms (measured with 8-bit halves; 16-bit ones need twice the words).
  Same distribution up to the rounding of the keep probability; other masks than flax's for a given key.

  Args:
    rng: a PRNG key.
    x: the activations.
    keep_prob: 1 - rate; a Python float or a traced scalar (research/vectorized.py varies it per trial).

  Returns:
    x's shape and dtype.
  """
  n = x.size
  words = jax.random.bits(rng, ((n + 1) // 2,), jnp.uint32)
  uniform16 = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(-1)[:n].reshape(x.shape)
  threshold = jnp.round(jnp.asarray(keep_prob, jnp.float32) * _DROPOUT_LEVELS)
  keep = (threshold / _DROPOUT_LEVELS).astype(x.dtype)
  return jnp.where(uniform16.astype(jnp.int32) < threshold.astype(jnp.int32), x / keep, jnp.zeros_like(x))


class Dropout(nn.Module):
  """nn.Dropout's interface (rate, deterministic, the 'dropout' rng) computed by `dropout` (16-bit uniforms).

  Attributes:
    rate: probability of zeroing an element.
    deterministic: True returns the inputs unchanged (evaluation); may be given at call time instead.
    rng_collection: the rng stream the mask is drawn from.
  """

  rate: float
  deterministic: bool | None = None
  rng_collection: str = 'dropout'

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool | None = None) -> jax.Array:
    deterministic = nn.merge_param('deterministic', self.deterministic, deterministic)
    if deterministic or self.rate == 0.0:
      return x
    if self.rate == 1.0:
      return jnp.zeros_like(x)
    return dropout(self.make_rng(self.rng_collection), x, 1.0 - self.rate)


def max_pool(x: jax.Array, window: tuple[int, ...]) -> jax.Array:
  """Non-overlapping max pooling (stride = window, 'VALID') by reshape + max; equals `nn.max_pool(x, w, w)`.

  Why: on XLA:CPU the gradient of `nn.max_pool` (reduce_window -> select_and_scatter) is slow: 74 ms vs 10 ms
  for cnn2d's [100, 24, 24, 64] activations (forward: 1.2 vs 2.3 ms). Ties: a reduction splits the gradient among
  equal maxima while select_and_scatter gives it to the first; after a ReLU the only ties (barring exactly equal
  floats) are zeros, whose gradient the ReLU zeroes, so parameter gradients agree.

  Args:
    x: [batch, *spatial, channels]; trailing rows/columns that do not fill a window are dropped.
    window: pooling window per spatial dim, e.g. (2, 2).

  Returns:
    [batch, *(spatial // window), channels].
  """
  out = [n // w for n, w in zip(x.shape[1:-1], window)]
  x = x[(slice(None), *(slice(0, o * w) for o, w in zip(out, window)))]
  split = [d for o, w in zip(out, window) for d in (o, w)]
  x = x.reshape(x.shape[0], *split, x.shape[-1])  # [batch, out_0, w_0, out_1, w_1, ..., channels]
  return x.max(axis=tuple(range(2, 2 + 2 * len(window), 2)))


def as_sequence(x: jax.Array) -> jax.Array:
  """Views an input batch as a sequence for the RNNs and the Transformer.

  Args:
    x: [batch, length] (MNIST-1D: one feature per step), [batch, time, features], or images [batch, H, W, C]
      (rows are time steps, as in the classic row-by-row MNIST RNN).

  Returns:
    [batch, time, features].
  """
  if x.ndim == 2:
    return x[..., None]  # [batch, length, 1]
  if x.ndim == 3:
    return x
  if x.ndim == 4:
    return x.reshape(x.shape[0], x.shape[1], -1)  # [batch, H, W * C]
  raise ValueError(f'sequence models take [batch, length], [batch, time, features] or [batch, H, W, C] '
                   f'inputs, got shape {x.shape}')
