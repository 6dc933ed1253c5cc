"""Tests of research.generation (KV-cache sampling, tokenizers) and the usage errors of experiments.generate."""

import json
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from research import generation
from research.models import hf_gpt2
from research.models.gpt import GPT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = [72, 101, 108, 108, 111]  # 'Hello'
SAMPLING = generation.Sampling(temperature=0.9, top_k=50, top_p=0.9)  # Shared by tests: compiled once.
GREEDY = generation.Sampling(temperature=0)
# Compilation dominates these tests on XLA:CPU: skip LLVM's optimisations (the computation is unchanged).
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


@pytest.fixture(scope='module')
def tiny():
  """A 2-layer GPT (width 32, context 32, vocab 256) with weights spread wide enough that argmaxes are clear."""
  model = GPT(num_classes=256, context=32, d_model=32, num_heads=4, num_layers=2, attention='einsum')
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32), jnp.int32), train=False))
  rng = np.random.default_rng(0)  # numpy: one jax.random call per leaf would compile one program per shape.
  params = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32), nn.meta.unbox(shapes['params']))
  return model, params


@pytest.fixture(scope='module')
def generator(tiny):
  return generation.Generator(*tiny, compiler_options=FAST_COMPILE)


def test_decode_step_is_compiled_once_for_every_token_and_call(generator):
  seen = []
  out = generator.generate(PROMPT, max_new_tokens=25, sampling=SAMPLING, seed=0, num_samples=3,
                           callback=lambda i, tokens: seen.append((i, tokens.copy())))
  generator.generate(PROMPT, max_new_tokens=25, sampling=SAMPLING, seed=1, num_samples=3)  # Same shapes: reused.
  assert generator.traces == 1
  assert out.tokens.shape == (3, 25) and out.prompt_tokens == 5
  assert [i for i, _ in seen] == list(range(25))  # Streamed in order, one call per token.
  np.testing.assert_array_equal(np.stack([t for _, t in seen], axis=1), out.tokens)
  timing = out.timing
  assert [p for p, _ in timing.per_position_ms] == list(range(5, 29))  # Steps feed positions 5..28.
  assert 0 < timing.decode_ms_min <= timing.decode_ms_p50 <= timing.decode_ms_p90 and timing.prefill_ms > 0
  assert timing.tokens_per_s > 0 and timing.device == 'cpu'


def _greedy_from_scratch(model, params, prompt, new_tokens):
  """Greedy continuation recomputing a full forward pass (no cache) at every step."""
  forward = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False), compiler_options=FAST_COMPILE)
  sequence = np.zeros((1, model.context), np.int32)  # Padded to one shape: causal, so the padding is never seen.
  sequence[0, :len(prompt)] = prompt
  for t in range(len(prompt), len(prompt) + new_tokens):
    sequence[0, t] = np.argmax(forward(params, sequence)[0, t - 1])
  return sequence[0, len(prompt):len(prompt) + new_tokens].tolist()


def test_greedy_with_the_kv_cache_equals_argmax_of_full_forward_passes(tiny, generator):
  model, params = tiny
  expected = _greedy_from_scratch(model, params, PROMPT, 12)
  out = generator.generate(PROMPT, max_new_tokens=12, sampling=GREEDY)
  np.testing.assert_array_equal(out.tokens, [expected])
  assert len(set(expected)) > 1  # Not a degenerate constant continuation.
  top1 = generator.generate(PROMPT, max_new_tokens=12, sampling=generation.Sampling(temperature=0.7, top_k=1),
                            seed=3)
  np.testing.assert_array_equal(top1.tokens[0], expected)


def test_a_seed_reproduces_its_samples_and_another_seed_differs(generator):
  first = generator.generate(PROMPT, max_new_tokens=20, sampling=SAMPLING, seed=7, num_samples=3).tokens
  other = generator.generate(PROMPT, max_new_tokens=20, sampling=SAMPLING, seed=8, num_samples=3).tokens
  again = generator.generate(PROMPT, max_new_tokens=20, sampling=SAMPLING, seed=7, num_samples=3).tokens
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)
  assert not np.array_equal(first[0], first[1])  # The rows of a batch are independent draws.


def test_the_prompt_must_be_shorter_than_the_context(generator):
  with pytest.raises(ValueError, match=r"the prompt \(32 tokens\) must be shorter than the model's context "
                                       r'\(32 tokens\); shorten it to at most 31'):
    generator.generate([1] * 32, max_new_tokens=1, sampling=GREEDY)
  with pytest.raises(ValueError, match='the prompt is empty'):
    generator.generate([], max_new_tokens=1, sampling=GREEDY)


