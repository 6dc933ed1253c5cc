"""Cost reports across runs: find run cards, tabulate what each run reached and cost, plot the trade-offs.

A run is any directory holding a run_card.json (and, normally, the config.json it was trained from). Cards written
by older versions of the training loop lack some cost entries: a missing, null, non-numeric or non-finite value is
shown as '—' and left out of plots and means, never guessed.

  runs = load_runs(['results/mnist1d/runs'])      # a run dir, or dirs holding run dirs up to MAX_DEPTH below
  report = write_report('reports/x', runs, command='...', versions=run_card.versions())
"""

import dataclasses
import json
import math
import os
from typing import Any, Sequence

import matplotlib

# Headless: plots are written to files (as in research.reproduction, which is not imported for this one line
# because it pulls in the whole training loop).
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from research import workdir as workdir_lib

CARD = 'run_card.json'
CONFIG = 'config.json'
MAX_DEPTH = 3  # Levels searched below each path, e.g. results -> mnist1d -> runs -> cnn_s0.
MISSING = '—'
MIB = 2**20
# The final metric, the first of these the card has: (final_metrics key, higher is better). Classifiers report
# test accuracy, language models eval loss.
METRICS = (('test_accuracy', True), ('eval_loss', False))
# What the final metric is plotted against: (row key, axis label, file name part).
COSTS = (('train_flops', 'train FLOPs', 'train_flops'), ('energy_j', 'energy (J)', 'energy'),
         ('wall_s', 'wall time (s)', 'wall_time'))
# What each energy source of research.cost.energy means for the number next to it.
ENERGY_SOURCES = {
    'estimate': "an estimate, not a measurement: the process's CPU time x an assumed power per busy core",
    'rapl': 'measured: CPU package energy counters (RAPL); the CPU packages only, not GPUs, DRAM or the rest of '
            'the machine',
    'nvml': "measured: the GPU board's energy counter (NVML); the GPU only, not the host",
}
UNKNOWN_SOURCE = 'source unknown'
# Keys that do not change a run's numbers (how it is observed, where data is read from; research.workdir) and the
# seed: runs that differ only in these repeat one configuration. `steps` changes the numbers, so it stays.
_NOT_CONFIG = (frozenset(workdir_lib.SAFE_TO_CHANGE) - {'steps'}) | {'seed'}


def _is_config(key: str) -> bool:
  """Whether `key` defines the experiment (for grouping seeds): not a safe-to-change key or group (budgets,
  accounting, mesh, processes: a sweep gives each trial its own budget share), nor the seed."""
  return key not in _NOT_CONFIG and not key.startswith(workdir_lib.SAFE_GROUPS)


class ReportError(ValueError):
  """Bad input, named by path: it does not exist, holds no runs, or a card or config cannot be read."""


@dataclasses.dataclass(frozen=True)
class Run:
  """One run directory: its card and config (None when config.json is absent)."""
  name: str  # The directory's name; parent/name (and so on) where two runs' names clash.
  path: str
  card: dict
  config: dict | None


@dataclasses.dataclass(frozen=True)
class Report:
  """What write_report wrote: the markdown, the JSON document and the files (paths under `out`)."""
  markdown: str
  document: dict
  files: list[str]


def _runs_under(path: str, depth: int) -> list[str]:
  """Run directories at `path` or up to `depth` levels below it, in sorted order; a run's subdirs are not searched."""
  if os.path.isfile(os.path.join(path, CARD)):
    return [path]
  if depth == 0:
    return []
  try:
    names = sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith('.'))
  except OSError as e:
    raise ReportError(f'{path}: cannot list the directory ({e.strerror or e})') from e
  return [run for name in names for run in _runs_under(os.path.join(path, name), depth - 1)]


def find_run_dirs(paths: Sequence[str], *, max_depth: int = MAX_DEPTH) -> list[str]:
  """The run directories named by `paths`, each a run dir, its run_card.json, or a dir holding runs below it.

  Returns:
    Run directories in argument order (sorted within each path), each once.

  Raises:
    ReportError: no paths, a path that does not exist or is another file, or one with no run under it.
  """
  if not paths:
    raise ReportError('no run directories given')
  found, seen = [], set()
  for path in paths:
    if not os.path.exists(path):
      raise ReportError(f'{path}: no such file or directory')
    if os.path.isfile(path):
      if os.path.basename(path) != CARD:
        raise ReportError(f'{path}: not a run directory, a directory of runs, or a {CARD}')
      path = os.path.dirname(path) or '.'
    runs = _runs_under(path, max_depth)
    if not runs:
      raise ReportError(f'{path}: no run (a directory with a {CARD}) in it or up to {max_depth} levels below')
    for run in runs:
      if os.path.realpath(run) not in seen:
        seen.add(os.path.realpath(run))
        found.append(run)
  return found


