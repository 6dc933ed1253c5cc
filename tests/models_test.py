"""Models: registry and config helpers, output shapes, pinned parameter counts, dropout, and the fast layers
(im2col conv, reshape max pool, hoisted RNN cells, einsum attention) against their flax reference formulations."""

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from research import models
from research.models import layers, rnn, transformer

# Compilation dominates these tests' time on XLA:CPU, so: rbg keys (threefry-based initialisation compiles 2-3x
# slower, and no test depends on the stream), and no LLVM optimisation of the generated code (the HLO, whose math
# the equality tests check, is unchanged).
_key = partial(jax.random.key, impl='rbg')
_jit = partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0,
                                          'xla_llvm_disable_expensive_passes': True})
SEQ = (3, 40)  # MNIST-1D batch [batch, length].
IMG = (3, 28, 28, 1)  # MNIST batch [batch, H, W, C].

# Parameter counts: the MNIST-1D paper's PyTorch models (Greydanus 2020) and the classic image nets.
# (name, input shape, field overrides, params).
PARAMS = [
    ('logreg', SEQ, {}, 410),
    ('mlp', SEQ, {}, 15_210),
    ('cnn', SEQ, {}, 5_210),  # 150 + 1,900 + 1,900 + 1,260.
    ('gru', SEQ, {}, 5_134),  # 2 * 3 * (6*1 + 6*6 + 6 + 6) + 40*12*10 + 10.
    ('lstm', SEQ, {}, 5_242),  # 2 * 4 * (6*1 + 6*6 + 6 + 6) + 40*12*10 + 10.
    ('transformer', SEQ, {}, 26_282),  # Patches of 4: 10 tokens.
    ('transformer', SEQ, {'patch_size': 1}, 27_146),  # 40 tokens.
    ('logreg', IMG, {}, 7_850),
    ('mlp', IMG, {}, 89_610),
    ('cnn2d', IMG, {}, 1_199_882),
    ('lenet5', IMG, {}, 61_706),
    ('gru', IMG, {}, 4_666),
    ('lstm', IMG, {}, 5_098),
    ('transformer', IMG, {}, 29_642),  # 7 tokens of 4 rows.
    ('transformer', IMG, {'patch_size': 1}, 27_626),  # 28 tokens, one per row.
]


def _num_params(params) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))


def _normal(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def _max_diff(a, b) -> float:
  # numpy, not jnp: eager jnp ops would compile once per leaf shape.
  leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in leaves)


def _perturbed(params, scale: float):
  """params + scale * N(0, 1) (host-side), so zero-initialised biases take part in equality checks; unboxed (the
  logical axis names our layers attach are dropped, as the training state drops them)."""
  rng = np.random.default_rng(2)
  return jax.tree.map(lambda p: p + scale * rng.standard_normal(p.shape, dtype=np.float32), nn.unbox(params))


def _assert_same_outputs_and_grads(reference, candidates, params, x, *, atol: float = 1e-5):
  """Each candidate apply(params, x) equals reference's, as do the gradients of a nonlinear scalar of the output
  w.r.t. params and x. Everything runs in one compiled call: compilation dominates these tests' time."""
  def outputs_and_grads(apply, p, x):
    loss = lambda p, x: jnp.sum(jnp.sin(apply(p, x)))
    return apply(p, x), jax.grad(loss, argnums=(0, 1))(p, x)
  (y_ref, g_ref), *rest = _jit(lambda p, x: [outputs_and_grads(f, p, x) for f in (reference, *candidates)])(
      params, x)
  for y, g in rest:
    assert _max_diff(y, y_ref) < atol
    assert _max_diff(g, g_ref) < 10 * atol


def test_registry_has_exactly_the_contract_names():
  assert set(models.MODELS) == {'logreg', 'mlp', 'cnn', 'cnn2d', 'lenet5', 'gru', 'lstm', 'transformer', 'gpt'}


@pytest.mark.parametrize('name,shape,overrides,count', PARAMS)
def test_logits_shape_and_pinned_param_count(name, shape, overrides, count):
  model = models.MODELS[name](num_classes=10, **overrides)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(_key(0), x, train=False), x)
  logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert logits.shape == (shape[0], 10) and logits.dtype == jnp.float32
  assert set(variables) == {'params'}
  assert _num_params(variables['params']) == count


