r"""Trains one model from a config preset; resumes from the workdir's latest checkpoint.

Usage:
  python -m experiments.train --config=configs/mnist1d.py:cnn --workdir=runs/cnn
  python -m experiments.train --config=configs/mnist1d.py:gru --workdir=runs/gru \
      --config.optimizer.learning_rate=3e-3 --config.steps=2000

Writes to --workdir: config.json, metrics.jsonl, TensorBoard events, checkpoints/, run_card.json.
An existing --workdir is resumed if its saved config matches (or differs only in keys safe to change, such as
steps and logging intervals); --allow_config_change resumes it anyway. --debug shows tracebacks of input errors.
Scaling out changes flags only (docs/scaling.md): --config.mesh.data/fsdp/tensor shard the same run over devices,
--config.distributed.* run it as one of several processes, and experiments.launch runs it on Cloud TPU.
Exit codes: 0 success (also a clean stop on SIGTERM/SIGINT), 2 bad config, usage, workdir or data files,
1 anything else (including a run stopped by non-finite losses: the message says at which step).
"""

import sys

from absl import app, flags
import jax
from ml_collections import config_flags

from experiments import cli
from research import run_card

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config preset: configs/FILE.py:PRESET.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (created; an existing one is resumed).')
_DRY_RUN = flags.DEFINE_bool(
    'dry_run', False, 'Compile and time a few steps, print params, FLOPs, memory and the estimated time, energy and '
    'CO2 of the configured steps; train nothing, write nothing.')
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    'allow_config_change', False, 'Resume a workdir even if its saved config differs in keys that change the run.')


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.usage_error(f'unexpected arguments: {argv[1:]}')
  config = cli.resolved_config(_CONFIG, distributed=True)
  if not _WORKDIR.value:
    cli.usage_error('--workdir is required')
  from research import host  # pylint: disable=g-import-not-at-top
  from research.training import loop  # pylint: disable=g-import-not-at-top  (heavy; after validation)
  host.keep_freed_memory()  # No page faults per step on XLA:CPU (research/host.py).
  if _DRY_RUN.value:
    try:
      print(_dry_run_report(config, loop.dry_run(config)), flush=True)
    except cli.input_errors() as e:
      cli.usage_error(str(e))
    return
  try:
    card = loop.train_and_evaluate(config, _WORKDIR.value, allow_config_change=_ALLOW_CONFIG_CHANGE.value)
  except cli.input_errors() as e:  # Raised before the workdir is created or changed: nothing half-written.
    cli.usage_error(str(e))
  if jax.process_index() == 0:  # One summary for a multi-process run.
    print(run_card.summary_line(card), flush=True)
  if card['stop_reason'] == 'nonfinite':
    print(f"error: {card['message']}", file=sys.stderr)
    sys.exit(1)


def _dry_run_report(config, result: dict) -> str:
  from research.run_card import format_si  # pylint: disable=g-import-not-at-top

  flops, estimate, params = result['flops'], result['estimate'], result['params']
  dtypes = ', '.join(f'{d}: {v["count"]:,}' for d, v in sorted(params['by_dtype'].items()))
  return '\n'.join([
      f'dry run: {config.model.name} on {config.dataset.name}, {config.steps} steps of batch {config.batch_size} '
      '(nothing trained, nothing written)',
      f'  params      {params["count"]:,} ({format_si(params["bytes"], "B")}; {dtypes})',
      f'  FLOPs/step  {format_si(flops["train_step_flops"])} (XLA), '
      f'{format_si(flops["train_step_flops_analytic"])} (analytic); '
      f'{format_si(estimate["train_flops"], "FLOP")} for {config.steps} steps',
      f'  memory      {format_si(result["predicted_bytes"], "B")} per device for a train step (XLA memory analysis)',
      f'  mesh        {" x ".join(f"{a}={n}" for a, n in result["mesh"].items())}; collectives '
      f'{format_si(flops["comm"]["estimated_wire_bytes"], "B")} per device per step (ring-algorithm wire bytes)',
      f'  compile     {result["compile_s"]:.1f} s (train and eval steps)',
      f'  step time   {1e3 * result["step_s"]:.3g} ms (mean of {result["timed_steps"]} steps after 2 warm-up)',
      f'  estimate    {estimate["seconds"]:.3g} s of train steps (eval, checkpoints and startup not included), '
      f'{estimate["joules"]:.3g} J ({result["energy"]["source"]}), {estimate["co2_g"]:.2g} g CO2 at '
      f'{config.accounting.grid_co2_g_per_kwh:g} g/kWh',
  ])


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
