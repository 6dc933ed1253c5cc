r"""Trains one model from a config preset; resumes from the workdir's latest checkpoint.

Usage:
  python -m experiments.train --config=configs/mnist1d.py:cnn --workdir=runs/cnn
  python -m experiments.train --config=configs/mnist1d.py:gru --workdir=runs/gru \
      --config.optimizer.learning_rate=3e-3 --config.steps=2000

Writes to --workdir: config.json, metrics.jsonl, TensorBoard events, checkpoints/, run_card.json.
Exit codes: 0 success (also a clean stop on SIGTERM/SIGINT), 2 bad config or usage, 1 anything else.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from experiments import cli
from research import run_card
from research.config import ConfigError

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config preset: configs/FILE.py:PRESET.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (created; an existing one is resumed).')


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.usage_error(f'unexpected arguments: {argv[1:]}')
  config = cli.resolved_config(_CONFIG)
  if not _WORKDIR.value:
    cli.usage_error('--workdir is required')
  from research import data  # pylint: disable=g-import-not-at-top  (heavy; after validation)
  from research.training import loop  # pylint: disable=g-import-not-at-top
  try:
    card = loop.train_and_evaluate(config, _WORKDIR.value)
  except ConfigError as e:  # Device-dependent checks (mesh vs devices) happen once JAX is up.
    cli.usage_error(str(e))
  except data.DataUnavailableError as e:  # Before the workdir is created: nothing half-written.
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  print(run_card.summary_line(card), flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