def test_lenet5_on_32x32_has_the_classic_count_and_pads_28x28_to_it():
  model = models.MODELS['lenet5'](num_classes=10)
  x28 = _normal(seed=1, shape=(2, 28, 28, 1))
  x32 = np.pad(x28, ((0, 0), (2, 2), (2, 2), (0, 0)))
  @_jit
  def run(x28, x32):
    v32 = model.init(_key(0), x32, train=False)
    return v32, model.apply(v32, x28, train=False), model.apply(v32, x32, train=False)
  v32, y28, y32 = run(x28, x32)
  assert _num_params(v32) == 61_706
  np.testing.assert_allclose(y28, y32)


@pytest.mark.parametrize('name,shape', [('cnn2d', SEQ), ('lenet5', SEQ), ('cnn', IMG), ('gru', (3, 2, 2, 2, 2))])
def test_wrong_input_rank_is_rejected_with_the_shape(name, shape):
  with pytest.raises(ValueError, match=str(shape).replace('(', r'\(').replace(')', r'\)')):
    jax.eval_shape(partial(models.MODELS[name](num_classes=10).init, train=False), _key(0), jnp.ones(shape))


@pytest.mark.parametrize('overrides,match', [({'patch_size': 3}, r'model.patch_size \(3\) must divide .* \(40\)'),
                                             ({'d_model': 30}, r'model.d_model \(30\) .* model.num_heads \(4\)')])
def test_transformer_rejects_bad_shapes_with_the_values(overrides, match):
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(partial(models.Transformer(num_classes=10, **overrides).init, train=False), _key(0), jnp.ones(SEQ))


@pytest.mark.parametrize('name', ['mlp', 'cnn', 'cnn2d', 'lenet5', 'gru', 'lstm', 'transformer'])
def test_dropout_is_random_in_train_mode_only(name):
  model = models.MODELS[name](num_classes=10, dropout_rate=0.5)
  x = _normal(seed=0, shape=IMG if name in ('cnn2d', 'lenet5') else SEQ)
  @_jit
  def run(x):  # One compiled call (compilation dominates the test's time).
    variables = model.init(_key(1), x, train=False)
    apply = lambda seed, train: model.apply(variables, x, train=train, rngs={'dropout': _key(seed)})
    return apply(0, True), apply(1, True), apply(0, False), apply(1, False)
  train_0, train_1, eval_0, eval_1 = run(x)
  assert not np.allclose(train_0, train_1)
  np.testing.assert_array_equal(eval_0, eval_1)
  assert not np.allclose(train_0, eval_0)


# --- Fast formulations equal the straightforward flax ones (same parameters), forward and gradients. ---

@pytest.mark.parametrize('shape,features,kernel,strides,padding', [
    ((4, 40, 1), 25, (5,), (2,), 1),  # The paper CNN's first (one-channel) conv.
    ((4, 19, 25), 25, (3,), (2,), 1),  # Its second conv.
    ((2, 12, 12, 3), 8, (3, 3), (1, 1), 0),  # cnn2d-style VALID 3x3.
    ((2, 14, 14, 6), 16, (5, 5), (1, 1), 0),  # LeNet-5's second conv.
    ((2, 9, 11, 2), 4, (3, 2), (2, 3), 1),  # Uneven kernel, strides and sizes.
])
def test_im2col_conv_equals_nn_conv(shape, features, kernel, strides, padding):
  x = _normal(seed=0, shape=shape)
  fast = layers.Im2colConv(features, kernel, strides, padding)
  plain = nn.Conv(features, kernel, strides, padding=[(padding, padding)] * len(kernel))
  params = _jit(fast.init)(_key(1), x)
  params = _perturbed(params, 0.1)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, jax.eval_shape(plain.init, _key(1), x))
  _assert_same_outputs_and_grads(plain.apply, [partial(fast.apply, im2col=True), partial(fast.apply, im2col=False)],
                                 params, x)


