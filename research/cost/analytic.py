"""FLOPs of the model families from per-layer formulas (docs/flops.md), independent of XLA.

Conventions: a multiply-add counts 2 FLOPs (a dense layer is 2 * in * out per position); other elementwise
arithmetic (bias, ReLU, residual adds, gates, norms, softmax) counts 1 FLOP per operation per element, with a
sigmoid 1 / (1 + e^-x) as 3 and the exponential, tanh and rsqrt counted as transcendentals, not FLOPs — the
conventions of XLA's HloCostAnalysis, so the two counts can be compared. Ignored: dropout (a mask multiply per
element in training only), data movement (padding, im2col patches, reshapes, reverses) and loop counters.
"""

import dataclasses
import math
from typing import Any, Callable, Mapping

import jax

from research import models
from research.models import gpt

SIGMOID_FLOPS = 3  # -x, 1 + e^-x, 1 / (.): the exponential is a transcendental.
GELU_FLOPS = 8  # tanh approximation 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) without the tanh.
LAYERNORM_FLOPS = 7  # Per element: mean and mean-square sums, centre, square, scale by rsqrt, gain, shift.
SOFTMAX_FLOPS = 4  # Per element: max, subtract, sum, divide (exp is a transcendental).
LOSS_FLOPS_PER_CLASS = 10  # Cross-entropy forward (log-softmax) and backward (softmax - one-hot), per logit.
# optax.adam's moments, bias corrections and update (12, as XLA counts it), applying it (1), and the gradient and
# parameter norms the train step logs (2 each).
ADAM_FLOPS_PER_PARAM = 17


@dataclasses.dataclass(frozen=True)
class Layer:
  """Forward FLOPs of one layer for one example.

  Attributes:
    name: e.g. 'conv_0', 'block_1/attention_scores'.
    matmul: FLOPs of its multiply-adds (2 per multiply-add).
    elementwise: FLOPs of its other arithmetic (bias, activation, gates, norm, softmax).
    input_grad: whether backpropagation needs the gradient with respect to its input (False for a layer that
      reads the data: only its weight gradient is computed).
  """
  name: str
  matmul: float
  elementwise: float = 0.0
  input_grad: bool = True


def _dense(name: str, n_in: int, n_out: int, positions: int = 1, *, first: bool = False,
           activation: float = 0.0) -> Layer:
  """x W + b at `positions` positions, then an activation of `activation` FLOPs per output element."""
  return Layer(name, 2.0 * n_in * n_out * positions, (1 + activation) * n_out * positions, input_grad=not first)


def _conv(name: str, window: int, c_in: int, c_out: int, out_positions: int, *, first: bool) -> Layer:
  """Convolution + bias + ReLU: 2 * window * c_in * c_out per output position (window = prod(kernel_size))."""
  return Layer(name, 2.0 * window * c_in * c_out * out_positions, 2.0 * c_out * out_positions, input_grad=not first)


def _logreg(m, input_shape) -> list[Layer]:
  return [_dense('dense', math.prod(input_shape), m.num_classes, first=True)]


def _mlp(m, input_shape) -> list[Layer]:
  h = m.hidden_size
  second = _dense('dense_1', h, h, activation=1)
  residual = dataclasses.replace(second, elementwise=second.elementwise + h) if m.residual else second
  return [_dense('dense_0', math.prod(input_shape), h, first=True, activation=1), residual,
          _dense('head', h, m.num_classes)]


def _cnn(m, input_shape) -> list[Layer]:
  length, channels = input_shape[0], (input_shape[1] if len(input_shape) > 1 else 1)
  layers = []
  for i, (c_out, k, s) in enumerate(zip(m.channels, m.kernel_sizes, m.strides)):
    length = (length + 2 * m.padding - k) // s + 1
    layers.append(_conv(f'conv_{i}', k, channels, c_out, length, first=i == 0))
    channels = c_out
  return layers + [_dense('head', length * channels, m.num_classes)]


def _max_pool(name: str, window: int, outputs: int) -> Layer:
  return Layer(name, 0.0, (window - 1) * outputs)  # window - 1 comparisons per output.


def _cnn2d(m, input_shape) -> list[Layer]:
  size, channels = input_shape[0], input_shape[2]
  layers = []
  for i, c_out in enumerate(m.channels):
    size -= 2  # VALID 3x3.
    layers.append(_conv(f'conv_{i}', 9, channels, c_out, size * size, first=i == 0))
    channels = c_out
  size //= 2
  return layers + [_max_pool('pool', 4, size * size * channels),
                   _dense('dense', size * size * channels, m.hidden_size, activation=1),
                   _dense('head', m.hidden_size, m.num_classes)]


