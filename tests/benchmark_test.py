"""experiments.benchmark and research/benchmark.py: the JAX side end to end (CI has no torch), the report's verdicts,
bad input, the allocator setting; with torch installed, each PyTorch twin's parameter count and one timed case."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from research import benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_TORCH = importlib.util.find_spec('torch') is not None


def _run(*args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  return subprocess.run([sys.executable, '-m', 'experiments.benchmark', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def _row(**overrides):
  row = {'params': 100, 'batch_size': 10, 'train_flops': 1e6, 'steps_per_block': 5, 'repeats': 3,
         'jax_step_ms': 1.0, 'jax_step_ms_median': 1.1, 'jax_mfu': 0.6, 'jax_batch1_ms': 0.1,
         'torch_step_ms': 1.5, 'torch_step_ms_median': 1.6, 'torch_mfu': 0.4, 'torch_batch1_ms': 0.2,
         'train_ratio': 1.5, 'train_ratio_median': 1.45, 'batch1_ratio': 2.0,
         'data_wait': {'data_wait_share': 0.01, 'data_wait_s': 0.01, 'train_s': 1.0, 'steps': 5, 'data': 'real'}}
  row.update(overrides)
  return row


def test_verdicts_name_each_target_met_or_not_with_the_figure():
  report = {'models': {
      'mnist1d_cnn': _row(),
      'lm_tiny': _row(train_ratio=1.1, jax_mfu=0.4, jax_batch1_ms=0.3,
                      data_wait={'data_wait_share': 0.08, 'data_wait_s': 0.08, 'train_s': 1.0, 'steps': 5,
                                 'data': 'real'}),
  }}
  lines = benchmark.verdicts(report)
  assert 'met: mnist1d_cnn train throughput 1.50x PyTorch\'s (target >= 1.0x)' in lines
  assert 'met: mnist1d_cnn batch-1 latency 0.100 ms vs PyTorch 0.200 ms' in lines
  assert 'NOT met: lm_tiny train throughput 1.10x PyTorch\'s (target >= 1.2x)' in lines  # The LM's bar is 1.2.
  assert 'NOT met: lm_tiny MFU 40.0% (target >= 50%)' in lines
  assert 'NOT met: lm_tiny batch-1 latency 0.300 ms vs PyTorch 0.200 ms' in lines
  assert any(line.startswith('NOT met: lm_tiny data wait 8.0%') for line in lines)
  assert not any('mnist1d_cnn MFU' in line for line in lines)  # The MFU target is the LM's only.


def test_table_without_torch_shows_dashes_and_no_verdicts_but_data_wait():
  none = dict.fromkeys(('torch_step_ms', 'torch_step_ms_median', 'torch_mfu', 'torch_batch1_ms', 'train_ratio',
                        'train_ratio_median', 'batch1_ratio'))
  report = {'models': {'mnist1d_mlp': _row(**none)}}
  table = benchmark.table(report)
  assert '| mnist1d_mlp | 100 | 10 | 1.00 / 1.10 | — / — | —x | 60.0% | — | 0.100 | — | 1.0% |' in table
  assert benchmark.verdicts(report) == [
      'met: mnist1d_mlp data wait 1.0% of train time over 5 steps of real training (real data; target <= 5%)']


@pytest.mark.parametrize('args, message', [
    (['--models=resnet'], "--models ('resnet'): unknown ['resnet']; allowed: all or any of ['mnist1d_cnn'"),
    (['--models=,'], "--models (','): unknown (empty)"),
    (['--repeats=0'], 'repeats'),
    (['stray'], "unexpected arguments: ['stray']"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, args, message):
  proc = _run(*args, '--notorch', f'--out={tmp_path}/out')
  assert proc.returncode == 2, proc.stderr
  assert message in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not os.path.exists(tmp_path / 'out')


@pytest.mark.skipif(HAS_TORCH, reason='torch is installed here')
def test_missing_torch_says_how_to_install_it(tmp_path):
  proc = _run('--models=mnist1d_mlp', f'--out={tmp_path}/out')
  assert proc.returncode == 2
  assert 'make bench' in proc.stderr and '--notorch' in proc.stderr
  assert not os.path.exists(tmp_path / 'out')


@pytest.mark.slow
def test_jax_only_run_writes_the_report_with_data_wait(tmp_path):
  proc = _run('--models=mnist1d_mlp', '--notorch', '--steps=3', '--repeats=2', '--latency_calls=3',
              '--data_wait_s=0.0005', f'--out={tmp_path}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((tmp_path / 'benchmarks.json').read_text())
  assert set(report) == {'machine', 'compute_dtype', 'peak_flops_per_s', 'peak_source', 'command', 'models'}
  assert report['machine']['cores'] >= 1 and report['peak_flops_per_s'] > 1e9
  row = report['models']['mnist1d_mlp']
  assert row['params'] == 15_210 and row['batch_size'] == 100 and row['steps_per_block'] == 3
  assert 0 < row['jax_step_ms'] <= row['jax_step_ms_median']
  assert 0 < row['jax_mfu'] < 1 and row['jax_batch1_ms'] > 0
  assert row['torch_step_ms'] is None and row['train_ratio'] is None
  wait = row['data_wait']
  assert wait['steps'] == 5 and wait['data'] == 'real' and 0 <= wait['data_wait_share'] < 1
  text = (tmp_path / 'benchmarks.md').read_text()
  assert '| mnist1d_mlp | 15,210 | 100 |' in text and 'PyTorch not timed' in text


def test_keep_freed_memory_applies_on_glibc():
  code = 'from research import host; print(host.keep_freed_memory())'
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
  assert out.strip() == ('True' if sys.platform.startswith('linux') else 'False')


@pytest.mark.skipif(not HAS_TORCH, reason='needs torch (make bench installs it)')
@pytest.mark.parametrize('name', ['mnist1d_cnn', 'mnist1d_mlp', 'mnist1d_gru', 'mnist1d_lstm', 'mnist_cnn',
                                  'lm_tiny'])
def test_torch_twin_has_the_flax_models_parameter_count_and_trains(name):
  import torch  # pylint: disable=g-import-not-at-top
  from experiments import benchmark_cases as entry  # pylint: disable=g-import-not-at-top
  from research import cost, torch_models  # pylint: disable=g-import-not-at-top

  case = entry.make_case(name)
  twin = torch_models.build(case.config.model, input_shape=case.input_shape, num_classes=case.num_classes)
  flax_count = cost.param_count(case.config.model, case.input_shape, case.num_classes)
  assert sum(p.numel() for p in twin.parameters()) == flax_count
  train, forward, _ = benchmark.torch_runner(case)
  train(1)
  logits = forward(benchmark.synthetic_batch(case, 1)['inputs'])
  assert logits.shape == ((1, case.input_shape[0], case.num_classes) if case.language_model else (1, 10))
  assert torch.isfinite(torch.from_numpy(logits)).all()


def test_op_profile_sums_the_traced_xla_ops_per_step():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  matmul = jax.jit(lambda a: jnp.tanh(a @ a))
  a = jnp.ones((256, 256))
  matmul(a).block_until_ready()
  prof = benchmark.op_profile(lambda n: [matmul(a).block_until_ready() for _ in range(n)], steps=3, top=5)
  assert prof['steps'] == 3 and prof['wall_ms'] > 0 and prof['ops_ms'] > 0
  assert prof['kinds'] and all(ms >= 0 and count > 0 for _, ms, count in prof['kinds'])
  assert sum(ms for _, ms, _ in prof['kinds']) <= prof['ops_ms'] + 1e-9
  assert [ms for _, ms, _ in prof['kinds']] == sorted((ms for _, ms, _ in prof['kinds']), reverse=True)
  report = {'models': {'lm_tiny': _row(train_ratio=1.1, profile=prof)}}
  text = '\n'.join(benchmark.profiles(report))
  assert text.startswith("## Where the JAX step's time goes") and f'| {prof["kinds"][0][0]} |' in text
  assert benchmark.profiles({'models': {'mnist1d_cnn': _row()}}) == []  # Nothing to explain.
