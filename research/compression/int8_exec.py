"""Integer execution of an int8 model: every matmul as int8 weights x int8 activations -> int32 (W8A8).

    model8 = int8_exec.Int8Model(model)                   # model: any of research.models (SUPPORTED)
    qparams = quantize.quantize_params(params)           # weights -> {'int8': q, 'scale': s}, as stored on disk
    logits = model8.apply({'params': qparams}, x, train=False)

The weights stay int8 in memory; each matmul input is quantized on the fly to int8 with one scale per row
(dynamic, symmetric absmax over the contracted features), multiplied with `lax.dot_general(...,
preferred_element_type=int32)` and rescaled by the row scale times the weight's per-output-channel scale. The
layers are intercepted with flax's `nn.intercept_methods`, so the model code is unchanged:
  - `nn.Dense` (the MLPs, the RNN cells' input and recurrent projections inside `nn.RNN`'s scan, heads),
    `nn.DenseGeneral` (the classifier Transformer's q/k/v and output projections) and the GPT's `_Dense`;
  - `layers.Im2colConv` as patches x kernel (the im2col form, at eval too);
  - `nn.Embed`: a lookup gathers int8 rows and scales them (no matmul); the GPT's tied output layer
    (`attend`, x E^T with E's scale on the contracted features) runs as (x * scale) q^T in integers.
Weights that no matmul reads (the position tables) are decoded to float32 before the call.

Why not qwix: see docs/compression.md (its PTQ provider does not cover our convolution layer or the GPT).
Whether it is faster depends on the backend: XLA:CPU's int8 dot is slower than float32 at batch 1 and 1.3x faster at
large batches (docs/compression.md); on GPUs/TPUs with int8 units it is the point of int8.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models import gpt, layers

SUPPORTED = ('logreg', 'mlp', 'cnn', 'cnn2d', 'lenet5', 'gru', 'lstm', 'transformer', 'gpt')
_MATMUL_KEYS = ('kernel', 'embedding')  # Where a quantized weight is read by an intercepted layer.


def quantize_rows(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Dynamic symmetric int8 quantization of x [..., features] with one scale per row: (q int8, scale [..., 1])."""
  scale = jnp.max(jnp.abs(x), axis=-1, keepdims=True).astype(jnp.float32) / 127.0
  scale = jnp.where(scale == 0, 1.0, scale)
  return jnp.clip(jnp.round(x / scale), -127, 127).astype(jnp.int8), scale