def _lenet5(m, input_shape) -> list[Layer]:
  size = max(input_shape[0], 32)  # Padded up to 32x32.
  layers, channels = [], input_shape[2]
  for i, c_out in enumerate((6, 16)):
    size -= 4  # VALID 5x5.
    layers.append(_conv(f'conv_{i}', 25, channels, c_out, size * size, first=i == 0))
    size //= 2
    layers.append(_max_pool(f'pool_{i}', 4, size * size * c_out))
    channels = c_out
  return layers + [_dense('dense_0', size * size * channels, 120, activation=1),
                   _dense('dense_1', 120, 84, activation=1), _dense('head', 84, m.num_classes)]


def _sequence_shape(input_shape: tuple[int, ...]) -> tuple[int, int]:
  """(time, features) as research.models.layers.as_sequence sees one example."""
  return input_shape[0], math.prod(input_shape[1:])


# Gate arithmetic per hidden unit and step beyond h W_h + b_h. GRU: x + h for r and z (2), two sigmoids (6),
# n = tanh(x_n + r * h_n) (2), h = (1 - z) * n + z * h (4). LSTM: x + h for 4 gates (4), three sigmoids (9),
# c = f * c + i * g (3), h = o * tanh(c) (1).
_CELL_FLOPS = {'gru': (3, 2 + 2 * SIGMOID_FLOPS + 2 + 4), 'lstm': (4, 4 + 3 * SIGMOID_FLOPS + 3 + 1)}


def _rnn(m, input_shape, family: str) -> list[Layer]:
  gates, cell = _CELL_FLOPS[family]
  steps, features = _sequence_shape(input_shape)
  h, directions = m.hidden_size, 2 if m.bidirectional else 1
  layers = []
  for i in range(m.num_layers):
    for d in ('forward', 'backward')[:directions]:
      # The input projection is hoisted out of the recurrence: one dense layer over all steps.
      layers.append(_dense(f'{d}_{i}/input', features, gates * h, steps, first=i == 0))
      layers.append(Layer(f'{d}_{i}/recurrence', steps * 2.0 * h * gates * h, steps * (gates * h + cell * h)))
    features = directions * h
  head_in = steps * features if m.head == 'flatten' else features
  return layers + [_dense('head', head_in, m.num_classes)]


def _transformer(m, input_shape) -> list[Layer]:
  steps, features = _sequence_shape(input_shape)
  n, d, heads = steps // m.patch_size, m.d_model, m.num_heads  # n tokens of width d.
  norm = lambda name: Layer(name, 0.0, LAYERNORM_FLOPS * n * d)
  embed = _dense('embed', m.patch_size * features, d, n, first=True)
  layers = [dataclasses.replace(embed, elementwise=embed.elementwise + n * d)]  # + positions.
  for b in range(m.num_layers):
    p = f'block_{b}/'
    layers += [
        norm(p + 'ln_0'),
        _dense(p + 'qkv', d, 3 * d, n),
        # q / sqrt(head_dim); q k^T over all heads: 2 n^2 d; softmax over keys; weights v: 2 n^2 d.
        Layer(p + 'attention_scores', 2.0 * n * n * d, n * d + SOFTMAX_FLOPS * heads * n * n),
        Layer(p + 'attention_values', 2.0 * n * n * d),
        _dense(p + 'out', d, d, n, activation=1),  # activation=1: the residual add.
        norm(p + 'ln_1'),
        _dense(p + 'mlp_0', d, m.mlp_ratio * d, n, activation=GELU_FLOPS),
        _dense(p + 'mlp_1', m.mlp_ratio * d, d, n, activation=1),  # + the residual add.
    ]
  return layers + [norm('ln_final'), Layer('mean_pool', 0.0, n * d), _dense('head', d, m.num_classes)]


def _gpt(m, input_shape) -> list[Layer]:
  """GPT-2 over n tokens: per-token layers at n positions; full n x n attention scores (the causal mask is applied
  to all of them, one select each); the head is the tied embedding (x wte^T, no bias)."""
  n, d, heads, vocab = input_shape[0], m.d_model, m.num_heads, m.num_classes
  head_dim, width = gpt.widths(d, heads, m.head_dim, m.mlp_dim)
  inner = heads * head_dim  # q/k/v width: D unless heads were pruned.
  norm = lambda name: Layer(name, 0.0, LAYERNORM_FLOPS * n * d)
  layers = [Layer('embed', 0.0, n * d, input_grad=False)]  # Token lookup (no arithmetic) + positions.
  for b in range(m.num_layers):
    p = f'h_{b}/'
    layers += [
        norm(p + 'ln_1'),
        _dense(p + 'qkv', d, 3 * inner, n),
        Layer(p + 'attention_scores', 2.0 * n * n * inner, n * inner + (SOFTMAX_FLOPS + 1) * heads * n * n),
        Layer(p + 'attention_values', 2.0 * n * n * inner),
        _dense(p + 'out', inner, d, n, activation=1),  # + the residual add.
        norm(p + 'ln_2'),
        _dense(p + 'mlp_in', d, width, n, activation=GELU_FLOPS),
        _dense(p + 'mlp_out', width, d, n, activation=1),
    ]
  return layers + [norm('ln_f'), Layer('head', 2.0 * n * d * vocab)]


