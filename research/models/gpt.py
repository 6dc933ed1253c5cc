"""A GPT-2 decoder-only language model (Radford et al. 2019) with a KV cache for generation.

GPT-2's architecture: learned token and position embeddings, pre-LN blocks (LN -> causal self-attention -> residual,
LN -> GELU MLP of width 4D -> residual), a final LN, and logits from the token embedding (tied weights). Its
initialisation: N(0, 0.02) everywhere, the residual output projections N(0, 0.02 / sqrt(2 * layers)), zero biases;
LayerNorm epsilon 1e-5; GELU's tanh approximation. Parameters map one-to-one onto Hugging Face's GPT2LMHeadModel
(research/models/hf_gpt2.py loads them; the parity check compares logits).

The attention implementation is chosen per backend (`attention='auto'`): on GPU in bfloat16/float16 cuDNN's fused
kernel (`jax.nn.dot_product_attention(implementation='cudnn')`); elsewhere the einsum + masked softmax written out
here, which on XLA:CPU trains faster than `jax.nn.dot_product_attention`'s XLA path (benchmarks/attention.py). All
implementations compute the same function (tests/gpt_test.py).

Generation (`decode=True`): each attention layer keeps the keys and values of the positions seen so far in the
'cache' collection ([batch, context, heads, head_dim] each, plus the next write index), so one call can prefill a
prompt of any length and each later call feeds one token at a fixed shape: one compiled decode step serves every
position (research/generation.py).

Speed on XLA:CPU (benchmarks/gpt_step.py): the projections and MLP are 2-D matmuls on [batch * time, features]
rows whose weight gradients run through YNNPACK (`_Dense`, `layers.matmul`).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models.layers import Dropout, logical, matmul

ATTENTIONS = ('auto', 'einsum', 'xla', 'cudnn')
LAYER_NORM_EPS = 1e-5  # GPT-2's (flax's default is 1e-6).
_ZEROS = nn.initializers.zeros_init()


def widths(d_model: int, num_heads: int, head_dim: int = 0, mlp_dim: int = 0) -> tuple[int, int]:
  """(head_dim, MLP width): the given ones, or GPT-2's D / num_heads and 4 D where 0 (structured pruning, which
  removes whole heads and MLP units, sets them; research/compression/structured.py)."""
  return head_dim or d_model // num_heads, mlp_dim or 4 * d_model


def _normal(std: float) -> nn.initializers.Initializer:
  return nn.initializers.normal(std)


def _layer_norm(name: str | None = None) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LAYER_NORM_EPS, scale_init=logical(nn.initializers.ones_init(), 'embed'),
                      bias_init=logical(_ZEROS, 'embed'), name=name)


class _Dense(nn.Module):
  """nn.Dense / nn.DenseGeneral's params and function as one 2-D matmul on rows [batch * time, features].

  Why: to route every weight gradient through layers.matmul (flax's Dense/DenseGeneral differentiate through
  lax.dot_general, whose MLP weight gradients XLA:CPU gave to Eigen); with it the baby GPT's train step
  (benchmarks/gpt_step.py) went from 55 to 51 ms min, 79 to 67 ms median, interleaved in one process. The kernel keeps
  its multi-axis shape (e.g. qkv's [D, 3, heads, head_dim]), so the parameter tree, its init values, its sharding
  names and checkpoints are unchanged; the forward is bit-identical.

  Attributes:
    kernel_shape: the kernel's shape; its first `in_axes` axes are the inputs, the rest the outputs (the bias's).
    in_axes: how many leading kernel axes are contracted with the input's features.
    kernel_axes: logical axis names of the kernel's dimensions (the bias takes the output axes' names).
    kernel_std: the kernel's N(0, std) init (biases start at zero).
  """

  kernel_shape: tuple[int, ...]
  in_axes: int
  kernel_axes: tuple[str | None, ...]
  kernel_std: float

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Args: x: [rows, prod(kernel_shape[:in_axes])]. Returns: [rows, prod(kernel_shape[in_axes:])]."""
    kernel = self.param('kernel', logical(_normal(self.kernel_std), *self.kernel_axes), self.kernel_shape)
    bias = self.param('bias', logical(_ZEROS, *self.kernel_axes[self.in_axes:]), self.kernel_shape[self.in_axes:])
    dtype = jnp.result_type(x, kernel, bias)
    x, kernel, bias = x.astype(dtype), kernel.astype(dtype), bias.astype(dtype)
    kernel = kernel.reshape(math.prod(self.kernel_shape[:self.in_axes]), -1)  # [in, out]
    y = matmul(x, kernel)
    return y + bias.reshape(-1)


