"""Tests of research/compression/structured.py: structured pruning to a smaller dense model, on real models.

The key check: the shrunk model computes exactly what the original does with the pruned units zeroed, which
pins down every slice (a conv's input channels, the CNN head's position-major rows, the residual MLP's shared
units). Small non-uniform widths and random non-zero biases keep it fast and make wrong slices show.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import models
from research.compression import structured
from research.cost import analytic

INPUT_SHAPE, NUM_CLASSES = (40,), 10
CNN = {'name': 'cnn', 'channels': (7, 6, 5)}
MLP = {'name': 'mlp', 'hidden_size': 12}
PLAIN_MLP = {**MLP, 'residual': False}


def _abstract_params(config):
  """The tree of ShapeDtypeStructs of the model's params, from its abstract init (traced, nothing compiled)."""
  model = models.get_model(config, num_classes=NUM_CLASSES)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), models.dummy_input(model, INPUT_SHAPE), train=False))
  return nn.unbox(shapes)['params']


def _init(config, seed=0):
  """Params with the tree, shapes and dtypes of the model's init, drawn with numpy: kernels N(0, 1/fan_in) (the
  scale of lecun_normal) and biases N(0, 0.1^2), non-zero so that a wrongly sliced bias shows. Why not
  `model.init`: run eagerly it compiles every initialiser op per shape, 2-3 s a model on this machine."""
  rng = np.random.default_rng(seed)
  draw = lambda leaf: (rng.normal(size=leaf.shape) * (0.1 if len(leaf.shape) == 1 else
                                                       math.prod(leaf.shape[:-1]) ** -0.5)).astype(leaf.dtype)
  return jax.tree.map(draw, _abstract_params(config))


def _logits(config, params, x):
  model = models.get_model(config, num_classes=NUM_CLASSES)
  return np.asarray(model.apply({'params': params}, x, train=False))


def _inputs(batch=16):
  return np.asarray(jax.random.normal(jax.random.key(1), (batch, *INPUT_SHAPE)))


def _shapes(tree):
  return jax.tree.map(lambda leaf: tuple(leaf.shape), tree)


@pytest.mark.parametrize('config, keep', [(CNN, 0.5), (MLP, 0.3), (PLAIN_MLP, 0.5), ({'name': 'cnn'}, 0.3),
                                          ({'name': 'mlp'}, 0.5)],
                         ids=['cnn', 'mlp', 'plain_mlp', 'default_cnn', 'default_mlp'])
def test_shrunk_params_have_the_shapes_of_the_returned_configs_init(config, keep):
  new_config, new_params = structured.shrink(config, _init(config), keep=keep)
  assert _shapes(new_params) == _shapes(_abstract_params(new_config))
  # A plain dict with every field; widths reduced by round(keep * width), tuples kept tuples.
  assert set(new_config) == {'name', *models.model_fields(config['name'])}
  if config['name'] == 'cnn':
    old = config.get('channels', (25, 25, 25))
    assert new_config['channels'] == tuple(max(1, round(keep * c)) for c in old)
    assert isinstance(new_config['kernel_sizes'], tuple)
  else:
    assert new_config['hidden_size'] == round(keep * config.get('hidden_size', 100))


def test_shrink_takes_params_from_a_real_init_boxed_or_not():
  model = models.get_model(MLP, num_classes=NUM_CLASSES)  # The MLP: the cheapest real init (~1 s, eager).
  boxed = model.init(jax.random.key(0), models.dummy_input(model, INPUT_SHAPE), train=False)['params']
  for params in (boxed, nn.unbox(boxed)):
    new_config, new_params = structured.shrink(MLP, params, keep=0.5)
    assert _shapes(new_params) == _shapes(_abstract_params(new_config))


@pytest.mark.parametrize('config', [CNN, MLP, PLAIN_MLP], ids=['cnn', 'mlp', 'plain_mlp'])
def test_keep_one_returns_the_same_model(config):
  params = jax.tree.map(jnp.asarray, _init(config))
  new_config, new_params = structured.shrink(config, params, keep=1.0)
  assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(new_params))  # jax in, jax out.
  assert {k: new_config[k] for k in config} == config
  x = _inputs()
  np.testing.assert_array_equal(_logits(new_config, new_params, x), _logits(config, params, x))


def _expected_kept(config, params, keep):
  """Independent oracle: top round(keep * width) units by incoming L1 norm, residual MLP layers summed."""
  if config['name'] == 'cnn':
    norms = {f'Im2colConv_{i}': np.abs(params[f'Im2colConv_{i}']['kernel']).sum(axis=(0, 1))
             for i in range(len(config['channels']))}
  else:
    norms = {layer: np.abs(params[layer]['kernel']).sum(axis=0) for layer in ('Dense_0', 'Dense_1')}
    if config.get('residual', True):
      norms = dict.fromkeys(norms, norms['Dense_0'] + norms['Dense_1'])
  return {layer: np.sort(np.argsort(-n)[:max(1, round(keep * n.size))]) for layer, n in norms.items()}


