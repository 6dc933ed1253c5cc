"""Tests of research.models.hf_gpt2: a Hugging Face GPT-2 directory written here (safetensors, GPT-2's tensor names)
loads into our GPT, which then computes a numpy GPT-2 forward pass written in Hugging Face's conventions; config
options our GPT does not compute are rejected; and parity with transformers where it is installed."""

import json

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from research import generation
from research.models import hf_gpt2

CONFIG = {'model_type': 'gpt2', 'n_layer': 2, 'n_head': 4, 'n_embd': 32, 'n_positions': 16, 'vocab_size': 50,
          'layer_norm_epsilon': 1e-5, 'activation_function': 'gelu_new', 'n_inner': None}
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def _hf_tensors(rng: np.random.Generator, *, prefix: str = 'transformer.') -> dict[str, np.ndarray]:
  """Random GPT2LMHeadModel tensors in Hugging Face's layout (Conv1D weights [in, out])."""
  d, v, p = CONFIG['n_embd'], CONFIG['vocab_size'], CONFIG['n_positions']
  shapes = {'wte.weight': (v, d), 'wpe.weight': (p, d), 'ln_f.weight': (d,), 'ln_f.bias': (d,)}
  for i in range(CONFIG['n_layer']):
    shapes.update({f'h.{i}.{name}': shape for name, shape in [
        ('ln_1.weight', (d,)), ('ln_1.bias', (d,)), ('ln_2.weight', (d,)), ('ln_2.bias', (d,)),
        ('attn.c_attn.weight', (d, 3 * d)), ('attn.c_attn.bias', (3 * d,)),
        ('attn.c_proj.weight', (d, d)), ('attn.c_proj.bias', (d,)),
        ('mlp.c_fc.weight', (d, 4 * d)), ('mlp.c_fc.bias', (4 * d,)),
        ('mlp.c_proj.weight', (4 * d, d)), ('mlp.c_proj.bias', (d,))]})
  tensors = {prefix + name: rng.normal(0, 0.3, shape).astype(np.float32) for name, shape in shapes.items()}
  for i in range(CONFIG['n_layer']):  # The causal-mask buffer older checkpoints store: not a parameter.
    tensors[f'{prefix}h.{i}.attn.bias'] = np.tril(np.ones((1, 1, 16, 16), np.float32))
  return tensors


def _write(directory, tensors, config=None) -> str:
  (directory / 'config.json').write_text(json.dumps(config or CONFIG))
  save_file(tensors, str(directory / 'model.safetensors'))
  return str(directory)


