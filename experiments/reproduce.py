r"""Reproduces the MNIST-1D benchmark table (Greydanus 2020) across model families with one command.

Usage:
  python -m experiments.reproduce mnist1d                       # paper recipe, 3 seeds
  python -m experiments.reproduce mnist1d --quick               # 1 seed, fewer steps (what `make demo` runs)
  python -m experiments.reproduce mnist1d --variant=shuffled --out=results/mnist1d_shuffled
  python -m experiments.reproduce mnist1d --order=epoch          # a fresh shuffle every epoch, not the paper's order

Each (model, seed) is an ordinary training run in OUT/runs/MODEL_sSEED (rerunning skips finished runs and resumes
interrupted ones). Writes OUT/table.md, OUT/summary.json and OUT/curves.png, and prints the table.
"""

import os
import sys
import time

from absl import app, flags

from experiments import cli

MODELS = ('logreg', 'mlp', 'cnn', 'gru', 'lstm', 'transformer')
# Test accuracy reported in the MNIST-1D paper (Greydanus 2020, Table 1, standard variant); None = not reported.
PAPER_TEST_ACCURACY = {'logreg': 0.32, 'mlp': 0.68, 'cnn': 0.94, 'gru': 0.91, 'lstm': None, 'transformer': None}
QUICK_STEPS = 3000  # --quick: half the paper's 6000 steps (the CNN is past 90% by then).

_SEEDS = flags.DEFINE_integer('seeds', 3, 'Seeds per model (seed = 0..N-1).')
_QUICK = flags.DEFINE_bool('quick', False, f'One seed and {QUICK_STEPS} steps per model.')
_OUT = flags.DEFINE_string('out', None, 'Output directory (default results/<benchmark>[_<variant>][_<order>][_quick]).')
_VARIANT = flags.DEFINE_enum('variant', 'standard', ['standard', 'shuffled'], 'MNIST-1D variant.')
_MODELS = flags.DEFINE_list('models', list(MODELS), f'Subset of {MODELS}.')
_STEPS = flags.DEFINE_integer('steps', None, 'Override the steps of every run (a tiny budget for smoke tests).')
_ORDER = flags.DEFINE_enum('order', 'stored', ['stored', 'epoch'],
                           "Training batch order: the paper's (stored, the presets') or a fresh shuffle every epoch.")


def run_config(model: str, *, seed: int, variant: str, quick: bool, steps: int | None = None,
               order: str = 'stored'):
  """The preset for `model` with the run's seed, variant, batch order and length (`steps` overrides the length)."""
  from configs import base, mnist1d  # pylint: disable=g-import-not-at-top

  config = mnist1d.get_config(model)
  config.seed = seed
  config.dataset.variant = variant
  config.dataset.order = order
  config.progress = False
  if quick:
    config.steps = QUICK_STEPS
  if steps is not None:
    config.steps = steps
    config.eval_every = max(1, min(config.eval_every, steps // 2))
  config.checkpoint_every = config.steps  # One checkpoint at the end: these runs are short.
  from research.config import validate  # pylint: disable=g-import-not-at-top
  validate(config, base.get_base_config())
  return config


def main(argv: list[str]) -> None:
  if argv[1:] != ['mnist1d']:
    cli.usage_error(f'expected one benchmark name, mnist1d; got {argv[1:]}')
  unknown = sorted(set(_MODELS.value) - set(MODELS))
  if unknown:
    cli.usage_error(f'--models: unknown {unknown}; allowed {list(MODELS)}')
  if _SEEDS.value <= 0:
    cli.usage_error(f'--seeds={_SEEDS.value}: expected a positive integer')
  if _STEPS.value is not None and _STEPS.value <= 0:
    cli.usage_error(f'--steps={_STEPS.value}: expected a positive integer')
  from research import reproduction  # pylint: disable=g-import-not-at-top  (heavy)

  variant, quick = _VARIANT.value, _QUICK.value
  seeds = 1 if quick else _SEEDS.value
  out = _OUT.value or os.path.join('results', 'mnist1d' + ('' if variant == 'standard' else f'_{variant}')
                                   + ('' if _ORDER.value == 'stored' else f'_{_ORDER.value}')
                                   + ('_quick' if quick else ''))
  runs = {}
  t0 = time.time()
  total = len(_MODELS.value) * seeds
  for i, model in enumerate(_MODELS.value):
    for seed in range(seeds):
      config = run_config(model, seed=seed, variant=variant, quick=quick, steps=_STEPS.value, order=_ORDER.value)
      workdir = os.path.join(out, 'runs', f'{model}_s{seed}')
      done = i * seeds + seed
      print(f'[{done + 1}/{total}] {model} seed {seed}: {config.steps} steps -> {workdir} '
            f'({time.time() - t0:.0f}s elapsed)', flush=True)
      runs.setdefault(model, []).append(reproduction.run(config, workdir))
  paper = PAPER_TEST_ACCURACY if variant == 'standard' else {m: None for m in MODELS}
  command = 'python -m experiments.reproduce ' + ' '.join(sys.argv[1:])
  table = reproduction.write_results(out, runs, paper=paper, variant=variant, command=command)
  print('\n' + table)
  print(f'Wrote {out}/table.md, summary.json, curves.png in {time.time() - t0:.0f}s.')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