def int8_matmul(x: jax.Array, q: jax.Array, scale: jax.Array) -> jax.Array:
  """x [..., k] (float) @ dequantized weight [k, n] computed as an int8 x int8 -> int32 matmul, float32 out.

  Args:
    x: activations, quantized here per row.
    q: int8 weight [k, n].
    scale: its per-output-channel scale, any shape with n elements.
  """
  xq, xs = quantize_rows(x)
  y = jax.lax.dot_general(xq, q, (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.int32)
  return y.astype(jnp.float32) * xs * scale.reshape(-1)


def _quantized(module: nn.Module, name: str):
  """The module's param `name` if it is a quantized weight ({'int8', 'scale'}), else None."""
  value = module.get_variable('params', name)
  return value if isinstance(value, dict) else None


def _contract(rows: jax.Array, kernel: dict, in_axes: int) -> jax.Array:
  """rows [..., k] @ a quantized kernel whose first `in_axes` axes (k entries together) are contracted, in
  integers: [..., prod(kernel.shape[in_axes:])] float32.

  The kernel's scale is [1, ..., 1, C] (one per last-axis channel, quantize.quantize_array); broadcast to the
  kernel and read at input index 0 (it is constant along every other axis), it gives each flattened output
  column's scale.
  """
  q = kernel['int8']
  q2 = q.reshape(math.prod(q.shape[:in_axes]), -1)
  scale = jnp.broadcast_to(kernel['scale'], q.shape).reshape(q2.shape)[0]
  return int8_matmul(rows, q2, scale)


def _dense_general(module: nn.DenseGeneral, kernel: dict, x: jax.Array) -> jax.Array:
  """nn.DenseGeneral's contraction of x's trailing `axis` with the kernel's leading axes, in integers."""
  axes = module.axis if isinstance(module.axis, tuple) else (module.axis,)
  axes = tuple(sorted(a % x.ndim for a in axes))
  if module.batch_dims or axes != tuple(range(x.ndim - len(axes), x.ndim)):
    raise NotImplementedError(f'int8 execution of nn.DenseGeneral over axes {module.axis} with batch_dims '
                              f'{module.batch_dims}: only trailing contracted axes are supported')
  n = len(axes)
  y = _contract(x.reshape(*x.shape[:-n], -1), kernel, n)
  return y.reshape(*x.shape[:-n], *kernel['int8'].shape[n:])


def _interceptor(next_fun, args, kwargs, context):
  module, method = context.module, context.method_name
  if isinstance(module, nn.Embed) and method in ('__call__', 'attend'):
    table = _quantized(module, 'embedding')
    if table is None:
      return next_fun(*args, **kwargs)
    q, scale = table['int8'], table['scale']  # [vocab, features], scale [1, features]
    if method == '__call__':  # A lookup: no matmul; the rows are decoded.
      return jnp.take(q, args[0], axis=0).astype(jnp.float32) * scale.reshape(-1)
    # x E^T with E = q * scale (scale on the contracted features): (x * scale) q^T.
    x = args[0] * scale.reshape(-1)
    return int8_matmul(x, q.T, jnp.ones((q.shape[0],), jnp.float32))
  if method != '__call__' or not isinstance(module, (nn.Dense, nn.DenseGeneral, layers.Im2colConv, gpt._Dense)):  # pylint: disable=protected-access
    return next_fun(*args, **kwargs)
  kernel = _quantized(module, 'kernel')
  if kernel is None:  # A float layer (not quantized): run it as it is.
    return next_fun(*args, **kwargs)
  bias = module.get_variable('params', 'bias')
  x = args[0]
  if isinstance(module, layers.Im2colConv):  # patches [..., window x in] @ kernel [window..., in, features].
    strides = module.strides or (1,) * len(module.kernel_size)
    x = layers.extract_patches(x, module.kernel_size, strides, module.padding)
    y = _contract(x, kernel, kernel['int8'].ndim - 1)
  elif isinstance(module, gpt._Dense):  # pylint: disable=protected-access
    y = _contract(x, kernel, module.in_axes)  # Rows in, flattened outputs out, as _Dense.
    bias = None if bias is None else bias.reshape(-1)
  elif type(module) is nn.DenseGeneral:  # pylint: disable=unidiomatic-typecheck
    y = _dense_general(module, kernel, x)
  else:
    y = _contract(x, kernel, 1)
  return y + bias if bias is not None else y


def _decode_unread(tree: Any, key: str = '') -> Any:
  """`tree` with the quantized weights that no intercepted matmul reads (position tables: any key but 'kernel'
  and 'embedding') decoded to float32."""
  if isinstance(tree, dict):
    if set(tree) == {'int8', 'scale'}:
      if key in _MATMUL_KEYS:
        return tree
      return tree['int8'].astype(jnp.float32) * tree['scale']
    return {k: _decode_unread(v, k) for k, v in tree.items()}
  return tree


class Int8Model:
  """A flax module's `apply` with its weight matmuls run as integer matmuls (module docstring).

  Only `apply` and the wrapped module's attributes are offered: enough for evaluation and prediction (the eval
  step, research.inference), not for training.
  """

  def __init__(self, model: nn.Module):
    self.model = model

  def apply(self, variables: dict, *args, **kwargs) -> Any:
    variables = {**variables, 'params': _decode_unread(variables['params'])}
    with nn.intercept_methods(_interceptor):
      return self.model.apply(variables, *args, **kwargs)

  def __getattr__(self, name: str) -> Any:
    return getattr(self.model, name)
