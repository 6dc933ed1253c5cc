"""What every study shares: building its runs' configs, training them in this process (ordinary runs, or vectorized
groups of trials that differ only in numeric hyperparameters), and writing table.md, summary.json and plots.

Runs train in the study's own process, one after another: no process start-up and import per run (about 3 s of
the 5 s that a 3000-step MNIST-1D MLP run takes end to end here), and each run is still an ordinary workdir
(config.json, metrics.jsonl, checkpoints, run_card.json) that experiments.report and experiments.evaluate read.
A finished run is skipped when the study runs again and an interrupted one resumes from its checkpoint; a
vectorized group whose trials have no cards trains again from the start (it writes no checkpoint partway).
"""

import dataclasses
import json
import math
import os
import shutil
import time
from typing import Any, Callable, Sequence

import matplotlib

matplotlib.use('Agg')  # Headless: plots are written to files.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import ml_collections
import numpy as np

from research import metrics as metrics_lib, run_card

MNIST1D_TRAIN = 4000  # MNIST-1D (standard) training examples: epochs -> steps.


class StudyStopped(RuntimeError):
  """SIGTERM/SIGINT stopped a run (with a checkpoint) or a vectorized group (without): rerun the study to continue."""


@dataclasses.dataclass
class Run:
  """One finished run as a study reads it."""
  name: str  # Its workdir relative to the study's runs directory.
  config: ml_collections.ConfigDict
  card: dict
  evals: list[dict]  # {'step', 'train_time_s', 'accuracy', 'loss'} per evaluation.
  last_train: dict  # Train metrics of the last log interval (mean over its steps).

  @property
  def test_accuracy(self) -> float:
    return self.card['final_metrics']['test_accuracy']

  def cost(self, *keys: str) -> float | None:
    value = self.card
    for key in keys:
      value = value.get(key) if isinstance(value, dict) else None
    return value


def _read_run(name: str, config, workdir: str) -> Run:
  records = metrics_lib.read_metrics(workdir)
  evals = [{'step': r['step'], 'train_time_s': r.get('train_time_s'), **r['metrics']}
           for r in records if r['split'] == 'eval']
  train = [r['metrics'] for r in records if r['split'] == 'train']
  return Run(name, config, run_card.read(workdir), evals, train[-1] if train else {})


def _finished(workdir: str, config) -> bool:
  """A card for all of config.steps (a preempted run's card has fewer steps, a budget-stopped one its stop_reason)."""
  path = os.path.join(workdir, 'run_card.json')
  if not os.path.exists(path):
    return False
  card = run_card.read(workdir)
  return card['steps'] == config.steps or card['stop_reason'] not in ('steps', 'preempted')