def resolve_attention(attention: str, dtype) -> str:
  """The implementation 'auto' picks: cuDNN's fused kernel on GPU in 16-bit floats, else the einsum."""
  if attention != 'auto':
    return attention
  if jax.default_backend() == 'gpu' and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
    return 'cudnn'
  return 'einsum'


def einsum_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """softmax(q k^T / sqrt(head_dim) where mask, else -inf) v, the softmax in float32.

  Args:
    q: [batch, time_q, heads, head_dim].
    k, v: [batch, time_k, heads, head_dim].
    mask: [time_q, time_k] bool, True where a query may attend to a key.

  Returns:
    [batch, time_q, heads, head_dim] in q's dtype.
  """
  q = q * jnp.asarray(1 / math.sqrt(q.shape[-1]), q.dtype)
  scores = jnp.einsum('bqhd,bkhd->bhqk', q, k).astype(jnp.float32)  # [batch, heads, time_q, time_k]
  scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum('bhqk,bkhd->bqhd', weights, v)


CAUSAL_BLOCK = 128  # Query rows per block of blocked_causal_attention.


def blocked_causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, block: int = CAUSAL_BLOCK) -> jax.Array:
  """Causal einsum attention by blocks of `block` queries, each attending only to the keys up to its last row.

  Why: a causal mask wastes the scores above the diagonal; with blocks, query block i computes [block, (i+1) block]
  scores instead of [block, time], so at time 256 (the small preset) 5/8 of the score matrix is computed and
  stored (3/8 saved, in both passes). Its train step on 2 CPU cores: 8.45 -> 7.86 s (blocks of 64: 7.96 s). At
  time <= `block` this is einsum_attention itself (the tiny preset's 64 tokens got slower with blocks of 32 or 16:
  the per-block overhead outweighs the saving). Same function as einsum_attention with a causal mask
  (tests/models_test.py).

  Args:
    q, k, v: [batch, time, heads, head_dim], the same time (no cache).
    block: query rows per block.

  Returns:
    [batch, time, heads, head_dim].
  """
  t = q.shape[1]
  if t <= block:
    return einsum_attention(q, k, v, jnp.tril(jnp.ones((t, t), bool)))
  outs = []
  for start in range(0, t, block):
    end = min(start + block, t)
    mask = jnp.arange(start, end)[:, None] >= jnp.arange(end)[None, :]  # [end - start, end]
    outs.append(einsum_attention(q[:, start:end], k[:, :end], v[:, :end], mask))
  return jnp.concatenate(outs, axis=1)


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, implementation: str) -> jax.Array:
  """Causal self-attention over [batch, time, heads, head_dim] by `implementation` (a member of ATTENTIONS)."""
  implementation = resolve_attention(implementation, q.dtype)
  if implementation == 'einsum':
    return blocked_causal_attention(q, k, v)
  if implementation in ('xla', 'cudnn'):
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation)
  raise ValueError(f'model.attention ({implementation!r}) must be one of {ATTENTIONS}')


