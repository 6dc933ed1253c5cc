r"""Runs a ready-made study that answers a "how do I choose ...?" question by experiment on MNIST-1D.

Usage:
  python -m experiments.study optimizers            # SGD ... AdamW, each at its best learning rate, CNN and MLP
  python -m experiments.study gradient_descent      # full batch vs mini-batch vs batch size 1
  python -m experiments.study batch_size            # batch size x learning rate: linear scaling, critical batch
  python -m experiments.study regularization        # L1, L2, weight decay, dropout on 300 training examples
  python -m experiments.study model_scale           # width and depth: accuracy vs parameters and FLOPs
  python -m experiments.study all                   # the five, in that order
  python -m experiments.study optimizers --quick    # fewer runs and steps (each study under 5 minutes)

Writes OUT/table.md (findings generated from the numbers, tables, plot links, command, versions), OUT/summary.json
and OUT/*.png, with OUT = results/studies/NAME (NAME_quick with --quick) unless --out says otherwise; the runs are
ordinary workdirs under OUT/runs/ (rerunning skips finished runs and resumes interrupted ones; SIGTERM/SIGINT stops
cleanly). docs/studies.md describes each study. Exit codes: 0 done or stopped by a signal, 2 bad input, 1 otherwise.
"""

import os
import sys
import time

from absl import app, flags

from experiments import cli

_QUICK = flags.DEFINE_bool('quick', False, 'Fewer runs and steps: a smoke test of the study (under 5 minutes each).')
_OUT = flags.DEFINE_string('out', None, 'Output directory (default results/studies/NAME[_quick]); with `all`, '
                           'each study writes OUT/NAME.')
_MAX_STEPS = flags.DEFINE_integer('max_steps', 0, 'Cap every run at this many steps (0 = the study\'s own): a tiny '
                                  'budget for tests of the outputs\' structure; the numbers then mean little.')


def _run_one(name: str, out: str, command: str) -> None:
  from research import host  # pylint: disable=g-import-not-at-top  (heavy imports after the flags are checked)
  from research import studies  # pylint: disable=g-import-not-at-top
  from research.studies import common  # pylint: disable=g-import-not-at-top

  host.keep_freed_memory()
  ctx = common.Context(name, out=out, runs_dir=os.path.join(out, 'runs'), quick=_QUICK.value,
                       max_steps=_MAX_STEPS.value)
  print(f'Study {name}{" (quick)" if ctx.quick else ""} -> {out}', flush=True)
  os.makedirs(out, exist_ok=True)
  t0 = time.time()
  try:
    result = studies.load(name).run(ctx)
  except common.StudyStopped as e:
    print(f'\n{e}', flush=True)
    sys.exit(0)
  except cli.input_errors() as e:
    cli.usage_error(str(e))
  text = common.write_outputs(out, result, command=command, ctx=ctx)
  print('\n' + text)
  print(f'Wrote {out}/table.md, summary.json and {", ".join(result.plots)} in {time.time() - t0:.0f} s '
        f'({ctx.trained} runs trained now).', flush=True)


def main(argv: list[str]) -> None:
  from research.studies import STUDIES  # pylint: disable=g-import-not-at-top  (light: no JAX)

  names = argv[1:]
  if len(names) != 1 or names[0] not in (*STUDIES, 'all'):
    cli.usage_error(f'expected one study name, one of {[*STUDIES, "all"]}; got {names}')
  if _MAX_STEPS.value < 0:
    cli.usage_error(f'--max_steps={_MAX_STEPS.value}: expected a positive number of steps (0 = the study\'s own)')
  command = 'python -m experiments.study ' + ' '.join(sys.argv[1:])
  suffix = '_quick' if _QUICK.value else ''
  if names[0] == 'all':
    root = _OUT.value or 'results/studies'
    for name in STUDIES:
      _run_one(name, os.path.join(root, name + suffix), command)
  else:
    _run_one(names[0], _OUT.value or os.path.join('results/studies', names[0] + suffix), command)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
