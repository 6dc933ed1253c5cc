"""The run card: what a run did and what it cost, written to <workdir>/run_card.json and summarised in one line."""

import importlib.metadata
import json
import os
import platform

import jax
import optax

from research.training import train_state

_PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'grain', 'tensorflow-datasets')


def versions() -> dict[str, str]:
  """Installed versions of the packages that determine a run's numbers."""
  out = {'python': platform.python_version()}
  for name in _PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = 'not installed'
  return out


def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()


def environment() -> dict:
  """The machine, backend and devices the run used."""
  devices = jax.devices()
  return {'backend': jax.default_backend(), 'device_kind': devices[0].device_kind,
          'device_count': len(devices), 'process_count': jax.process_count(), 'host': platform.node(),
          'cpu': _cpu_model(), 'cpu_count': os.cpu_count(), 'platform': platform.platform()}


def build(config, state, *, steps: int, stop_reason: str, resumed_from_step: int, wall_time_s: float,
          time: dict, totals: dict, final_metrics: dict, checkpoints_skipped: list = (),
          message: str | None = None) -> dict:
  """The run card of a finished (or stopped) run; see the contract in README ("What a run writes").

  `time` is this session's; `totals` ({'restarts', 'time'}) adds up every session since the run began.
  `checkpoints_skipped` lists (step, reason) of unusable checkpoints passed over on resume.
  """
  return {
      'model': config.model.name,
      'dataset': config.dataset.name,
      'steps': steps,
      'stop_reason': stop_reason,
      'message': message,
      'resumed_from_step': resumed_from_step,
      'restarts': totals['restarts'],
      'wall_time_s': wall_time_s,
      'time': time,
      'total_time': totals['time'],
      'nonfinite_skipped_steps': int(optax.tree_utils.tree_get(state.opt_state, 'total_notfinite', 0)),
      'checkpoints_skipped': [{'step': int(s), 'reason': r} for s, r in checkpoints_skipped],
      'final_metrics': final_metrics,
      'final_state_sha256': train_state.state_sha256(state),
      'params': {'count': train_state.count_params(state.params)},
      'environment': environment(),
      'versions': versions(),
  }


def write(workdir: str, card: dict) -> str:
  """Writes run_card.json atomically (a reader never sees half a card). Returns its path."""
  path = os.path.join(workdir, 'run_card.json')
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(card, f, indent=2, sort_keys=True)
    f.write('\n')
  os.replace(tmp, path)
  return path


def read(workdir: str) -> dict:
  with open(os.path.join(workdir, 'run_card.json')) as f:
    return json.load(f)


def summary_line(card: dict) -> str:
  """One line: model, steps, stop reason, final metrics, time."""
  metrics = ' '.join(f'{k}={v:.4g}' for k, v in sorted(card['final_metrics'].items()) if v is not None)
  return (f"[{card['model']} on {card['dataset']}] steps={card['steps']} stop={card['stop_reason']} {metrics} "
          f"params={card['params']['count']:,} wall={card['wall_time_s']:.1f}s "
          f"sha256={card['final_state_sha256'][:12]}")