def _read_json(path: str, what: str) -> dict:
  try:
    with open(path) as f:
      value = json.load(f)
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise ReportError(f'{path}: unreadable {what} ({e})') from e
  if not isinstance(value, dict):
    raise ReportError(f'{path}: unreadable {what} (a JSON {type(value).__name__}, expected an object)')
  return value


def _unique_names(paths: list[str]) -> list[str]:
  """Each directory's name, lengthened to parent/name (and so on) only where two runs' names clash."""
  parts = [os.path.abspath(p).split(os.sep) for p in paths]
  depth = [1] * len(paths)
  while True:
    names = ['/'.join(p[-d:]) for p, d in zip(parts, depth)]
    clashes = {n for n in names if names.count(n) > 1}
    if not clashes:
      return names
    depth = [d + 1 if n in clashes else d for n, d in zip(names, depth)]


def load_runs(paths: Sequence[str], *, max_depth: int = MAX_DEPTH) -> list[Run]:
  """Finds (see find_run_dirs) and reads every run's card and config.

  Raises:
    ReportError: as find_run_dirs, or a run_card.json / config.json that is not a readable JSON object.
  """
  dirs = find_run_dirs(paths, max_depth=max_depth)
  runs = []
  for name, path in zip(_unique_names(dirs), dirs):
    card = _read_json(os.path.join(path, CARD), 'run card')
    config_path = os.path.join(path, CONFIG)
    config = _read_json(config_path, 'config') if os.path.exists(config_path) else None
    runs.append(Run(name, path, card, config))
  return runs


def _get(tree: Any, *keys: str) -> Any:
  for key in keys:
    if not isinstance(tree, dict):
      return None
    tree = tree.get(key)
  return tree


def _number(tree: Any, *keys: str) -> float | int | None:
  """The number at `keys`, or None where it is missing, null, not a number or not finite."""
  value = _get(tree, *keys)
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    return None
  return value


def _text(tree: Any, *keys: str) -> str | None:
  value = _get(tree, *keys)
  return value if isinstance(value, str) else None


def _first(*values):
  return next((v for v in values if v is not None), None)


def run_row(run: Run) -> dict:
  """One run's report row: raw values (None where the card or config lacks them), in table order."""
  card, config = run.card, run.config
  metric, higher = next(((k, h) for k, h in METRICS if _number(card, 'final_metrics', k) is not None), (None, None))
  return {
      'run': run.name, 'path': run.path, 'model': _text(card, 'model'), 'dataset': _text(card, 'dataset'),
      'dataset_variant': _text(config, 'dataset', 'variant'),
      'seed': _number(config, 'seed'), 'optimizer': _text(config, 'optimizer', 'name'),
      'learning_rate': _number(config, 'optimizer', 'learning_rate'), 'batch_size': _number(config, 'batch_size'),
      'steps': _number(card, 'steps'), 'stop_reason': _text(card, 'stop_reason'),
      'metric': metric, 'metric_value': _number(card, 'final_metrics', metric) if metric else None,
      'higher_is_better': higher, 'params': _number(card, 'params', 'count'),
      'train_flops': _number(card, 'flops', 'total_train'),
      # Over every session where the card has totals (a resumed run's cost is all of it), else this session's.
      'wall_s': _first(_number(card, 'total_time', 'wall_s'), _number(card, 'time', 'wall_s'),
                       _number(card, 'wall_time_s')),
      'examples_per_s': _number(card, 'throughput', 'examples_per_s'), 'mfu': _number(card, 'mfu', 'value'),
      'predicted_memory_bytes': _number(card, 'memory', 'predicted_bytes'),
      'measured_peak_memory_bytes': _number(card, 'memory', 'measured_peak_bytes'),
      'energy_j': _number(card, 'energy', 'joules'), 'energy_source': _text(card, 'energy', 'source'),
      'energy_assumptions': _text(card, 'energy', 'assumptions'), 'co2_g': _number(card, 'co2_g'),
      'batch1_p50_ms': _number(card, 'inference', 'batch1_p50_ms'),
  }


