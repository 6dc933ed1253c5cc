r"""Evaluates a trained run's checkpoint on a split and prints its loss and accuracy.

Usage:
  python -m experiments.evaluate --workdir=runs/cnn
  python -m experiments.evaluate --workdir=runs/cnn --split=train --step=3000 --json

Prints one line (`[cnn on mnist1d] step=6000 split=test loss=0.2104 accuracy=0.9420 examples=1000`); --json adds
a second line, the same metrics at full precision as a JSON object. On the devices it trained on, the test numbers
equal the run card's final test metrics (elsewhere the loss may differ in its last bits: sums in another order).
Exit codes: 0 success, 2 bad usage or no trained run in --workdir, 1 anything else.
"""

import json

from absl import app, flags

from experiments import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory written by experiments.train.')
_SPLIT = flags.DEFINE_enum('split', 'test', ['test', 'train'], 'Dataset split to evaluate on.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step to restore; default: the latest.', lower_bound=0)
_JSON = flags.DEFINE_bool('json', False, 'Also print the metrics as one JSON object (the last line).')


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.usage_error(f'unexpected arguments: {argv[1:]}')
  if not _WORKDIR.value:
    cli.usage_error('--workdir is required, e.g. --workdir=runs/cnn')
  from research import inference  # pylint: disable=g-import-not-at-top  (heavy; after validation)
  try:
    run = inference.load_run(_WORKDIR.value, step=_STEP.value)
  except ValueError as e:  # RunNotFoundError, or an unreadable config.json.
    cli.usage_error(str(e))
  metrics = inference.evaluate(run, _SPLIT.value)
  result = {'workdir': run.workdir, 'model': run.config.model.name, 'dataset': run.config.dataset.name,
            'step': run.step, 'split': _SPLIT.value, **metrics}
  print(f"[{result['model']} on {result['dataset']}] step={run.step} split={_SPLIT.value} "
        f"loss={metrics['loss']:.4f} accuracy={metrics['accuracy']:.4f} examples={metrics['num_examples']}",
        flush=True)
  if _JSON.value:
    print(json.dumps(result, sort_keys=True), flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
