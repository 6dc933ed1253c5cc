r"""Parity of our GPT (research/models/gpt.py, loaded by research/models/hf_gpt2.py) with Hugging Face's GPT-2.

    make compare                                   # installs the [reference] extra (torch, transformers), runs this
    JAX_PLATFORMS=cpu python benchmarks/gpt2_parity.py [--out=results/gpt2_parity]

Builds a small randomly initialised transformers GPT2LMHeadModel locally (2 layers, 4 heads, width 64, vocab 1000,
context 128; fixed seed; every weight, bias and LayerNorm parameter perturbed so none is trivially 0 or 1; nothing
is downloaded), saves it with save_pretrained (model.safetensors) into a temporary directory and loads that with
hf_gpt2.load. Then compares (1) the logits of both models on random token batches (max abs difference must be
<= 1e-4) and (2) greedy generation of 20 tokens with our KV cache (research/generation.py, temperature 0) against
transformers' `generate(do_sample=False)` for a few random prompts (the tokens must be identical).
Writes OUT.md and OUT.json (figures, versions, command) and exits 1 if parity fails.
"""

import argparse
import json
import os
import platform
import sys
import tempfile

import jax
import numpy as np

from research import generation
from research.models import hf_gpt2

CONFIG = dict(n_layer=2, n_head=4, n_embd=64, vocab_size=1000, n_positions=128)
SEED = 0
LOGIT_TOLERANCE = 1e-4
NEW_TOKENS = 20
PROMPT_LENGTHS = (1, 7, 30)
PERTURBATION = 0.1  # Added N(0, PERTURBATION) noise: larger activations and logits than GPT-2's 0.02 init.


def make_reference(directory: str):
  """A random transformers GPT2LMHeadModel (eval mode, float32) saved into `directory`."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  torch.manual_seed(SEED)
  config = transformers.GPT2Config(**CONFIG, bos_token_id=None, eos_token_id=None, attn_implementation='eager')
  model = transformers.GPT2LMHeadModel(config).eval()
  with torch.no_grad():
    for param in model.parameters():  # Biases, LayerNorm scales and offsets off their 0/1 initial values.
      param.add_(PERTURBATION * torch.randn_like(param))
  model.save_pretrained(directory)  # model.safetensors (tied lm_head not stored) + config.json.
  return model


def compare_logits(reference, model, params, rng: np.random.Generator) -> dict:
  """Max abs logit difference over random batches (full context, a short batch)."""
  import torch  # pylint: disable=g-import-not-at-top

  forward = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))
  worst, scale = 0.0, 0.0
  shapes = [(4, CONFIG['n_positions']), (4, CONFIG['n_positions']), (3, 17)]
  for shape in shapes:
    tokens = rng.integers(0, CONFIG['vocab_size'], shape)
    ours = np.asarray(forward(params, tokens))
    with torch.no_grad():
      theirs = reference(torch.from_numpy(tokens)).logits.numpy()
    worst = max(worst, float(np.abs(ours - theirs).max()))
    scale = max(scale, float(np.abs(theirs).max()))
  return {'batches': [list(s) for s in shapes], 'max_abs_diff': worst, 'max_abs_logit': scale,
          'tolerance': LOGIT_TOLERANCE, 'ok': worst <= LOGIT_TOLERANCE}


def compare_greedy(reference, model, params, rng: np.random.Generator) -> dict:
  """Greedy tokens of our KV-cache generation vs transformers' generate(do_sample=False), per prompt."""
  import torch  # pylint: disable=g-import-not-at-top

  generator = generation.Generator(model, params)
  rows = []
  for length in PROMPT_LENGTHS:
    prompt = rng.integers(0, CONFIG['vocab_size'], length)
    ours = generator.generate(prompt, max_new_tokens=NEW_TOKENS, sampling=generation.Sampling(temperature=0))
    with torch.no_grad():
      out = reference.generate(torch.from_numpy(prompt)[None], do_sample=False, max_new_tokens=NEW_TOKENS,
                               min_new_tokens=NEW_TOKENS, pad_token_id=0, eos_token_id=None)
    theirs = out[0, length:].numpy()
    rows.append({'prompt_tokens': length, 'ours': ours.tokens[0].tolist(), 'transformers': theirs.tolist(),
                 'equal': bool(np.array_equal(ours.tokens[0], theirs))})
  return {'new_tokens': NEW_TOKENS, 'prompts': rows, 'ok': all(r['equal'] for r in rows)}


def _markdown(result: dict) -> str:
  logits, greedy, v = result['logits'], result['greedy'], result['versions']
  lines = [
      '# GPT-2 parity: our GPT vs transformers GPT2LMHeadModel', '',
      f'Command: `{result["command"]}`', '',
      f'Model: a randomly initialised GPT2LMHeadModel {CONFIG} (seed {SEED}, every parameter perturbed by '
      f'N(0, {PERTURBATION})), saved with save_pretrained (model.safetensors) and loaded with '
      'research/models/hf_gpt2.py; float32 on CPU, transformers\' eager attention. `make compare` installs the '
      '[reference] extra and runs this.', '',
      '| check | result | pass |', '|---|---|---|',
      f'| logits, max abs diff over batches {logits["batches"]} | {logits["max_abs_diff"]:.2e} (max abs logit '
      f'{logits["max_abs_logit"]:.2f}; tolerance {logits["tolerance"]:.0e}) | {"yes" if logits["ok"] else "NO"} |',
  ]
  for row in greedy['prompts']:
    lines.append(f'| greedy {greedy["new_tokens"]} tokens, KV cache vs generate(do_sample=False), prompt of '
                 f'{row["prompt_tokens"]} | {"identical" if row["equal"] else "DIFFERENT"} | '
                 f'{"yes" if row["equal"] else "NO"} |')
  lines += ['', f'Versions: jax {v["jax"]}, flax {v["flax"]}, torch {v["torch"]}, transformers {v["transformers"]}, '
            f'Python {v["python"]}; {result["machine"]}.', '',
            f'**Parity: {"PASS" if result["ok"] else "FAIL"}**', '']
  return '\n'.join(lines)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default='results/gpt2_parity', help='writes OUT.md and OUT.json')
  args = parser.parse_args()
  try:
    import flax  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    print(f'error: {e}; install the reference extra: pip install -e ".[reference]" (or: make compare)',
          file=sys.stderr)
    return 2
  torch.set_num_threads(os.cpu_count() or 1)
  rng = np.random.default_rng(SEED)
  with tempfile.TemporaryDirectory() as directory:
    reference = make_reference(directory)
    model, params = hf_gpt2.load(directory)
  result = {'command': ' '.join(['python benchmarks/gpt2_parity.py', *sys.argv[1:]]), 'config': CONFIG,
            'logits': compare_logits(reference, model, params, rng),
            'greedy': compare_greedy(reference, model, params, rng),
            'versions': {'jax': jax.__version__, 'flax': flax.__version__, 'torch': torch.__version__,
                         'transformers': transformers.__version__, 'python': platform.python_version()},
            'machine': f'{platform.machine()} {platform.processor() or ""} {os.cpu_count()} cores, '
                       f'JAX device {jax.devices()[0].device_kind}'.replace('  ', ' ')}
  result['ok'] = result['logits']['ok'] and result['greedy']['ok']
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out + '.json', 'w') as f:
    json.dump(result, f, indent=2)
    f.write('\n')
  with open(args.out + '.md', 'w') as f:
    f.write(_markdown(result))
  print(_markdown(result))
  print(f'wrote {args.out}.md and {args.out}.json')
  return 0 if result['ok'] else 1


if __name__ == '__main__':
  sys.exit(main())
