r"""Compresses a trained run by several methods and writes a table of what each really saves, measured here.

Usage:
  python -m experiments.compress --workdir=runs/cnn --out=results/compression/mnist1d_cnn
  python -m experiments.compress --workdir=runs/cnn --methods=int8,prune90,structured50 --out=/tmp/comp \
      --finetune_steps=500

Methods (--methods, comma-separated; default finetune,int8,qat,prune50,prune90,structured50,distill): finetune
(the control: fine-tuning alone), int8, w8a8, qat, pruneNN, pruneNN_int8, pruneNN_kd (pruning with the run as teacher), oneshotNN, structuredNN,
distill (research/compression/compress.py says what each does). Writes
OUT/table.md (method · metric with Δ vs baseline · parameters · bytes on disk · batch-1 latency · examples/s ·
FLOPs/example · energy per 1,000 predictions; --xz: every model file, the baseline's too, LZMA-compressed),
OUT/summary.json and OUT/compression.png; each compressed model is a directory OUT/METHOD that
`python -m experiments.evaluate --workdir=OUT/METHOD` reads. Fine-tuning runs are ordinary
workdirs under OUT/METHOD/train: rerunning skips finished ones. Exit codes: 0 done, 2 bad input, 1 otherwise.
"""

import shlex
import sys
import time

from absl import app, flags

from experiments import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'The trained run to compress (written by experiments.train).')
_OUT = flags.DEFINE_string('out', None, 'Output directory for the table, plot, summary and compressed models.')
_METHODS = flags.DEFINE_string('methods', 'finetune,int8,qat,prune50,prune90,structured50,distill',
                               'Comma-separated methods: finetune, int8, w8a8, qat, pruneNN, pruneNN_int8, pruneNN_kd, '
                               'pruneNN_kd_int8, oneshotNN, '
                               'structuredNN, distill.')
_FINETUNE_STEPS = flags.DEFINE_integer('finetune_steps', 3000, 'Steps of the qat / prune / structured fine-tunes.',
                                       lower_bound=1)
_LR_SCALE = flags.DEFINE_float('lr_scale', 1.0, 'Fine-tune learning rate (constant) as a fraction of the run\'s '
                               'peak rate.',
                               lower_bound=0.0)
_SEEDS = flags.DEFINE_integer('seeds', 3, 'Seeds of distill and its from-scratch twin.', lower_bound=1)
_DISTILL_STEPS = flags.DEFINE_integer('distill_steps', 0, 'Steps of each distill / scratch run; 0: the run\'s own.',
                                      lower_bound=0)
_XZ = flags.DEFINE_bool('xz', False, 'Store every model, the float32 baseline included, LZMA-compressed '
                        '(OUT/METHOD/model.safetensors.xz): entropy coding on top of each method.')


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.usage_error(f'unexpected arguments: {argv[1:]}')
  if not _WORKDIR.value:
    cli.usage_error('--workdir is required: a trained run, e.g. --workdir=runs/cnn')
  if not _OUT.value:
    cli.usage_error('--out is required, e.g. --out=results/compression/mnist1d_cnn')
  if _LR_SCALE.value <= 0:
    cli.usage_error(f'--lr_scale ({_LR_SCALE.value}) must be > 0')
  from research.compression import compress  # pylint: disable=g-import-not-at-top  (heavy; after the flags)
  from research import host, inference  # pylint: disable=g-import-not-at-top

  try:
    methods = compress.parse_methods(_METHODS.value)
  except ValueError as e:
    cli.usage_error(str(e))
  host.keep_freed_memory()
  options = compress.Options(finetune_steps=_FINETUNE_STEPS.value, lr_scale=_LR_SCALE.value, seeds=_SEEDS.value,
                             distill_steps=_DISTILL_STEPS.value, xz=_XZ.value)
  t0 = time.time()
  try:
    comp = compress.Compressor(_WORKDIR.value, out=_OUT.value, options=options)
  except (inference.RunNotFoundError, *cli.input_errors()) as e:
    cli.usage_error(str(e))
  try:
    compress.check_methods(methods, comp.config.model.name)
  except ValueError as e:
    cli.usage_error(str(e))
  print(f'Compressing {_WORKDIR.value} ({comp.config.model.name} on {comp.config.dataset.name}) -> {_OUT.value}: '
        f'{", ".join(methods)}', flush=True)
  try:
    rows = comp.run(methods)
  except cli.input_errors() as e:
    cli.usage_error(str(e))
  except KeyboardInterrupt as e:
    print(f'\n{e or "interrupted"}', flush=True)
    sys.exit(0)
  command = 'python -m experiments.compress ' + ' '.join(shlex.quote(a) for a in sys.argv[1:])
  text = compress.write_outputs(_OUT.value, rows, source=_WORKDIR.value, lm=comp.lm, command=command)
  print('\n' + text)
  print(f'Wrote {_OUT.value}/table.md, summary.json and compression.png in {time.time() - t0:.0f} s.', flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
