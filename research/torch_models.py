"""PyTorch twins of the benchmarked flax models (research/benchmark.py): same shapes, same parameter count, same
initialisation scheme, built from the same `model` config group.

Only the side-by-side benchmark imports this module; torch is the optional [reference] extra (`make bench` installs
it), never a core dependency. Each twin is what a PyTorch user would write for the architecture (eager mode, torch's
own layers: nn.Conv1d/2d, nn.GRU/LSTM, F.scaled_dot_product_attention), so the comparison is against idiomatic
PyTorch rather than a port of our XLA-specific formulations. tests/torch_models_test.py checks that every twin has
exactly the flax model's parameter count.
"""

import math
from typing import Any, Mapping

import torch
from torch import nn
import torch.nn.functional as F

SUPPORTED = ('mlp', 'cnn', 'cnn2d', 'gru', 'lstm', 'gpt')


def _check_init(cfg: Mapping[str, Any], name: str) -> None:
  """The flax model's 'pytorch' init is torch's default; its 'flax' init differs only in distribution (lecun
  normal / orthogonal vs uniform), which no speed figure depends on. Both are accepted; the twin uses torch's."""
  if cfg.get('weight_init', 'pytorch') not in ('flax', 'pytorch'):
    raise ValueError(f"model.weight_init ({cfg['weight_init']!r}) of {name} must be 'flax' or 'pytorch'")


class MLP(nn.Module):
  """research.models.mlp.MLP: relu(W1 x), then h + relu(W2 h) (residual) or relu(W2 h), then the head."""

  def __init__(self, cfg, in_features: int, num_classes: int):
    super().__init__()
    h = cfg['hidden_size']
    self.residual, self.drop = cfg['residual'], nn.Dropout(cfg['dropout_rate'])
    self.fc1, self.fc2, self.head = nn.Linear(in_features, h), nn.Linear(h, h), nn.Linear(h, num_classes)

  def forward(self, x):
    h = self.drop(F.relu(self.fc1(x.flatten(1))))
    second = F.relu(self.fc2(h))
    return self.head(self.drop(h + second if self.residual else second))


class CNN1D(nn.Module):
  """research.models.cnn.CNN: strided Conv1d + ReLU layers, flatten, linear head. Inputs [batch, length]."""

  def __init__(self, cfg, length: int, num_classes: int):
    super().__init__()
    convs, channels = [], 1
    for features, k, s in zip(cfg['channels'], cfg['kernel_sizes'], cfg['strides']):
      convs.append(nn.Conv1d(channels, features, k, stride=s, padding=cfg['padding']))
      length, channels = (length + 2 * cfg['padding'] - k) // s + 1, features
    self.convs, self.drop = nn.ModuleList(convs), nn.Dropout(cfg['dropout_rate'])
    self.head = nn.Linear(length * channels, num_classes)

  def forward(self, x):
    x = x[:, None, :]  # [batch, 1, length]: PyTorch's channels-first layout.
    for conv in self.convs:
      x = F.relu(conv(x))
    return self.head(self.drop(x.flatten(1)))