@pytest.mark.parametrize('config', [CNN, MLP, PLAIN_MLP], ids=['cnn', 'mlp', 'plain_mlp'])
def test_shrunk_model_equals_the_original_with_pruned_units_zeroed(config):
  keep = 0.6
  params = _init(config)
  kept = _expected_kept(config, params, keep)
  assert {k: v.tolist() for k, v in structured.kept_units(config, params, keep=keep).items()} == \
      {k: v.tolist() for k, v in kept.items()}
  zeroed = jax.tree.map(np.asarray, params)
  for layer, idx in kept.items():
    mask = np.zeros(zeroed[layer]['bias'].shape, np.float32)
    mask[idx] = 1.0
    # A pruned unit with zero incoming weights and bias outputs relu(0) = 0 (in both residual layers: h + 0).
    zeroed[layer] = {'kernel': zeroed[layer]['kernel'] * mask, 'bias': zeroed[layer]['bias'] * mask}
  new_config, new_params = structured.shrink(config, params, keep=keep)
  x = _inputs()
  expected = _logits(config, zeroed, x)
  np.testing.assert_allclose(_logits(new_config, new_params, x), expected, atol=1e-5)
  assert not np.allclose(expected, _logits(config, params, x), atol=1e-3)  # Pruning did change the function.


def test_the_least_important_channel_is_dropped():
  params = _init({'name': 'cnn'})
  params['Im2colConv_1']['kernel'][..., 3] *= 1e-3
  new_config, new_params = structured.shrink({'name': 'cnn'}, params, keep=24 / 25)
  assert new_config['channels'] == (24, 24, 24)
  kept = structured.kept_units({'name': 'cnn'}, params, keep=24 / 25)
  assert 3 not in kept['Im2colConv_1'] and len(kept['Im2colConv_1']) == 24
  np.testing.assert_array_equal(new_params['Im2colConv_1']['bias'], np.delete(params['Im2colConv_1']['bias'], 3))


def test_residual_mlp_ranks_a_unit_by_both_layers():
  # Unit 2 is tiny in Dense_0 only; unit 5 is tiny in Dense_1 and small (0.1x) in Dense_0, so its summed norm is
  # the smallest. The residual MLP drops 5 and keeps 2 in both layers; the plain MLP ranks each layer by its own
  # weights, so it drops 2 from Dense_0 and 5 from Dense_1.
  config = {'name': 'mlp', 'hidden_size': 10}
  params = _init(config)
  params['Dense_0']['kernel'][:, 2] *= 1e-3
  params['Dense_0']['kernel'][:, 5] *= 0.1
  params['Dense_1']['kernel'][:, 5] *= 1e-3
  everything_but = lambda unit: [u for u in range(10) if u != unit]
  kept = structured.kept_units(config, params, keep=0.9)
  assert kept['Dense_0'].tolist() == kept['Dense_1'].tolist() == everything_but(5)
  plain = structured.kept_units({**config, 'residual': False}, params, keep=0.9)
  assert plain['Dense_0'].tolist() == everything_but(2) and plain['Dense_1'].tolist() == everything_but(5)


@pytest.mark.parametrize('name', ['mlp', 'cnn'])
def test_keep_for_flops_gives_a_dense_model_with_at_most_half_the_flops(name):
  config = {'name': name}
  flops = lambda cfg: analytic.analytic_flops(cfg, input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES)
  keep = structured.keep_for_flops(config, input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES, flops_fraction=0.5)
  new_config, _ = structured.shrink(config, _init(config), keep=keep)
  assert 0.35 < flops(new_config) / flops(config) <= 0.5
  # The largest such keep: one more unit per layer is over budget.
  width = 25 if name == 'cnn' else 100
  bigger, _ = structured.shrink(config, _init(config), keep=round(keep * width + 1) / width)
  assert flops(bigger) > 0.5 * flops(config)
  assert structured.keep_for_flops(config, input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES,
                                   flops_fraction=1.0) == 1.0


def test_bad_keep_and_unsupported_models_are_errors():
  params = _init(MLP)
  for keep in (0.0, -0.5, 1.5, math.nan):
    with pytest.raises(ValueError, match=rf'keep \({keep!r}\) must be in \(0, 1\]'):
      structured.shrink(MLP, params, keep=keep)
  with pytest.raises(ValueError, match=r"\('mlp', 'cnn', 'gpt'\), not 'gru'"):
    structured.shrink({'name': 'gru'}, params, keep=0.5)
  with pytest.raises(ValueError, match=r"\('mlp', 'cnn', 'gpt'\), not 'transformer'"):
    structured.keep_for_flops({'name': 'transformer'}, input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES,
                              flops_fraction=0.5)
  with pytest.raises(ValueError, match=r'flops_fraction \(0\.0\) must be in \(0, 1\]'):
    structured.keep_for_flops(MLP, input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES, flops_fraction=0.0)
  with pytest.raises(ValueError, match='no width fits'):
    structured.keep_for_flops(MLP, input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES, flops_fraction=1e-4)
  with pytest.raises(ValueError, match=r"params\['Dense_0'\]\['kernel'\] has shape \(40, 12\).* 100 outputs"):
    structured.shrink({'name': 'mlp'}, params, keep=0.5)  # Params of another width than the config's.


