r"""Hyperparameter sweeps: a sweep file expanded into trials, each an ordinary training run in its own subprocess.

A sweep file defines `get_sweep()`, returning a grid (`{'grid': {config_key: [values]}}`), a random search
(`{'random': {'num_trials': n, 'seed': s, 'space': {config_key: spec}}}`) or both (every random sample with every
grid point); docs/sweeps.md has the format. This module checks the file, expands and names the trials, runs them N at
a time under a total budget, forwards SIGTERM/SIGINT to them, and rewrites OUT/table.md and OUT/summary.json after
each one. It imports neither JAX nor the configs: the caller (experiments/sweep.py) loads the preset (to check the
swept keys against), builds and validates each trial's config, and says how to launch a trial.

  sweep = load_sweep('configs/sweeps/lr_grid.py')
  trials = expand(sweep)      # [Trial(id='lr=0.001_seed=0', values={...}, overrides=('--config....', ...)), ...]
  outcome = Runner(trials, out='sweeps/lr', command=..., header=..., parallel=2, budget=Budget(max_flops=1e12)).run()
"""

import contextlib
import dataclasses
import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
import signal
import subprocess
import time
from typing import Any, Callable, NamedTuple, Sequence

import ml_collections
import numpy as np

TOP_LEVEL = ('grid', 'random')  # The entries get_sweep() may return.
RANDOM_KEYS = ('num_trials', 'seed', 'space')
KINDS = ('log_uniform', 'uniform', 'int', 'choice')  # Random-search specs: (kind, lo, hi) or ('choice', [values]).
SAMPLE_DIGITS = 4  # Sampled floats are rounded to this many significant digits: the trial id then names the value.
MAX_ID_LENGTH = 64  # Longer ids, or ids with characters outside _ID_CHARS, become 'trial_<hash>'.
_ID_CHARS = re.compile(r'^[A-Za-z0-9._=+-]+$')
_KEY = re.compile(r'^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$')
OVERRIDE = re.compile(r'^--config\.([A-Za-z_][\w.]*)=(.*)$', re.DOTALL)  # --config.KEY=VALUE
# Short names of common config keys (full key or last component) in trial ids and table headers; any other key goes
# by its last component.
SHORT_NAMES = {'learning_rate': 'lr', 'dropout_rate': 'dropout', 'weight_decay': 'wd', 'batch_size': 'bs',
               'optimizer.name': 'opt', 'model.name': 'model'}
# Sweep budget -> the run card's total for a run (every session): what `--max_KEY` adds up over the trials.
COSTS = {'max_seconds': ('time', 'wall_s'), 'max_flops': ('flops', 'total_train'), 'max_joules': ('energy', 'joules')}
STATUSES = ('finished', 'stopped', 'failed', 'running', 'not run')
ERROR_TAIL_CHARS = 2000  # Of a failed trial's stderr, kept in summary.json.
POLL_S = 0.1  # How often the runner looks at its trials and its signals.


class SweepError(ValueError):
  """A sweep file, entry or output directory that cannot be used; the message names it, its value and what is
  allowed."""


def _bad(entry: str, value: Any, allowed: str) -> SweepError:
  return SweepError(f'sweep entry {entry} = {value!r}: expected {allowed}')


@dataclasses.dataclass(frozen=True)
class Sweep:
  """A checked sweep file: the grid ({} if none) and the random search (None if none)."""
  path: str
  source: str  # The file's text, recorded in sweep.json.
  grid: dict[str, list]
  random: dict | None

  @property
  def keys(self) -> list[str]:
    """The swept config keys: the random search's, then the grid's (the order of trial ids and table columns)."""
    return [*(self.random['space'] if self.random else {}), *self.grid]


class Trial(NamedTuple):
  """One point of the sweep: a training run in OUT/trials/<id>."""
  id: str
  values: dict[str, Any]  # Swept config key -> value.
  overrides: tuple[str, ...]  # The values as --config.KEY=VALUE flags.