def model_flops_per_token(model_config: Mapping[str, Any], *, seq_len: int, vocab: int) -> float:
  """Training FLOPs per token by the usual language-model count: 6 N + 12 L T d (docs/flops.md).

  6 N: a multiply-add (2) per parameter per token forward, twice that backward, N the parameters without the
  position table (a lookup, never multiplied; the tied token embedding is counted: it is the head's matmul). 12 L T
  d: attention's q k^T and weights v (2 T d each per token per layer forward, x3 for training), counted over the
  whole T x T square as PaLM (Chowdhery et al. 2022, appendix B), nanoGPT's estimate_mfu and MaxText do. Norms,
  softmax and the loss are left out, so this is below the analytic and XLA counts.
  """
  model = models.get_model(model_config, num_classes=vocab)
  n = param_count(model_config, (seq_len,), vocab) - model.context * model.d_model
  inner = model.num_heads * gpt.widths(model.d_model, model.num_heads, model.head_dim)[0]  # D unless heads pruned.
  return 6.0 * n + 12.0 * model.num_layers * seq_len * inner


_FAMILIES: dict[str, Callable[[Any, tuple[int, ...]], list[Layer]]] = {
    'logreg': _logreg,
    'mlp': _mlp,
    'cnn': _cnn,
    'cnn2d': _cnn2d,
    'lenet5': _lenet5,
    'gru': lambda m, shape: _rnn(m, shape, 'gru'),
    'lstm': lambda m, shape: _rnn(m, shape, 'lstm'),
    'transformer': _transformer,
    'gpt': _gpt,
}


def layer_flops(model_config: Mapping[str, Any], *, input_shape: tuple[int, ...], num_classes: int) -> list[Layer]:
  """Forward FLOPs per example, layer by layer.

  Args:
    model_config: the `model` config group (`name` plus fields; missing fields take the model's defaults).
    input_shape: one example's shape, e.g. (40,) or (28, 28, 1).
    num_classes: number of output logits.

  Returns:
    The layers in forward order.

  Raises:
    ValueError: an unknown model name or field (as research.models.get_model).
  """
  model = models.get_model(model_config, num_classes=num_classes)  # Fills in the defaults; validates.
  name = model_config['name']
  if name not in _FAMILIES:
    raise ValueError(f'no FLOP formulas for model {name!r}; add them to research/cost/analytic.py')
  return _FAMILIES[name](model, tuple(input_shape))


def analytic_flops(model_config: Mapping[str, Any], *, input_shape: tuple[int, ...], num_classes: int) -> float:
  """Forward (evaluation) FLOPs per example: the sum of `layer_flops`.

  Args:
    model_config: the `model` config group.
    input_shape: one example's shape.
    num_classes: number of output logits.

  Returns:
    FLOPs of one example's forward pass (without the loss).
  """
  layers = layer_flops(model_config, input_shape=input_shape, num_classes=num_classes)
  return sum(layer.matmul + layer.elementwise for layer in layers)


def analytic_train_step_flops(model_config: Mapping[str, Any], *, input_shape: tuple[int, ...], num_classes: int,
                              batch_size: int, update_flops_per_param: float = ADAM_FLOPS_PER_PARAM) -> float:
  """FLOPs of one train step: forward, loss and backward per example, times the batch, plus the update.

  The backward of a multiply-add layer costs two of its forward: the weight gradient (x^T dy) and the input
  gradient (dy W^T), the latter skipped for layers that read the data (the source of the usual "backward = 2x
  forward, step = 3x forward" rule, which overcounts those). The backward of elementwise arithmetic is counted
  as two of its forward: a local derivative (about the op's own cost: a sigmoid's s (1 - s), a product's other
  factor) times the incoming gradient (one more per operand). The optimizer update costs
  `update_flops_per_param` per parameter per step, whatever the batch.

  Args:
    model_config: the `model` config group.
    input_shape: one example's shape.
    num_classes: number of output logits.
    batch_size: examples per step (global batch).
    update_flops_per_param: FLOPs of the optimizer per parameter (Adam's default; SGD is ~2).

  Returns:
    FLOPs of one train step.
  """
  layers = layer_flops(model_config, input_shape=input_shape, num_classes=num_classes)
  forward = sum(layer.matmul + layer.elementwise for layer in layers)
  backward = sum(layer.matmul * (2 if layer.input_grad else 1) + 2 * layer.elementwise for layer in layers)
  outputs = input_shape[0] if models.is_language_model(model_config['name']) else 1  # Predictions per example.
  per_example = forward + backward + LOSS_FLOPS_PER_CLASS * num_classes * outputs
  return batch_size * per_example + update_flops_per_param * param_count(model_config, input_shape, num_classes)


def param_count(model_config, input_shape: tuple[int, ...], num_classes: int) -> int:
  """Parameters of the model, from its abstract init (no compile, no arrays); `num_classes` is the vocabulary of a
  language model."""
  model = models.get_model(model_config, num_classes=num_classes)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), models.dummy_input(model, input_shape), train=False))
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))
