"""Structured pruning: drop the least important channels / hidden units, giving a smaller DENSE model.

Why structured: magnitude (unstructured) pruning zeroes weights in place, so the shapes, the FLOPs of dense kernels
and the latency stay the same unless sparse kernels are used. Removing whole units instead (a conv's output
channels, an MLP's hidden neurons) yields a model of the same family with smaller widths and ordinary config and
params: it trains, evaluates, is saved and is costed (research/cost/analytic.py) like any other model. That is
what 'structuredNN' means in the compression experiments: a dense model with at most NN% of the FLOPs
(`keep_for_flops` picks the width, `shrink` makes the model).

Importance (Li et al. 2017, "Pruning Filters for Efficient ConvNets"): a unit's importance is the L1 norm of its
incoming weights, i.e. the kernel slice that produces it, computed on the unpruned model for every layer at once
(the paper's "independent" strategy, so importance is a property of the trained model, not of `keep`). Removing a
unit also removes the following layer's inputs that read it, so the smaller model computes exactly what the
original computes with the pruned units' incoming weights and biases zeroed (each then outputs relu(0) = 0).

Supported models (`SUPPORTED`):
  mlp  research/models/mlp.py. With residual=True the second layer is h + relu(W2 h): both hidden layers write
       the same unit index, so a unit is kept or dropped in both, ranked by the sum of the two layers' L1 norms.
       Without the residual the two layers are pruned independently (to the same width: one hidden_size).
  cnn  research/models/cnn.py's 1-D CNN: every conv's output channels; the head reads the flattened [length',
       channels] features position-major (row = position * C + channel), so it keeps those rows of each position.
  gpt  research/models/gpt.py: every block's attention heads (a head's incoming weights: its q, k and v columns
       of the fused projection; the output projection loses the head's rows; head_dim stays) and MLP hidden units
       (mlp_in's columns, mlp_out's rows), the same count in every block (the config has one num_heads and one
       mlp_dim). A head whose q, k, v weights and biases are zero outputs 0 (its values are 0 whatever it attends
       to), so here too the smaller model computes what the original computes with those weights zeroed.
"""

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research import models
from research.models import gpt
from research.cost import analytic

SUPPORTED = ('mlp', 'cnn', 'gpt')

Params = dict[str, Any]


def _full_config(model_config: Mapping[str, Any]) -> dict[str, Any]:
  """`model_config` as a plain dict with every field of its model (defaults filled in, sequences as tuples).

  Raises:
    ValueError: the model is not in SUPPORTED, or a field is not one of the model's.
  """
  name = model_config['name']
  if name not in SUPPORTED:
    raise ValueError(f'structured pruning supports models {SUPPORTED}, not {name!r}')
  models.get_model(model_config, num_classes=1)  # Validates the fields (its error names the unknown one).
  config = {'name': name, **{key: default for key, (_, default) in models.model_fields(name).items()}}
  for key, value in model_config.items():
    if key != 'name':
      config[key] = tuple(value) if isinstance(value, (list, tuple)) else value  # Lists from the command line.
  if name == 'cnn' and not len(config['channels']) == len(config['kernel_sizes']) == len(config['strides']):
    raise ValueError(f"model.channels {config['channels']}, model.kernel_sizes {config['kernel_sizes']} and "
                     f"model.strides {config['strides']} must have the same length")
  return config


def _gpt_widths(config: Mapping[str, Any]) -> tuple[int, int, int]:
  """(heads, head_dim, mlp width) of a full gpt config, with GPT-2's defaults for head_dim and mlp_dim of 0."""
  heads = config['num_heads']
  return heads, *gpt.widths(config['d_model'], heads, config['head_dim'], config['mlp_dim'])


def _widths(config: Mapping[str, Any]) -> dict[str, int]:
  """{unit group: units} of the groups whose units are pruned, in forward order: a layer's output units, or for
  the gpt 'h_i/heads' and 'h_i/mlp' per block."""
  if config['name'] == 'cnn':
    return {f'Im2colConv_{i}': c for i, c in enumerate(config['channels'])}
  if config['name'] == 'gpt':
    heads, _, mlp = _gpt_widths(config)
    return {f'h_{i}/{group}': width for i in range(config['num_layers'])
            for group, width in (('heads', heads), ('mlp', mlp))}
  return {'Dense_0': config['hidden_size'], 'Dense_1': config['hidden_size']}


