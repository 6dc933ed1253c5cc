"""Loads a local Hugging Face GPT-2 directory (GPT2LMHeadModel.save_pretrained) into our GPT (research/models/gpt.py).

    model, params = hf_gpt2.load('/path/to/gpt2')  # config.json + model.safetensors (or pytorch_model.bin + torch)
    logits = model.apply({'params': params}, tokens, train=False)

Weights map one to one. Hugging Face's GPT-2 uses Conv1D layers whose weights are [in, out] (x @ W + b), as our
Dense kernels are, so only reshapes are needed: c_attn [D, 3D] (columns: q, k, v, each heads-major) -> qkv kernel
[D, 3, heads, head_dim]; attn.c_proj [D, D] (rows heads-major) -> out kernel [heads, head_dim, D]. lm_head is tied
to wte (save_pretrained does not store it; a stored copy must equal wte). Tensor names may carry the
'transformer.' prefix (GPT2LMHeadModel) or not (GPT2Model). Nothing is downloaded.
"""

import json
import math
import os
from typing import Any

import flax.linen as nn
import numpy as np

from research.models import gpt

# config.json options whose value changes the function computed: each must be one of the values our GPT computes.
_REQUIRED = {
    'activation_function': ('gelu_new', 'gelu_pytorch_tanh'),  # Both are GELU's tanh approximation.
    'scale_attn_weights': (True,),
    'scale_attn_by_inverse_layer_idx': (False,),
    'add_cross_attention': (False,),
    'tie_word_embeddings': (True,),
}
# Buffers of older checkpoints (the causal mask and its fill value), not parameters.
_IGNORED_SUFFIXES = ('.attn.bias', '.attn.masked_bias')


class CheckpointError(ValueError):
  """A directory that is not a GPT-2 checkpoint our GPT can compute exactly."""


def model_from_config(config: dict) -> gpt.GPT:
  """Our GPT with the architecture of a Hugging Face GPT2Config (a dict read from config.json).

  Raises:
    CheckpointError: a model type, activation, epsilon, MLP width or other option our GPT does not compute.
  """
  if config.get('model_type', 'gpt2') != 'gpt2':
    raise CheckpointError(f'config.json model_type is {config["model_type"]!r}; only \'gpt2\' is supported')
  for key, allowed in _REQUIRED.items():
    if key in config and config[key] not in allowed:
      raise CheckpointError(f'config.json {key}={config[key]!r}: our GPT computes only {list(allowed)}')
  eps = config.get('layer_norm_epsilon', 1e-5)
  if not math.isclose(eps, gpt.LAYER_NORM_EPS, rel_tol=1e-6):
    raise CheckpointError(f'config.json layer_norm_epsilon={eps}: our GPT uses {gpt.LAYER_NORM_EPS}')
  width = config['n_embd']
  if config.get('n_inner') not in (None, 4 * width):
    raise CheckpointError(f'config.json n_inner={config["n_inner"]}: our GPT\'s MLP is 4 * n_embd ({4 * width})')
  if width % config['n_head']:
    raise CheckpointError(f'config.json n_embd ({width}) is not divisible by n_head ({config["n_head"]})')
  return gpt.GPT(num_classes=config['vocab_size'], context=config['n_positions'], d_model=width,
                 num_heads=config['n_head'], num_layers=config['n_layer'])


def read_tensors(directory: str) -> dict[str, np.ndarray]:
  """The checkpoint's tensors by name: model.safetensors, else pytorch_model.bin (needs torch)."""
  safetensors_path = os.path.join(directory, 'model.safetensors')
  bin_path = os.path.join(directory, 'pytorch_model.bin')
  if os.path.isfile(safetensors_path):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

    return load_file(safetensors_path)
  if os.path.isfile(bin_path):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise CheckpointError(f'{bin_path} is a PyTorch pickle and torch is not installed: install the [reference] '
                            'extra (pip install -e ".[reference]") or convert it to model.safetensors') from None
    state = torch.load(bin_path, map_location='cpu', weights_only=True)
    return {name: tensor.float().numpy() for name, tensor in state.items()}
  raise CheckpointError(f'{directory} has neither model.safetensors nor pytorch_model.bin')


