"""Integer execution of an int8 model: every matmul as int8 weights x int8 activations -> int32 (W8A8).

    model8 = int8_exec.Int8Model(model)                   # model: an mlp, cnn, cnn2d, lenet5 or logreg
    qparams = quantize.quantize_params(params)           # weights -> {'int8': q, 'scale': s}, as stored on disk
    logits = model8.apply({'params': qparams}, x, train=False)

The weights stay int8 in memory; each matmul input is quantized on the fly to int8 with one scale per row
(dynamic, symmetric absmax over the contracted features), multiplied with `lax.dot_general(...,
preferred_element_type=int32)` and rescaled by the row scale times the weight's per-output-channel scale. The
layers are intercepted with flax's `nn.intercept_methods`, so the model code is unchanged: `nn.Dense` and
`layers.Im2colConv` (as patches x kernel, the im2col form, at eval too). Other layers (the RNN cells, the GPT's
fused projections) are not intercepted: `SUPPORTED` lists the models whose every weight matmul is covered.

Why not qwix: see docs/compression.md (its PTQ provider does not cover our convolution layer or the GPT).
Whether it is faster depends on the backend: XLA:CPU's int8 dot is slower than float32 at batch 1 and 1.3x faster at
large batches (docs/compression.md); on GPUs/TPUs with int8 units it is the point of int8.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models import layers

SUPPORTED = ('logreg', 'mlp', 'cnn', 'cnn2d', 'lenet5')


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


def _interceptor(next_fun, args, kwargs, context):
  module = context.module
  if context.method_name != '__call__' or type(module) not in (nn.Dense, layers.Im2colConv):
    return next_fun(*args, **kwargs)
  kernel = module.get_variable('params', 'kernel')
  if not isinstance(kernel, dict):  # A float layer (not quantized): run it as it is.
    return next_fun(*args, **kwargs)
  bias = module.get_variable('params', 'bias')
  x = args[0]
  if isinstance(module, layers.Im2colConv):
    strides = module.strides or (1,) * len(module.kernel_size)
    x = layers.extract_patches(x, module.kernel_size, strides, module.padding)
    y = int8_matmul(x, kernel['int8'].reshape(-1, module.features), kernel['scale'])
  else:
    y = int8_matmul(x, kernel['int8'], kernel['scale'])
  return y + bias if bias is not None else y


class Int8Model:
  """A flax module's `apply` with its Dense and Im2colConv layers run as integer matmuls (module docstring).

  Only `apply` and the wrapped module's attributes are offered: enough for evaluation and prediction (the eval
  step, research.inference), not for training.
  """

  def __init__(self, model: nn.Module):
    self.model = model

  def apply(self, variables: dict, *args, **kwargs) -> Any:
    with nn.intercept_methods(_interceptor):
      return self.model.apply(variables, *args, **kwargs)

  def __getattr__(self, name: str) -> Any:
    return getattr(self.model, name)