def _check_keep(keep: float) -> None:
  if not 0 < keep <= 1:  # Also rejects NaN.
    raise ValueError(f'keep ({keep!r}) must be in (0, 1]')


def _kept_count(width: int, keep: float) -> int:
  """Units kept of a layer of `width`: round(keep * width) (Python's round: halves to even), at least 1."""
  return max(1, round(keep * width))


def _shrunk_config(config: Mapping[str, Any], keep: float) -> dict[str, Any]:
  """The full `config` with every pruned width reduced to `_kept_count(width, keep)`."""
  new = dict(config)
  if config['name'] == 'cnn':
    new['channels'] = tuple(_kept_count(c, keep) for c in config['channels'])
  elif config['name'] == 'gpt':
    heads, head_dim, mlp = _gpt_widths(config)
    if _kept_count(heads, keep) != heads:  # Fewer heads of the same width: head_dim no longer D / heads.
      new['num_heads'], new['head_dim'] = _kept_count(heads, keep), head_dim
    if _kept_count(mlp, keep) != mlp:
      new['mlp_dim'] = _kept_count(mlp, keep)
  else:
    new['hidden_size'] = _kept_count(config['hidden_size'], keep)
  return new


def _gpt_kernel(params: Params, block: int, group: str) -> tuple[np.ndarray, int]:
  """(kernel, axis of its units) that holds the incoming weights of `group` ('heads' or 'mlp') in block `block`:
  qkv's [D, 3, heads, head_dim] (axis 2) or mlp_in's [D, width] (axis 1)."""
  layer = params[f'h_{block}']
  return (layer['attn']['qkv']['kernel'], 2) if group == 'heads' else (layer['mlp_in']['kernel'], 1)


def _check_params(config: Mapping[str, Any], params: Params) -> None:
  """Raises ValueError unless `params` has the layers and widths that `config` describes."""
  if config['name'] == 'gpt':
    heads, head_dim, mlp = _gpt_widths(config)
    d = config['d_model']
    for i in range(config['num_layers']):
      for group, want in (('heads', (d, 3, heads, head_dim)), ('mlp', (d, mlp))):
        try:
          shape = np.shape(_gpt_kernel(params, i, group)[0])
        except (KeyError, TypeError):
          shape = None
        if shape != want:
          raise ValueError(f'params of block h_{i} ({group}) have kernel shape {shape}; the model config wants {want}')
    return
  for layer, width in _widths(config).items():
    shape = np.shape(params[layer]['kernel']) if layer in params and 'kernel' in params[layer] else None
    if shape is None or shape[-1] != width:
      raise ValueError(f"params[{layer!r}]['kernel'] has shape {shape}; the model config wants {width} outputs")


def channel_importance(model_config: Mapping[str, Any], params: Params) -> dict[str, np.ndarray]:
  """Importance of every prunable unit: the L1 norm of its incoming weights (Li et al. 2017).

  Args:
    model_config: the model's config (`name` in SUPPORTED plus any of its fields; missing ones take defaults).
    params: its parameters, {layer: {'kernel', 'bias'}} as from `nn.unbox(model.init(...))['params']`.

  Returns:
    {layer: importance [width] (float64)} for each pruned layer, in forward order: 'Im2colConv_i' for cnn,
    'Dense_0' and 'Dense_1' for mlp (with residual=True both hold the same sum of the two layers' norms).

  Raises:
    ValueError: an unsupported model or unknown field, or params that do not match the config's widths.
  """
  config = _full_config(model_config)
  params = nn.unbox(params)
  _check_params(config, params)
  importance = {}
  for layer, width in _widths(config).items():
    if config['name'] == 'gpt':
      block, group = layer.split('/')
      kernel, axis = _gpt_kernel(params, int(block[2:]), group)
      importance[layer] = np.moveaxis(np.abs(np.asarray(kernel, np.float64)), axis, 0).reshape(width, -1).sum(1)
      continue
    kernel = np.asarray(params[layer]['kernel'])  # [..., c_in, width]: the output unit is the last axis.
    importance[layer] = np.abs(kernel.reshape(-1, width)).sum(axis=0, dtype=np.float64)
  if config['name'] == 'mlp' and config['residual']:
    # h + relu(W2 h): unit j of both layers is one feature of the residual stream; keep or drop it in both.
    shared = importance['Dense_0'] + importance['Dense_1']
    importance = {'Dense_0': shared, 'Dense_1': shared.copy()}
  return importance


