"""experiments.reproduce on a tiny budget: the outputs' structure (accuracy is checked by running the experiment)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ['logreg', 'mlp', 'cnn', 'gru', 'lstm', 'transformer']


def _run(args, tmp_path):
  env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path / 'tfds'), JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  return subprocess.run([sys.executable, '-m', 'experiments.reproduce', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


@pytest.mark.long
def test_quick_pipeline_writes_table_summary_and_plot(tmp_path):
  out = tmp_path / 'out'
  proc = _run(['mnist1d', '--quick', '--steps=20', f'--out={out}'], tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((out / 'summary.json').read_text())
  assert list(summary['models']) == MODELS
  assert summary['variant'] == 'standard' and summary['command'].startswith('python -m experiments.reproduce')
  assert {'jax', 'flax', 'optax'} <= set(summary['versions']) and summary['machine']['cpu_count'] >= 1
  for name, entry in summary['models'].items():
    assert len(entry['test_accuracy']) == 1 and all(0 <= a <= 1 for a in entry['test_accuracy'])
    assert entry['mean'] == entry['test_accuracy'][0] and entry['std'] == 0.0 and entry['steps'] == 20
    assert entry['train_flops'] > 0 and entry['wall_time_s'] > entry['train_time_s'] > 0 and entry['energy_j'] > 0
  assert summary['models']['cnn']['paper_test_accuracy'] == 0.94
  assert summary['models']['lstm']['paper_test_accuracy'] is None
  table = (out / 'table.md').read_text()
  assert all(f'| {name} |' in table for name in MODELS)
  assert '| cnn | 5,210 | 94.0% |' in table and '| cnn | 5,210 | 94.0% |' in proc.stdout  # Printed too.
  assert '| train FLOPs | train time | wall time | energy |' in table
  assert f"J ({summary['models']['cnn']['energy_source']}) |" in table
  assert (out / 'curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'

  # Rerunning skips the finished runs (same cards, no retraining).
  card = (out / 'runs' / 'cnn_s0' / 'run_card.json').read_text()
  again = _run(['mnist1d', '--quick', '--steps=20', f'--out={out}', '--models=cnn'], tmp_path)
  assert again.returncode == 0 and (out / 'runs' / 'cnn_s0' / 'run_card.json').read_text() == card


def test_shuffled_variant_has_its_own_outputs(tmp_path):
  out = tmp_path / 'shuffled'
  proc = _run(['mnist1d', '--variant=shuffled', '--models=logreg', '--seeds=2', '--steps=10', f'--out={out}'],
              tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((out / 'summary.json').read_text())
  assert summary['variant'] == 'shuffled' and list(summary['models']) == ['logreg']
  assert len(summary['models']['logreg']['test_accuracy']) == 2
  assert summary['models']['logreg']['paper_test_accuracy'] is None
  assert 'MNIST-1D (shuffled)' in (out / 'table.md').read_text()
  with open(out / 'runs' / 'logreg_s1' / 'config.json') as f:
    config = json.load(f)
  assert config['dataset']['variant'] == 'shuffled' and config['seed'] == 1


def test_order_flag_sets_every_runs_batch_order(tmp_path):
  out = tmp_path / 'epoch'
  proc = _run(['mnist1d', '--order=epoch', '--models=logreg', '--seeds=1', '--steps=10', f'--out={out}'], tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out / 'runs' / 'logreg_s0' / 'config.json') as f:
    assert json.load(f)['dataset']['order'] == 'epoch'
  assert '--order=epoch' in json.loads((out / 'summary.json').read_text())['command']


def test_bad_arguments_exit_2(tmp_path):
  for args, message in [(['cifar'], 'expected one benchmark name'), (['mnist1d', '--models=resnet'], 'resnet'),
                        (['mnist1d', '--seeds=0'], '--seeds=0')]:
    proc = _run(args, tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and 'Traceback' not in proc.stderr