@pytest.mark.parametrize('keep', [0.8, 0.5, 0.75, 0.123])
def test_fast_dropout_keeps_the_rounded_fraction_and_preserves_the_mean(keep):
  x = jnp.ones((301, 257))  # An odd element count: the last 32-bit word is half used.
  out = layers.dropout(jax.random.key(0), x, keep)
  rounded = round(keep * 65536) / 65536
  kept = np.asarray(out != 0)
  assert abs(kept.mean() - rounded) < 4 * np.sqrt(keep * (1 - keep) / x.size)  # Four standard errors.
  np.testing.assert_allclose(np.asarray(out)[kept], 1 / rounded, rtol=1e-6)  # Inverted: kept / keep.
  # Same key, same mask; another key, another; a traced keep probability gives the same as a Python float.
  np.testing.assert_array_equal(out, layers.dropout(jax.random.key(0), x, keep))
  assert (np.asarray(layers.dropout(jax.random.key(1), x, keep)) != np.asarray(out)).any()
  traced = jax.jit(layers.dropout)(jax.random.key(0), x, jnp.float32(keep))
  np.testing.assert_array_equal(traced, out)


def test_dropout_module_is_the_identity_at_eval_and_at_rate_0_and_zero_at_rate_1():
  x = jnp.arange(12.0).reshape(3, 4)
  rngs = {'dropout': jax.random.key(0)}
  assert (layers.Dropout(0.5, deterministic=True).apply({}, x, rngs=rngs) == x).all()
  assert (layers.Dropout(0.0).apply({}, x, deterministic=False, rngs=rngs) == x).all()
  assert (layers.Dropout(1.0).apply({}, x, deterministic=False, rngs=rngs) == 0).all()
  out = np.asarray(layers.Dropout(0.5).apply({}, x, deterministic=False, rngs=rngs))
  kept = out != 0
  np.testing.assert_array_equal(out[kept], 2 * np.asarray(x)[kept])
  assert 0 < kept.sum() < 11  # x[0] is 0 either way; some of the other 11 dropped, some kept.


@pytest.mark.parametrize('shape,window', [((4, 24, 24, 8), (2, 2)), ((2, 5, 7, 3), (2, 2)), ((3, 9, 4), (3,))])
def test_reshape_max_pool_equals_nn_max_pool_after_relu(shape, window):
  x = _normal(seed=0, shape=shape)
  fast = lambda _, x: layers.max_pool(nn.relu(x), window)
  plain = lambda _, x: nn.max_pool(nn.relu(x), window, window)
  _assert_same_outputs_and_grads(plain, [fast], {}, x, atol=1e-7)