def test_generating_past_the_context_slides_a_window_of_half_the_context(tiny, generator):
  model, params = tiny
  forward = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False), compiler_options=FAST_COMPILE)
  sequence, start = list(PROMPT), 0  # Reference: the cache holds sequence[start:]; full forward passes, no cache.
  for _ in range(60):
    if len(sequence) - start > model.context:  # The window is full: keep its last half.
      start = len(sequence) - generator.window
    window = np.zeros((1, model.context), np.int32)
    window[0, :len(sequence) - start] = sequence[start:]
    sequence.append(int(np.argmax(forward(params, window)[0, len(sequence) - start - 1])))
  generator.generate(PROMPT, max_new_tokens=2, sampling=GREEDY)
  traces = generator.traces
  out = generator.generate(PROMPT, max_new_tokens=60, sampling=GREEDY)
  np.testing.assert_array_equal(out.tokens[0], sequence[len(PROMPT):])
  assert len(out.timing.refill_ms) == 2  # For new tokens 28 (5 + 28 > 32 tokens) and 45 (16 tokens later).
  assert generator.traces == traces  # Still the one compiled decode step.


@pytest.mark.parametrize('kwargs, message', [
    (dict(temperature=-0.1), r'temperature \(-0.1\) must be >= 0'),
    (dict(temperature=float('nan')), r'temperature \(nan\) must be >= 0'),
    (dict(top_k=-1), r'top_k \(-1\) must be >= 0'),
    (dict(top_p=0.0), r'top_p \(0.0\) must be in \(0, 1\]'),
    (dict(top_p=1.5), r'top_p \(1.5\) must be in \(0, 1\]'),
])
def test_bad_sampling_values_are_rejected(kwargs, message):
  with pytest.raises(ValueError, match=message):
    generation.Sampling(**kwargs)


def test_top_k_and_top_p_keep_only_the_most_likely_tokens():
  logits = jnp.log(jnp.asarray([[0.05, 0.5, 0.15, 0.3]]))

  filter_logits = jax.jit(generation.filter_logits, static_argnums=1, compiler_options=FAST_COMPILE)

  def kept(**kwargs):
    return set(np.flatnonzero(np.isfinite(filter_logits(logits, generation.Sampling(**kwargs))[0])))

  assert kept() == {0, 1, 2, 3}
  assert kept(top_k=2) == {1, 3}
  assert kept(top_p=0.7) == {1, 3}  # 0.5 < 0.7 < 0.5 + 0.3.
  assert kept(top_p=0.45) == {1}
  assert kept(top_k=3, top_p=0.85) == {1, 2, 3}  # 0.8 < 0.85.
  np.testing.assert_allclose(filter_logits(logits, generation.Sampling(temperature=2.0)), logits / 2, rtol=1e-6)
  draw = jax.jit(jax.vmap(lambda k: generation.sample_logits(logits, k, generation.Sampling(top_k=2))[0]),
                 compiler_options=FAST_COMPILE)
  assert set(np.asarray(draw(jax.random.split(jax.random.key(0), 300))).tolist()) == {1, 3}


def _stream(tokenizer, tokens):
  decoder = generation.StreamDecoder(tokenizer)
  return [decoder(t) for t in tokens] + [decoder.flush()]


def test_byte_tokenizer_round_trips_and_streams_multibyte_characters():
  tokenizer = generation.ByteTokenizer()
  text = 'Façade — 世界 🎉!'
  tokens = tokenizer.encode(text)
  assert len(tokens) == len(text.encode('utf-8')) and max(tokens) < 256
  assert tokenizer.decode(tokens) == text
  pieces = _stream(tokenizer, tokens)
  assert ''.join(pieces) == text
  assert pieces[:4] == ['F', 'a', '', 'ç']  # 'ç' is two bytes: nothing until the second one arrives.
  assert _stream(tokenizer, [0xE4, 0xB8]) == ['', '', '\ufffd']  # A truncated character: one replacement.
  assert tokenizer.decode([0xFF, 65]) == '\ufffdA'


def _byte_alphabet():
  return {b: c for c, b in generation._gpt2_byte_alphabet().items()}  # pylint: disable=protected-access


def test_bpe_tokenizer_reads_vocab_and_merges_and_streams_bytes(tmp_path):
  """A toy GPT-2-style BPE: the 256 byte symbols plus merges for 'Ġt', 'he', 'Ġthe' (Ġ is the space byte)."""
  alphabet = _byte_alphabet()
  assert len(set(alphabet.values())) == 256 and alphabet[ord(' ')] == 'Ġ' and alphabet[ord('A')] == 'A'
  vocab = {alphabet[b]: b for b in range(256)}
  vocab.update({'Ġt': 256, 'he': 257, 'Ġthe': 258})
  (tmp_path / 'vocab.json').write_text(json.dumps(vocab))
  (tmp_path / 'merges.txt').write_text('#version: 0.2\nĠ t\nh e\nĠt he\n')
  tokenizer = generation.BPETokenizer(str(tmp_path))
  assert tokenizer.vocab_size == 259
  text = 'in the café 世'
  tokens = tokenizer.encode(text)
  assert 258 in tokens and len(tokens) < len(text.encode('utf-8'))
  assert tokenizer.decode(tokens) == text and ''.join(_stream(tokenizer, tokens)) == text
  with pytest.raises(FileNotFoundError, match='tokenizer.json or vocab.json'):
    generation.BPETokenizer(str(tmp_path / 'missing'))