def dataset_label(row: dict) -> str | None:
  """A run_row's (or group's) dataset, with its variant unless that is the default 'standard': mnist1d (shuffled)."""
  variant = row['dataset_variant']
  if row['dataset'] is None or variant in (None, 'standard'):
    return row['dataset']
  return f"{row['dataset']} ({variant})"


def pareto_front(costs: Sequence[float], values: Sequence[float], *, higher_is_better: bool) -> list[int]:
  """The points no other point beats: none is at most as costly and at least as good, and better in one of the two.

  Args:
    costs: [n] finite costs (FLOPs, joules, seconds).
    values: [n] finite metric values.
    higher_is_better: True for accuracy, False for losses.

  Returns:
    Indices of the front, by increasing cost (and improving value). Exact duplicates of a front point are all on
    it; a point as good as a cheaper one, or as cheap as a better one, is not.

  Raises:
    ValueError: different lengths or a non-finite number.
  """
  if len(costs) != len(values):
    raise ValueError(f'costs ({len(costs)}) and values ({len(values)}) must have the same length')
  if not all(math.isfinite(x) for x in [*costs, *values]):
    raise ValueError(f'costs and values must be finite; got costs={list(costs)} values={list(values)}')
  sign = 1 if higher_is_better else -1
  # Cheapest first; at equal cost the best first, so one pass keeps each point that beats everything before it.
  order = sorted(range(len(costs)), key=lambda i: (costs[i], -sign * values[i], i))
  front = []
  for i in order:
    if not front or sign * values[i] > sign * values[front[-1]]:
      front.append(i)
    elif values[i] == values[front[-1]] and costs[i] == costs[front[-1]]:
      front.append(i)
  return front


def _config_key(config: dict | None, path: str) -> tuple:
  if config is None:  # Nothing says which runs repeat this one: it is a group of its own.
    return (('<no config.json>', path),)
  return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in workdir_lib.flatten(config).items()
                      if _is_config(k)))


def _energy_source(row: dict) -> str:
  return row['energy_source'] or UNKNOWN_SOURCE


def _summarize(rows: list[dict], config: dict | None) -> dict:
  """One group's entry of group_runs from its members' run_rows."""
  metric = _first(*(r['metric'] for r in rows))
  summary = {'model': rows[0]['model'], 'dataset': rows[0]['dataset'], 'dataset_variant': rows[0]['dataset_variant'],
             'config': {k: v for k, v in workdir_lib.flatten(config or {}).items() if _is_config(k)},
             'runs': [r['run'] for r in rows], 'seeds': [r['seed'] for r in rows], 'n': len(rows),
             'metric': metric, 'higher_is_better': _first(*(r['higher_is_better'] for r in rows)),
             'energy_sources': sorted({_energy_source(r) for r in rows if r['energy_j'] is not None})}
  for key, column in (('metric', 'metric_value'), ('train_flops', 'train_flops'), ('wall_s', 'wall_s'),
                      ('energy_j', 'energy_j'), ('examples_per_s', 'examples_per_s')):
    values = [r[column] for r in rows if r[column] is not None and (key != 'metric' or r['metric'] == metric)]
    summary[f'{key}_mean'] = float(np.mean(values)) if values else None
    summary[f'{key}_std'] = float(np.std(values)) if values else None
  return summary


def group_runs(runs: Sequence[Run]) -> list[dict]:
  """Runs of one (model, dataset, config minus seed and observation-only keys), with mean and std across them.

  Returns:
    One dict per group, in order of first appearance: model, dataset, dataset_variant, config (flattened, without
    the ignored keys; {} without a config.json: such a run is a group of its own), runs, seeds, n, metric,
    higher_is_better, energy_sources and {metric, train_flops, wall_s, energy_j, examples_per_s}_{mean, std}
    (population std, as research.reproduction; None where no run of the group has the value).
  """
  groups: dict[tuple, list[Run]] = {}
  for run in runs:
    key = (_text(run.card, 'model'), _text(run.card, 'dataset'), _config_key(run.config, run.path))
    groups.setdefault(key, []).append(run)
  return [_summarize([run_row(r) for r in members], members[0].config) for members in groups.values()]