def load_sweep(path: str) -> Sweep:
  """Loads and checks a sweep file (see the module docstring); raises SweepError naming what is wrong."""
  if not os.path.isfile(path):
    raise SweepError(f'--sweep={path}: no such file; expected a Python file that defines get_sweep()')
  with open(path) as f:
    source = f.read()
  module_spec = importlib.util.spec_from_file_location('_sweep_file', path)
  if module_spec is None:
    raise SweepError(f'--sweep={path}: not a Python file; expected a .py file that defines get_sweep()')
  try:
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except  (a user's file: any error means it cannot be used)
    raise SweepError(f'--sweep={path}: cannot load it: {type(e).__name__}: {" ".join(str(e).split())}') from e
  if not callable(getattr(module, 'get_sweep', None)):
    raise SweepError(f"--sweep={path} defines no get_sweep(); expected a function returning {{'grid': ..., "
                     "'random': ...}")
  try:
    spec = module.get_sweep()
  except Exception as e:  # pylint: disable=broad-except
    raise SweepError(f'--sweep={path}: get_sweep() failed: {type(e).__name__}: {" ".join(str(e).split())}') from e
  grid, random = check_sweep(spec)
  return Sweep(path=path, source=source, grid=grid, random=random)


def check_sweep(spec: Any) -> tuple[dict[str, list], dict | None]:
  """Checks what get_sweep() returned; returns (grid, random) with numpy scalars made Python values.

  Raises:
    SweepError: not a dict, an unknown entry, an empty grid list, a bad random spec, a key in both.
  """
  if not isinstance(spec, dict) or not spec:
    raise _bad('get_sweep()', spec, f"a dict with one or both of {list(TOP_LEVEL)}")
  for entry, value in spec.items():
    if entry not in TOP_LEVEL:
      raise _bad(repr(entry), value, f'one of the entries {list(TOP_LEVEL)}')
  grid = _check_grid(spec['grid']) if 'grid' in spec else {}
  random = _check_random(spec['random']) if 'random' in spec else None
  for key in grid:
    if random and key in random['space']:
      raise _bad(f"grid[{key!r}]", spec['grid'][key], "a key swept once: it is also in random['space']")
  return grid, random


def _python(value: Any) -> Any:
  """numpy scalars -> Python scalars (np.logspace(...) in a sweep file); anything else unchanged."""
  return value.item() if isinstance(value, np.generic) else value


def _check_value(entry: str, value: Any) -> Any:
  value = _python(value)
  if isinstance(value, (list, tuple)):
    value = tuple(_python(v) for v in value)
  if not isinstance(value, (bool, int, float, str, tuple)) or (isinstance(value, float) and not math.isfinite(value)):
    raise _bad(entry, value, 'a config value: a finite number, a string, a bool or a tuple')
  return value


def _check_key(entry: str, key: Any, value: Any) -> None:
  if not isinstance(key, str) or not _KEY.match(key):
    raise _bad(entry, value, f"a config key as in --config.KEY overrides, e.g. 'optimizer.learning_rate' (got "
               f'the key {key!r})')


def _check_grid(grid: Any) -> dict[str, list]:
  if not isinstance(grid, dict) or not grid:
    raise _bad('grid', grid, 'a non-empty dict {config_key: [values]}')
  out = {}
  for key, values in grid.items():
    _check_key(f'grid[{key!r}]', key, values)
    if not isinstance(values, list) or not values:
      raise _bad(f'grid[{key!r}]', values, 'a non-empty list of values')
    out[key] = [_check_value(f'grid[{key!r}]', v) for v in values]
    if len(set(map(repr, out[key]))) < len(out[key]):
      raise _bad(f'grid[{key!r}]', values, 'a list of values without repeats')
  return out


def _check_random(random: Any) -> dict:
  if not isinstance(random, dict):
    raise _bad('random', random, "a dict {'num_trials': n, 'seed': s, 'space': {config_key: spec}}")
  for entry, value in random.items():
    if entry not in RANDOM_KEYS:
      raise _bad(f'random[{entry!r}]', value, f'one of the entries {list(RANDOM_KEYS)}')
  for entry in RANDOM_KEYS:
    if entry not in random:
      raise _bad('random', random, f'the entries {list(RANDOM_KEYS)}; {entry!r} is missing')
  num_trials, seed, space = (_python(random[k]) for k in RANDOM_KEYS)
  if isinstance(num_trials, bool) or not isinstance(num_trials, int) or num_trials < 1:
    raise _bad("random['num_trials']", num_trials, 'a positive integer')
  if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
    raise _bad("random['seed']", seed, 'a non-negative integer (numpy default_rng seed)')
  if not isinstance(space, dict) or not space:
    raise _bad("random['space']", space, 'a non-empty dict {config_key: spec}')
  checked = {}
  for key, spec in space.items():
    _check_key(f"random['space'][{key!r}]", key, spec)
    checked[key] = _check_spec(f"random['space'][{key!r}]", spec)
  return {'num_trials': num_trials, 'seed': seed, 'space': checked}


def _is_number(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_spec(entry: str, spec: Any) -> tuple:
  """('log_uniform'|'uniform', lo, hi) with lo < hi (log_uniform: lo > 0), ('int', lo, hi) integers with lo < hi,
  or ('choice', [values])."""
  forms = "('log_uniform', lo, hi), ('uniform', lo, hi), ('int', lo, hi) or ('choice', [values])"
  if not isinstance(spec, (tuple, list)) or not spec or spec[0] not in KINDS:
    raise _bad(entry, spec, f'a spec whose kind is one of {list(KINDS)}: {forms}')
  kind, *args = (_python(s) for s in spec)
  if kind == 'choice':
    if len(args) != 1 or not isinstance(args[0], list) or not args[0]:
      raise _bad(entry, spec, "('choice', [values]) with a non-empty list")
    return (kind, [_check_value(entry, v) for v in args[0]])
  if len(args) != 2 or not all(_is_number(a) for a in args):
    raise _bad(entry, spec, f'({kind!r}, lo, hi) with two numbers')
  lo, hi = args
  if kind == 'int' and not all(isinstance(a, int) for a in args):
    raise _bad(entry, spec, "('int', lo, hi) with integer bounds")
  if lo >= hi:
    raise _bad(entry, spec, f'lo < hi (got lo={lo!r}, hi={hi!r})')
  if kind == 'log_uniform' and lo <= 0:
    raise _bad(entry, spec, f'lo > 0 for log_uniform (got lo={lo!r})')
  return (kind, lo, hi)


def _draw(rng: np.random.Generator, spec: tuple) -> Any:
  """One value of a spec; floats rounded to SAMPLE_DIGITS significant digits; 'int' includes hi."""
  kind = spec[0]
  if kind == 'choice':
    return spec[1][int(rng.integers(len(spec[1])))]
  if kind == 'int':
    return int(rng.integers(spec[1], spec[2], endpoint=True))
  if kind == 'log_uniform':
    value = math.exp(rng.uniform(math.log(spec[1]), math.log(spec[2])))
  else:
    value = rng.uniform(spec[1], spec[2])
  return float(f'{value:.{SAMPLE_DIGITS}g}')


def sample(random: dict) -> list[dict[str, Any]]:
  """The random search's `num_trials` samples: numpy default_rng(seed), each trial's keys drawn in space order."""
  rng = np.random.default_rng(random['seed'])
  return [{key: _draw(rng, spec) for key, spec in random['space'].items()} for _ in range(random['num_trials'])]


def format_value(value: Any) -> str:
  """A swept value for ids and tables: floats to 4 significant digits, tuples joined by '-'."""
  if isinstance(value, float):
    return f'{value:.4g}'
  if isinstance(value, tuple):
    return '-'.join(map(format_value, value))
  return str(value)


def format_override(key: str, value: Any) -> str:
  """--config.KEY=VALUE that experiments.train parses back to `value` (floats by repr: exact)."""
  text = repr(value) if isinstance(value, (float, tuple)) else str(value)
  return f'--config.{key}={text}'


def short_names(keys: Sequence[str]) -> dict[str, str]:
  """Config key -> its name in ids and tables: SHORT_NAMES or the last component; the full key where two clash."""
  names = {k: SHORT_NAMES.get(k, SHORT_NAMES.get(k.split('.')[-1], k.split('.')[-1])) for k in keys}
  clashes = {n for n in names.values() if list(names.values()).count(n) > 1}
  return {k: k if n in clashes else n for k, n in names.items()}


def values_hash(values: dict[str, Any]) -> str:
  """10 hex digits of the sha256 of the values' canonical JSON."""
  return hashlib.sha256(json.dumps(values, sort_keys=True, default=repr).encode()).hexdigest()[:10]


def trial_id(values: dict[str, Any], names: dict[str, str]) -> str:
  """'lr=0.001_seed=0'; 'trial_<hash of values>' when that is longer than MAX_ID_LENGTH or has odd characters."""
  text = '_'.join(f'{names[k]}={format_value(v)}' for k, v in values.items())
  if len(text) > MAX_ID_LENGTH or not _ID_CHARS.match(text):
    return f'trial_{values_hash(values)}'
  return text


def expand(sweep: Sweep) -> list[Trial]:
  """Every trial: each random sample (or one empty sample) with each grid point, sample-major; duplicates dropped.

  Ids that two different trials would share (values equal to 4 digits) get the values' hash appended.
  """
  samples = sample(sweep.random) if sweep.random else [{}]
  points = [dict(zip(sweep.grid, values)) for values in itertools.product(*sweep.grid.values())]
  unique = {}
  for random_values, grid_values in itertools.product(samples, points):
    values = {**random_values, **grid_values}
    unique.setdefault(values_hash(values), values)
  names = short_names(sweep.keys)
  ids = [trial_id(v, names) for v in unique.values()]
  ids = [f'{i}_{h[:6]}' if ids.count(i) > 1 else i for i, h in zip(ids, unique)]
  return [Trial(i, v, tuple(format_override(k, x) for k, x in v.items())) for i, v in zip(ids, unique.values())]


def _unknown_key(preset: ml_collections.ConfigDict, key: str) -> str | None:
  """Why `key` is not a leaf of the preset ('known keys in optimizer: [...]'), or None if it is one."""
  node, parts = preset, key.split('.')
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      group = '.'.join(parts[:i]) or 'the top level'
      known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      return f'known keys in {group}: {known}'
    node = node[part]
  return f'a key with a value, not the group {key!r}' if isinstance(node, ml_collections.ConfigDict) else None


def check_keys(sweep: Sweep, preset: ml_collections.ConfigDict, *, preset_name: str,
               overrides: Sequence[str] = ()) -> None:
  """Every swept key and every extra override's key exists in the preset; no key is both swept and overridden.

  Raises:
    SweepError: naming the key, its value and what is allowed.
  """
  entries = [(f'grid[{k!r}]', k, v) for k, v in sweep.grid.items()]
  entries += [(f"random['space'][{k!r}]", k, v) for k, v in (sweep.random or {'space': {}})['space'].items()]
  for entry, key, value in entries:
    why = _unknown_key(preset, key)
    if why:
      raise SweepError(f'sweep entry {entry} = {value!r}: {key!r} is not a config key of {preset_name}; expected a '
                       f'key of the preset ({why})')
  for override in overrides:
    key = OVERRIDE.match(override).group(1)
    why = _unknown_key(preset, key)
    if why:
      raise SweepError(f'unknown config key {key!r} (from {override} after --); {why}')
    if key in sweep.keys:
      raise SweepError(f'{override} (after --): {key!r} is swept by {sweep.path}; expected overrides of keys the '
                       'sweep does not set')


IDENTITY = ('preset', 'sweep_file', 'sweep_source', 'overrides')  # sweep.json entries a rerun must match.


def check_out(out: str, record: dict) -> None:
  """Refuses an OUT that holds something else: files but no sweep.json, or a sweep of another preset, sweep file
  (another path or changed contents) or set of overrides. Nothing is written.

  Args:
    out: the sweep directory (--out).
    record: the sweep.json this invocation would write; its IDENTITY entries must equal the saved ones.

  Raises:
    SweepError: naming what differs, with the saved and the new value.
  """
  path = os.path.join(out, 'sweep.json')
  if os.path.exists(out) and not os.path.isdir(out):
    raise SweepError(f'--out={out} is a file; expected a directory for the sweep')
  if not os.path.exists(path):
    if os.path.isdir(out) and os.listdir(out):
      raise SweepError(f'--out={out} is not empty and holds no sweep.json; expected a new or empty directory, or '
                       'the --out of an earlier run of this sweep')
    return
  try:
    with open(path) as f:
      saved = json.load(f)
    saved_identity = {k: saved[k] for k in IDENTITY}
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise SweepError(f'--out={out}: cannot read {path} ({e}); expected the sweep.json of an earlier run') from e
  for key in IDENTITY:
    same = (os.path.realpath(saved_identity[key]) == os.path.realpath(record[key]) if key == 'sweep_file'
            else saved_identity[key] == record[key])
    if not same:
      what = (f'{record["sweep_file"]} changed since the sweep began' if key == 'sweep_source' else
              f'saved {saved_identity[key]!r}, now {record[key]!r}')
      raise SweepError(f'--out={out} holds a sweep with another {key.replace("_", " ")} ({what}); resuming would '
                       'mix two sweeps. Use a new --out, or rerun the saved command: '
                       f"{saved.get('command', '(none recorded)')}")


def _get(tree: Any, *keys: str) -> Any:
  for key in keys:
    tree = tree.get(key) if isinstance(tree, dict) else None
  return tree


class Budget(NamedTuple):
  """The sweep's total budget over all trials (the sum of their cards' totals); 0 = no limit."""
  max_seconds: float = 0.0
  max_flops: float = 0.0
  max_joules: float = 0.0


def card_cost(card: dict | None) -> dict[str, float]:
  """A run card's totals for each budget key (0 where the card, or the figure, is missing)."""
  values = {key: _get(card, *path) for key, path in COSTS.items()}
  return {key: float(v) if _is_number(v) else 0.0 for key, v in values.items()}


def total_cost(cards: Sequence[dict | None]) -> dict[str, float]:
  costs = [card_cost(c) for c in cards]
  return {key: sum(c[key] for c in costs) for key in COSTS}


def budget_reached(budget: Budget, spent: dict[str, float]) -> str | None:
  """The first budget key whose limit the spent totals have reached (to a float rounding), or None."""
  return next((key for key, limit in budget._asdict().items() if limit and spent[key] >= limit * (1 - 1e-9)), None)


def trial_budget(budget: Budget, spent: dict[str, float], trial_spent: dict[str, float],
                 run_budget: Budget = Budget()) -> dict[str, float]:
  """The budget a trial about to start is given (`--config.budget.KEY`): what it has spent plus what the sweep has
  left, or the run's own budget if that is smaller. Training counts every session of a run, hence the spent part."""
  out = {}
  for key, limit in budget._asdict().items():
    if limit:
      value = trial_spent[key] + limit - spent[key]
      own = getattr(run_budget, key)
      out[key] = min(value, own) if own else value
  return out


def read_card(workdir: str) -> dict | None:
  """The run's run_card.json (written atomically by training), or None if there is none or it is unreadable."""
  try:
    with open(os.path.join(workdir, 'run_card.json')) as f:
      card = json.load(f)
  except (OSError, ValueError):
    return None
  return card if isinstance(card, dict) else None


def status_of_card(card: dict | None) -> str:
  """'finished' (stop_reason 'steps'), 'failed' (non-finite losses), 'stopped' (SIGTERM, budget) or 'not run'."""
  if card is None:
    return 'not run'
  return {'steps': 'finished', 'nonfinite': 'failed'}.get(card.get('stop_reason'), 'stopped')


@dataclasses.dataclass
class TrialState:
  """Where a trial stands: its status (one of STATUSES), its latest card, and why it failed."""
  status: str
  card: dict | None = None
  exit_code: int | None = None
  error: str | None = None  # A failed trial's stderr tail (or its card's message).


def trial_row(trial: Trial, state: TrialState, *, out: str) -> dict:
  """One row of summary.json: the swept values, the status, the final metrics and the card's costs."""
  card = state.card
  return {'trial_id': trial.id, 'values': trial.values, 'status': state.status,
          'stop_reason': _get(card, 'stop_reason'), 'steps': _get(card, 'steps'),
          'test_accuracy': _get(card, 'final_metrics', 'test_accuracy'),
          'test_loss': _get(card, 'final_metrics', 'test_loss'), 'params': _get(card, 'params', 'count'),
          'train_flops': _get(card, 'flops', 'total_train'), 'wall_s': _get(card, 'time', 'wall_s'),
          'energy_j': _get(card, 'energy', 'joules'), 'energy_source': _get(card, 'energy', 'source'),
          'workdir': os.path.join(out, 'trials', trial.id), 'overrides': list(trial.overrides),
          'stderr_log': os.path.join(out, 'logs', f'{trial.id}.stderr.log'),
          'exit_code': state.exit_code, 'error': state.error}


def sort_rows(rows: list[dict]) -> list[dict]:
  """Best test_accuracy first; rows without one (not run, crashed) last, in sweep order."""
  order = sorted(range(len(rows)), key=lambda i: (rows[i]['test_accuracy'] is None,
                                                  -(rows[i]['test_accuracy'] or 0.0), i))
  return [rows[i] for i in order]


def _mean_std(values: list) -> tuple[float | None, float | None]:
  values = [v for v in values if v is not None]
  return (float(np.mean(values)), float(np.std(values))) if values else (None, None)


def seed_groups(rows: list[dict]) -> list[dict]:
  """Trials that differ only in `seed`, when seed is swept: mean ± std (population std) over their finished ones,
  and the mean cost of a run; groups with no finished trial are left out. Best mean test_accuracy first."""
  if not rows or 'seed' not in rows[0]['values']:
    return []
  groups = {}
  for row in rows:
    rest = {k: v for k, v in row['values'].items() if k != 'seed'}
    groups.setdefault(json.dumps(rest, sort_keys=True, default=repr), (rest, []))[1].append(row)
  out = []
  for rest, members in groups.values():
    done = [r for r in members if r['status'] == 'finished']
    entry = {'values': rest, 'trials': len(members), 'finished': len(done),
             'seeds': [r['values']['seed'] for r in done]}
    for metric in ('test_accuracy', 'test_loss'):
      entry[f'{metric}_mean'], entry[f'{metric}_std'] = _mean_std([r[metric] for r in done])
    for cost in ('train_flops', 'wall_s', 'energy_j'):
      entry[f'{cost}_mean'] = _mean_std([r[cost] for r in done])[0]
    sources = {r['energy_source'] for r in done}
    entry['energy_source'] = sources.pop() if len(sources) == 1 else 'mixed sources'
    if done:
      out.append(entry)
  return sorted(out, key=lambda g: (g['test_accuracy_mean'] is None, -(g['test_accuracy_mean'] or 0.0)))


def _fmt(value: float | None, spec: str, suffix: str = '') -> str:
  return '—' if value is None else f'{value:{spec}}{suffix}'


def _energy(joules: float | None, source: str | None) -> str:
  return _fmt(joules, '.3g', f' J ({source or "source unknown"})')


def _status_text(row: dict) -> str:
  if row['status'] == 'stopped':
    return f"stopped ({row['stop_reason'] or 'signal'}{'' if row['steps'] is None else ', step ' + str(row['steps'])})"
  if row['status'] == 'failed' and row['exit_code'] is not None:
    return f"failed (exit {row['exit_code']})"
  return row['status']


def _trials_table(rows: list[dict], names: dict[str, str]) -> list[str]:
  lines = ['| trial | ' + ' | '.join(names.values()) + ' | status | test_accuracy | test_loss | params | '
           'train FLOPs | wall time | energy |',
           '|---|' + '---:|' * len(names) + '---|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    values = ' | '.join(format_value(r['values'][k]) for k in names)
    lines.append(f"| {r['trial_id']} | {values} | {_status_text(r)} | {_fmt(r['test_accuracy'], '.4f')} | "
                 f"{_fmt(r['test_loss'], '.4g')} | {_fmt(r['params'], ',')} | {_fmt(r['train_flops'], '.3g')} | "
                 f"{_fmt(r['wall_s'], '.1f', ' s')} | {_energy(r['energy_j'], r['energy_source'])} |")
  return lines


def _groups_table(groups: list[dict], names: dict[str, str]) -> list[str]:
  names = {k: n for k, n in names.items() if k != 'seed'}
  lines = ['| ' + ''.join(f'{n} | ' for n in names.values()) + 'seeds | test_accuracy (mean ± std) | test_loss | '
           'train FLOPs | wall time | energy |',
           '|' + '---:|' * len(names) + '---:|---:|---:|---:|---:|---:|']
  for g in groups:
    values = ''.join(f"{format_value(g['values'][k])} | " for k in names)
    acc = ('—' if g['test_accuracy_mean'] is None
           else f"{g['test_accuracy_mean']:.4f} ± {g['test_accuracy_std']:.4f}")
    loss = '—' if g['test_loss_mean'] is None else f"{g['test_loss_mean']:.4g} ± {g['test_loss_std']:.2g}"
    lines.append(f"| {values}{g['finished']}/{g['trials']} | {acc} | {loss} | {_fmt(g['train_flops_mean'], '.3g')} | "
                 f"{_fmt(g['wall_s_mean'], '.1f', ' s')} | {_energy(g['energy_j_mean'], g['energy_source'])} |")
  return lines


def format_table(document: dict) -> str:
  """table.md: the command, the counts, the trials best first, mean ± std over seeds, and why trials failed."""
  rows, names = document['trials'], document['names']
  counts = ', '.join(f'{n} {s}' for s, n in document['counts'].items() if n)
  lines = [f"# Sweep {document['sweep_file']} on {document['preset']}", '',
           f"Command: `{document['command']}`", '', f'{len(rows)} trials: {counts}.']
  if document['stop']:
    lines[-1] += f" {document['stop']}"
  lines += ['', *_trials_table(rows, names)]
  legend = [f'{n} = {k}' for k, n in names.items() if n != k]
  if legend:
    lines += ['', 'Columns: ' + ', '.join(legend) + '. Costs are totals over every session of a trial (its card).']
  if document['seed_groups']:
    lines += ['', '## Mean ± std over seeds (finished trials; costs are means per trial)', '',
              *_groups_table(document['seed_groups'], names)]
  sources = sorted({r['energy_source'] for r in rows if r['energy_source']})
  if 'estimate' in sources:
    lines += ['', 'Energy "estimate": CPU time x an assumed power per busy core, not a measurement.']
  failed = [r for r in rows if r['status'] == 'failed']
  if failed:
    lines += ['', '## Failed trials']
    for r in failed:
      tail = (r['error'] or '').strip().splitlines()[-5:]
      code = '' if r['exit_code'] is None else f"exit {r['exit_code']}; "
      lines += ['', f"{r['trial_id']}: {code}the end of {r['stderr_log']}:", '```', *tail, '```']
  return '\n'.join(lines) + '\n'


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes JSON to path.tmp, then renames it over `path`: a reader sees the old file or the new one."""
  write_text_atomic(path, json.dumps(obj, indent=2, default=repr) + '\n')


def write_text_atomic(path: str, text: str) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def write_summary(out: str, trials: Sequence[Trial], states: dict[str, TrialState], *, header: dict,
                  stop: str | None = None) -> dict:
  """Rewrites OUT/summary.json and OUT/table.md (atomically) from the trials' states; returns the document.

  Args:
    out: the sweep directory.
    trials: every trial of the sweep.
    states: trial id -> its state.
    header: 'command', 'preset', 'sweep_file' and 'keys' (the swept config keys).
    stop: why the sweep stopped early, for the reader (None: it did not).
  """
  rows = sort_rows([trial_row(t, states[t.id], out=out) for t in trials])
  counts = {s: sum(states[t.id].status == s for t in trials) for s in STATUSES}
  document = {**header, 'names': short_names(header['keys']), 'counts': counts, 'stop': stop,
              'spent': total_cost([states[t.id].card for t in trials]), 'trials': rows,
              'seed_groups': seed_groups(rows)}
  write_json_atomic(os.path.join(out, 'summary.json'), document)
  write_text_atomic(os.path.join(out, 'table.md'), format_table(document))
  return document


def format_dry_run(trials: Sequence[Trial], states: dict[str, TrialState], overrides: Sequence[str]) -> str:
  """What --dry_run prints: each trial, its overrides and what a run would do with it."""
  lines = [f'dry run: {len(trials)} trials (nothing run, nothing written)']
  for number, trial in enumerate(trials, 1):
    status = states[trial.id].status
    note = {'finished': ' (finished: skipped)', 'not run': '', 'failed': ' (failed: run again)'}.get(
        status, f' ({status}: resumed)')
    lines.append(f'[{number}/{len(trials)}] {trial.id}: {" ".join(trial.overrides)}{note}')
  if overrides:
    lines.append(f'every trial also gets: {" ".join(overrides)}')
  return '\n'.join(lines)

def initial_states(out: str, trials: Sequence[Trial]) -> dict[str, TrialState]:
  """Trial id -> its state from its card in OUT/trials/<id>; a trial that failed without writing a card keeps the
  failure OUT/summary.json recorded."""
  try:
    with open(os.path.join(out, 'summary.json')) as f:
      previous = {r['trial_id']: r for r in json.load(f)['trials']}
  except (OSError, ValueError, KeyError, TypeError):
    previous = {}
  states = {}
  for trial in trials:
    card, before = read_card(os.path.join(out, 'trials', trial.id)), previous.get(trial.id, {})
    if card is None and before.get('status') == 'failed':
      states[trial.id] = TrialState('failed', None, before.get('exit_code'), before.get('error'))
    else:
      status = status_of_card(card)
      states[trial.id] = TrialState(status, card, error=card.get('message') if status == 'failed' else None)
  return states

class Outcome(NamedTuple):
  """What one invocation of the sweep did."""
  stop: str | None  # The budget key reached, or the signal's name ('SIGTERM'); None: no trial was left to start.
  started: int  # Trials started by this invocation.
  failed: int  # Of those, the ones that failed.
  states: dict[str, TrialState]  # Trial id -> its state at the end.
  spent: dict[str, float]  # The sweep's totals over every trial's card (COSTS keys).


@contextlib.contextmanager
def _stop_signals():
  """While active, SIGTERM and SIGINT append their names to the yielded list instead of ending the process."""
  received = []

  def handle(signum, frame):
    del frame
    received.append(signal.Signals(signum).name)

  previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield received
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)


@dataclasses.dataclass
class _Running:
  trial: Trial
  number: int  # 1-based position in the sweep, for progress lines.
  proc: subprocess.Popen
  t_start: float  # time.time() at launch (compared with the card's mtime).
  stderr_path: str
  stderr_offset: int  # Where this launch's stderr begins in the (appended) log.
  signalled: bool = False
  killed: bool = False


class Runner:
  """Runs the trials that have not finished, `parallel` at a time, within the budget, writing the summary as it goes.

  A trial is `command(trial)` plus `--config.budget.KEY=...` flags when the sweep has a budget (trial_budget), with
  stdout and stderr appended to OUT/logs/<id>.stdout.log and .stderr.log. SIGTERM/SIGINT (and a reached budget)
  stop the starting of trials and are forwarded as SIGTERM to the running ones, which checkpoint and exit; a second
  signal kills them (SIGKILL: their last checkpoints stay usable).
  """

  def __init__(self, trials: Sequence[Trial], *, out: str, command: Callable[[Trial], list[str]], header: dict,
               parallel: int = 1, budget: Budget = Budget(), run_budgets: dict[str, Budget] | None = None,
               env: dict[str, str] | None = None, log: Callable[[str], None] = print):
    self.trials, self.out, self.command, self.header = list(trials), out, command, header
    self.parallel, self.budget, self.run_budgets = parallel, budget, run_budgets or {}
    self.env, self.log = env, log
    self.states = initial_states(out, self.trials)
    self.stop, self.started, self.failed = None, 0, 0

  def workdir(self, trial: Trial) -> str:
    return os.path.join(self.out, 'trials', trial.id)

  def spent(self) -> dict[str, float]:
    return total_cost([s.card for s in self.states.values()])

  def run(self, skip: Sequence[str] = ()) -> Outcome:
    """Runs until every trial has run once, the budget is reached, or a signal comes; returns what happened.

    Trials whose ids are in `skip` (run otherwise by this invocation: vectorized groups) are not started.
    """
    todo = [(n, t) for n, t in enumerate(self.trials, 1)
            if self.states[t.id].status != 'finished' and t.id not in skip]
    running: list[_Running] = []
    os.makedirs(os.path.join(self.out, 'logs'), exist_ok=True)
    self._write()
    with _stop_signals() as received:
      while todo or running:
        if self.stop is None:
          self.stop = received[0] if received else budget_reached(self.budget, self.spent())
        if self.stop is not None:
          self._signal(running, kill=len(received) > 1)
          if not running:
            break
        while self.stop is None and todo and len(running) < self.parallel:
          running.append(self._start(*todo.pop(0)))
        for r in [r for r in running if r.proc.poll() is not None]:
          running.remove(r)
          self._finish(r)
        if running:
          time.sleep(POLL_S)
    self._write()
    return Outcome(self.stop, self.started, self.failed, self.states, self.spent())

  def _signal(self, running: list[_Running], *, kill: bool) -> None:
    """Forwards SIGTERM to the running trials once (SIGKILL on a second signal)."""
    waiting = [r for r in running if not r.signalled]
    if waiting:
      why = f'received {self.stop}' if self.stop.startswith('SIG') else f'{self.stop} reached'
      self.log(f'{why}: sending SIGTERM to {len(waiting)} running trial(s); they checkpoint and stop '
               '(a second signal kills them)')
    for r in waiting:
      r.proc.send_signal(signal.SIGTERM)
      r.signalled = True
    for r in running:
      if kill and not r.killed:
        r.proc.kill()
        r.killed = True

  def _start(self, number: int, trial: Trial) -> _Running:
    state = self.states[trial.id]
    budget = trial_budget(self.budget, self.spent(), card_cost(state.card),
                          self.run_budgets.get(trial.id, Budget()))
    cmd = [*self.command(trial), *(f'--config.budget.{k}={v!r}' for k, v in budget.items())]
    logs = os.path.join(self.out, 'logs', trial.id)
    resuming = os.path.isdir(os.path.join(self.workdir(trial), 'checkpoints'))
    with open(logs + '.stdout.log', 'a') as stdout, open(logs + '.stderr.log', 'a') as stderr:
      stdout.write(f'$ {" ".join(cmd)}\n')
      stdout.flush()
      proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=self.env)
      running = _Running(trial, number, proc, time.time(), logs + '.stderr.log', stderr.tell())
    self.states[trial.id] = dataclasses.replace(state, status='running', exit_code=None, error=None)
    self.started += 1
    self.log(f'[{number}/{len(self.trials)}] {trial.id} started{" (resuming)" if resuming else ""}')
    self._write()
    return running

  def _stderr_tail(self, r: _Running) -> str:
    try:
      with open(r.stderr_path, errors='replace') as f:
        f.seek(r.stderr_offset)
        text = f.read()
    except OSError:
      text = ''
    code = r.proc.returncode
    return text[-ERROR_TAIL_CHARS:] or (f'killed by {signal.Signals(-code).name}' if code < 0 else
                                        f'exited with code {code} and printed nothing on stderr')

  def _finish(self, r: _Running) -> None:
    """Records how a trial ended: its card if it wrote one now, else stopped (we signalled it) or failed."""
    code, seconds = r.proc.returncode, time.time() - r.t_start
    path = os.path.join(self.workdir(r.trial), 'run_card.json')
    card = read_card(self.workdir(r.trial))
    fresh = card is not None and os.path.getmtime(path) >= r.t_start
    if fresh and code == 0:
      state = TrialState(status_of_card(card), card, code)
    elif (self.stop is not None or r.signalled) and not (fresh and card.get('stop_reason') == 'nonfinite'):
      state = TrialState('stopped', card, code)
    else:
      missing = 'exited 0 without writing a new run_card.json\n' if code == 0 else ''
      state = TrialState('failed', card, code, missing + self._stderr_tail(r))
      self.failed += 1
    self.states[r.trial.id] = state
    head = f'[{r.number}/{len(self.trials)}] {r.trial.id} {state.status}'
    metric = _get(card, 'final_metrics', 'test_accuracy') if fresh else None
    result = f': test_accuracy={metric:.3f}' if metric is not None else ''
    if state.status == 'stopped':
      head += f" ({card['stop_reason']} at step {card['steps']})" if fresh else f' (exit {code}, no new card)'
    elif state.status == 'failed':
      lines = [line for line in state.error.splitlines() if line.strip()] or ['']
      head += f" (exit {code}): {next((x for x in lines if x.startswith('error:')), lines[-1])[:200]}"
      result = f'; log {r.stderr_path}'
    self.log(f'{head}{result} ({seconds:.1f} s)')
    self._write()

  def stop_text(self) -> str | None:
    """Why the sweep stopped early, in words, for the table and the last line printed."""
    if self.stop is None:
      return None
    if self.stop.startswith('SIG'):
      return f'Stopped by {self.stop}.'
    key = self.stop
    return (f'Stopped: the budget --{key}={getattr(self.budget, key):g} was reached (the trials\' cards add up to '
            f'{self.spent()[key]:.4g} {".".join(COSTS[key])}).')

  def _write(self) -> None:
    write_summary(self.out, self.trials, self.states, header=self.header, stop=self.stop_text())