def kept_units(model_config: Mapping[str, Any], params: Params, *, keep: float) -> dict[str, np.ndarray]:
  """Indices of the units that `shrink` keeps: the `round(keep * width)` (at least 1) most important per layer.

  Args:
    model_config: the model's config.
    params: its parameters.
    keep: fraction of each layer's units to keep, in (0, 1].

  Returns:
    {layer: ascending indices of its kept output units}, layers as in `channel_importance`. Ties in importance
    keep the lower index.

  Raises:
    ValueError: keep outside (0, 1], an unsupported model, or params that do not match the config.
  """
  _check_keep(keep)
  importance = channel_importance(model_config, params)
  # Stable sort of -importance: among equal importances the lower index wins, the same in both residual layers.
  return {layer: np.sort(np.argsort(-imp, kind='stable')[:_kept_count(imp.size, keep)])
          for layer, imp in importance.items()}


def _take_axis(leaf: Any, idx: np.ndarray, axis: int) -> Any:
  """`leaf` with only the `idx` entries of `axis` (on the host, as `_take`)."""
  sliced = np.take(np.asarray(leaf), idx, axis=axis)
  return jnp.asarray(sliced) if isinstance(leaf, jax.Array) else sliced


def _take(leaf: Any, outputs: np.ndarray | None, inputs: np.ndarray | None = None) -> Any:
  """`leaf` with only the `outputs` indices of its last axis and the `inputs` of the one before (None: all).

  Sliced on the host: eager gathers on jax arrays compile one small program per shape (~0.1 s each on CPU, most
  of a shrink). The result is a jax array (on the default device) if `leaf` is one, else a numpy array.
  """
  sliced = np.asarray(leaf)
  if inputs is not None:
    sliced = np.take(sliced, inputs, axis=-2)
  if outputs is not None:
    sliced = np.take(sliced, outputs, axis=-1)
  return jnp.asarray(sliced) if isinstance(leaf, jax.Array) else sliced