class _PlainCNN2D(nn.Module):
  """cnn2d written with nn.Conv and nn.max_pool, submodules named as in models.CNN2D."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(32, (3, 3), padding='VALID', name='Im2colConv_0')(x))
    x = nn.relu(nn.Conv(64, (3, 3), padding='VALID', name='Im2colConv_1')(x))
    x = nn.max_pool(x, (2, 2), (2, 2)).reshape(x.shape[0], -1)
    return nn.Dense(10, name='Dense_1')(nn.relu(nn.Dense(128, name='Dense_0')(x)))


def test_cnn2d_equals_its_nn_conv_max_pool_formulation():
  x = _normal(seed=0, shape=(2, 28, 28, 1))
  model = models.MODELS['cnn2d'](num_classes=10)
  params = _jit(partial(model.init, train=False))(_key(1), x)
  # im2col convs when training, lax.conv at eval.
  _assert_same_outputs_and_grads(_PlainCNN2D().apply, [partial(model.apply, train=True),
                                                       partial(model.apply, train=False)], params, x)


def _to_stock_rnn(ours, cell: str):
  """Maps one direction's hoisted params (input/hidden Dense, biases on both) to flax's stock cell params."""
  hidden = ours['cell']['hidden']
  size = hidden['kernel'].shape[0]
  blocks = lambda a, n: jnp.split(a, n, axis=-1)
  w_i, b_i = ours['input']['kernel'], ours['input']['bias']
  w_h, b_h = hidden['kernel'], hidden['bias']
  if cell == 'gru':  # Stock GRUCell: biases on ir/iz/in and hn only; b_hr, b_hz fold into the input biases.
    (wir, wiz, win), (bir, biz, bin_), (whr, whz, whn), (bhr, bhz, bhn) = (
        blocks(w_i, 3), blocks(b_i, 3), blocks(w_h, 3), blocks(b_h, 3))
    assert whr.shape == (size, size)
    stock = {'ir': {'kernel': wir, 'bias': bir + bhr}, 'iz': {'kernel': wiz, 'bias': biz + bhz},
             'in': {'kernel': win, 'bias': bin_}, 'hr': {'kernel': whr}, 'hz': {'kernel': whz},
             'hn': {'kernel': whn, 'bias': bhn}}
  else:  # Stock LSTMCell: no input biases; one bias per gate on the hidden projection.
    stock = {}
    for gate, wi, wh, b in zip('ifgo', blocks(w_i, 4), blocks(w_h, 4), blocks(b_i + b_h, 4)):
      stock['i' + gate] = {'kernel': wi}
      stock['h' + gate] = {'kernel': wh, 'bias': b}
  return stock


class _StockBiRNN(nn.Module):
  """The paper's bidirectional RNN + flatten head, built from flax's stock cells."""
  cell: str

  @nn.compact
  def __call__(self, x):
    cell = {'gru': nn.GRUCell, 'lstm': nn.LSTMCell}[self.cell]
    h = nn.Bidirectional(nn.RNN(cell(6, name='forward')), nn.RNN(cell(6, name='backward')))(x[..., None])
    return nn.Dense(10, name='head')(h.reshape(h.shape[0], -1))


@pytest.mark.parametrize('cell', ['gru', 'lstm'])
def test_hoisted_cells_equal_flax_stock_cells(cell):
  x = _normal(seed=0, shape=SEQ)
  model = models.MODELS[cell](num_classes=10)
  params = _jit(partial(model.init, train=False))(_key(1), x)['params']
  params = _perturbed(params, 0.3)
  stock = {'forward': _to_stock_rnn(params['forward_0'], cell),
           'backward': _to_stock_rnn(params['backward_0'], cell), 'head': params['head']}
  ours, theirs = _jit(lambda params, stock, x: (model.apply({'params': params}, x, train=False),
                                                    _StockBiRNN(cell).apply({'params': stock}, x)))(params, stock, x)
  np.testing.assert_allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize('cell', ['gru', 'lstm'])
def test_rnn_last_head_reads_each_directions_final_state(cell):
  x = _normal(seed=0, shape=SEQ)
  model = models.MODELS[cell](num_classes=10, head='last', num_layers=2)
  assert jax.eval_shape(lambda x: model.apply(model.init(_key(1), x, train=False), x, train=False), x).shape == (3, 10)
  # The backward direction, run as nn.Bidirectional runs it, has its final carry at step 0 of its outputs.
  backward = rnn.HoistedRNN(model.cell_type, 6)
  @_jit
  def run(x):
    return backward.apply(backward.init(_key(1), x), x, return_carry=True, reverse=True, keep_order=True)
  carry, out = run(x[..., None])
  np.testing.assert_allclose(out[:, 0], carry[1] if cell == 'lstm' else carry, atol=1e-6)


def test_einsum_attention_equals_flax_multi_head_attention():
  x = _normal(seed=0, shape=(2, 40, 32))
  ours, theirs = transformer.SelfAttention(num_heads=4), nn.MultiHeadDotProductAttention(num_heads=4)
  params = _jit(ours.init)(_key(1), x)
  params = _perturbed(params, 0.1)
  _assert_same_outputs_and_grads(theirs.apply, [ours.apply], params, x)


@pytest.mark.parametrize('time_steps, block', [(150, 64), (64, 32), (40, 64)])  # Uneven, even, one block.
def test_blocked_causal_attention_equals_masked_einsum_attention(time_steps, block):
  from research.models import gpt  # pylint: disable=g-import-not-at-top
  q, k, v = (_normal(seed=i, shape=(2, time_steps, 2, 4)) for i in range(3))
  mask = jnp.tril(jnp.ones((time_steps, time_steps), bool))
  plain = lambda q, k, v: gpt.einsum_attention(q, k, v, mask)
  blocked = partial(gpt.blocked_causal_attention, block=block)
  np.testing.assert_allclose(jax.jit(blocked)(q, k, v), jax.jit(plain)(q, k, v), atol=1e-5, rtol=1e-5)
  grads = lambda f: jax.jit(jax.grad(lambda *qkv: jnp.sum(f(*qkv) ** 2), (0, 1, 2)))(q, k, v)
  for ours, theirs in zip(grads(blocked), grads(plain)):
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)


# --- get_model / model_fields. ---

def test_get_model_applies_overrides_from_dicts_and_config_dicts():
  mlp = models.get_model({'name': 'mlp', 'hidden_size': 64}, num_classes=5)
  assert isinstance(mlp, models.MLP) and mlp.hidden_size == 64 and mlp.num_classes == 5
  params = jax.eval_shape(partial(mlp.init, train=False), _key(0), jnp.ones(SEQ))
  assert _num_params(params) == (40 * 64 + 64) + (64 * 64 + 64) + (64 * 5 + 5)
  cnn = models.get_model(ml_collections.ConfigDict({'name': 'cnn', 'channels': [8, 8, 8]}), num_classes=10)
  assert cnn.channels == (8, 8, 8) and cnn.kernel_sizes == (5, 3, 3)


def test_get_model_rejects_unknown_names_and_fields_with_the_values():
  with pytest.raises(ValueError, match=r"model.name \('resnet'\) must be one of \['cnn', 'cnn2d', .*'transformer'\]"):
    models.get_model({'name': 'resnet'}, num_classes=10)
  with pytest.raises(ValueError, match=r"model.hidden \(3\) is not a field of model 'gru'.*'hidden_size'"):
    models.get_model({'name': 'gru', 'hidden': 3}, num_classes=10)
  with pytest.raises(ValueError, match='model.name'):
    models.model_fields('resnet')


@pytest.mark.parametrize('name', sorted(models.MODELS))
def test_model_fields_are_typed_with_defaults_and_build_the_model(name):
  fields = models.model_fields(name)
  for field, (kind, default) in fields.items():
    assert kind in (int, float, bool, str, tuple[int, ...]), (field, kind)
    if kind == tuple[int, ...]:
      assert isinstance(default, tuple) and all(type(v) is int for v in default), (field, default)
    else:
      assert type(default) is kind, (field, default)
  if name != 'logreg':
    assert fields['dropout_rate'] == (float, 0.0)
  module = models.get_model({'name': name, **{k: d for k, (_, d) in fields.items()}}, num_classes=7)
  assert module == models.MODELS[name](num_classes=7)


def test_model_fields_hold_the_paper_defaults():
  assert models.model_fields('logreg') == {'weight_init': (str, 'flax')}
  assert models.model_fields('mlp')['hidden_size'] == (int, 100)
  assert models.model_fields('cnn')['channels'] == (tuple[int, ...], (25, 25, 25))
  gru = models.model_fields('gru')
  assert (gru['hidden_size'], gru['bidirectional'], gru['head']) == ((int, 6), (bool, True), (str, 'flatten'))
  assert 'num_classes' not in gru and 'parent' not in gru and 'name' not in gru


@pytest.mark.parametrize('name', ['logreg', 'mlp', 'cnn', 'gru', 'lstm', 'cnn2d', 'lenet5'])
def test_pytorch_weight_init_draws_every_param_from_pytorchs_uniform(name):
  # nn.Linear / nn.Conv*: weights and biases U(+-1/sqrt(fan_in)); nn.GRU / nn.LSTM: U(+-1/sqrt(hidden)).
  shape = (1, 28, 28, 1) if name in ('cnn2d', 'lenet5') else (1, 40)
  model = models.get_model({'name': name, 'weight_init': 'pytorch'}, num_classes=10)
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros(shape), train=False)['params'])
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = [k.key for k in path]
    if 'cell' in names or 'input' in names:
      bound = 6 ** -0.5  # hidden_size 6
    else:
      module = params
      for key in names[:-1]:
        module = module[key]
      bound = np.prod(module['kernel'].shape[:-1]) ** -0.5
    assert float(jnp.max(jnp.abs(leaf))) <= bound, names
    if leaf.size >= 100:  # Uniform, not clustered near zero: std = bound / sqrt(3).
      np.testing.assert_allclose(float(jnp.std(leaf)), bound / np.sqrt(3), rtol=0.2, err_msg=str(names))


def test_unknown_weight_init_is_rejected():
  with pytest.raises(ValueError, match=r"model.weight_init \('he'\) must be one of \('flax', 'pytorch'\)"):
    models.get_model({'name': 'mlp', 'weight_init': 'he'}, num_classes=10).init(
        jax.random.key(0), jnp.zeros((1, 40)), train=False)
