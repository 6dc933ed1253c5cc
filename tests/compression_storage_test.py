"""Per-channel quantization and its straight-through fake-quant; the four on-disk formats' round trips and sizes."""

import lzma
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.compression import quantize, storage


def _mlp(seed: int = 0, zero_fraction: float = 0.0, shapes=((40, 100), (5, 1, 25))) -> dict:
  """An MLP-like param tree: a kernel + bias per layer; `zero_fraction` of each kernel's entries exactly zero."""
  rng = np.random.default_rng(seed)
  params = {}
  for i, shape in enumerate(shapes):
    kernel = rng.normal(size=shape).astype(np.float32) * rng.uniform(0.01, 3.0, size=shape[-1]).astype(np.float32)
    flat = kernel.reshape(-1)
    flat[rng.permutation(flat.size)[:round(zero_fraction * flat.size)]] = 0.0
    params[f'Dense_{i}'] = {'kernel': kernel, 'bias': rng.normal(size=shape[-1]).astype(np.float32)}
  params['LayerNorm_0'] = {'scale': np.ones(shapes[-1][-1], np.float32)}
  return params


def test_quantize_error_is_at_most_half_a_step_per_channel():
  w = _mlp()['Dense_0']['kernel']
  for bits in (8, 4, 2):
    q, scale = quantize.quantize_array(jnp.asarray(w), bits)
    assert q.dtype == jnp.int8 and q.shape == w.shape
    assert scale.dtype == jnp.float32 and scale.shape == (1, w.shape[-1])
    qmax = 2 ** (bits - 1) - 1
    assert int(jnp.max(jnp.abs(q))) == qmax  # Each channel's largest |w| lands on the top level.
    error = np.abs(w - np.asarray(quantize.dequantize_array(q, scale)))
    assert np.all(error <= np.asarray(scale) / 2 * (1 + 1e-6))
  conv = _mlp()['Dense_1']['kernel']
  assert quantize.quantize_array(conv)[1].shape == (1, 1, conv.shape[-1])


def test_zero_channel_gets_scale_one_and_bad_bits_raise():
  w = np.array([[0.0, 1.0], [0.0, -2.0]], np.float32)
  q, scale = quantize.quantize_array(w)
  np.testing.assert_array_equal(np.asarray(scale), np.array([[1.0, 2.0 / 127]], np.float32))
  np.testing.assert_array_equal(np.asarray(q), [[0, 64], [0, -127]])
  assert np.all(np.isfinite(np.asarray(quantize.fake_quant(w))))
  for bits in (1, 9, 8.0):
    with pytest.raises(ValueError, match=f'bits={bits!r}'):
      quantize.quantize_array(w, bits)


def test_fake_quant_forward_is_dequantized_and_gradient_is_identity():
  w = jnp.asarray(_mlp()['Dense_0']['kernel'])
  c = jnp.asarray(np.random.default_rng(1).normal(size=w.shape).astype(np.float32))
  expected = quantize.dequantize_array(*quantize.quantize_array(w, 4))
  np.testing.assert_array_equal(jax.jit(quantize.fake_quant, static_argnums=1)(w, 4), expected)
  grad = jax.grad(lambda x: jnp.sum(quantize.fake_quant(x, 4) * c))(w)
  np.testing.assert_array_equal(grad, c)


def test_fake_quant_params_and_quantize_params_touch_only_weights():
  params = _mlp()
  fq = quantize.fake_quant_params(params, bits=8)
  assert fq['Dense_0']['bias'] is params['Dense_0']['bias']
  qp = quantize.quantize_params(params)
  assert set(qp['Dense_0']['kernel']) == {'int8', 'scale'} and qp['Dense_0']['kernel']['int8'].dtype == np.int8
  assert qp['LayerNorm_0']['scale'] is params['LayerNorm_0']['scale']  # A 1-d 'scale' leaf is not mistaken.
  dq = quantize.dequantize_params(qp)
  assert jax.tree.structure(dq) == jax.tree.structure(params)
  for name in ('Dense_0', 'Dense_1'):
    np.testing.assert_array_equal(dq[name]['kernel'], fq[name]['kernel'])


@pytest.mark.parametrize('fmt', storage.FORMATS)
def test_round_trip(tmp_path, fmt):
  params = _mlp(zero_fraction=0.9 if fmt.startswith('sparse') else 0.0)
  path = str(tmp_path / 'model.safetensors')
  size = storage.save(path, params, fmt=fmt, metadata={'accuracy': 0.5, 'run': 'x'})
  assert size == os.path.getsize(path) and os.listdir(tmp_path) == ['model.safetensors']  # No .tmp left behind.
  loaded, loaded_fmt, metadata = storage.load(path)
  assert loaded_fmt == fmt and metadata == {'accuracy': 0.5, 'run': 'x'}
  assert jax.tree.structure(loaded) == jax.tree.structure(params)
  for name, layer in params.items():
    for key, want in layer.items():
      got = loaded[name][key]
      assert got.dtype == np.float32 and got.shape == want.shape, (name, key)
      if want.ndim < 2 or fmt in ('float32', 'sparse'):
        np.testing.assert_array_equal(got, want)
        continue
      scale = np.asarray(quantize.quantize_array(want)[1])
      assert np.all(np.abs(got - want) <= scale / 2 * (1 + 1e-6))
      if fmt == 'sparse_int8':
        assert np.all(got[want == 0] == 0)
        np.testing.assert_array_equal(got, np.asarray(quantize.dequantize_array(*quantize.quantize_array(want))))


