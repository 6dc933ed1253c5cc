r"""Predicts classes for the inputs in a .npy file with a trained run, and reports the model's latency.

Usage:
  python -m experiments.predict --workdir=runs/cnn --inputs=x.npy
  python -m experiments.predict --workdir=runs/cnn --inputs=x.npy --out=pred.npy --batch_size=500

--inputs holds [N, *input_shape] raw inputs as the dataset stores them (MNIST-1D: [N, 40] floats; images: 0-255
pixels), or one example. Prints the first rows (index, class, probability) and the count per class; with --out
also writes all labels (int32 [N]) to the .npy and a summary next to it (.json); then the batch-1 latency
(p50/p99) and the throughput at --batch_size, measured on one device after a warm-up call.
Exit codes: 0 success, 2 bad usage, bad inputs or no trained run in --workdir, 1 anything else.
"""

import dataclasses
import json
import os

from absl import app, flags
import numpy as np

from experiments import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory written by experiments.train.')
_INPUTS = flags.DEFINE_string('inputs', None, '.npy file of inputs [N, *input_shape] (or one example).')
_OUT = flags.DEFINE_string('out', None, 'Write the labels to this .npy (and a summary to the same name .json).')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', None, 'Examples per call; default: the run\'s eval_batch_size.',
                                   lower_bound=1)
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step to restore; default: the latest.', lower_bound=0)

SHOWN_ROWS = 20
_NPY_MAGIC = b'\x93NUMPY'


def _load_inputs(path: str) -> np.ndarray:
  """Reads a .npy array (never unpickles); usage error if it cannot."""
  if not os.path.isfile(path):
    cli.usage_error(f'--inputs={path}: no such file')
  with open(path, 'rb') as f:
    if f.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
      cli.usage_error(f'--inputs={path} is not a .npy file (written by numpy.save)')
  try:
    return np.load(path, allow_pickle=False)
  except (ValueError, OSError) as e:
    cli.usage_error(f'--inputs={path} is not a readable .npy array of numbers: {" ".join(str(e).split())}')


def _class_counts(labels: np.ndarray, num_classes: int) -> dict[int, int]:
  return {c: int(n) for c, n in enumerate(np.bincount(labels, minlength=num_classes))}


def _print_rows(preds, num_classes: int, *, written: bool) -> None:
  n = len(preds.labels)
  print(f'{"index":>6}  {"class":>5}  {"probability":>11}')
  for i in range(min(n, SHOWN_ROWS)):
    print(f'{i:>6}  {preds.labels[i]:>5}  {preds.probabilities[i, preds.labels[i]]:>11.4f}')
  if n > SHOWN_ROWS:
    print(f'   ... {n - SHOWN_ROWS} more' + ('' if written else ' (--out=FILE.npy writes all)'))
  counts = ' '.join(f'{c}:{k}' for c, k in _class_counts(preds.labels, num_classes).items() if k)
  print(f'{n} predictions; count per predicted class: {counts}')


def _write(out: str, preds, run) -> None:
  np.save(out, preds.labels)
  summary_path = out[:-len('.npy')] + '.json'
  summary = {'workdir': run.workdir, 'step': run.step, 'model': run.config.model.name,
             'dataset': run.config.dataset.name, 'num_predictions': len(preds.labels), 'labels_file': out,
             'class_counts': _class_counts(preds.labels, run.num_classes),
             'timing': dataclasses.asdict(preds.timing)}
  with open(summary_path, 'w') as f:
    json.dump(summary, f, indent=2, sort_keys=True)
    f.write('\n')
  print(f'wrote {len(preds.labels)} labels (int32) to {out} and a summary to {summary_path}')


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.usage_error(f'unexpected arguments: {argv[1:]}')
  if not _WORKDIR.value:
    cli.usage_error('--workdir is required, e.g. --workdir=runs/cnn')
  if not _INPUTS.value:
    cli.usage_error('--inputs is required: a .npy file of inputs [N, *input_shape]')
  if _OUT.value and not _OUT.value.endswith('.npy'):
    cli.usage_error(f'--out={_OUT.value} must end in .npy')
  out_dir = os.path.dirname(os.path.abspath(_OUT.value or '.'))
  if not os.path.isdir(out_dir):
    cli.usage_error(f'--out={_OUT.value}: the directory {out_dir} does not exist')
  inputs = _load_inputs(_INPUTS.value)
  from research import inference  # pylint: disable=g-import-not-at-top  (heavy; after validation)
  try:
    run = inference.load_run(_WORKDIR.value, step=_STEP.value)
  except ValueError as e:  # RunNotFoundError, or an unreadable config.json.
    cli.usage_error(str(e))
  from research import models  # pylint: disable=g-import-not-at-top
  if models.is_language_model(run.config.model.name):
    cli.usage_error(f'--workdir={_WORKDIR.value} is a language model ({run.config.model.name} on '
                    f'{run.config.dataset.name}): predict classifies; generate text with python -m '
                    f'experiments.generate --workdir={_WORKDIR.value} --prompt="..."')
  try:
    inference.prepare_inputs(run, inputs)  # Checked before compiling anything.
  except ValueError as e:
    cli.usage_error(f'--inputs={_INPUTS.value}: {e}')
  batch_size = _BATCH_SIZE.value or run.config.eval_batch_size
  preds = inference.predict(run, inputs, batch_size=batch_size)
  print(f'{run.config.model.name} on {run.config.dataset.name}, step {run.step} ({run.workdir})')
  _print_rows(preds, run.num_classes, written=bool(_OUT.value))
  if _OUT.value:
    _write(_OUT.value, preds, run)
  t = preds.timing
  examples = f'{t.timed_examples} example' + ('s' if t.timed_examples != 1 else '')
  print(f'latency at batch 1: p50={t.p50_ms:.3f} ms p99={t.p99_ms:.3f} ms ({examples}); '
        f'throughput at batch {t.batch_size}: {t.throughput_per_s:,.0f} examples/s ({t.device})', flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
