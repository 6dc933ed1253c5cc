"""Symmetric per-output-channel integer quantization of weights, and its straight-through fake-quant for training.

A weight (a leaf with ndim >= 2: dense kernels, conv kernels, embeddings) is stored as int8 values q and one float32
scale per output channel, w ~= q * scale. Flax puts the output channel on the last axis of every kernel ([in, out],
[h, w, in, out], [vocab, features]), so the channel is the last axis here. One scale per channel instead of one per
tensor matters because channels' ranges differ by orders of magnitude: a single scale would round the small channels
to zero. Biases and norm scales (ndim < 2) are few and sensitive, so they stay float32.

The quantizer is symmetric (no zero point): q in [-(2^(b-1) - 1), 2^(b-1) - 1], so 0.0 maps to q = 0 exactly, which
keeps pruned weights at zero, and -128 is never used for 8 bits, so the grid is the same on both sides. Bit widths
2..8 are all stored in int8; fewer bits only coarsen the grid (for quantization-aware training).

The array functions are pure jnp and jit-able (`bits` is a Python int, static under jit). `quantize_params` returns
numpy arrays for storage.
"""

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

MIN_BITS = 2
MAX_BITS = 8

# The key set that marks a quantized weight in `quantize_params`' output.
_QUANTIZED_KEYS = frozenset({'int8', 'scale'})


def is_weight(leaf: Any) -> bool:
  """Whether a param leaf is a weight that is quantized or pruned: ndim >= 2 (kernels, embeddings)."""
  return np.ndim(leaf) >= 2


def _check_bits(bits: int) -> int:
  """The largest level 2^(bits-1) - 1 of a `bits`-bit symmetric grid.

  Raises:
    ValueError: `bits` is not an int in [2, 8].
  """
  # bool is an int subclass; True as a bit width is a bug at the call site, not 1 bit.
  if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not MIN_BITS <= bits <= MAX_BITS:
    raise ValueError(f'bits={bits!r}: expected an int in [{MIN_BITS}, {MAX_BITS}] (stored in int8)')
  return 2 ** (int(bits) - 1) - 1


def quantize_array(w: jax.Array, bits: int = 8) -> tuple[jax.Array, jax.Array]:
  """Symmetric per-output-channel quantization; the channel is the last axis.

  Args:
    w: [..., C] float array (any float dtype; computed in float32). Non-finite values have no meaningful scale.
    bits: bit width in [2, 8]; the values are stored in int8 whatever the width.

  Returns:
    (q, scale): q int8 with w's shape, in [-(2^(bits-1) - 1), 2^(bits-1) - 1]; scale float32 of shape
    [1, ..., 1, C] = max|w| over the other axes / (2^(bits-1) - 1), 1.0 for a channel that is all zeros (so that
    nothing divides by zero; its q are 0 whatever the scale). |w - q * scale| <= scale / 2 everywhere.

  Raises:
    ValueError: `bits` is not in [2, 8].
  """
  qmax = _check_bits(bits)
  w = jnp.asarray(w, jnp.float32)
  # initial=0 keeps a zero-size reduction (a kernel with an empty input axis) defined: such a channel gets scale 1.
  amax = jnp.max(jnp.abs(w), axis=tuple(range(w.ndim - 1)), keepdims=True, initial=0.0)
  scale = jnp.where(amax > 0, amax / qmax, 1.0).astype(jnp.float32)
  # The clip only matters when float rounding puts max|w| / scale a hair above qmax.
  q = jnp.clip(jnp.round(w / scale), -qmax, qmax).astype(jnp.int8)
  return q, scale


def dequantize_array(q: jax.Array, scale: jax.Array) -> jax.Array:
  """float32 q * scale (scale broadcasts over all but the last axis).

  Args:
    q: int8 values from `quantize_array`.
    scale: float32 [1, ..., 1, C] from `quantize_array`.

  Returns:
    float32 array of q's shape.
  """
  return jnp.asarray(q).astype(jnp.float32) * jnp.asarray(scale, jnp.float32)


def fake_quant(w: jax.Array, bits: int = 8) -> jax.Array:
  """Quantize-dequantize in float with a straight-through gradient, for quantization-aware training.

  The forward value is dequantize(quantize(w)); the gradient with respect to w is the identity (Bengio et al. 2013's
  straight-through estimator), since round() has zero gradient almost everywhere and would stop learning.

  Args:
    w: float weight, channel last.
    bits: bit width in [2, 8].

  Returns:
    An array of w's shape and dtype.

  Raises:
    ValueError: `bits` is not in [2, 8].
  """
  w = jnp.asarray(w)
  dq = dequantize_array(*quantize_array(w, bits)).astype(w.dtype)
  return w + jax.lax.stop_gradient(dq - w)


def fake_quant_params(params: Any, bits: int = 8) -> Any:
  """`fake_quant` on every weight (leaf with ndim >= 2) of a param pytree; other leaves are returned unchanged.

  Args:
    params: a pytree of arrays (flax params).
    bits: bit width in [2, 8].

  Returns:
    A pytree of the same structure, shapes and dtypes.

  Raises:
    ValueError: `bits` is not in [2, 8] (also for a tree without weights).
  """
  _check_bits(bits)
  return jax.tree.map(lambda w: fake_quant(w, bits) if is_weight(w) else w, params)


def quantize_params(params: Any, bits: int = 8) -> Any:
  """Replaces every weight of a param pytree by `{'int8': q, 'scale': scale}` (numpy arrays).

  Args:
    params: a pytree of arrays (flax params).
    bits: bit width in [2, 8].

  Returns:
    The pytree with each weight leaf (ndim >= 2) replaced by {'int8': int8 array, 'scale': float32 [1, ..., 1, C]};
    other leaves are the same objects as in `params`.

  Raises:
    ValueError: `bits` is not in [2, 8].
  """
  _check_bits(bits)

  def quantize_leaf(w):
    if not is_weight(w):
      return w
    q, scale = quantize_array(w, bits)
    return {'int8': np.asarray(q), 'scale': np.asarray(scale)}

  return jax.tree.map(quantize_leaf, params)


def _is_quantized(node: Any) -> bool:
  return isinstance(node, Mapping) and set(node.keys()) == _QUANTIZED_KEYS


def dequantize_params(qparams: Any) -> Any:
  """Inverse of `quantize_params`: float32 weights q * scale in the original structure.

  A quantized weight is recognised as a dict whose keys are exactly {'int8', 'scale'}; every other leaf is returned
  unchanged. Jit-able (the dequantized weights are jax arrays).

  Args:
    qparams: output of `quantize_params`.

  Returns:
    A pytree of the structure `quantize_params` was given.
  """
  return jax.tree.map(lambda node: dequantize_array(node['int8'], node['scale']) if _is_quantized(node) else node,
                      qparams, is_leaf=_is_quantized)
