"""The run directory's checks before any compute: it can be written, and it holds no run of a different config.

A resumed run continues the saved state with the new config, so a changed learning rate or model would silently
mix two experiments in one directory. `check_config` refuses that with a readable diff, except for keys that only
change how a run is observed or how long it goes on (SAFE_TO_CHANGE).
"""

import json
import os
from typing import Any, NamedTuple

import ml_collections

# Keys that may differ between the saved config and a resuming one without changing the numbers of the steps
# already taken or about to be taken (logging, evaluation, checkpoint cadence, length, where data is read from).
SAFE_TO_CHANGE = ('steps', 'eval_every', 'log_every', 'checkpoint_every', 'keep_checkpoints', 'progress',
                  'eval_batch_size', 'eval_examples', 'max_consecutive_nonfinite', 'dataset.data_dir',
                  'accumulate_steps')
# Budgets cap a run and accounting measures it: neither changes a step. The mesh, the processes and gradient
# accumulation change where and in how many pieces a step is computed, not what it computes: float sums in another
# order (and, with dropout, other masks per microbatch). Checkpoints restore onto any mesh (resharded on load).
SAFE_GROUPS = ('budget.', 'accounting.', 'mesh.', 'distributed.')


class WorkdirError(RuntimeError):
  """A workdir that cannot be used: not writable, or holding a run of another config."""


class Change(NamedTuple):
  key: str
  saved: Any
  new: Any


def check_writable(workdir: str) -> None:
  """Raises WorkdirError unless `workdir` exists as a writable directory or can be created.

  Nothing is created: the nearest existing ancestor must be a writable directory.
  """
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f'--workdir={workdir} is a file, not a directory')
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise WorkdirError(f'--workdir={workdir} cannot be created: {existing} is a file')
  if not os.access(existing, os.W_OK | os.X_OK):
    what = 'is not writable' if existing == path else f'cannot be created: {existing} is not writable'
    raise WorkdirError(f'--workdir={workdir} {what}')
  for sub in ('checkpoints', 'config.json', 'metrics.jsonl', 'run_card.json'):
    sub_path = os.path.join(path, sub)
    if os.path.exists(sub_path) and not os.access(sub_path, os.W_OK):
      raise WorkdirError(f'--workdir={workdir}: {sub_path} is not writable')


def flatten(tree: dict, prefix: str = '') -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}: a config's JSON dict keyed like --config.KEY overrides."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[prefix + key] = value
  return out


def config_changes(saved: dict, new: dict) -> list[Change]:
  """Keys whose values differ between two configs (as JSON dicts), sorted; absent keys show as None."""
  saved_flat, new_flat = flatten(saved), flatten(new)
  return [Change(k, saved_flat.get(k), new_flat.get(k)) for k in sorted(set(saved_flat) | set(new_flat))
          if saved_flat.get(k) != new_flat.get(k)]


def _default(key: str, saved: dict) -> Any:
  """The default of `key` in today's code: configs/base.py, or the saved model's dataclass for model.*."""
  from configs import base  # pylint: disable=g-import-not-at-top  (configs imports nothing from research)
  from research import models  # pylint: disable=g-import-not-at-top
  if key.startswith('model.'):
    fields = models.model_fields(saved.get('model', {}).get('name')) if saved.get('model', {}).get('name') in \
        models.MODELS else {}
    return fields.get(key[len('model.'):], (None, None))[1]
  return flatten(json.loads(base.get_base_config().to_json_best_effort())).get(key)


def with_defaults(saved: dict) -> dict:
  """A saved config.json dict with the keys added to configs/base.py since it was written, at their defaults."""
  from configs import base  # pylint: disable=g-import-not-at-top

  def fill(tree: dict, defaults: dict) -> dict:
    out = dict(tree)
    for key, value in defaults.items():
      if key not in out:
        out[key] = value
      elif isinstance(value, dict) and isinstance(out[key], dict) and key != 'model':
        out[key] = fill(out[key], value)
    return out

  return fill(saved, json.loads(base.get_base_config().to_json_best_effort()))


def describe(changes: list[Change], saved: dict | None = None) -> str:
  """'key: old -> new, ...' for messages. With the saved config, a key it lacks (added to the code since) shows the
  default the run had, which is the value that resumes it: 'key: not saved (default 'epoch') -> 'stored''."""
  def old(c: Change) -> str:
    default = _default(c.key, saved) if c.saved is None and saved is not None else None
    return repr(c.saved) if default is None else f'not saved (default {default!r})'
  return ', '.join(f'{c.key}: {old(c)} -> {c.new!r}' for c in changes)


def _is_safe(change: Change, saved: dict) -> bool:
  if change.saved is None and change.new == _default(change.key, saved):
    return True  # A key added to the code since the run was saved, at its default: the run used that behaviour.
  if change.key == 'steps':
    # warmup_cosine decays over `steps`: a new length changes the learning rate of every step still to come.
    return saved.get('optimizer', {}).get('schedule') != 'warmup_cosine'
  return change.key in SAFE_TO_CHANGE or change.key.startswith(SAFE_GROUPS)


def check_config(workdir: str, config: ml_collections.ConfigDict, *, allow_change: bool) -> list[Change]:
  """Compares `config` with the one saved in `workdir` (if any).

  Args:
    workdir: the run directory.
    config: the resolved config of the run about to start.
    allow_change: accept any change (the user said so with --allow_config_change).

  Returns:
    The changes, all safe or accepted ([] for a new workdir).

  Raises:
    WorkdirError: a key outside SAFE_TO_CHANGE differs and `allow_change` is False, or config.json is unreadable.
  """
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return []
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise WorkdirError(f'--workdir={workdir}: cannot read the saved config {path}: {e}') from e
  changes = config_changes(saved, json.loads(config.to_json_best_effort()))
  unsafe = [c for c in changes if not _is_safe(c, saved)]
  if unsafe and not allow_change:
    diff = describe(unsafe, saved)
    raise WorkdirError(
        f'--workdir={workdir} holds a run with a different config ({diff}); resuming would mix two experiments.\n'
        'Use a new --workdir, restore the saved values, or pass --allow_config_change to continue with the new ones.')
  return changes
