"""End-to-end runs of `python -m experiments.train` as a user runs it: outputs, exit codes, kill-and-resume."""

import json
import os
import random
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
  with open(workdir / 'metrics.jsonl') as f:  # Eval records carry the train seconds so far (curves vs time).
    times = [r['train_time_s'] for r in map(json.loads, f) if r['split'] == 'eval']
  assert 0 < times[0] < times[1] < times[2] <= _card(workdir)['time']['train_s'] + 1e-3
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['30', '60']
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(workdir))
  assert 'test_accuracy=' in proc.stdout.splitlines()[-2]  # The final summary: results, then costs.
  assert proc.stdout.splitlines()[-1].startswith('cost: ')
  # The cost section (issue 5's layout): every key present, figures consistent with each other.
  assert card['params']['bytes'] == 4 * 15_210 and card['params']['checkpoint_bytes'] > 0
  flops = card['flops']
  assert 0.9 < flops['train_step']['analytic'] / flops['train_step']['xla'] < 1.1
  assert 0.9 < flops['eval_example']['analytic'] / flops['eval_example']['xla'] < 1.1
  assert flops['total_train'] == 60 * flops['train_step']['xla']
  assert set(card['time']) == {'compile_s', 'train_s', 'eval_s', 'checkpoint_s', 'data_wait_s', 'wall_s'}
  assert card['throughput']['examples_per_s'] > 0 and 0 < card['mfu']['value'] < 1
  assert card['mfu']['peak_source'].startswith(('measured', 'table'))
  assert card['memory']['predicted_bytes'] > 0 and card['memory']['measured_peak_bytes'] > 0
  assert card['energy']['joules'] > 0 and card['energy']['source'] in ('nvml', 'rapl', 'estimate')
  if card['energy']['source'] == 'estimate':
    assert 'not a measurement' in card['energy']['assumptions']
  assert card['co2_g'] > 0 and card['restarts'] == 0
  assert 0 < card['inference']['batch1_p50_ms'] <= card['inference']['batch1_p99_ms']
  assert 0 < card['inference']['eval_batch_p50_ms'] <= card['inference']['eval_batch_p99_ms']
  with open(workdir / 'config.json') as f:
    assert card['inference']['eval_batch_size'] == json.load(f)['eval_batch_size']
  assert card['inference']['eval_examples_per_s'] > 0


def _checkpoint_steps(workdir):
  ckpt = workdir / 'checkpoints'
  return sorted(int(n) for n in os.listdir(ckpt) if n.isdigit()) if ckpt.exists() else []


