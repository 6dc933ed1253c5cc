r"""Generates text with a trained language model or a Hugging Face GPT-2 checkpoint, streaming it as it comes.

Usage:
  python -m experiments.generate --workdir=runs/lm_tiny --prompt="ROMEO." --max_new_tokens=200
  python -m experiments.generate --checkpoint=hf:/path/to/gpt2 --prompt="Hello, I'm a language model," \
      --temperature=0.8 --top_k=200 --top_p=0.95 --seed=0 --num_samples=3 --json=samples.json

Exactly one of --workdir (a run of experiments.train with a language model: byte-level tokens) or
--checkpoint=hf:DIR (config.json + model.safetensors + the tokenizer files of a GPT-2 directory; docs/gpt2.md).
Prints the prompt and streams the first sample as it is generated, then the other samples, then a summary line:
prompt and new tokens, prefill ms, decode ms/token (p50, p90), tokens/s, device (compilation excluded, reported
apart). --temperature=0 is greedy decoding. --json=FILE also writes the samples, their tokens and the timings
(with the latency of every position). Exit codes: 0 success, 2 bad usage or inputs (no trained run, a classifier
run, a prompt as long as the model's context, bad sampling values), 1 anything else. A generation longer than
the context slides its window (research/generation.py).
"""

import dataclasses
import json
import os
import statistics
import sys

from absl import app, flags

from experiments import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory of a language model trained by experiments.train.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'hf:DIR, a local Hugging Face GPT-2 directory.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step of --workdir to restore; default: the latest.')
_PROMPT = flags.DEFINE_string('prompt', '\n', 'The text to continue (at least one token).')
_MAX_NEW_TOKENS = flags.DEFINE_integer('max_new_tokens', 200, 'Tokens to generate per sample.')
_TEMPERATURE = flags.DEFINE_float('temperature', 0.8, 'Softmax temperature; 0: greedy (argmax).')
_TOP_K = flags.DEFINE_integer('top_k', 200, 'Sample from the k most likely tokens only; 0: all.')
_TOP_P = flags.DEFINE_float('top_p', 1.0, 'Nucleus sampling: the smallest set of tokens with this much probability.')
_SEED = flags.DEFINE_integer('seed', 0, 'PRNG seed (token p is drawn with fold_in(key(seed), p)).')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 1, 'Independent samples, generated as one batch.')
_JSON = flags.DEFINE_string('json', None, 'Also write the samples and timings to this JSON file.')

HF_PREFIX = 'hf:'


def _check_flags() -> None:
  """Usage errors (exit 2) for flag values, before anything heavy is imported."""
  if bool(_WORKDIR.value) == bool(_CHECKPOINT.value):
    cli.usage_error('give exactly one of --workdir=RUN_DIR (a trained language model) or --checkpoint=hf:DIR '
                    f'(got --workdir={_WORKDIR.value} --checkpoint={_CHECKPOINT.value})')
  if _CHECKPOINT.value and not _CHECKPOINT.value.startswith(HF_PREFIX):
    cli.usage_error(f'--checkpoint={_CHECKPOINT.value}: expected hf:DIR (a local Hugging Face GPT-2 directory)')
  if _CHECKPOINT.value and _STEP.value is not None:
    cli.usage_error(f'--step={_STEP.value} applies to --workdir runs only, not to --checkpoint')
  checks = [(_MAX_NEW_TOKENS, _MAX_NEW_TOKENS.value >= 1, 'must be >= 1'),
            (_NUM_SAMPLES, _NUM_SAMPLES.value >= 1, 'must be >= 1'),
            (_STEP, _STEP.value is None or _STEP.value >= 0, 'must be >= 0'),
            (_TEMPERATURE, _TEMPERATURE.value >= 0, 'must be >= 0 (0: greedy)'),  # False for NaN too.
            (_TOP_K, _TOP_K.value >= 0, 'must be >= 0 (0: all tokens)'),
            (_TOP_P, 0 < _TOP_P.value <= 1, 'must be in (0, 1] (1: no nucleus filtering)')]
  for flag, ok, allowed in checks:
    if not ok:
      cli.usage_error(f'--{flag.name}={flag.value} {allowed}')
  if _JSON.value and not os.path.isdir(os.path.dirname(os.path.abspath(_JSON.value))):
    cli.usage_error(f'--json={_JSON.value}: the directory {os.path.dirname(os.path.abspath(_JSON.value))} '
                    'does not exist')
  if _WORKDIR.value and not os.path.isdir(_WORKDIR.value):
    cli.usage_error(f'--workdir={_WORKDIR.value} does not exist (train first: python -m experiments.train '
                    '--config=configs/lm.py:tiny --workdir=...)')
  directory = (_CHECKPOINT.value or '')[len(HF_PREFIX):]
  if _CHECKPOINT.value and not os.path.isfile(os.path.join(directory, 'config.json')):
    cli.usage_error(f'--checkpoint={_CHECKPOINT.value}: {os.path.join(directory, "config.json")} does not exist; '
                    'expected a Hugging Face GPT-2 directory (config.json, model.safetensors, vocab.json + '
                    'merges.txt or tokenizer.json: docs/gpt2.md)')


