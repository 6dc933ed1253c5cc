r"""Runs the compute-scaling study of byte-level GPT models and fits its power laws (research/scaling.py).

Usage:
  python -m experiments.scaling                       # 18 runs (6 sizes x 3 FLOP budgets), runs/scaling -> results/scaling
  python -m experiments.scaling --quick --out=/tmp/s --results=/tmp/s/results   # 6 small runs, a minute or two
  python -m experiments.scaling --dry_run             # the plan: runs, steps, FLOPs

Every run is an ordinary `experiments.train` run of configs/lm.py:tiny with the size and length overridden, in
OUT/trials/<id> with its own run card; rerunning the command skips finished runs and resumes interrupted ones
(SIGTERM/SIGINT stop it cleanly). After the runs it writes RESULTS/table.md, summary.json and scaling.png.
Exit codes: 0 done (or stopped cleanly by a signal), 1 a run failed, 2 bad flags.
"""

import os
import shlex
import sys

from absl import app, flags

from experiments import cli

_OUT = flags.DEFINE_string('out', 'runs/scaling', 'Directory of the runs (trials/<id>, logs/, table.md of the runs).')
_RESULTS = flags.DEFINE_string('results', 'results/scaling', 'Where table.md, summary.json and scaling.png go.')
_QUICK = flags.DEFINE_bool('quick', False, 'The small version: 3 tiny models x 2 budgets (for a first look, tests).')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the plan; run nothing, write nothing.')
_DATA_DIR = flags.DEFINE_string('data_dir', '', 'TFDS data dir for every run (dataset.data_dir); "" = the default.')

PRESET = 'configs/lm.py:tiny'


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.usage_error(f'unexpected arguments {argv[1:]}; the flags are --out, --results, --quick, --dry_run, --data_dir')
  from research import run_card, scaling  # pylint: disable=g-import-not-at-top
  from research import sweep as sweep_lib  # pylint: disable=g-import-not-at-top

  plan = scaling.study_plan(quick=_QUICK.value)
  print(scaling.describe(plan), flush=True)
  if _DRY_RUN.value:
    return
  extra = [f'--config.dataset.data_dir={_DATA_DIR.value}'] if _DATA_DIR.value else []
  trials = [sweep_lib.Trial(p.id, {'size': p.size, 'budget': p.budget}, p.overrides) for p in plan]
  command = 'python -m experiments.scaling ' + shlex.join(sys.argv[1:])
  record = scaling.study_record(trials, command, preset=PRESET)
  try:
    sweep_lib.check_out(_OUT.value, record)
  except sweep_lib.SweepError as e:
    cli.usage_error(str(e))
  runner = sweep_lib.Runner(
      trials, out=_OUT.value, header={'command': command, 'preset': PRESET, 'sweep_file': 'research/scaling.py',
                                      'keys': ['size', 'budget']},
      command=lambda t: [sys.executable, '-m', 'experiments.train', f'--config={PRESET}',
                         f'--workdir={runner.workdir(t)}', *extra, *t.overrides],
      log=lambda line: print(line, flush=True))
  os.makedirs(_OUT.value, exist_ok=True)
  sweep_lib.write_json_atomic(f'{_OUT.value}/sweep.json', record)
  outcome = runner.run()
  cards = {t.id: s.card if s.status == 'finished' else None for t, s in
           ((t, outcome.states[t.id]) for t in trials)}
  results = scaling.analyse(plan, cards)
  curves = {p.id: scaling.eval_curve(runner.workdir(p), scaling.flops_per_step(p)) for p in plan}
  paths = scaling.write_results(results, curves, _RESULTS.value, command=command, versions=run_card.versions())
  print('\n' + scaling.findings(results))
  print(f'Wrote {", ".join(paths)}', flush=True)
  if outcome.stop is not None and outcome.stop.startswith('SIG'):
    print(f'Stopped by {outcome.stop}: rerun the same command to finish the study.')
  elif outcome.failed:
    sys.exit(1)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
