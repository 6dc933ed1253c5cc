r"""Runs a hyperparameter sweep: every trial of a sweep file is an ordinary training run of one preset.

Usage:
  python -m experiments.sweep --config=configs/mnist1d.py:cnn --sweep=configs/sweeps/lr_grid.py --out=sweeps/cnn_lr
  python -m experiments.sweep --config=configs/mnist1d.py:cnn --sweep=configs/sweeps/random_search.py \
      --out=sweeps/cnn_rs --parallel=2 --max_seconds=1800 -- --config.steps=2000

Overrides after `--` apply to every trial. A trial is `python -m experiments.train --config=PRESET
--workdir=OUT/trials/<trial_id> [overrides] [swept values]`. Every trial's config is built and validated before
anything runs. Rerunning the command skips finished trials and resumes the others. Writes OUT/sweep.json,
OUT/table.md and OUT/summary.json (after each trial), and OUT/logs/; docs/sweeps.md has the details.
--vectorize trains the trials together as one jax.vmap program instead (research/vectorized.py): they may differ
only in seed, learning rate, weight decay, L1/L2 and dropout; each still gets its own OUT/trials/<id> and card.
Exit codes: 0 every trial ran, or a budget or SIGTERM/SIGINT stopped the sweep cleanly; 1 a trial failed (the
others still ran); 2 bad input (sweep file, config, flags, --out), with nothing written.
"""

import os
import shlex
import sys
import time

from absl import app, flags
from ml_collections import config_flags
import ml_collections

from experiments import cli
from research import sweep as sweep_lib
from research.config import ConfigError, validate

_CONFIG = flags.DEFINE_string('config', None, 'Preset of every trial: configs/FILE.py:PRESET.')
_SWEEP = flags.DEFINE_string('sweep', None, 'Sweep file defining get_sweep(), e.g. configs/sweeps/lr_grid.py.')
_OUT = flags.DEFINE_string('out', None, 'Sweep directory: trials/<trial_id>/ (the runs), sweep.json, table.md, '
                           'summary.json, logs/. Rerun the same command on it to resume.')
_PARALLEL = flags.DEFINE_integer('parallel', 1, 'Trials run at once.')
_MAX_SECONDS = flags.DEFINE_float('max_seconds', 0.0, "Budget: the trials' wall seconds (time.wall_s), summed; "
                                  '0 = none.')
_MAX_FLOPS = flags.DEFINE_float('max_flops', 0.0, "Budget: the trials' train FLOPs (flops.total_train), summed; "
                                '0 = none.')
_MAX_JOULES = flags.DEFINE_float('max_joules', 0.0, "Budget: the trials' energy (energy.joules), summed; 0 = none.")
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Check the sweep, print the trials and their overrides; run nothing, '
                             'write nothing.')
_VECTORIZE = flags.DEFINE_bool('vectorize', False, 'Train the trials together as one jax.vmap program on one device '
                               '(they may differ only in seed, optimizer.learning_rate, optimizer.weight_decay, '
                               'optimizer.l1/l2, model.dropout_rate); docs/sweeps.md, "Vectorized trials".')
_GROUP_SIZE = flags.DEFINE_integer('group_size', 0, 'With --vectorize: at most this many trials per program '
                                   '(0 = all of them in one).')


def resolve_config(preset: str, overrides: list[str]) -> ml_collections.ConfigDict:
  """The preset with `overrides` applied exactly as experiments.train parses its command line (absl config_flags,
  locked config); not validated.

  Raises:
    absl.flags.Error, OSError, ImportError, AttributeError, KeyError, ...: as config_flags does on a bad preset or
      override (cli.parse_flags turns the same errors into usage errors).
  """
  argv = ['experiments.train', f'--config={preset}', *overrides]
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file('config', None, 'Config preset.', flag_values=values, lock_config=True,
                                           sys_argv=argv)
  values(argv)
  config = holder.value
  config.keys()  # A preset that failed to load is a proxy that raises on first use.
  return config