def shrink(model_config: Mapping[str, Any], params: Params, *, keep: float) -> tuple[dict[str, Any], Params]:
  """Prunes the least important units of every hidden layer, returning a smaller dense model.

  Every pruned layer keeps its `round(keep * width)` (at least 1) most important output units in their original
  order (`kept_units`), and the next layer keeps only the inputs that read them. The smaller model's logits equal
  those of the original with the pruned units' incoming weights and biases set to zero.

  Args:
    model_config: the model's config (`name` in SUPPORTED plus any of its fields; missing ones take defaults).
    params: its parameters, {layer: {'kernel', 'bias'}} (boxed or unboxed).
    keep: fraction of each hidden layer's units to keep, in (0, 1].

  Returns:
    (new_model_config, new_params): the smaller model's config as a plain dict with all fields (`channels` or
    `hidden_size` reduced, tuple fields as tuples) and params whose tree and shapes equal that model's `init`.
    Leaves that need no slicing (e.g. the head's bias) are the input's own arrays.

  Raises:
    ValueError: keep outside (0, 1], a model not in SUPPORTED (or an unknown field), or params that do not match
      the config's widths.
  """
  _check_keep(keep)
  config = _full_config(model_config)
  params = nn.unbox(params)
  kept = kept_units(config, params, keep=keep)
  new = {layer: dict(v) if isinstance(v, Mapping) else v for layer, v in params.items()}  # The gpt's wpe: a leaf.
  if config['name'] == 'cnn':
    previous = None  # Kept channels of the previous conv; the first conv reads the input, all of it.
    for i in range(len(config['channels'])):
      layer, idx = f'Im2colConv_{i}', kept[f'Im2colConv_{i}']
      kernel = params[layer]['kernel']  # [*window, c_in, c_out]
      new[layer] = {'kernel': _take(kernel, idx, previous), 'bias': _take(params[layer]['bias'], idx)}
      previous = idx
    head = params['Dense_0']['kernel']  # [positions * C, classes], row = position * C + channel.
    channels = config['channels'][-1]
    if head.shape[0] % channels:
      raise ValueError(f"params['Dense_0']['kernel'] has {head.shape[0]} rows, not a multiple of the last conv's "
                       f'{channels} channels')
    # Row position * C + channel for every position and each kept channel, position-major as the head reads them.
    rows = (np.arange(head.shape[0] // channels)[:, None] * channels + previous[None, :]).reshape(-1)
    new['Dense_0']['kernel'] = _take(head, None, rows)
  elif config['name'] == 'gpt':
    for i in range(config['num_layers']):
      block, heads, mlp = params[f'h_{i}'], kept[f'h_{i}/heads'], kept[f'h_{i}/mlp']
      qkv, out = block['attn']['qkv'], block['attn']['out']
      new[f'h_{i}'] = {
          **block,
          'attn': {'qkv': {'kernel': _take_axis(qkv['kernel'], heads, 2), 'bias': _take_axis(qkv['bias'], heads, 1)},
                   'out': {'kernel': _take_axis(out['kernel'], heads, 0), 'bias': out['bias']}},
          'mlp_in': {'kernel': _take_axis(block['mlp_in']['kernel'], mlp, 1),
                     'bias': _take_axis(block['mlp_in']['bias'], mlp, 0)},
          'mlp_out': {'kernel': _take_axis(block['mlp_out']['kernel'], mlp, 0), 'bias': block['mlp_out']['bias']},
      }
  else:
    first, second = kept['Dense_0'], kept['Dense_1']  # Equal when residual (channel_importance shares them).
    new['Dense_0'] = {'kernel': _take(params['Dense_0']['kernel'], first),
                      'bias': _take(params['Dense_0']['bias'], first)}
    new['Dense_1'] = {'kernel': _take(params['Dense_1']['kernel'], second, first),
                      'bias': _take(params['Dense_1']['bias'], second)}
    new['Dense_2']['kernel'] = _take(params['Dense_2']['kernel'], None, second)
  return _shrunk_config(config, keep), new


def keep_for_flops(model_config: Mapping[str, Any], *, input_shape: tuple[int, ...], num_classes: int,
                   flops_fraction: float) -> float:
  """The largest `keep` whose shrunk model has at most `flops_fraction` of the original's forward FLOPs.

  So 'structured50' is `shrink(..., keep=keep_for_flops(..., flops_fraction=0.5))`: a dense model with at most
  half the FLOPs (research/cost/analytic.py's count), as wide as that allows. FLOPs fall roughly with keep**2
  (hidden-to-hidden layers lose inputs and outputs), so keep is well above flops_fraction.

  Args:
    model_config: the model's config.
    input_shape: one example's shape, e.g. (40,) for MNIST-1D.
    num_classes: number of output logits.
    flops_fraction: the FLOPs budget as a fraction of the original's, in (0, 1].

  Returns:
    keep = w / width for an integer w and one of the pruned layers' widths (the discrete widths `shrink` can
    produce), the largest whose shrunk model fits the budget; 1.0 for flops_fraction=1.

  Raises:
    ValueError: flops_fraction outside (0, 1], an unsupported model, or a budget that even one unit per layer
      exceeds.
  """
  if not 0 < flops_fraction <= 1:
    raise ValueError(f'flops_fraction ({flops_fraction!r}) must be in (0, 1]')
  config = _full_config(model_config)
  flops = lambda cfg: analytic.analytic_flops(cfg, input_shape=input_shape, num_classes=num_classes)
  budget = flops_fraction * flops(config)
  # Every width a layer can take is w / width of it; a linear scan from the top (cheap: formulas, no tracing)
  # needs no assumption that FLOPs grow with keep across layers of different widths.
  candidates = sorted({w / width for width in set(_widths(config).values()) for w in range(1, width + 1)},
                      reverse=True)
  for keep in candidates:
    if flops(_shrunk_config(config, keep)) <= budget:
      return keep
  raise ValueError(f'no width fits flops_fraction={flops_fraction!r}: with one unit per layer the model has '
                   f'{flops(_shrunk_config(config, candidates[-1])):.0f} FLOPs > {budget:.0f}')