def _generate(*args, env=None):
  return subprocess.run([sys.executable, '-m', 'experiments.generate', *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=120, env=env)


@pytest.fixture(scope='module')
def workdirs(tmp_path_factory):
  """A classifier run's config.json (an untrained run's error is load_run's: tests/inference_test.py; its
  subprocess would spend seconds importing Orbax and TFDS)."""
  root = tmp_path_factory.mktemp('generate')
  (root / 'classifier').mkdir()
  (root / 'classifier' / 'config.json').write_text(json.dumps({'model': {'name': 'mlp'}, 'dataset': {'name': 'x'}}))
  return root


@pytest.mark.parametrize('args, message', [
    ([], 'give exactly one of --workdir=RUN_DIR'),
    (['--workdir=w', '--checkpoint=hf:d'], 'give exactly one of --workdir=RUN_DIR'),
    (['--checkpoint=d'], '--checkpoint=d: expected hf:DIR'),
    (['--checkpoint=hf:d', '--step=3'], '--step=3 applies to --workdir runs only'),
    (['--workdir=w', '--top_p=0'], r'--top_p=0.0 must be in (0, 1]'),
    (['--workdir=w', '--temperature=-1'], '--temperature=-1.0 must be >= 0'),
    (['--workdir=w', '--max_new_tokens=0'], '--max_new_tokens=0 must be >= 1'),
    (['--workdir=w', '--num_samples=0'], '--num_samples=0 must be >= 1'),
    (['--workdir=w', '--json=/nonexistent/x.json'], '--json=/nonexistent/x.json: the directory'),
])
def test_cli_usage_errors_exit_2(args, message):
  proc = _generate(*args)
  assert proc.returncode == 2, proc.stderr
  assert message in proc.stderr and 'Traceback' not in proc.stderr


@pytest.mark.parametrize('case, message', [
    ('classifier', "is a run of the classifier 'mlp', not a language model"),
    ('missing', 'missing does not exist (train first'),
    ('hf', 'config.json does not exist; expected a Hugging Face GPT-2 directory'),
])
def test_cli_rejects_runs_that_cannot_generate(workdirs, case, message):
  where = workdirs / case
  proc = _generate(f'--checkpoint=hf:{where}' if case == 'hf' else f'--workdir={where}')
  assert proc.returncode == 2, proc.stderr
  assert message in proc.stderr and 'Traceback' not in proc.stderr


def test_cli_generates_from_a_hugging_face_directory(tmp_path, tiny):
  """End to end without training: the tiny GPT saved in GPT-2's layout with a byte-only BPE vocabulary."""
  model, params = tiny
  save_file(hf_gpt2.to_tensors(params, model), str(tmp_path / 'model.safetensors'))
  (tmp_path / 'config.json').write_text(json.dumps({'model_type': 'gpt2', 'n_layer': 2, 'n_head': 4, 'n_embd': 32,
                                                    'n_positions': 32, 'vocab_size': 256}))
  (tmp_path / 'vocab.json').write_text(json.dumps({c: b for b, c in _byte_alphabet().items()}))
  (tmp_path / 'merges.txt').write_text('#version: 0.2\n')
  out = tmp_path / 'out.json'
  proc = _generate(f'--checkpoint=hf:{tmp_path}', '--prompt=Hé', '--max_new_tokens=20', '--num_samples=2',
                   '--temperature=0', f'--json={out}')
  assert proc.returncode == 0, proc.stderr
  record = json.loads(out.read_text())
  tokens = np.asarray(record['tokens'])
  assert tokens.shape == (2, 20) and record['prompt_tokens'] == 3  # 'é' is two bytes.
  np.testing.assert_array_equal(tokens[0], tokens[1])  # Greedy: every sample the same.
  assert record['samples'][0] == generation.ByteTokenizer().decode(tokens[0])
  assert proc.stdout.startswith('Hé' + record['samples'][0])  # The prompt, then the streamed first sample.
  assert len(record['timing']['per_position_ms']) == 19
  summary = proc.stdout.strip().splitlines()[-2]
  assert re.search(r'prompt 3 tokens, 20 new tokens x 2 sample\(s\); prefill [\d.]+ ms, decode [\d.]+ ms/token p50 '
                   r'[\d.]+ p90; [\d,]+ tokens/s; compile [\d.]+ s \(cpu\)', summary), summary