def energy_notes(rows: Sequence[dict]) -> dict[str, str]:
  """Per energy source used by `rows`: what it means, and the assumptions the cards recorded."""
  notes = {}
  for source in sorted({_energy_source(r) for r in rows if r['energy_j'] is not None}):
    unknown = ('the card does not say how this energy was obtained' if source == UNKNOWN_SOURCE
               else f'a source this report does not know ({source!r})')
    meaning = ENERGY_SOURCES.get(source, unknown + ': treat it as an estimate')
    assumptions = sorted({r['energy_assumptions'] for r in rows if r['energy_j'] is not None
                          and _energy_source(r) == source and r['energy_assumptions']})
    notes[source] = meaning + ''.join(f'. The runs recorded: "{a}"' for a in assumptions)
  return notes


def _num(x: float | None) -> str:
  if x is None:
    return MISSING
  return f'{x:,.0f}' if abs(x) >= 100 else f'{x:#.3g}'


def _int(x: float | None) -> str:
  return MISSING if x is None else f'{int(x):,}'


def _sci(x: float | None) -> str:
  """1.2e12 (no '+', no leading zeros in the exponent)."""
  if x is None:
    return MISSING
  mantissa, exponent = f'{x:.1e}'.split('e')
  return f'{mantissa}e{int(exponent)}'


def _pct(x: float | None) -> str:
  if x is None:
    return MISSING
  return f'{100 * x:.1f}%' if 100 * x >= 1 else f'{100 * x:.2g}%'  # CPU MFUs can be a small fraction of 1%.


def _mib(x: float | None) -> str:
  return MISSING if x is None else f'{x / MIB:,.1f}'


def _metric(name: str | None, value: float | None) -> str:
  if value is None:
    return MISSING
  return f'{100 * value:.1f}% {name}' if name.endswith('accuracy') else f'{value:.4g} {name}'


def _energy(joules: float | None, source: str | None) -> str:
  return MISSING if joules is None else f'{_num(joules)} J ({source or UNKNOWN_SOURCE})'


def _cell(value: Any) -> str:
  return MISSING if value is None else str(value).replace('|', '\\|')


# The report table: (header, right-aligned, cell of a run_row).
_COLUMNS = (
    ('run', False, lambda r: _cell(r['run'])),
    ('model', False, lambda r: _cell(r['model'])),
    ('dataset', False, lambda r: _cell(dataset_label(r))),
    ('seed', True, lambda r: _int(r['seed'])),
    ('steps', True, lambda r: _int(r['steps'])),
    ('stop', False, lambda r: _cell(r['stop_reason'])),
    ('final metric', True, lambda r: _metric(r['metric'], r['metric_value'])),
    ('params', True, lambda r: _int(r['params'])),
    ('train FLOPs', True, lambda r: _sci(r['train_flops'])),
    ('wall (s)', True, lambda r: _num(r['wall_s'])),
    ('examples/s', True, lambda r: _num(r['examples_per_s'])),
    ('MFU', True, lambda r: _pct(r['mfu'])),
    ('peak memory MiB (predicted / measured)', True,
     lambda r: f"{_mib(r['predicted_memory_bytes'])} / {_mib(r['measured_peak_memory_bytes'])}"),
    ('energy', True, lambda r: _energy(r['energy_j'], r['energy_source'])),
    ('CO2 (g)', True, lambda r: _num(r['co2_g'])),
    ('batch-1 p50 (ms)', True, lambda r: _num(r['batch1_p50_ms'])),
)


def _table(headers: Sequence[str], right: Sequence[bool], rows: Sequence[Sequence[str]]) -> str:
  lines = ['| ' + ' | '.join(headers) + ' |', '|' + '|'.join('---:' if r else '---' for r in right) + '|']
  return '\n'.join(lines + ['| ' + ' | '.join(row) + ' |' for row in rows])


def format_runs_table(rows: Sequence[dict]) -> str:
  """Markdown table, one row per run_row."""
  return _table([c[0] for c in _COLUMNS], [c[1] for c in _COLUMNS], [[c[2](r) for c in _COLUMNS] for r in rows])


def _varying_keys(groups: Sequence[dict]) -> dict[tuple, set[str]]:
  """Per (model, dataset): the config keys whose values differ between its groups (what tells them apart)."""
  configs: dict[tuple, list[dict]] = {}
  for g in groups:
    configs.setdefault((g['model'], dataset_label(g)), []).append(g['config'])
  return {key: {k for k in set().union(*cs) if len({json.dumps(c.get(k), sort_keys=True) for c in cs}) > 1}
          for key, cs in configs.items()}