class CNN2D(nn.Module):
  """research.models.cnn.CNN2D (PyTorch's examples/mnist): two VALID 3x3 convs, 2x2 max pool, fc, head."""

  def __init__(self, cfg, input_shape: tuple[int, ...], num_classes: int):
    super().__init__()
    height, width, channels = input_shape
    convs = []
    for features in cfg['channels']:
      convs.append(nn.Conv2d(channels, features, 3))
      height, width, channels = height - 2, width - 2, features
    self.convs, self.drop = nn.ModuleList(convs), nn.Dropout(cfg['dropout_rate'])
    self.fc = nn.Linear(channels * (height // 2) * (width // 2), cfg['hidden_size'])
    self.head = nn.Linear(cfg['hidden_size'], num_classes)

  def forward(self, x):
    x = x.permute(0, 3, 1, 2)  # [batch, H, W, C] (the JAX layout of the data) -> [batch, C, H, W].
    for conv in self.convs:
      x = F.relu(conv(x))
    x = self.drop(F.max_pool2d(x, 2).flatten(1))
    return self.head(self.drop(F.relu(self.fc(x))))


class RNN(nn.Module):
  """research.models.rnn.GRU / LSTM: torch.nn.GRU / nn.LSTM (cuDNN-style fused cells), then the linear head."""

  def __init__(self, cfg, input_shape: tuple[int, ...], num_classes: int, *, cell: str):
    super().__init__()
    time, features = (input_shape[0], 1) if len(input_shape) == 1 else (input_shape[0], math.prod(input_shape[1:]))
    directions = 2 if cfg['bidirectional'] else 1
    rnn_cls = nn.GRU if cell == 'gru' else nn.LSTM
    self.rnn = rnn_cls(features, cfg['hidden_size'], num_layers=cfg['num_layers'], batch_first=True,
                       bidirectional=cfg['bidirectional'], dropout=cfg['dropout_rate'] if cfg['num_layers'] > 1 else 0)
    self.flatten, self.hidden, self.drop = cfg['head'] == 'flatten', cfg['hidden_size'], nn.Dropout(cfg['dropout_rate'])
    width = directions * cfg['hidden_size'] * (time if self.flatten else 1)
    self.head = nn.Linear(width, num_classes)

  def forward(self, x):
    x = x[..., None] if x.dim() == 2 else x.flatten(2)  # [batch, time, features]
    out, _ = self.rnn(x)  # [batch, time, directions * H]
    if self.flatten:
      out = out.flatten(1)
    else:  # Each direction's final state: the forward's last output, the backward's first.
      out = torch.cat([out[:, -1, :self.hidden], out[:, 0, self.hidden:]], dim=-1)
    return self.head(self.drop(out))


class Block(nn.Module):
  """research.models.gpt.Block as nanoGPT writes it: pre-LN, fused qkv, causal SDPA, tanh-GELU MLP."""

  def __init__(self, d: int, heads: int, dropout: float):
    super().__init__()
    self.heads = heads
    self.ln_1, self.ln_2 = nn.LayerNorm(d, eps=1e-5), nn.LayerNorm(d, eps=1e-5)
    self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
    self.mlp_in, self.mlp_out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
    self.drop = nn.Dropout(dropout)

  def forward(self, x):
    b, t, d = x.shape
    q, k, v = self.qkv(self.ln_1(x)).split(d, dim=2)
    q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
    x = x + self.drop(self.out(y))
    return x + self.drop(self.mlp_out(F.gelu(self.mlp_in(self.ln_2(x)), approximate='tanh')))


class GPT(nn.Module):
  """research.models.gpt.GPT: learned positions, dropout on the embeddings and residual branches, tied head, and
  GPT-2's init (N(0, 0.02), residual projections N(0, 0.02 / sqrt(2 layers)), zero biases)."""

  def __init__(self, cfg, num_classes: int):
    super().__init__()
    d, layers = cfg['d_model'], cfg['num_layers']
    self.wte, self.wpe = nn.Embedding(num_classes, d), nn.Embedding(cfg['context'], d)
    self.blocks = nn.ModuleList(Block(d, cfg['num_heads'], cfg['dropout_rate']) for _ in range(layers))
    self.ln_f, self.drop = nn.LayerNorm(d, eps=1e-5), nn.Dropout(cfg['dropout_rate'])
    for name, p in self.named_parameters():
      if p.dim() > 1:
        nn.init.normal_(p, std=0.02 / ((2 * layers) ** 0.5 if name.endswith(('out.weight', 'mlp_out.weight')) else 1))
      elif name.endswith('bias'):  # Linear biases (LayerNorm's start at zero anyway).
        nn.init.zeros_(p)

  def forward(self, tokens):
    x = self.drop(self.wte(tokens) + self.wpe(torch.arange(tokens.shape[1], device=tokens.device)))
    for block in self.blocks:
      x = block(x)
    return self.ln_f(x) @ self.wte.weight.T  # Tied head: [batch, time, vocab].


def build(model_config: Mapping[str, Any], *, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
  """The PyTorch twin of `models.get_model(model_config)`.

  Args:
    model_config: the `model` config group (name + fields; every field the flax model reads must be present, as the
      presets list them).
    input_shape: one example's shape ((40,), (28, 28, 1), or (context,) token ids).
    num_classes: logits (the vocabulary of a language model).

  Raises:
    ValueError: a model without a twin.
  """
  cfg = dict(model_config)
  name = cfg['name']
  if name not in SUPPORTED:
    raise ValueError(f'model.name ({name!r}) has no PyTorch twin; supported: {SUPPORTED}')
  _check_init(cfg, name)
  if name == 'mlp':
    return MLP(cfg, math.prod(input_shape), num_classes)
  if name == 'cnn':
    return CNN1D(cfg, input_shape[0], num_classes)
  if name == 'cnn2d':
    return CNN2D(cfg, input_shape, num_classes)
  if name in ('gru', 'lstm'):
    return RNN(cfg, input_shape, num_classes, cell=name)
  return GPT(cfg, num_classes)
