r"""JAX vs PyTorch, side by side on this machine: train-step time, MFU and batch-1 latency of each model family.

Usage:
  make bench                                          # installs CPU PyTorch, writes results/benchmarks.{md,json}
  python -m experiments.benchmark --out=/tmp/bench    # needs torch (the [reference] extra)
  python -m experiments.benchmark --models=mnist1d_cnn,lm_tiny --repeats=9
  python -m experiments.benchmark --notorch --models=mnist1d_mlp   # JAX figures only

Models (--models, comma-separated; default all): mnist1d_cnn, mnist1d_mlp, mnist1d_gru, mnist1d_lstm (configs/
mnist1d.py), mnist_cnn (configs/mnist.py:cnn, 28x28 inputs), lm_tiny and lm_small (configs/lm.py). Each is the
preset's model, batch size and optimizer; research/benchmark.py says what is timed and how. Writes OUT/benchmarks.md
(machine, command, table, the targets met or not, and a per-op profile of each JAX step short of its throughput
target) and OUT/benchmarks.json. Exit codes: 0 done, 2 bad input, 1
otherwise.
"""

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from experiments import cli
from experiments.benchmark_cases import CASES, make_case, parse_models

_MODELS = flags.DEFINE_string('models', 'all', 'Comma-separated benchmark models, or all.')
_OUT = flags.DEFINE_string('out', None, 'Directory for benchmarks.md and benchmarks.json (none: print only).')
_STEPS = flags.DEFINE_integer('steps', 0, 'Train steps per timed block; 0: enough for about --block_s seconds.',
                              lower_bound=0)
_BLOCK_S = flags.DEFINE_float('block_s', 0.5, 'Target seconds per timed block when --steps=0.', lower_bound=0.01)
_REPEATS = flags.DEFINE_integer('repeats', 7, 'Timed blocks per framework (interleaved).', lower_bound=1)
_LATENCY_CALLS = flags.DEFINE_integer('latency_calls', 20, 'Batch-1 calls per round.', lower_bound=1)
_DATA_WAIT_S = flags.DEFINE_float('data_wait_s', 10.0, 'Seconds of real training (the loop, the input pipeline) per '
                                   'model for the data-wait share; 0 skips it.', lower_bound=0)
_COMPUTE_DTYPE = flags.DEFINE_enum('compute_dtype', 'float32', ['float32', 'bfloat16'],
                                   'Forward/backward dtype of both frameworks (bfloat16: JAX compute_dtype, PyTorch '
                                   'autocast; params and optimizer state stay float32).')
_CHILD = flags.DEFINE_string('child', None, 'Internal: time this one model in this process and print its row.')
_PEAK = flags.DEFINE_float('peak', 0.0, 'Internal: the peak FLOP/s a child measures MFU against.')
_TORCH = flags.DEFINE_bool('torch', True, 'Time the PyTorch twins (needs torch); --notorch: JAX only.')

_ROW_PREFIX = 'BENCHMARK_ROW '


def _run_one(name: str, peak: float) -> dict:
  """Times model `name` in this process (a child of the benchmark): its row of benchmarks.json."""
  from research import benchmark  # pylint: disable=g-import-not-at-top

  case = make_case(name)
  case.config.compute_dtype = _COMPUTE_DTYPE.value
  row = benchmark.run_case(case, steps=_STEPS.value, block_s=_BLOCK_S.value, repeats=_REPEATS.value,
                           latency_calls=_LATENCY_CALLS.value, peak=peak, with_torch=_TORCH.value,
                           progress=lambda line: print(line, flush=True))
  if _DATA_WAIT_S.value:
    steps = max(5, min(300, round(_DATA_WAIT_S.value / (row['jax_step_ms'] / 1e3))))
    print(f'{name}: {steps} steps of real training (the loop and its input pipeline) for the data-wait share',
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
      row['data_wait'] = benchmark.data_wait(case, steps=steps, workdir=os.path.join(tmp, name))
  return row


def _run_child(name: str, peak: float) -> dict:
  """Runs model `name` in a fresh process and returns its row.

  Why a process per model: each model then starts from the same clean state (allocator heap, XLA's and PyTorch's
  thread pools and caches); measured here, a second large model timed in the same process as another ran up to 2x
  slower, for reasons that belong to the host's allocator, not to either framework.
  """
  flag_names = ('steps', 'block_s', 'repeats', 'latency_calls', 'data_wait_s', 'torch', 'compute_dtype')
  args = [f'--{n}={flags.FLAGS[n].value}' for n in flag_names] + [f'--child={name}', f'--peak={peak!r}']
  proc = subprocess.Popen([sys.executable, '-m', 'experiments.benchmark', *args], stdout=subprocess.PIPE, text=True)
  row = None
  for line in proc.stdout:
    if line.startswith(_ROW_PREFIX):
      row = json.loads(line[len(_ROW_PREFIX):])
    else:
      print(line, end='', flush=True)
  if proc.wait() or row is None:
    print(f'error: benchmarking {name} failed (exit code {proc.returncode}); its output is above', file=sys.stderr)
    sys.exit(1)
  return row


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.usage_error(f'unexpected arguments: {argv[1:]}')
  try:
    names = parse_models(_MODELS.value)
  except ValueError as e:
    cli.usage_error(str(e))
  if _TORCH.value:
    try:
      import torch  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      cli.usage_error("--torch needs PyTorch, which is not installed: `make bench` installs it (CPU build), or "
                      "pip install -e '.[reference]'; --notorch times JAX alone")
  from research import benchmark, host  # pylint: disable=g-import-not-at-top  (heavy; after the flags)

  host.keep_freed_memory()  # As experiments.train does: no per-step page faults (research/host.py).
  if _CHILD.value:
    print(_ROW_PREFIX + json.dumps(_run_one(_CHILD.value, _PEAK.value)), flush=True)
    return
  t0 = time.time()
  peak, peak_source = benchmark.machine_peak(with_torch=_TORCH.value, dtype=_COMPUTE_DTYPE.value)
  print(f'Peak: {peak / 1e9:.0f} GFLOP/s ({peak_source})', flush=True)
  rows = {name: _run_child(name, peak) for name in names}
  command = 'python -m experiments.benchmark ' + ' '.join(shlex.quote(a) for a in sys.argv[1:])
  report = {'machine': benchmark.machine(), 'compute_dtype': _COMPUTE_DTYPE.value, 'peak_flops_per_s': peak,
            'peak_source': peak_source,
            'command': command, 'models': rows}
  text = benchmark.markdown(report)
  print('\n' + text)
  if _OUT.value:
    os.makedirs(_OUT.value, exist_ok=True)
    for file, content in (('benchmarks.md', text), ('benchmarks.json', json.dumps(report, indent=1) + '\n')):
      tmp = os.path.join(_OUT.value, f'.{file}.tmp')
      with open(tmp, 'w') as f:
        f.write(content)
      os.replace(tmp, os.path.join(_OUT.value, file))  # Never a half-written table.
    print(f'Wrote {_OUT.value}/benchmarks.md and benchmarks.json in {time.time() - t0:.0f} s.', flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