def _one_line(error: Exception) -> str:
  """config_flags embeds the preset's traceback in its message; its first and last lines say what happened."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return f'{lines[0]} {lines[-1]}' if 'Traceback' in str(error) else ' '.join(lines)


def _load_preset(preset: str) -> ml_collections.ConfigDict:
  try:
    return resolve_config(preset, [])
  except Exception as e:  # pylint: disable=broad-except  (any failure to load a user's preset is bad input)
    cli.usage_error(f'could not load the config --config={preset}: {_one_line(e)}')


def _extra_overrides(args: list[str]) -> list[str]:
  for arg in args:
    if not sweep_lib.OVERRIDE.match(arg):
      cli.usage_error(f'unexpected argument {arg!r}: only --config.KEY=VALUE overrides may follow --')
  return args


def _trial_configs(trials: list[sweep_lib.Trial], preset: str, overrides: list[str]) -> dict:
  """Trial id -> its resolved config, validated as experiments.train validates it; usage error on the first bad one."""
  from configs import base  # pylint: disable=g-import-not-at-top

  configs = {}
  for trial in trials:
    try:
      config = resolve_config(preset, [*overrides, *trial.overrides])
      validate(config, base.get_base_config())
    except ConfigError as e:
      cli.usage_error(f'trial {trial.id}: {e}')
    except Exception as e:  # pylint: disable=broad-except  (a value config_flags cannot parse for its key)
      cli.usage_error(f'trial {trial.id}: bad config override: {_one_line(e)}')
    configs[trial.id] = config
  return configs


def _prepare_generated_data(configs) -> None:
  """Generates MNIST-1D (or prepares the Shakespeare corpus) once before parallel trials start, so that they do not
  prepare it at the same time."""
  from research import data  # pylint: disable=g-import-not-at-top
  from research.data import datasets  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  done = set()
  for config in configs:
    spec = data.DATASETS[config.dataset.name]
    data_dir = datasets.resolve_data_dir(config.dataset.data_dir)
    key = (config.dataset.name, config.dataset.variant, data_dir)
    if spec.builder_cls is None or key in done:
      continue
    done.add(key)
    builder = datasets.local_builder(spec, variant=config.dataset.variant, data_dir=data_dir)
    if not builder.is_prepared():
      print(f'Generating {config.dataset.name} ({config.dataset.variant}) in {data_dir} once for the trials',
            flush=True)
      tfds.disable_progress_bar()  # This process's bars only; the trials' output goes to their logs.
      builder.download_and_prepare(file_format='array_record')


def _finish(runner: sweep_lib.Runner, outcome: sweep_lib.Outcome, out: str) -> None:
  """Prints the table and how the sweep ended; exits 1 if a trial of this invocation failed (not after a signal)."""
  with open(f'{out}/table.md') as f:
    print('\n' + f.read())
  total = len(runner.trials)
  finished = sum(s.status == 'finished' for s in outcome.states.values())
  failed = sum(s.status == 'failed' for s in outcome.states.values())
  not_run = sum(s.status == 'not run' for s in outcome.states.values())
  if outcome.stop is not None and outcome.stop.startswith('SIG'):
    print(f'{runner.stop_text()} {total - finished} of {total} trials left: rerun the same command to continue.')
    return
  if outcome.stop is not None:
    print(f'{runner.stop_text()} {finished} of {total} trials finished, {not_run} not run: a rerun with a larger '
          'budget continues.')
  elif outcome.started == 0:
    print(f'Nothing to run: {finished} of {total} trials had finished ({failed} failed).')
  else:
    print(f'Sweep done: {finished} of {total} trials finished, {failed} failed.')
  print(f'Wrote {out}/table.md and {out}/summary.json; `python -m experiments.report {out} --out=DIR` compares the '
        'runs.', flush=True)
  if outcome.failed:
    sys.exit(1)


def _has_checkpoints(workdir: str) -> bool:
  directory = os.path.join(workdir, 'checkpoints')
  return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def _vectorized_trials(trials: list[sweep_lib.Trial], states: dict, configs: dict, out: str) -> list:
  """The trials --vectorize trains in groups: those not finished and without a checkpoint to resume from (those
  resume as ordinary trials). Usage error if they cannot be one program (research.vectorized.check_group)."""
  from research import vectorized  # pylint: disable=g-import-not-at-top  (imports JAX)

  todo = [t for t in trials if states[t.id].status != 'finished']
  chosen = [t for t in todo if not _has_checkpoints(os.path.join(out, 'trials', t.id))]
  if chosen:
    try:
      vectorized.check_group([configs[t.id] for t in chosen], [t.id for t in chosen])
    except vectorized.VectorizeError as e:
      cli.usage_error(str(e))
  return chosen


def _groups(chosen: list) -> list[list]:
  size = _GROUP_SIZE.value or max(len(chosen), 1)
  return [chosen[i:i + size] for i in range(0, len(chosen), size)]


def _run_groups(runner: sweep_lib.Runner, groups: list[list], configs: dict) -> tuple[int, int]:
  """Trains each group in this process, recording its trials' cards; returns (trials run, trials failed).

  A signal stops the group under way (nothing written for it: rerun to train it from the start) and sets
  runner.stop to the signal's name.
  """
  from research import vectorized  # pylint: disable=g-import-not-at-top

  numbers = {t.id: n for n, t in enumerate(runner.trials, 1)}
  write = lambda: sweep_lib.write_summary(runner.out, runner.trials, runner.states, header=runner.header,
                                          stop=runner.stop_text())
  started = failed = 0
  for g, group in enumerate(groups, 1):
    print(f'Vectorized group {g}/{len(groups)}: {len(group)} trials in one program: '
          f'{", ".join(t.id for t in group)}', flush=True)
    for t in group:
      runner.states[t.id] = sweep_lib.TrialState('running')
    write()
    t0 = time.time()
    try:
      cards = vectorized.train_group([configs[t.id] for t in group], [runner.workdir(t) for t in group],
                                     [t.id for t in group])
    except vectorized.GroupStopped as e:
      runner.states.update(sweep_lib.initial_states(runner.out, group))
      runner.stop = e.signal
      print(f'{e}: the vectorized group stopped without checkpoints (its trials start over on a rerun)', flush=True)
      write()
      return started, failed
    except (vectorized.VectorizeError, *cli.input_errors()) as e:
      cli.usage_error(str(e))
    started += len(group)
    for t, card in zip(group, cards):
      status = sweep_lib.status_of_card(card)
      runner.states[t.id] = sweep_lib.TrialState(status, card, 0, card['message'] if status == 'failed' else None)
      failed += status == 'failed'
      print(f"[{numbers[t.id]}/{len(runner.trials)}] {t.id} {status}: test_accuracy="
            f"{card['final_metrics']['test_accuracy']:.3f} (vectorized group of {len(group)}: "
            f'{time.time() - t0:.1f} s)', flush=True)
    write()
  return started, failed


def _check_flags() -> sweep_lib.Budget:
  """Usage error on a missing --config/--sweep/--out or a bad --parallel or budget; returns the budget."""
  for name, holder, example in (('config', _CONFIG, 'configs/mnist1d.py:cnn'),
                                ('sweep', _SWEEP, 'configs/sweeps/lr_grid.py'), ('out', _OUT, 'sweeps/cnn_lr')):
    if not holder.value:
      cli.usage_error(f'--{name} is required, e.g. --{name}={example}')
  if _PARALLEL.value < 1:
    cli.usage_error(f'--parallel={_PARALLEL.value}: expected a positive number of trials at once')
  budget = sweep_lib.Budget(_MAX_SECONDS.value, _MAX_FLOPS.value, _MAX_JOULES.value)
  for key, value in budget._asdict().items():
    if value < 0:
      cli.usage_error(f'--{key}={value:g}: expected a value >= 0 (0 = no limit)')
    if value and _VECTORIZE.value:
      cli.usage_error(f'--{key}={value:g} cannot be combined with --vectorize: a vectorized group trains all its '
                      'trials to config.steps (a budget would stop one partway); drop one of the two flags')
  if _GROUP_SIZE.value < 0 or (_GROUP_SIZE.value and not _VECTORIZE.value):
    cli.usage_error(f'--group_size={_GROUP_SIZE.value}: expected a positive number of trials per program (0 = all), '
                    'with --vectorize')
  return budget


def main(argv: list[str]) -> None:
  overrides = _extra_overrides(argv[1:])
  budget, out = _check_flags(), _OUT.value
  try:
    sweep = sweep_lib.load_sweep(_SWEEP.value)
    sweep_lib.check_keys(sweep, _load_preset(_CONFIG.value), preset_name=_CONFIG.value, overrides=overrides)
    trials = sweep_lib.expand(sweep)
    command = 'python -m experiments.sweep ' + shlex.join(sys.argv[1:])
    record = {'preset': _CONFIG.value, 'sweep_file': sweep.path, 'sweep_source': sweep.source,
              'overrides': overrides, 'keys': sweep.keys, 'command': command,
              'trials': [{'id': t.id, 'values': t.values, 'overrides': list(t.overrides)} for t in trials]}
    sweep_lib.check_out(out, record)
  except sweep_lib.SweepError as e:
    cli.usage_error(str(e))
  # Finished trials are skipped, so only the others are validated (a rerun of a finished sweep does not import JAX).
  states = sweep_lib.initial_states(out, trials)
  configs = _trial_configs([t for t in trials if states[t.id].status != 'finished'], _CONFIG.value, overrides)
  groups = _groups(_vectorized_trials(trials, states, configs, out)) if _VECTORIZE.value else []
  vectorized_ids = {t.id for group in groups for t in group}
  runner = sweep_lib.Runner(
      trials, out=out, header={k: record[k] for k in ('command', 'preset', 'sweep_file', 'keys')},
      parallel=_PARALLEL.value, budget=budget,
      command=lambda t: [sys.executable, '-m', 'experiments.train', f'--config={_CONFIG.value}',
                         f'--workdir={runner.workdir(t)}', *overrides, *t.overrides],
      run_budgets={i: sweep_lib.Budget(c.budget.max_seconds, c.budget.max_flops, c.budget.max_joules)
                   for i, c in configs.items()},
      log=lambda line: print(line, flush=True))
  if _DRY_RUN.value:
    print(sweep_lib.format_dry_run(trials, runner.states, overrides))
    for g, group in enumerate(groups, 1):
      print(f'vectorized group {g}/{len(groups)}: {", ".join(t.id for t in group)}')
    return
  os.makedirs(out, exist_ok=True)
  sweep_lib.write_json_atomic(f'{out}/sweep.json', record)
  if _PARALLEL.value > 1 and configs:
    _prepare_generated_data(configs.values())
  finished = sum(s.status == 'finished' for s in runner.states.values())
  print(f'Sweep {sweep.path} on {_CONFIG.value}: {len(trials)} trials, {finished} already finished -> {out}',
        flush=True)
  started, failed = _run_groups(runner, groups, configs) if groups else (0, 0)
  if runner.stop is not None:
    _finish(runner, sweep_lib.Outcome(runner.stop, started, failed, runner.states, runner.spent()), out)
    return
  others = [t.id for t in trials if runner.states[t.id].status != 'finished' and t.id not in vectorized_ids]
  if groups and others:
    print(f'{len(others)} trial(s) run as ordinary trials (they resume from their checkpoints): {", ".join(others)}',
          flush=True)
  outcome = runner.run(skip=vectorized_ids)
  _finish(runner, outcome._replace(started=outcome.started + started, failed=outcome.failed + failed), out)


def _parse_flags(argv: list[str]) -> list[str]:
  """cli.parse_flags, with a hint for config overrides put before `--` (they belong to the trials, after it)."""
  head = argv[:argv.index('--')] if '--' in argv else argv
  misplaced = [a for a in head if a.startswith('--config.')]
  if misplaced:
    cli.usage_error(f'{misplaced[0]}: config overrides for every trial go after --, e.g. python -m '
                    f'experiments.sweep --config=... --sweep=... --out=... -- {misplaced[0]}')
  return cli.parse_flags(argv)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