def params_from_tensors(tensors: dict[str, np.ndarray], model: gpt.GPT) -> dict[str, Any]:
  """Maps Hugging Face GPT-2 tensors (with or without the 'transformer.' prefix) onto our GPT's param tree.

  Args:
    tensors: {name: array} as in model.safetensors.
    model: the GPT they are for (its depth, heads and width give the reshapes).

  Returns:
    Params (float32 numpy arrays) with exactly the tree of model.init.

  Raises:
    CheckpointError: a missing, unexpected or misshapen tensor, or an lm_head that is not tied to wte.
  """
  t = {name.removeprefix('transformer.'): np.asarray(value, np.float32) for name, value in tensors.items()
       if not name.endswith(_IGNORED_SUFFIXES)}
  lm_head = t.pop('lm_head.weight', None)
  used = set()

  def take(name: str, shape: tuple[int, ...], ours: tuple[int, ...] | None = None) -> np.ndarray:
    """Tensor `name`, checked to have Hugging Face's `shape`, reshaped to ours."""
    if name not in t:
      raise CheckpointError(f'the checkpoint has no tensor {name!r} (nor transformer.{name})')
    used.add(name)
    if t[name].shape != shape:
      raise CheckpointError(f'tensor {name!r} has shape {t[name].shape}; config.json implies {shape}')
    return t[name].reshape(ours or shape)

  d, heads, vocab = model.d_model, model.num_heads, model.num_classes
  hd = d // heads

  def ln(name: str) -> dict[str, np.ndarray]:
    return {'scale': take(f'{name}.weight', (d,)), 'bias': take(f'{name}.bias', (d,))}

  params = {'wte': {'embedding': take('wte.weight', (vocab, d))}, 'wpe': take('wpe.weight', (model.context, d)),
            'ln_f': ln('ln_f')}
  for i in range(model.num_layers):
    p = f'h.{i}.'
    params[f'h_{i}'] = {
        'ln_1': ln(p + 'ln_1'), 'ln_2': ln(p + 'ln_2'),
        'attn': {'qkv': {'kernel': take(p + 'attn.c_attn.weight', (d, 3 * d), (d, 3, heads, hd)),
                         'bias': take(p + 'attn.c_attn.bias', (3 * d,), (3, heads, hd))},
                 'out': {'kernel': take(p + 'attn.c_proj.weight', (d, d), (heads, hd, d)),
                         'bias': take(p + 'attn.c_proj.bias', (d,))}},
        'mlp_in': {'kernel': take(p + 'mlp.c_fc.weight', (d, 4 * d)), 'bias': take(p + 'mlp.c_fc.bias', (4 * d,))},
        'mlp_out': {'kernel': take(p + 'mlp.c_proj.weight', (4 * d, d)), 'bias': take(p + 'mlp.c_proj.bias', (d,))},
    }
  unexpected = sorted(set(t) - used)
  if unexpected:
    raise CheckpointError(f'unexpected tensors for a {model.num_layers}-layer GPT-2: {unexpected[:5]}')
  if lm_head is not None and not np.array_equal(lm_head, params['wte']['embedding']):
    raise CheckpointError('lm_head.weight differs from wte.weight: our GPT ties the output layer to the embedding')
  return params


def to_tensors(params: dict[str, Any], model: gpt.GPT) -> dict[str, np.ndarray]:
  """The inverse of params_from_tensors: our params as GPT2LMHeadModel's state dict (without lm_head, as
  save_pretrained writes it), for safetensors.numpy.save_file."""
  d = model.d_model
  if model.head_dim or model.mlp_dim:
    raise CheckpointError(f'model.head_dim={model.head_dim}, model.mlp_dim={model.mlp_dim}: a GPT-2 checkpoint has '
                          'D / heads and 4D (a structurally pruned GPT has no Hugging Face layout)')
  params = nn.meta.unbox(params)  # model.init's params carry logical axis names.
  p = {'transformer.wte.weight': params['wte']['embedding'], 'transformer.wpe.weight': params['wpe'],
       'transformer.ln_f.weight': params['ln_f']['scale'], 'transformer.ln_f.bias': params['ln_f']['bias']}
  for i in range(model.num_layers):
    h, n = params[f'h_{i}'], f'transformer.h.{i}.'
    p.update({n + 'ln_1.weight': h['ln_1']['scale'], n + 'ln_1.bias': h['ln_1']['bias'],
              n + 'ln_2.weight': h['ln_2']['scale'], n + 'ln_2.bias': h['ln_2']['bias'],
              n + 'attn.c_attn.weight': h['attn']['qkv']['kernel'].reshape(d, 3 * d),
              n + 'attn.c_attn.bias': h['attn']['qkv']['bias'].reshape(3 * d),
              n + 'attn.c_proj.weight': h['attn']['out']['kernel'].reshape(d, d),
              n + 'attn.c_proj.bias': h['attn']['out']['bias'],
              n + 'mlp.c_fc.weight': h['mlp_in']['kernel'], n + 'mlp.c_fc.bias': h['mlp_in']['bias'],
              n + 'mlp.c_proj.weight': h['mlp_out']['kernel'], n + 'mlp.c_proj.bias': h['mlp_out']['bias']})
  return {name: np.ascontiguousarray(value, np.float32) for name, value in p.items()}


def load(directory: str) -> tuple[gpt.GPT, dict[str, Any]]:
  """Reads a GPT2LMHeadModel.save_pretrained directory.

  Args:
    directory: holds config.json and model.safetensors (or pytorch_model.bin, read only if torch is installed).

  Returns:
    (model, params): our GPT of the checkpoint's architecture, and its params (float32 numpy arrays).

  Raises:
    CheckpointError: a missing directory or file, an unsupported config, or tensors that do not fit it.
  """
  config_path = os.path.join(directory, 'config.json')
  if not os.path.isfile(config_path):
    raise CheckpointError(f'{config_path} does not exist: expected a Hugging Face GPT-2 directory (config.json + '
                          'model.safetensors, as written by GPT2LMHeadModel.save_pretrained)')
  with open(config_path) as f:
    try:
      config = json.load(f)
    except json.JSONDecodeError as e:
      raise CheckpointError(f'{config_path} is not valid JSON: {e}') from e
  missing = [k for k in ('n_layer', 'n_head', 'n_embd', 'n_positions', 'vocab_size') if k not in config]
  if missing:
    raise CheckpointError(f'{config_path} lacks {missing}: not a GPT-2 config')
  model = model_from_config(config)
  return model, params_from_tensors(read_tensors(directory), model)