def _config_label(config: dict, varying: set[str]) -> str:
  if not config:
    return 'no config.json'
  named = {'optimizer.name': '{}', 'optimizer.learning_rate': 'lr {:g}', 'batch_size': 'batch {}'}
  parts = [fmt.format(config[k]) for k, fmt in named.items() if config.get(k) is not None]
  parts += [f'{k}={json.dumps(config.get(k))}' for k in sorted(varying - set(named))]
  return _cell(', '.join(parts))


def _mean_std(g: dict, key: str, fmt, n: int) -> str:
  mean, std = g[f'{key}_mean'], g[f'{key}_std']
  if mean is None:
    return MISSING
  return f'{fmt(mean)} ± {fmt(std)}' if n > 1 else fmt(mean)


def _group_metric(g: dict) -> str:
  mean, std = g['metric_mean'], g['metric_std']
  if mean is None:
    return MISSING
  if g['metric'].endswith('accuracy'):
    return f"{100 * mean:.1f} ± {100 * std:.1f}% {g['metric']}" if g['n'] > 1 else _metric(g['metric'], mean)
  return f"{mean:.4g} ± {std:.2g} {g['metric']}" if g['n'] > 1 else _metric(g['metric'], mean)


def format_groups_table(groups: Sequence[dict]) -> str:
  """Markdown table, one row per group_runs entry: mean ± std over its runs."""
  varying = _varying_keys(groups)
  headers = ['model', 'dataset', 'config', 'runs', 'seeds', 'final metric (mean ± std)', 'train FLOPs (mean)',
             'wall (s)', 'energy', 'examples/s (mean)']
  rows = []
  for g in groups:
    sources = ', '.join(g['energy_sources'])
    energy = _mean_std(g, 'energy_j', _num, g['n'])
    label = dataset_label(g)
    rows.append([_cell(g['model']), _cell(label), _config_label(g['config'], varying[g['model'], label]),
                 str(g['n']), ', '.join(_int(s) for s in g['seeds']), _group_metric(g), _sci(g['train_flops_mean']),
                 _mean_std(g, 'wall_s', _num, g['n']), energy if energy == MISSING else f'{energy} J ({sources})',
                 _num(g['examples_per_s_mean'])])
  return _table(headers, [False] * 3 + [True] * 7, rows)


def plot_tradeoff(rows: Sequence[dict], path: str, *, metric: str, cost: str, cost_label: str) -> dict[str, list[str]]:
  """Plots `metric` against `cost` (log x) for the rows that have both, one colour per dataset.

  Each point is labelled by its model; each dataset's Pareto front is a step line through its ringed points.

  Returns:
    Per dataset, the runs on its Pareto front by increasing cost.
  """
  points = [r for r in rows if r['metric'] == metric and r[cost] is not None and r[cost] > 0]  # log x: cost > 0.
  scale = 100 if metric.endswith('accuracy') else 1
  fig, ax = plt.subplots(figsize=(8, 4.5))
  fronts = {}
  for i, dataset in enumerate(dict.fromkeys(dataset_label(r) or 'unknown dataset' for r in points)):
    group = [r for r in points if (dataset_label(r) or 'unknown dataset') == dataset]
    x, y = [r[cost] for r in group], [scale * r['metric_value'] for r in group]
    color = f'C{i % 10}'
    ax.scatter(x, y, color=color, alpha=0.7, label=dataset)
    for r, xi, yi in zip(group, x, y):
      ax.annotate(r['model'] or '?', (xi, yi), textcoords='offset points', xytext=(4, 4), fontsize=8)
    front = pareto_front(x, y, higher_is_better=group[0]['higher_is_better'])
    fronts[dataset] = [group[j]['run'] for j in front]
    ax.step([x[j] for j in front], [y[j] for j in front], where='post', color=color, linewidth=1.5)
    ax.scatter([x[j] for j in front], [y[j] for j in front], s=120, facecolors='none', edgecolors='black',
               linewidths=1.5, label='Pareto front' if i == 0 else None)
  ax.set_xscale('log')
  ax.margins(0.08)  # Room for the labels of the outermost points.
  ax.set(xlabel=cost_label, ylabel=f'{metric} (%)' if scale == 100 else metric, title=f'{metric} vs {cost_label}')
  ax.grid(alpha=0.3, which='both')
  ax.legend(loc='upper left', bbox_to_anchor=(1.01, 1.0))  # Outside the axes: never hides a point.
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return fronts