def _reference_logits(t: dict[str, np.ndarray], tokens: np.ndarray) -> np.ndarray:
  """GPT-2's forward pass in numpy from Hugging Face's tensors: [batch, time] -> [batch, time, vocab]."""
  t = {k.removeprefix('transformer.'): v.astype(np.float64) for k, v in t.items()}
  heads, (b, n) = CONFIG['n_head'], tokens.shape

  def layer_norm(x, name):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * t[name + '.weight'] + t[name + '.bias']

  def gelu_new(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

  x = t['wte.weight'][tokens] + t['wpe.weight'][:n]
  for i in range(CONFIG['n_layer']):
    p = f'h.{i}.'
    qkv = layer_norm(x, p + 'ln_1') @ t[p + 'attn.c_attn.weight'] + t[p + 'attn.c_attn.bias']  # [b, n, 3D]
    q, k, v = (a.reshape(b, n, heads, -1).transpose(0, 2, 1, 3) for a in np.split(qkv, 3, axis=-1))  # [b,h,n,hd]
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    scores = np.where(np.tril(np.ones((n, n), bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    attn = (weights / weights.sum(-1, keepdims=True)) @ v  # [b, h, n, hd]
    x = x + attn.transpose(0, 2, 1, 3).reshape(b, n, -1) @ t[p + 'attn.c_proj.weight'] + t[p + 'attn.c_proj.bias']
    h = gelu_new(layer_norm(x, p + 'ln_2') @ t[p + 'mlp.c_fc.weight'] + t[p + 'mlp.c_fc.bias'])
    x = x + h @ t[p + 'mlp.c_proj.weight'] + t[p + 'mlp.c_proj.bias']
  return layer_norm(x, 'ln_f') @ t['wte.weight'].T


@pytest.mark.parametrize('prefix', ['transformer.', ''])
def test_loaded_model_computes_the_reference_gpt2_forward_pass(tmp_path, prefix):
  rng = np.random.default_rng(0)
  tensors = _hf_tensors(rng, prefix=prefix)
  model, params = hf_gpt2.load(_write(tmp_path, tensors))
  assert (model.num_layers, model.num_heads, model.d_model, model.context, model.num_classes) == (2, 4, 32, 16, 50)
  tokens = rng.integers(0, 50, (2, 16))
  logits = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False), compiler_options=FAST_COMPILE)(
      params, tokens)
  expected = _reference_logits(tensors, tokens)
  assert np.abs(expected).max() > 1  # Logits large enough for a layout mistake to show.
  np.testing.assert_allclose(np.asarray(logits), expected, atol=2e-4, rtol=1e-4)
  # The inverse mapping restores the same tensors (the mask buffers aside).
  exported = hf_gpt2.to_tensors(params, model)
  assert exported.keys() == {k if k.startswith('transformer.') else 'transformer.' + k for k in tensors
                             if not k.endswith('.attn.bias')}
  for name, value in exported.items():
    np.testing.assert_array_equal(value, tensors[name[len('transformer.'):] if not prefix else name])


@pytest.mark.parametrize('change, message', [
    ({'activation_function': 'relu'}, "activation_function='relu': our GPT computes only"),
    ({'layer_norm_epsilon': 1e-6}, 'layer_norm_epsilon=1e-06: our GPT uses 1e-05'),
    ({'n_inner': 100}, r'n_inner=100: our GPT\'s MLP is 4 \* n_embd \(128\)'),
    ({'scale_attn_by_inverse_layer_idx': True}, 'scale_attn_by_inverse_layer_idx=True'),
    ({'model_type': 'llama'}, "model_type is 'llama'"),
])
def test_unsupported_config_options_are_rejected(tmp_path, change, message):
  with pytest.raises(hf_gpt2.CheckpointError, match=message):
    hf_gpt2.load(_write(tmp_path, _hf_tensors(np.random.default_rng(0)), {**CONFIG, **change}))


def test_bad_tensors_are_rejected(tmp_path):
  tensors = _hf_tensors(np.random.default_rng(0))
  del tensors['transformer.h.1.mlp.c_fc.bias']
  with pytest.raises(hf_gpt2.CheckpointError, match="no tensor 'h.1.mlp.c_fc.bias'"):
    hf_gpt2.load(_write(tmp_path, tensors))
  tensors = _hf_tensors(np.random.default_rng(0))
  tensors['transformer.h.0.attn.c_attn.weight'] = tensors['transformer.h.0.attn.c_attn.weight'].T.copy()  # Linear
  with pytest.raises(hf_gpt2.CheckpointError, match=r"'h.0.attn.c_attn.weight' has shape \(96, 32\); config.json "
                                                    r'implies \(32, 96\)'):
    hf_gpt2.load(_write(tmp_path, tensors))
  tensors = _hf_tensors(np.random.default_rng(0))
  tensors['lm_head.weight'] = tensors['transformer.wte.weight'] + 1
  with pytest.raises(hf_gpt2.CheckpointError, match='lm_head.weight differs from wte.weight'):
    hf_gpt2.load(_write(tmp_path, tensors))
  with pytest.raises(hf_gpt2.CheckpointError, match='config.json does not exist'):
    hf_gpt2.load(str(tmp_path / 'missing'))
  (tmp_path / 'model.safetensors').unlink()
  with pytest.raises(hf_gpt2.CheckpointError, match='neither model.safetensors nor pytorch_model.bin'):
    hf_gpt2.load(str(tmp_path))


def test_parity_with_transformers(tmp_path):
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  torch.manual_seed(0)
  config = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=32, vocab_size=100,
                                   bos_token_id=None, eos_token_id=None, attn_implementation='eager')
  reference = transformers.GPT2LMHeadModel(config).eval()
  with torch.no_grad():
    for param in reference.parameters():
      param.add_(0.1 * torch.randn_like(param))
  reference.save_pretrained(str(tmp_path))
  model, params = hf_gpt2.load(str(tmp_path))
  tokens = np.random.default_rng(0).integers(0, 100, (2, 32))
  with torch.no_grad():
    expected = reference(torch.from_numpy(tokens)).logits.numpy()
    greedy = reference.generate(torch.from_numpy(tokens[:1, :5]), do_sample=False, max_new_tokens=10,
                                pad_token_id=0)[0, 5:].numpy()
  logits = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False), compiler_options=FAST_COMPILE)(
      params, tokens)
  np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-4, rtol=0)
  ours = generation.Generator(model, params, compiler_options=FAST_COMPILE).generate(
      tokens[0, :5], max_new_tokens=10, sampling=generation.Sampling(temperature=0))
  np.testing.assert_array_equal(ours.tokens[0], greedy)