def _wait_for_checkpoint(workdir, proc, *, after=-1, timeout=120):
  """Waits until a checkpoint with a step > `after` is committed; returns its step."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    steps = [s for s in _checkpoint_steps(workdir) if s > after]
    if steps:
      return steps[-1]
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    time.sleep(0.01)
  raise TimeoutError('no checkpoint appeared')


LONG = ('--config.steps=2500', '--config.checkpoint_every=250', '--config.eval_every=500', '--config.log_every=50')


@pytest.mark.long
def test_five_sigkills_at_random_points_resume_to_the_same_final_state(tmp_path, env):
  reference = tmp_path / 'reference'
  assert _run(_cmd(reference, *LONG, preset='cnn'), env).returncode == 0

  workdir, rng, last = tmp_path / 'killed', random.Random(0), -1
  for _ in range(5):
    proc = subprocess.Popen(_cmd(workdir, *LONG, preset='cnn'), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    last = _wait_for_checkpoint(workdir, proc, after=last)
    time.sleep(rng.uniform(0, 0.2))  # Somewhere in a later step, eval or save.
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (workdir / 'run_card.json').exists(), 'the run finished before it was killed'
    last = _checkpoint_steps(workdir)[-1]

  resumed = _run(_cmd(workdir, *LONG, preset='cnn'), env)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Resuming from the checkpoint at step' in resumed.stdout
  card = _card(workdir)
  assert card['resumed_from_step'] > 0 and card['restarts'] == 5
  # Totals add up the sessions up to each one's last checkpoint; this session alone is less.
  assert card['time']['wall_s'] > card['session_time']['wall_s']
  assert card['time']['train_s'] > card['session_time']['train_s']
  assert card['final_state_sha256'] == _card(reference)['final_state_sha256']
  assert card['final_metrics']['test_accuracy'] == _card(reference)['final_metrics']['test_accuracy']
  # metrics.jsonl: every log point exactly once, as in the uninterrupted run.
  assert _metric_steps(workdir, 'train') == _metric_steps(reference, 'train')
  assert _metric_steps(workdir, 'eval') == _metric_steps(reference, 'eval')


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_sigint_stops_cleanly_with_a_checkpoint(tmp_path, env, sig):
  workdir = tmp_path / 'run'
  proc = subprocess.Popen(_cmd(workdir, *LONG, preset='cnn'), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  _wait_for_checkpoint(workdir, proc)
  t0 = time.time()
  proc.send_signal(sig)
  _, stderr = proc.communicate(timeout=60)
  seconds_to_exit = time.time() - t0
  assert proc.returncode == 0, stderr[-3000:]
  assert seconds_to_exit < 10, seconds_to_exit  # The usual preemption notice is 30 s; a CNN step is ~1 ms.
  card = _card(workdir)
  assert card['stop_reason'] == 'preempted' and 0 < card['steps'] < 2500
  assert str(card['steps']) in os.listdir(workdir / 'checkpoints'), stderr[-3000:]


def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path, env):
  workdir = tmp_path / 'run'
  first = _run(_cmd(workdir, '--config.steps=100', '--config.checkpoint_every=50'), env)
  assert first.returncode == 0, first.stderr[-3000:]
  good = _card(workdir)
  # Resumed with an absurd learning rate: params blow up at step 101, every later loss is NaN/Inf.
  proc = _run(_cmd(workdir, '--config.steps=300', '--config.checkpoint_every=10', '--config.log_every=10',
                   '--config.optimizer.learning_rate=1e30', '--allow_config_change'), env)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert 'training stopped at step 130' in proc.stderr and 'since step 102' in proc.stderr
  assert 'the checkpoint at step 100' in proc.stderr and 'Traceback' not in proc.stderr
  card = _card(workdir)
  assert card['stop_reason'] == 'nonfinite' and card['steps'] == 100
  assert card['final_state_sha256'] == good['final_state_sha256']
  assert _checkpoint_steps(workdir)[-1] == 100  # None saved while steps were being skipped (110, 120, 130).


def test_resume_accepts_a_safe_change_and_refuses_others(tmp_path, env):
  workdir = tmp_path / 'run'
  assert _run(_cmd(workdir, *SHORT), env).returncode == 0
  longer = _run(_cmd(workdir, *SHORT[1:], '--config.steps=80'), env)
  assert longer.returncode == 0, longer.stderr[-3000:]
  assert 'Config changes on resume: steps: 60 -> 80' in longer.stdout
  assert _card(workdir)['steps'] == 80 and _card(workdir)['resumed_from_step'] == 60
  refused = _run(_cmd(workdir, *SHORT[1:], '--config.steps=80', '--config.seed=1'), env)
  assert refused.returncode == 2 and 'seed: 0 -> 1' in refused.stderr


def test_a_corrupt_latest_checkpoint_falls_back_and_still_ends_bit_exact(tmp_path, env):
  reference = tmp_path / 'reference'
  assert _run(_cmd(reference, *SHORT[1:], '--config.steps=90'), env).returncode == 0
  workdir = tmp_path / 'run'
  assert _run(_cmd(workdir, *SHORT), env).returncode == 0  # Checkpoints 30 and 60.
  chunks = [os.path.join(root, name) for root, _, names in os.walk(workdir / 'checkpoints' / '60' / 'state')
            for name in names if os.sep + 'd' + os.sep in os.path.join(root, name) + os.sep]
  largest = max(chunks, key=os.path.getsize)
  with open(largest, 'r+b') as f:  # Flip one byte in the middle of the biggest array data file.
    f.seek(os.path.getsize(largest) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0xFF]))
  resumed = _run(_cmd(workdir, *SHORT[1:], '--config.steps=90'), env)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'warning: checkpoint 60 in {workdir}/checkpoints is unusable' in resumed.stderr
  card = _card(workdir)
  assert card['resumed_from_step'] == 30 and [c['step'] for c in card['checkpoints_skipped']] == [60]
  assert card['final_state_sha256'] == _card(reference)['final_state_sha256']


@pytest.mark.parametrize('budget', ['max_flops', 'max_seconds', 'max_joules'])
def test_a_budget_stops_the_run_cleanly_with_a_checkpoint(tmp_path, env, budget):
  # FLOPs: 30.5 steps' worth stops after step 31. Seconds and joules: limits reached at once stop at the first
  # check (every step for seconds, the first log point for joules).
  per_step = 8.7e6  # The MLP's XLA train-step FLOPs at batch 100 (the card of a plain run says so; checked below).
  value, expected_steps = {'max_flops': (30.5 * per_step, 31), 'max_seconds': (1e-3, 1),
                           'max_joules': (1e-6, 10)}[budget]
  workdir = tmp_path / 'run'
  proc = _run(_cmd(workdir, *SHORT, f'--config.budget.{budget}={value}'), env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  card = _card(workdir)
  if budget == 'max_flops':
    assert card['flops']['train_step']['xla'] == pytest.approx(per_step, rel=0.01)
  if budget == 'max_joules':
    # The CPU estimate counts process CPU time, which ticks in 10 ms: the first log point's reading can still be 0 J
    # when 10 steps of this MLP take less, and then a later log point stops the run.
    assert card['steps'] % 10 == 0 and 10 <= card['steps'] < 60, card['steps']
    expected_steps = card['steps']
  assert card['stop_reason'] == f'budget.{budget}' and card['steps'] == expected_steps
  assert f'Reached budget.{budget}=' in proc.stdout
  assert _checkpoint_steps(workdir)[-1] == expected_steps


def test_dry_run_prints_the_costs_and_writes_nothing(tmp_path, env):
  workdir = tmp_path / 'run'
  proc = _run(_cmd(workdir, '--dry_run'), env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  assert lines[0].startswith('dry run: mlp on mnist1d, 6000 steps of batch 100')
  assert any(line.split()[:1] == ['params'] and '15,210' in line for line in lines)
  assert any('FLOPs/step' in line and '(XLA)' in line and '(analytic)' in line for line in lines)
  assert any(line.strip().startswith('estimate') and ' J (' in line and 'g CO2' in line for line in lines)
  assert not workdir.exists()


def test_a_key_added_since_a_run_was_saved_resumes_at_its_default(tmp_path):
  # A run saved before `dataset.order` existed shuffled every epoch: today's default, 'epoch', resumes it, and the
  # refusal for another value says which value that is.
  from configs import mnist1d  # pylint: disable=g-import-not-at-top  (this module otherwise runs subprocesses)
  from research import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  config = mnist1d.get_config('cnn')
  saved = json.loads(config.to_json_best_effort())
  del saved['dataset']['order']
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  config.dataset.order = 'epoch'
  assert [c.key for c in workdir_lib.check_config(str(tmp_path), config, allow_change=False)] == ['dataset.order']
  config.dataset.order = 'stored'
  with pytest.raises(workdir_lib.WorkdirError, match=r"dataset.order: not saved \(default 'epoch'\) -> 'stored'"):
    workdir_lib.check_config(str(tmp_path), config, allow_change=False)