def write_plots(out: str, rows: Sequence[dict]) -> tuple[list[dict], list[str]]:
  """One PNG per (final metric, cost in COSTS) that some run has both of.

  Returns:
    The plots written ({file, metric, cost, cost_label, runs, pareto_front}) and one reason per plot skipped.
  """
  plots, skipped = [], []
  for cost, label, slug in COSTS:
    with_cost = [r for r in rows if r[cost] is not None and r[cost] > 0]  # Log axes: positive costs only.
    metrics = list(dict.fromkeys(r['metric'] for r in with_cost if r['metric'] is not None))
    if not metrics:
      skipped.append(f'final metric vs {label}: no run has ' + (f'a final metric and {label}' if with_cost else label))
    for metric in metrics:
      points = [r for r in with_cost if r['metric'] == metric]
      if cost == 'energy_j':  # Measured and estimated joules are not the same kind of number: say which.
        label = f"energy (J; {', '.join(sorted({_energy_source(r) for r in points}))})"
      name = f'{metric}_vs_{slug}.png'
      fronts = plot_tradeoff(points, os.path.join(out, name), metric=metric, cost=cost, cost_label=label)
      plots.append({'file': name, 'metric': metric, 'cost': cost, 'cost_label': label, 'runs': len(points),
                    'pareto_front': fronts})
  return plots, skipped


def format_report(rows: Sequence[dict], groups: Sequence[dict], *, plots: Sequence[dict], skipped: Sequence[str],
                  command: str, versions: dict) -> str:
  """report.md: the runs table, what each energy source means, the command and versions, seeds, plots."""
  lines = ['# Run report', '', f'{len(rows)} runs; {MISSING} where a run card lacks the value (older cards).', '',
           format_runs_table(rows), '']
  lines += [f'Energy `{source}`: {note}.\n' for source, note in energy_notes(rows).items()]
  lines += [f'Command: `{command}`', '', f'Versions: {json.dumps(versions)}', '']
  if any(g['n'] > 1 for g in groups):
    lines += ['## Across seeds', '', 'Runs of one model, dataset and config except the seed (and logging keys): '
              'mean ± std (population) over them.', '', format_groups_table(groups), '']
  else:
    lines += ['No configuration has more than one run: no across-seed table.', '']
  lines += ['## Final metric vs cost', '', 'Log x axes. Pareto front (step line, ringed points), per dataset: the '
            'runs no other run beats on both the final metric and the cost.', '']
  for p in plots:
    front = '; '.join(f"{d}: {', '.join(names)}" for d, names in p['pareto_front'].items())
    lines += [f"![{p['metric']} vs {p['cost_label']}]({p['file']})", '', f'Pareto front: {front}.', '']
  lines += [f'Skipped plot: {reason}.' for reason in skipped]
  return '\n'.join(lines).rstrip() + '\n'


def write_report(out: str, runs: Sequence[Run], *, command: str, versions: dict) -> Report:
  """Writes report.md, report.json and the plots to `out` (created if needed).

  Args:
    out: output directory.
    runs: from load_runs.
    command: the command line that made the report (recorded in both files).
    versions: package versions (research.run_card.versions()).

  Returns:
    The markdown, the JSON document ({command, versions, runs, groups, plots, skipped_plots, energy_sources}) and
    the files written.
  """
  os.makedirs(out, exist_ok=True)
  rows = [run_row(r) for r in runs]
  groups = group_runs(runs)
  plots, skipped = write_plots(out, rows)
  markdown = format_report(rows, groups, plots=plots, skipped=skipped, command=command, versions=versions)
  document = {'command': command, 'versions': versions, 'runs': rows, 'groups': groups, 'plots': plots,
              'skipped_plots': skipped, 'energy_sources': energy_notes(rows)}
  with open(os.path.join(out, 'report.md'), 'w') as f:
    f.write(markdown)
  with open(os.path.join(out, 'report.json'), 'w') as f:
    json.dump(document, f, indent=2)
    f.write('\n')
  return Report(markdown, document, ['report.md', 'report.json', *(p['file'] for p in plots)])