class Context:
  """Where a study's runs go, how long they are, and how they train.

    ctx = Context('optimizers', out='results/studies/optimizers', runs_dir='runs/studies/optimizers', quick=False)
    config = ctx.config('mlp', {'optimizer.name': 'sgd', 'steps': 3000})
    run = ctx.train('mlp/sgd_s0', config)
    runs = ctx.train_group(['mlp/lr=0.1', 'mlp/lr=1'], [config_a, config_b])   # one vectorized program
  """

  def __init__(self, name: str, *, out: str, runs_dir: str, quick: bool, max_steps: int = 0,
               log: Callable[[str], None] = lambda line: print(line, flush=True)):
    self.name, self.out, self.runs_dir, self.quick, self.max_steps = name, out, runs_dir, quick, max_steps
    self.log = log
    self.trained = 0  # Runs trained (not just read back) by this invocation.
    self.t_start = time.time()

  def config(self, preset: str, overrides: dict[str, Any], *, evals: int = 20) -> ml_collections.ConfigDict:
    """The MNIST-1D preset with `overrides` (dotted keys), quiet, evaluated `evals` times over its steps, steps
    capped at max_steps; validated (ConfigError names a bad key)."""
    from configs import base, mnist1d  # pylint: disable=g-import-not-at-top
    from research.config import override, validate  # pylint: disable=g-import-not-at-top

    config = override(mnist1d.get_config(preset), overrides)
    config.progress = False
    if self.max_steps:
      config.steps = min(config.steps, self.max_steps)
    config.eval_every = max(1, config.steps // evals)
    config.log_every = min(config.log_every, config.eval_every)
    config.checkpoint_every = config.steps  # Each run is short: one checkpoint, at its end (or at a stop).
    validate(config, base.get_base_config())
    return config

  def _workdir(self, name: str) -> str:
    return os.path.join(self.runs_dir, name)

  def train(self, name: str, config) -> Run:
    """Trains (or resumes, or reads back) one ordinary run in runs_dir/name."""
    from research.training import loop  # pylint: disable=g-import-not-at-top

    workdir = self._workdir(name)
    if not _finished(workdir, config):
      t0 = time.time()
      card = loop.train_and_evaluate(config, workdir)
      self.trained += 1
      if card['stop_reason'] == 'preempted':
        raise StudyStopped(f'{self.name}: stopped during {name} (checkpointed): rerun the same command to continue')
      self.log(f'[{self.name} {self._elapsed()}] {name}: {_result(card)} ({time.time() - t0:.1f} s)')
    return _read_run(name, config, workdir)

  def train_group(self, names: Sequence[str], configs: Sequence) -> list[Run]:
    """Trains runs that differ only in research.vectorized.VECTORIZABLE keys as one jax.vmap program (unless all of
    them have finished); each gets an ordinary workdir whose card holds its share of the group's costs."""
    from research import vectorized  # pylint: disable=g-import-not-at-top

    workdirs = [self._workdir(n) for n in names]
    if not all(_finished(w, c) for w, c in zip(workdirs, configs)):
      for workdir in workdirs:  # Trials of a stopped group have no checkpoint to resume from: they start over.
        shutil.rmtree(workdir, ignore_errors=True)
      t0 = time.time()
      try:
        cards = vectorized.train_group(configs, workdirs, names)
      except vectorized.GroupStopped as e:
        raise StudyStopped(f'{self.name}: {e} in a vectorized group of {len(names)} ({names[0]}, ...): rerun the '
                           'same command to train it again') from e
      self.trained += len(names)
      best = max(range(len(cards)), key=lambda i: cards[i]['final_metrics']['test_accuracy'])
      self.log(f'[{self.name} {self._elapsed()}] vectorized group of {len(names)} ({time.time() - t0:.1f} s): best '
               f'{names[best]}: {_result(cards[best])}')
    return [_read_run(n, c, w) for n, c, w in zip(names, configs, workdirs)]

  def _elapsed(self) -> str:
    s = int(time.time() - self.t_start)
    return f'{s // 60}:{s % 60:02d}'


def _result(card: dict) -> str:
  m = card['final_metrics']
  return f"test {100 * m['test_accuracy']:.1f}% (train loss {m['train_loss']:.3g}), {card['steps']} steps"


# Formatting ---------------------------------------------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and population std (0 for one value)."""
  return float(np.mean(values)), float(np.std(values))


def pct(mean: float | None, std: float | None = None) -> str:
  if mean is None or not math.isfinite(mean):
    return '—'
  return f'{100 * mean:.1f}%' if std is None else f'{100 * mean:.1f} ± {100 * std:.1f}%'


def num(x: float | None, spec: str = '.3g', suffix: str = '') -> str:
  return '—' if x is None or not math.isfinite(x) else f'{x:{spec}}{suffix}'


def sweep_cell(acc: float, chosen: bool) -> str:
  """A learning-rate sweep's cell: test accuracy in % (one decimal), bold where it is the chosen rate, '—' where
  the run diverged (a non-finite score)."""
  text = num(100 * acc, '.1f')
  return f'**{text}**' if chosen else text


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, left: int = 1) -> str:
  """A markdown table; the first `left` columns are left-aligned, the rest right-aligned."""
  align = ['---' if i < left else '---:' for i in range(len(headers))]
  lines = ['| ' + ' | '.join(headers) + ' |', '| ' + ' | '.join(align) + ' |']
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return '\n'.join(lines)


def mean_curve(runs: Sequence[Run], x: str, y: str = 'accuracy') -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(x, mean y, std y) over runs' eval records, on the evaluations all of them have; x is averaged as well
  (train_time_s differs between seeds)."""
  n = min(len(r.evals) for r in runs)
  xs = np.array([[e[x] if e.get(x) is not None else np.nan for e in r.evals[:n]] for r in runs], float)
  ys = np.array([[e[y] for e in r.evals[:n]] for r in runs], float)
  return xs.mean(0), ys.mean(0), ys.std(0)


def plot_band(ax, x, mean, std, label: str, **kwargs):
  line, = ax.plot(x, mean, label=label, **kwargs)
  ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.15, linewidth=0)
  return line


def save_figure(fig, path: str) -> None:
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


@dataclasses.dataclass
class Result:
  """What a study returns: the parts of table.md, its plot(s) (already saved) and the numbers behind them."""
  title: str
  question: str
  findings: str  # Generated from the numbers.
  sections: list[tuple[str, str]]  # (heading, markdown) after the findings.
  plots: list[str]  # File names in the output directory.
  summary: dict  # summary.json's 'results'.
  notes: list[str] = dataclasses.field(default_factory=list)  # Method notes (how the numbers were made).


def write_outputs(out: str, result: Result, *, command: str, ctx: Context) -> str:
  """Writes out/table.md and out/summary.json; returns table.md's text."""
  versions, machine = run_card.versions(), run_card.environment()
  parts = [f'# {result.title}', '', f'**Question.** {result.question}', '', f'**Findings.** {result.findings}', '']
  for plot in result.plots:
    parts += [f'![{plot}]({plot})', '']
  for heading, body in result.sections:
    parts += [f'## {heading}', '', body, '']
  if result.notes:
    parts += ['## How these numbers were made', '', *[f'- {n}' for n in result.notes], '']
  parts += [f'Command: `{command}`' + (' (quick: fewer runs and steps)' if ctx.quick else ''), '',
            f'Machine: {json.dumps(machine)}', '', f'Versions: {json.dumps(versions)}', '']
  text = '\n'.join(parts)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'table.md'), 'w') as f:
    f.write(text)
  with open(os.path.join(out, 'summary.json'), 'w') as f:
    json.dump({'study': ctx.name, 'quick': ctx.quick, 'max_steps': ctx.max_steps, 'command': command,
               'findings': result.findings, 'results': result.summary, 'plots': result.plots, 'machine': machine,
               'versions': versions, 'runs_dir': ctx.runs_dir}, f, indent=2, default=float)
    f.write('\n')
  return text
