"""End-to-end runs of `python -m experiments.train` as a user runs it: outputs, exit codes, kill-and-resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  """Environment for subprocess runs: a shared TFDS data dir (MNIST-1D is generated once per module)."""
  out = dict(os.environ, TFDS_DATA_DIR=str(tmp_path_factory.mktemp('tfds')), JAX_PLATFORMS='cpu')
  out.pop('XLA_FLAGS', None)  # One CPU device, as a user's laptop run.
  return out


def _cmd(workdir, *overrides, preset='mlp'):
  return [sys.executable, '-m', 'experiments.train', f'--config=configs/mnist1d.py:{preset}', f'--workdir={workdir}',
          '--config.progress=False', *overrides]


def _run(args, env, **kwargs):
  return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, **kwargs)


def _card(workdir):
  with open(os.path.join(workdir, 'run_card.json')) as f:
    return json.load(f)


def _metric_steps(workdir, split):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [r['step'] for r in map(json.loads, f) if r['split'] == split]


SHORT = ('--config.steps=60', '--config.log_every=10', '--config.eval_every=20', '--config.checkpoint_every=30')


def test_train_writes_every_output(tmp_path, env):
  workdir = tmp_path / 'run'
  proc = _run(_cmd(workdir, *SHORT), env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  card = _card(workdir)
  assert card['steps'] == 60 and card['stop_reason'] == 'steps'
  assert set(card['final_metrics']) == {'train_loss', 'test_loss', 'test_accuracy'}
  assert 0.2 < card['final_metrics']['test_accuracy'] <= 1.0  # Chance is 0.1; 60 Adam steps do better.
  assert len(card['final_state_sha256']) == 64
  assert card['params']['count'] == 15_210  # The paper's MLP.
  with open(workdir / 'config.json') as f:
    assert json.load(f)['model']['name'] == 'mlp'
  assert _metric_steps(workdir, 'train') == [10, 20, 30, 40, 50, 60]
  assert _metric_steps(workdir, 'eval') == [20, 40, 60]
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['30', '60']
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(workdir))
  assert 'test_accuracy=' in proc.stdout.splitlines()[-1]  # The final one-line summary.


@pytest.mark.parametrize('args,message', [
    (('--config.optimizer.lerning_rate=3e-3',), "unknown config key 'optimizer.lerning_rate'"),
    (('--config.steps=1.5',), '--config.steps=1.5'),
    (('--config.steps=0',), "'steps' = 0: expected a value > 0"),
    (('--config.optimizer.name=adamax',), "'optimizer.name' = 'adamax'"),
    (('--config.model.dropout_rate=1.0',), "'model.dropout_rate' = 1.0"),
    (('--config.batch_size=7', '--config.mesh.data=2'), "'mesh.data' = 2"),
])
def test_bad_config_exits_2_with_one_clear_line(tmp_path, env, args, message):
  workdir = tmp_path / 'run'
  proc = _run(_cmd(workdir, *args), env)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert message in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not workdir.exists()  # Nothing written for a bad config.


def test_missing_config_file_and_preset_exit_2(tmp_path, env):
  proc = _run([sys.executable, '-m', 'experiments.train', '--config=configs/nope.py:cnn',
               f'--workdir={tmp_path}/w'], env)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  proc = _run([sys.executable, '-m', 'experiments.train', '--config=configs/mnist1d.py:resnet',
               f'--workdir={tmp_path}/w'], env)
  assert proc.returncode == 2 and "preset 'resnet': expected one of" in proc.stderr
  assert 'Traceback' not in proc.stderr
  proc = _run([sys.executable, '-m', 'experiments.train', f'--workdir={tmp_path}/w'], env)
  assert proc.returncode == 2 and '--config is required' in proc.stderr
  assert not (tmp_path / 'w').exists()


def _wait_for_checkpoint(workdir, proc, timeout=120):
  ckpt = workdir / 'checkpoints'
  deadline = time.time() + timeout
  while time.time() < deadline:
    if ckpt.exists() and any(n.isdigit() for n in os.listdir(ckpt)):
      return
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    time.sleep(0.02)
  raise TimeoutError('no checkpoint appeared')


LONG = ('--config.steps=2500', '--config.checkpoint_every=250', '--config.eval_every=500', '--config.log_every=50')


def test_killed_run_resumes_to_the_same_final_state(tmp_path, env):
  reference = tmp_path / 'reference'
  assert _run(_cmd(reference, *LONG, preset='cnn'), env).returncode == 0

  workdir = tmp_path / 'killed'
  proc = subprocess.Popen(_cmd(workdir, *LONG, preset='cnn'), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  _wait_for_checkpoint(workdir, proc)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert not (workdir / 'run_card.json').exists(), 'the run finished before it was killed'

  resumed = _run(_cmd(workdir, *LONG, preset='cnn'), env)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Resuming from the checkpoint at step' in resumed.stdout
  card = _card(workdir)
  assert card['resumed_from_step'] > 0
  assert card['final_state_sha256'] == _card(reference)['final_state_sha256']
  assert card['final_metrics']['test_accuracy'] == _card(reference)['final_metrics']['test_accuracy']
  # metrics.jsonl: every log point exactly once, as in the uninterrupted run.
  assert _metric_steps(workdir, 'train') == _metric_steps(reference, 'train')
  assert _metric_steps(workdir, 'eval') == _metric_steps(reference, 'eval')


def test_sigterm_stops_cleanly_with_a_checkpoint(tmp_path, env):
  workdir = tmp_path / 'run'
  proc = subprocess.Popen(_cmd(workdir, *LONG, preset='cnn'), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  _wait_for_checkpoint(workdir, proc)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=60)
  assert proc.returncode == 0, stderr[-3000:]
  card = _card(workdir)
  assert card['stop_reason'] == 'preempted' and 0 < card['steps'] < 2500
  assert str(card['steps']) in os.listdir(workdir / 'checkpoints'), stderr[-3000:]
