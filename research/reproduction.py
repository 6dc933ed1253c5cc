"""Multi-seed benchmark results: run each (model, seed), then write table.md, summary.json and curves.png."""

import dataclasses
import json
import os

import matplotlib

matplotlib.use('Agg')  # Headless: plots are written to files.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from research import metrics as metrics_lib, run_card
from research.training import loop


@dataclasses.dataclass(frozen=True)
class RunResult:
  """One finished run: its card and its test-accuracy curve."""
  card: dict
  eval_steps: list[int]
  eval_accuracy: list[float]


def run(config, workdir: str) -> RunResult:
  """Trains (or resumes, or just reloads) one run and returns its card and eval curve."""
  card = run_card.read(workdir) if os.path.exists(os.path.join(workdir, 'run_card.json')) else None
  if card is None or card['steps'] != config.steps:  # A finished run is skipped; anything else resumes.
    card = loop.train_and_evaluate(config, workdir)
  evals = [r for r in metrics_lib.read_metrics(workdir) if r['split'] == 'eval']
  return RunResult(card, [r['step'] for r in evals], [r['metrics']['accuracy'] for r in evals])


def _pct(x) -> str:
  return '—' if x is None else f'{100 * x:.1f}%'


def _mean_of(results: list[RunResult], *keys: str) -> float | None:
  """Mean over seeds of card[keys[0]][keys[1]]...; None if a card lacks it (a card from before cost accounting)."""
  values = []
  for r in results:
    value = r.card
    for key in keys:
      value = value.get(key) if isinstance(value, dict) else None
    values.append(value)
  return None if any(v is None for v in values) else float(np.mean(values))


def summarize(runs: dict[str, list[RunResult]], paper: dict) -> dict:
  """Per model: paper accuracy, per-seed test accuracy, mean and std (population std over seeds), and the mean cost
  of a run: train time, wall time, train FLOPs and energy (with its source)."""
  out = {}
  for name, results in runs.items():
    acc = [r.card['final_metrics']['test_accuracy'] for r in results]
    out[name] = {'paper_test_accuracy': paper.get(name), 'test_accuracy': acc,
                 'mean': float(np.mean(acc)), 'std': float(np.std(acc)),
                 'params': results[0].card['params']['count'], 'steps': results[0].card['steps'],
                 'train_time_s': _mean_of(results, 'time', 'train_s'),
                 'wall_time_s': _mean_of(results, 'time', 'wall_s'),
                 'train_flops': _mean_of(results, 'flops', 'total_train'),
                 'energy_j': _mean_of(results, 'energy', 'joules'),
                 'energy_source': results[0].card.get('energy', {}).get('source')}
  return out


def _fmt(value: float | None, spec: str, suffix: str = '') -> str:
  return '—' if value is None else f'{value:{spec}}{suffix}'


def format_table(summary: dict, *, variant: str) -> str:
  """Markdown table: model · params · paper · ours (mean ± std over seeds) · steps · per-run cost."""
  lines = [f'MNIST-1D ({variant}) test accuracy; cost columns are means per run',
           '',
           '| model | params | paper | ours (mean ± std) | seeds | steps | train FLOPs | train time | wall time | '
           'energy |',
           '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
  for name, s in summary.items():
    energy = _fmt(s['energy_j'], '.3g', f" J ({s['energy_source']})")
    lines.append(f"| {name} | {s['params']:,} | {_pct(s['paper_test_accuracy'])} | "
                 f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}% | {len(s['test_accuracy'])} | {s['steps']} | "
                 f"{_fmt(s['train_flops'], '.3g')} | {_fmt(s['train_time_s'], '.1f', 's')} | "
                 f"{_fmt(s['wall_time_s'], '.1f', 's')} | {energy} |")
  return '\n'.join(lines)


def plot_curves(runs: dict[str, list[RunResult]], path: str, *, title: str) -> None:
  """Test accuracy vs step: mean over seeds with a min–max band, one line per model."""
  fig, ax = plt.subplots(figsize=(8, 4.5))
  for name, results in runs.items():
    steps = results[0].eval_steps
    n = min(len(r.eval_accuracy) for r in results)
    acc = np.array([r.eval_accuracy[:n] for r in results])
    line, = ax.plot(steps[:n], acc.mean(0), label=name)
    ax.fill_between(steps[:n], acc.min(0), acc.max(0), color=line.get_color(), alpha=0.2)
  ax.set(xlabel='step', ylabel='test accuracy', title=title, ylim=(0, 1))
  ax.grid(alpha=0.3)
  ax.legend(loc='upper left', bbox_to_anchor=(1.01, 1.0))  # Outside the axes: never hides a curve.
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_results(out: str, runs: dict[str, list[RunResult]], *, paper: dict, variant: str, command: str) -> str:
  """Writes table.md, summary.json and curves.png to `out`; returns the table."""
  os.makedirs(out, exist_ok=True)
  summary = summarize(runs, paper)
  table = format_table(summary, variant=variant)
  versions, machine = run_card.versions(), run_card.environment()
  with open(os.path.join(out, 'table.md'), 'w') as f:
    f.write(table + f'\n\nCommand: `{command}`\n\nMachine: {json.dumps(machine)}\n\nVersions: {json.dumps(versions)}\n')
  with open(os.path.join(out, 'summary.json'), 'w') as f:
    json.dump({'models': summary, 'variant': variant, 'command': command, 'machine': machine,
               'versions': versions}, f, indent=2)
    f.write('\n')
  plot_curves(runs, os.path.join(out, 'curves.png'), title=f'MNIST-1D ({variant})')
  return table