# --- the GPT: heads and MLP units ----------------------------------------------------------------------------------

GPT = {'name': 'gpt', 'context': 12, 'd_model': 24, 'num_heads': 4, 'num_layers': 2, 'attention': 'einsum'}
GPT_SHAPE, VOCAB = (12,), 11


def _gpt_init(config, seed=0):
  """Params of the GPT's tree and shapes drawn with numpy (as _init; LayerNorm scales around 1)."""
  model = models.get_model(config, num_classes=VOCAB)
  shapes = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), models.dummy_input(model, GPT_SHAPE),
                                                      train=False)))['params']
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda leaf: (rng.normal(size=leaf.shape) * 0.3).astype(leaf.dtype), shapes)


def _gpt_logits(config, params, tokens):
  return np.asarray(models.get_model(config, num_classes=VOCAB).apply({'params': params}, tokens, train=False))


def _tokens():
  return np.asarray(jax.random.randint(jax.random.key(2), (3, *GPT_SHAPE), 0, VOCAB))


def test_gpt_shrinks_heads_and_mlp_units_to_a_model_equal_to_the_zeroed_original():
  keep = 0.5
  params = _gpt_init(GPT)
  kept = structured.kept_units(GPT, params, keep=keep)
  # Independent oracle: the top round(keep * width) by the L1 norm of the incoming weights (a head's q, k, v).
  for i in range(GPT['num_layers']):
    qkv, mlp_in = params[f'h_{i}']['attn']['qkv']['kernel'], params[f'h_{i}']['mlp_in']['kernel']
    for group, norms in (('heads', np.abs(qkv).sum(axis=(0, 1, 3))), ('mlp', np.abs(mlp_in).sum(axis=0))):
      assert kept[f'h_{i}/{group}'].tolist() == np.sort(np.argsort(-norms)[:round(keep * norms.size)]).tolist()
  new_config, new_params = structured.shrink(GPT, params, keep=keep)
  assert (new_config['num_heads'], new_config['head_dim'], new_config['mlp_dim']) == (2, 6, 48)
  model = models.get_model(new_config, num_classes=VOCAB)
  init_shapes = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), models.dummy_input(model, GPT_SHAPE),
                                                           train=False)))['params']
  assert _shapes(new_params) == _shapes(init_shapes)
  # A head with zero q, k, v weights and biases outputs 0; an MLP unit with zero incoming weights gelu(0) = 0.
  zeroed = jax.tree.map(np.array, params)
  for i in range(GPT['num_layers']):
    h = zeroed[f'h_{i}']
    heads = np.isin(np.arange(4), kept[f'h_{i}/heads']).astype(np.float32)
    units = np.isin(np.arange(96), kept[f'h_{i}/mlp']).astype(np.float32)
    h['attn']['qkv']['kernel'] *= heads[:, None]
    h['attn']['qkv']['bias'] *= heads[:, None]
    h['mlp_in']['kernel'] *= units
    h['mlp_in']['bias'] *= units
  tokens = _tokens()
  expected = _gpt_logits(GPT, zeroed, tokens)
  np.testing.assert_allclose(_gpt_logits(new_config, new_params, tokens), expected, atol=1e-4)
  assert not np.allclose(expected, _gpt_logits(GPT, params, tokens), atol=1e-3)


def test_gpt_keep_one_is_the_same_model_and_keep_for_flops_halves_it():
  params = _gpt_init(GPT)
  same_config, same = structured.shrink(GPT, params, keep=1.0)
  assert {k: same_config[k] for k in GPT} == GPT and not same_config['head_dim'] and not same_config['mlp_dim']
  np.testing.assert_array_equal(_gpt_logits(same_config, same, _tokens()), _gpt_logits(GPT, params, _tokens()))
  flops = lambda cfg: analytic.analytic_flops(cfg, input_shape=GPT_SHAPE, num_classes=VOCAB)
  keep = structured.keep_for_flops(GPT, input_shape=GPT_SHAPE, num_classes=VOCAB, flops_fraction=0.5)
  half, _ = structured.shrink(GPT, params, keep=keep)
  assert 0.35 < flops(half) / flops(GPT) <= 0.5
  # The analytic count of the pruned GPT is XLA's (within the 10% that every family is held to).
  model = models.get_model(half, num_classes=VOCAB)
  tokens = _tokens()[:1]
  variables = model.init(jax.random.key(0), tokens, train=False)
  compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, tokens).compile()
  assert compiled.cost_analysis()['flops'] == pytest.approx(flops(half), rel=0.1)