class CausalSelfAttention(nn.Module):
  """Multi-head causal self-attention with one fused q/k/v projection (GPT-2's c_attn) and a KV cache.

  Attributes:
    num_heads: attention heads; the width must be divisible by it.
    context: the longest sequence (the KV cache's length).
    num_layers: the model's depth (scales the output projection's init).
    attention: a member of ATTENTIONS (training and prefill-free forward passes; decoding uses the einsum).
  """

  num_heads: int
  context: int
  num_layers: int
  attention: str
  head_dim: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, *, decode: bool) -> jax.Array:
    """Args: x: [batch, time, D]; decode: attend to the cache and append this call's keys/values to it.

    Returns: [batch, time, D].
    """
    b, t, d = x.shape
    head_dim, _ = widths(d, self.num_heads, self.head_dim)
    inner = self.num_heads * head_dim  # D, unless heads were pruned (research/compression/structured.py).
    # Tensor parallel (Megatron): q/k/v split by heads (columns), the output projection by heads (rows).
    qkv = _Dense((d, 3, self.num_heads, head_dim), 1, ('embed', None, 'heads', 'kv'), 0.02,
                 name='qkv')(x.reshape(b * t, d))
    qkv = qkv.reshape(b, t, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [b, t, heads, hd] each
    if decode:
      out = self._cached_attention(q, k, v)
    else:
      out = causal_attention(q, k, v, implementation=self.attention)
    out = _Dense((self.num_heads, head_dim, d), 2, ('heads', 'kv', 'embed'), 0.02 / math.sqrt(2 * self.num_layers),
                 name='out')(out.reshape(b * t, inner))
    return out.reshape(b, t, d)

  def _cached_attention(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Writes k, v at the cache's index, then attends q (positions index.. index + time - 1) to the cache."""
    b, t, heads, head_dim = q.shape
    cache_shape = (b, self.context, heads, head_dim)
    cached_k = self.variable('cache', 'key', jnp.zeros, cache_shape, k.dtype)
    cached_v = self.variable('cache', 'value', jnp.zeros, cache_shape, v.dtype)
    index = self.variable('cache', 'index', lambda: jnp.zeros((), jnp.int32))
    if self.is_initializing():  # model.init(..., decode=True) creates the empty cache; it does not fill it.
      return einsum_attention(q, k, v, jnp.tril(jnp.ones((t, t), bool)))
    start = index.value
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k.astype(cached_k.value.dtype), (0, start, 0, 0))
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v.astype(cached_v.value.dtype), (0, start, 0, 0))
    index.value = start + t
    query_pos = start + jnp.arange(t)
    mask = jnp.arange(self.context)[None, :] <= query_pos[:, None]  # [time, context]: the past and itself.
    return einsum_attention(q, cached_k.value.astype(q.dtype), cached_v.value.astype(q.dtype), mask)


class Block(nn.Module):
  """x + Attn(LN(x)), then x + MLP(LN(x)) with a GELU MLP of width 4D; dropout on each residual branch."""

  num_heads: int
  context: int
  num_layers: int
  attention: str
  dropout_rate: float
  head_dim: int = 0
  mlp_dim: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, decode: bool) -> jax.Array:
    """Args: x: [batch, time, D]; train, decode positional so that nn.remat can mark them static."""
    b, t, d = x.shape
    drop = Dropout(self.dropout_rate, deterministic=not train)
    x = x + drop(CausalSelfAttention(self.num_heads, self.context, self.num_layers, self.attention, self.head_dim,
                                     name='attn')(_layer_norm('ln_1')(x), decode=decode))
    _, width = widths(d, self.num_heads, mlp_dim=self.mlp_dim)
    h = _Dense((d, width), 1, ('embed', 'mlp'), 0.02, name='mlp_in')(_layer_norm('ln_2')(x).reshape(b * t, d))
    h = nn.gelu(h, approximate=True)  # GPT-2's "gelu_new".
    h = _Dense((width, d), 1, ('mlp', 'embed'), 0.02 / math.sqrt(2 * self.num_layers), name='mlp_out')(h)
    return x + drop(h.reshape(b, t, d))


