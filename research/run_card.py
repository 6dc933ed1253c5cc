"""The run card: what a run did and what it cost, written to <workdir>/run_card.json and summarised in one line."""

import importlib.metadata
import json
import math
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
          costs: dict, final_metrics: dict, checkpoints_skipped: list = (), message: str | None = None) -> dict:
  """The run card of a finished (or stopped) run; see the contract in README ("What a run writes").

  Args:
    config: the run's config.
    state: the final TrainState (its sha256 and non-finite count are recorded).
    steps: steps the final state has taken.
    stop_reason: 'steps', 'preempted', 'nonfinite' or the budget key that ended the run.
    resumed_from_step: the step this session started from (0 for a fresh run).
    wall_time_s: this session's wall time.
    costs: training.accounting.card_costs: params, flops, time (totals), throughput, mfu, memory, energy, co2_g,
      inference, restarts.
    final_metrics: train_loss, test_loss, test_accuracy.
    checkpoints_skipped: (step, reason) of unusable checkpoints passed over on resume.
    message: why the run stopped early, for the user.
  """
  return {
      'model': config.model.name,
      'dataset': config.dataset.name,
      'steps': steps,
      'stop_reason': stop_reason,
      'message': message,
      'resumed_from_step': resumed_from_step,
      'wall_time_s': wall_time_s,
      'final_metrics': final_metrics,
      'final_state_sha256': train_state.state_sha256(state),
      'nonfinite_skipped_steps': int(optax.tree_utils.tree_get(state.opt_state, 'total_notfinite', 0)),
      'checkpoints_skipped': [{'step': int(s), 'reason': r} for s, r in checkpoints_skipped],
      **costs,
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


def format_si(value: float | None, unit: str = '') -> str:
  """1.9e7 -> '19 M' (with `unit`, '19 MFLOP'); None -> '—'."""
  if value is None:
    return '—'
  for factor, prefix in ((1e12, 'T'), (1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
    if abs(value) >= factor:
      return f'{value / factor:.3g} {prefix}{unit}'
  return f'{value:.3g} {unit}'.rstrip()


def summary_line(card: dict) -> str:
  """Two lines: what the run reached (model, steps, stop reason, final metrics) and what it cost."""
  metrics = ' '.join(f'{k}={v:.4g}' for k, v in sorted(card['final_metrics'].items()) if v is not None)
  head = (f"[{card['model']} on {card['dataset']}] steps={card['steps']} stop={card['stop_reason']} {metrics} "
          f"params={card['params']['count']:,} wall={card['wall_time_s']:.1f}s "
          f"sha256={card['final_state_sha256'][:12]}")
  if 'flops' not in card:  # A card from before cost accounting.
    return head
  t, mfu, mem, energy, flops = card['time'], card['mfu'], card['memory'], card['energy'], card['flops']
  mfu_text = f"{100 * mfu['value']:.2g}%" if mfu['value'] is not None else '—'
  parts = [
      f"cost: {format_si(flops['total_train'], 'FLOP')} train ({format_si(flops['train_step']['xla'])}/step)",
      f"{t['wall_s']:.1f} s total (train {t['train_s']:.1f}, compile {t['compile_s']:.1f}, eval {t['eval_s']:.1f}, "
      f"ckpt {t['checkpoint_s']:.1f}, data {t['data_wait_s']:.1f})",
      f"{format_si(card['throughput']['examples_per_s'])} ex/s",
      f"MFU {mfu_text} of {format_si(mfu['peak_flops_per_s'], 'FLOP/s')}",
      f"mem {format_si(mem['predicted_bytes'], 'B')} predicted/device, "
      f"{format_si(mem['measured_peak_bytes'], 'B')} peak",
      f"{energy['joules']:.3g} J ({energy['source']}) {card['co2_g']:.2g} g CO2",
      f"batch-1 p50 {card['inference'].get('batch1_p50_ms', float('nan')):.3g} ms" + (
          f", batch-{card['inference']['eval_batch_size']} {card['inference']['eval_batch_p50_ms']:.3g} ms"
          if 'eval_batch_size' in card['inference'] else ''),
      f"restarts {card['restarts']}",
  ]
  scale = card.get('scale_out')
  if scale and (math.prod(scale['mesh'].values()) > 1 or scale['processes'] > 1):
    mesh = ' x '.join(f'{axis} {size}' for axis, size in scale['mesh'].items() if size > 1)
    comm = format_si(scale['comm_bytes_per_step']['hlo']['estimated_wire_bytes'], 'B')
    parts.insert(5, f"mesh {mesh} ({scale['processes']} proc), comm {comm}/step/device")
  cost = ' | '.join(parts)
  return head + '\n' + cost
