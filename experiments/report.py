r"""Reports what runs reached and what they cost: one table, mean ± std across seeds, metric-vs-cost plots.

Usage:
  python -m experiments.report results/mnist1d/runs --out=reports/mnist1d
  python -m experiments.report runs/cnn runs/gru results --out reports/all

Each RUN_DIR is a run directory (it holds run_card.json), or a directory with runs up to three levels below it.
Writes OUT/report.md (the table, what each energy source means, the command and versions, the across-seed table,
the plots and their Pareto fronts), OUT/report.json (the same, machine-readable) and one PNG per (final metric,
cost) for cost = train FLOPs, energy, wall time. Values a run card lacks (older cards) show as '—'.
Exit codes: 0 success, 2 bad usage, a missing path, no runs, or an unreadable run card or config, 1 anything else.
"""

import shlex
import sys

from absl import app, flags

from experiments import cli

_OUT = flags.DEFINE_string('out', None, 'Output directory for report.md, report.json and the plots.')


def main(argv: list[str]) -> None:
  if not _OUT.value:
    cli.usage_error('--out is required, e.g. --out=reports/mnist1d')
  if len(argv) < 2:
    cli.usage_error('expected one or more run directories, e.g. results/mnist1d/runs')
  from research import report  # pylint: disable=g-import-not-at-top  (matplotlib; after validation)

  try:
    runs = report.load_runs(argv[1:])
  except report.ReportError as e:
    cli.usage_error(str(e))
  from research import run_card  # pylint: disable=g-import-not-at-top  (imports JAX, for the versions)

  command = 'python -m experiments.report ' + shlex.join(sys.argv[1:])
  try:
    result = report.write_report(_OUT.value, runs, command=command, versions=run_card.versions())
  except OSError as e:
    cli.usage_error(f'--out={_OUT.value}: cannot write the report ({e.strerror or e})')
  print(report.format_runs_table(result.document['runs']))
  print(f"\n{len(runs)} runs; wrote {', '.join(result.files)} to {_OUT.value}", flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