class GPT(nn.Module):
  """GPT-2: tokens [batch, time] -> next-token logits [batch, time, vocab].

  Presets (configs/lm.py; GPT-2 sizes with vocab 50257 and context 1024): gpt2 124M (12 layers, 12 heads, 768),
  gpt2-medium 355M (24, 16, 1024), gpt2-large 774M (36, 20, 1280), gpt2-xl 1.56B (48, 25, 1600).

  Attributes:
    num_classes: the vocabulary size (256 for byte-level data, 50257 for GPT-2's BPE).
    context: the longest sequence (rows of the position table; the KV cache's length).
    d_model: width D.
    num_heads: attention heads (D must be divisible by it).
    num_layers: blocks.
    dropout_rate: dropout on the embeddings and each residual branch (train only).
    attention: 'auto' | 'einsum' | 'xla' | 'cudnn' (module docstring).
    remat: recompute each block's activations in the backward pass instead of storing them.
    head_dim: each head's width; 0: D / num_heads (GPT-2). Set otherwise by structured pruning, which removes
      whole heads (num_heads falls, head_dim stays).
    mlp_dim: the MLP's hidden width; 0: 4D (GPT-2; Hugging Face's n_inner).
  """

  num_classes: int
  context: int = 1024
  d_model: int = 768
  num_heads: int = 12
  num_layers: int = 12
  dropout_rate: float = 0.0
  attention: str = 'auto'
  remat: bool = False
  head_dim: int = 0
  mlp_dim: int = 0

  input_dtype = jnp.int32  # Token ids (not a field: the dummy input of init uses it).

  @nn.compact
  def __call__(self, tokens: jax.Array, *, train: bool, decode: bool = False) -> jax.Array:
    """Args:
      tokens: [batch, time] int token ids, time <= context.
      train: enables dropout.
      decode: use and extend the KV cache (the 'cache' collection must be mutable); positions continue from it.

    Returns: [batch, time, num_classes] logits (float32 unless the params were cast).
    """
    if not self.head_dim and self.d_model % self.num_heads:
      raise ValueError(f'model.d_model ({self.d_model}) must be divisible by model.num_heads ({self.num_heads}) '
                       'unless model.head_dim is set')
    if self.head_dim < 0 or self.mlp_dim < 0:
      raise ValueError(f'model.head_dim ({self.head_dim}) and model.mlp_dim ({self.mlp_dim}) must be >= 0 (0: '
                       "GPT-2's D / num_heads and 4D)")
    if self.attention not in ATTENTIONS:
      raise ValueError(f'model.attention ({self.attention!r}) must be one of {ATTENTIONS}')
    b, t = tokens.shape
    if t > self.context:
      raise ValueError(f'sequence length {t} exceeds model.context ({self.context})')
    wte = nn.Embed(self.num_classes, self.d_model, embedding_init=logical(_normal(0.02), 'vocab', 'embed'),
                   name='wte')
    wpe = self.param('wpe', logical(_normal(0.02), None, 'embed'), (self.context, self.d_model))
    start = 0
    if decode:
      position = self.variable('cache', 'position', lambda: jnp.zeros((), jnp.int32))
      start = position.value
      if self.is_initializing():
        start = 0
      else:
        position.value = start + t
    x = wte(tokens)  # Its dtype is the embedding's (read from the output: an int8 model's table is not an array).
    x = x + jax.lax.dynamic_slice_in_dim(wpe, start, t).astype(x.dtype)
    x = Dropout(self.dropout_rate, deterministic=not train)(x)
    block = nn.remat(Block, static_argnums=(2, 3)) if self.remat else Block  # 2, 3: train, decode (0 is self).
    for i in range(self.num_layers):
      x = block(self.num_heads, self.context, self.num_layers, self.attention, self.dropout_rate, self.head_dim,
                self.mlp_dim, name=f'h_{i}')(x, train, decode)
    return wte.attend(_layer_norm('ln_f')(x))  # Tied: logits = x wte^T.