def _load():
  """(model, params, tokenizer, description) of --workdir or --checkpoint; usage error if it is not usable."""
  # pylint: disable=g-import-not-at-top  (heavy; after validation)
  from research import generation, models
  from research.models import hf_gpt2

  if _CHECKPOINT.value:
    directory = _CHECKPOINT.value[len(HF_PREFIX):]
    try:
      model, params = hf_gpt2.load(directory)
      tokenizer = generation.BPETokenizer(directory)
    except (hf_gpt2.CheckpointError, FileNotFoundError) as e:
      cli.usage_error(f'--checkpoint={_CHECKPOINT.value}: {e}')
    if tokenizer.vocab_size > model.num_classes:
      cli.usage_error(f'--checkpoint={_CHECKPOINT.value}: the tokenizer has {tokenizer.vocab_size} tokens, the '
                      f'model only {model.num_classes} (config.json vocab_size)')
    return model, params, tokenizer, _CHECKPOINT.value
  name = _model_name(_WORKDIR.value)
  if name in models.MODELS and not models.is_language_model(name):  # Before restoring anything.
    cli.usage_error(f'--workdir={_WORKDIR.value} is a run of the classifier {name!r}, not a language model '
                    '(train one with --config=configs/lm.py:tiny)')
  from research import inference  # Heavier still (orbax, TFDS): only for runs.
  try:
    run = inference.load_run(_WORKDIR.value, step=_STEP.value)
  except ValueError as e:  # RunNotFoundError, or an unreadable config.json.
    cli.usage_error(str(e))
  if run.num_classes != generation.ByteTokenizer.vocab_size:
    cli.usage_error(f'--workdir={_WORKDIR.value}: vocabulary {run.num_classes}; only byte-level (256) runs have a '
                    'tokenizer here')
  return run.model, run.params, generation.ByteTokenizer(), f'{_WORKDIR.value} (step {run.step})'


def _model_name(workdir: str) -> str | None:
  """model.name in the workdir's config.json, or None where that is unreadable (load_run then explains why)."""
  try:
    with open(os.path.join(workdir, 'config.json')) as f:
      return json.load(f)['model']['name']
  except (OSError, ValueError, KeyError, TypeError):
    return None


class _Printer:
  """Streams sample 0 to stdout as its tokens arrive, decoding bytes incrementally."""

  def __init__(self, decoder):
    self._decoder = decoder

  def __call__(self, index: int, tokens) -> None:
    del index
    sys.stdout.write(self._decoder(tokens[0]))
    sys.stdout.flush()


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.usage_error(f'unexpected arguments: {argv[1:]}')
  _check_flags()
  from research import generation  # pylint: disable=g-import-not-at-top

  model, params, tokenizer, source = _load()
  prompt = tokenizer.encode(_PROMPT.value)
  sampling = generation.Sampling(temperature=_TEMPERATURE.value, top_k=_TOP_K.value, top_p=_TOP_P.value)
  generator = generation.Generator(model, params)
  try:
    generator.check_length(len(prompt), _MAX_NEW_TOKENS.value)
  except ValueError as e:
    cli.usage_error(f'--prompt / --max_new_tokens: {e}')
  sys.stdout.write(_PROMPT.value)
  decoder = generation.StreamDecoder(tokenizer)
  out = generator.generate(prompt, max_new_tokens=_MAX_NEW_TOKENS.value, sampling=sampling, seed=_SEED.value,
                           num_samples=_NUM_SAMPLES.value, callback=_Printer(decoder))
  print(decoder.flush())
  samples = [tokenizer.decode(row) for row in out.tokens]
  for i, text in enumerate(samples[1:], start=2):
    print(f'---------- sample {i}/{len(samples)}\n{_PROMPT.value}{text}')
  t = out.timing
  print(f'---------- {source}: prompt {out.prompt_tokens} tokens, {out.tokens.shape[1]} new tokens x '
        f'{len(samples)} sample(s); prefill {t.prefill_ms:.1f} ms, decode {t.decode_ms_p50:.2f} ms/token p50 '
        f'{t.decode_ms_p90:.2f} p90; {t.tokens_per_s:,.0f} tokens/s; compile {t.compile_s:.1f} s ({t.device})' +
        (f'; window slid {len(t.refill_ms)}x ({statistics.median(t.refill_ms):.1f} ms each, median)' if t.refill_ms else ''),
        flush=True)
  if _JSON.value:
    record = {'source': source, 'prompt': _PROMPT.value, 'prompt_tokens': out.prompt_tokens,
              'max_new_tokens': _MAX_NEW_TOKENS.value, 'num_samples': _NUM_SAMPLES.value, 'seed': _SEED.value,
              'sampling': dataclasses.asdict(sampling), 'samples': samples, 'tokens': out.tokens.tolist(),
              'timing': dataclasses.asdict(t)}
    with open(_JSON.value, 'w') as f:
      json.dump(record, f)
      f.write('\n')
    print(f'wrote {len(samples)} sample(s) and timings to {_JSON.value}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