@pytest.mark.parametrize('fmt', storage.FORMATS)
def test_xz_files_hold_the_same_model_in_fewer_bytes(tmp_path, fmt):
  params = _mlp(zero_fraction=0.9 if fmt.startswith('sparse') else 0.0, shapes=((200, 100), (5, 1, 25)))
  plain, xz = str(tmp_path / 'm.safetensors'), str(tmp_path / 'm.safetensors.xz')
  sizes = [storage.save(path, params, fmt=fmt, metadata={'run': 'x'}) for path in (plain, xz)]
  assert sizes[1] < sizes[0] and sorted(os.listdir(tmp_path)) == ['m.safetensors', 'm.safetensors.xz']
  # `xz -d` gives a plain safetensors file back (the same size; safetensors orders the metadata keys by a hash).
  decompressed = tmp_path / 'd.safetensors'
  with open(xz, 'rb') as f:
    decompressed.write_bytes(lzma.decompress(f.read()))
  assert decompressed.stat().st_size == sizes[0]
  jax.tree.map(np.testing.assert_array_equal, storage.load(str(decompressed))[0], storage.load(plain)[0])
  (a, fmt_a, meta_a), (b, fmt_b, meta_b) = storage.load(plain), storage.load(xz)
  assert fmt_a == fmt_b == fmt and meta_a == meta_b == {'run': 'x'}
  jax.tree.map(np.testing.assert_array_equal, a, b)
  if fmt == 'int8':
    jax.tree.map(np.testing.assert_array_equal, storage.load(plain, quantized=True)[0],
                 storage.load(xz, quantized=True)[0])


def test_sizes_of_a_sparse_tree(tmp_path):
  params = _mlp(zero_fraction=0.9, shapes=((200, 250), (250, 200)))  # 100k weights, 90% zero.
  assert storage.sparsity(params) == pytest.approx(0.9)
  sizes = {fmt: storage.save(str(tmp_path / f'{fmt}.safetensors'), params, fmt=fmt) for fmt in storage.FORMATS}
  ratios = {fmt: sizes[fmt] / sizes['float32'] for fmt in storage.FORMATS}
  print('bytes', sizes, 'ratios to float32', {fmt: round(r, 4) for fmt, r in ratios.items()})
  assert sizes['float32'] >= 4 * 100_450  # 100k weights + 450 biases and 200 gains, in float32.
  assert ratios['sparse'] <= 0.25
  assert ratios['int8'] <= 0.30
  assert ratios['sparse_int8'] <= ratios['sparse']


def test_errors(tmp_path):
  params = _mlp()
  with pytest.raises(ValueError, match=r"fmt='int4'.*float32.*sparse_int8"):
    storage.save(str(tmp_path / 'a.safetensors'), params, fmt='int4')
  assert not os.listdir(tmp_path)
  with pytest.raises(FileNotFoundError, match='missing.safetensors'):
    storage.load(str(tmp_path / 'missing.safetensors'))
  garbage = tmp_path / 'garbage.safetensors'
  garbage.write_bytes(b'not a safetensors file')
  with pytest.raises(ValueError, match='not a safetensors file'):
    storage.load(str(garbage))
  garbage_xz = tmp_path / 'garbage.safetensors.xz'
  garbage_xz.write_bytes(b'not an xz file')
  with pytest.raises(ValueError, match='garbage.safetensors.xz is not an xz file'):
    storage.load(str(garbage_xz))
  garbage_xz.write_bytes(lzma.compress(b'\x10\x00\x00\x00\x00\x00\x00\x00not json here!!!'))
  with pytest.raises(ValueError, match='does not hold a safetensors file'):
    storage.load(str(garbage_xz))
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  foreign = str(tmp_path / 'foreign.safetensors')
  save_file({'w': np.zeros((2, 2), np.float32)}, foreign)
  with pytest.raises(ValueError, match='not written by'):
    storage.load(foreign)


def test_failed_save_keeps_the_previous_file_and_no_tmp(tmp_path, monkeypatch):
  path = str(tmp_path / 'model.safetensors')
  storage.save(path, _mlp(), fmt='float32')

  def fail(*_):
    raise OSError('disk full')

  monkeypatch.setattr(os, 'replace', fail)
  with pytest.raises(OSError, match='disk full'):
    storage.save(path, _mlp(seed=1), fmt='int8')
  monkeypatch.undo()
  assert os.listdir(tmp_path) == ['model.safetensors']
  loaded, fmt, _ = storage.load(path)
  assert fmt == 'float32'
  np.testing.assert_array_equal(loaded['Dense_0']['kernel'], _mlp()['Dense_0']['kernel'])


def test_int8_file_loads_quantized_for_integer_execution(tmp_path):
  params = _mlp()
  path = str(tmp_path / 'm.safetensors')
  storage.save(path, params, fmt='int8')
  loaded, fmt, _ = storage.load(path, quantized=True)
  expected = quantize.quantize_params(params)
  assert fmt == 'int8'
  assert jax.tree.structure(loaded) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(expected)):
    assert a.dtype == np.asarray(b).dtype
    np.testing.assert_array_equal(a, b)
  # Other formats ignore `quantized`: they decode to float32 as usual.
  storage.save(path, params, fmt='float32')
  loaded, _, _ = storage.load(path, quantized=True)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
