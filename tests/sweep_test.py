"""research/sweep.py and `python -m experiments.sweep` as a user runs it: real trial subprocesses and real signals.

The end-to-end tests train the MNIST-1D logistic regression for 20 steps per trial (a few seconds, mostly process
start-up), at most 3 trial processes per test: the whole file is ~1 minute on 2 cores.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from configs import mnist1d
from research import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT = ('--', '--config.steps=20', '--config.eval_every=20', '--config.checkpoint_every=10')
LOGREG_STEP_FLOPS = 188_000  # XLA's FLOPs of one logreg train step at batch 100 (checked against a card below).


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  """Environment for subprocess runs: one CPU device per process (as on a laptop), and a TFDS data dir shared by
  the module (MNIST-1D is generated in it once, by the first trial or by the runner before parallel trials)."""
  out = dict(os.environ, TFDS_DATA_DIR=str(tmp_path_factory.mktemp('tfds')), JAX_PLATFORMS='cpu')
  out.pop('XLA_FLAGS', None)
  return out


def _sweep_file(tmp_path, body: str, name: str = 'sweep.py'):
  path = tmp_path / name
  path.write_text(f'def get_sweep():\n  return {body}\n')
  return path


def _cmd(out, sweep_file, *flags, preset='logreg'):
  return [sys.executable, '-m', 'experiments.sweep', f'--config=configs/mnist1d.py:{preset}', f'--sweep={sweep_file}',
          f'--out={out}', *flags, *SHORT]


def _run(args, env):
  return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _summary(out):
  with open(out / 'summary.json') as f:
    return json.load(f)


def _cards(out) -> dict[str, tuple[bytes, int]]:
  """Trial id -> (run_card.json bytes, mtime in ns), for the trials that have a card."""
  trials = out / 'trials'
  return {name: ((trials / name / 'run_card.json').read_bytes(), os.stat(trials / name / 'run_card.json').st_mtime_ns)
          for name in sorted(os.listdir(trials)) if (trials / name / 'run_card.json').exists()}


@pytest.mark.long
def test_grid_sweep_runs_in_parallel_writes_the_table_and_a_rerun_starts_nothing(tmp_path, env):
  sweep_file = _sweep_file(tmp_path, "{'grid': {'optimizer.learning_rate': [0.003, 0.01, 0.03]}}")
  out = tmp_path / 'out'
  proc = _run(_cmd(out, sweep_file, '--parallel=2'), env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  ids = ['lr=0.003', 'lr=0.01', 'lr=0.03']
  for number, trial in enumerate(ids, 1):
    assert f'[{number}/3] {trial} started' in proc.stdout
    assert f'[{number}/3] {trial} finished: test_accuracy=' in proc.stdout

  summary = _summary(out)
  rows = summary['trials']
  assert sorted(r['trial_id'] for r in rows) == ids and summary['counts']['finished'] == 3
  accuracies = [r['test_accuracy'] for r in rows]
  assert accuracies == sorted(accuracies, reverse=True)  # Best first.
  table = (out / 'table.md').read_text()
  assert table.splitlines()[2].startswith('Command: `python -m experiments.sweep --config=configs/mnist1d.py:logreg')
  for row in rows:  # Each row is its trial's card.
    with open(out / 'trials' / row['trial_id'] / 'run_card.json') as f:
      card = json.load(f)
    with open(out / 'trials' / row['trial_id'] / 'config.json') as f:
      config = json.load(f)
    assert card['stop_reason'] == 'steps' and card['steps'] == 20 and row['status'] == 'finished'
    assert config['optimizer']['learning_rate'] == row['values']['optimizer.learning_rate']
    assert row['test_accuracy'] == card['final_metrics']['test_accuracy'] and 0.1 < row['test_accuracy'] < 1
    assert row['test_loss'] == card['final_metrics']['test_loss'] and row['params'] == 410
    assert row['train_flops'] == card['flops']['total_train'] == 20 * card['flops']['train_step']['xla']
    assert row['wall_s'] == card['time']['wall_s'] > 0 and row['energy_j'] == card['energy']['joules'] > 0
    lr = row['values']['optimizer.learning_rate']
    energy = f"{row['energy_j']:.3g} J ({row['energy_source']})"
    assert (f"| {row['trial_id']} | {lr:g} | finished | {row['test_accuracy']:.4f} | {row['test_loss']:.4g} | 410 | "
            f"{row['train_flops']:.3g} | {row['wall_s']:.1f} s | {energy} |") in table
  assert [line.split(' | ')[0] for line in table.splitlines() if line.startswith('| lr=')] == [
      f"| {r['trial_id']}" for r in rows]  # The table in the same order.
  with open(out / 'sweep.json') as f:
    record = json.load(f)
  assert record['preset'] == 'configs/mnist1d.py:logreg' and record['sweep_source'] == sweep_file.read_text()
  assert record['overrides'] == list(SHORT[1:])
  assert [t['overrides'] for t in record['trials']] == [[f'--config.optimizer.learning_rate={lr}'] for lr in
                                                        (0.003, 0.01, 0.03)]

  cards = _cards(out)
  again = _run(_cmd(out, sweep_file, '--parallel=2'), env)
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'started' not in again.stdout and 'Nothing to run: 3 of 3 trials had finished' in again.stdout
  assert _cards(out) == cards  # Bytes and mtimes: no trial ran again.


def _wait_for(path, proc, timeout=120):
  deadline = time.time() + timeout
  while not os.path.exists(path):
    assert proc.poll() is None, 'the sweep ended before the file appeared'
    assert time.time() < deadline, f'{path} did not appear'
    time.sleep(0.05)


def test_a_killed_sweep_reruns_only_its_unfinished_trials(tmp_path, env):
  sweep_file = _sweep_file(tmp_path, "{'grid': {'seed': [0, 1]}}")
  out = tmp_path / 'out'
  with open(tmp_path / 'first.log', 'w') as log:
    proc = subprocess.Popen(_cmd(out, sweep_file), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    _wait_for(out / 'trials' / 'seed=0' / 'run_card.json', proc)
    os.killpg(proc.pid, signal.SIGKILL)  # The runner and its trial, as an OOM killer or a lost machine would.
    proc.wait()
  first = _cards(out)
  assert list(first) == ['seed=0']

  proc = _run(_cmd(out, sweep_file), env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '2 trials, 1 already finished' in proc.stdout
  assert '[1/2] seed=0 started' not in proc.stdout and '[2/2] seed=1 started' in proc.stdout
  assert _cards(out)['seed=0'] == first['seed=0']  # Byte-identical, not rewritten.
  assert [r['status'] for r in _summary(out)['trials']] == ['finished', 'finished']


def test_a_budget_stops_the_sweep_and_leaves_trials_not_run(tmp_path, env):
  sweep_file = _sweep_file(tmp_path, "{'grid': {'optimizer.learning_rate': [0.003, 0.01, 0.03]}}")
  out = tmp_path / 'out'
  budget = 1.25 * 20 * LOGREG_STEP_FLOPS  # One 20-step trial fits; the second is given a quarter of one.
  proc = _run(_cmd(out, sweep_file, f'--max_flops={budget:g}'), env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'the budget --max_flops={budget:g} was reached' in proc.stdout
  assert 'a rerun with a larger budget continues' in proc.stdout
  summary = _summary(out)
  status = {r['trial_id']: r['status'] for r in summary['trials']}
  assert status == {'lr=0.003': 'finished', 'lr=0.01': 'stopped', 'lr=0.03': 'not run'}
  assert summary['spent']['max_flops'] >= budget and 'the budget --max_flops' in summary['stop']
  with open(out / 'trials' / 'lr=0.003' / 'run_card.json') as f:
    assert json.load(f)['flops']['train_step']['xla'] == pytest.approx(LOGREG_STEP_FLOPS, rel=0.01)
  with open(out / 'trials' / 'lr=0.01' / 'run_card.json') as f:
    stopped = json.load(f)
  assert stopped['stop_reason'] == 'budget.max_flops' and 0 < stopped['steps'] < 20
  table = (out / 'table.md').read_text()
  assert '| lr=0.03 | 0.03 | not run |' in table and '| lr=0.01 | 0.01 | stopped (budget.max_flops, step' in table
  assert not (out / 'trials' / 'lr=0.03').exists()

  # What --dry_run prints on this OUT (in-process: the CLI prints this text).
  trials = sweep.expand(sweep.load_sweep(str(sweep_file)))
  runner = sweep.Runner(trials, out=str(out), command=None, header={})
  assert sweep.format_dry_run(trials, runner.states, list(SHORT[1:])).splitlines() == [
      'dry run: 3 trials (nothing run, nothing written)',
      '[1/3] lr=0.003: --config.optimizer.learning_rate=0.003 (finished: skipped)',
      '[2/3] lr=0.01: --config.optimizer.learning_rate=0.01 (stopped: resumed)',
      '[3/3] lr=0.03: --config.optimizer.learning_rate=0.03',
      'every trial also gets: --config.steps=20 --config.eval_every=20 --config.checkpoint_every=10']


BAD_SWEEPS = [
    ("{'grids': {'seed': [0]}}", "sweep entry 'grids' = {'seed': [0]}: expected one of the entries ['grid', 'random']"),
    ("{'grid': {'seed': []}}", "sweep entry grid['seed'] = []: expected a non-empty list of values"),
    ("{'random': {'num_trials': 2, 'seed': 0, 'space': {'seed': ('normal', 0, 1)}}}",
     "random['space']['seed'] = ('normal', 0, 1): expected a spec whose kind is one of"),
    ("{'random': {'num_trials': 2, 'seed': 0, 'space': {'model.dropout_rate': ('uniform', 0.3, 0.1)}}}",
     "random['space']['model.dropout_rate'] = ('uniform', 0.3, 0.1): expected lo < hi"),
    ("{'random': {'num_trials': 2, 'seed': 0, 'space': {'optimizer.learning_rate': ('log_uniform', 0, 1)}}}",
     "random['space']['optimizer.learning_rate'] = ('log_uniform', 0, 1): expected lo > 0 for log_uniform"),
    ("{'random': {'num_trials': 2, 'seed': 0, 'space': {'seed': ('int', 3, 3)}}}", 'expected lo < hi'),
    ("{'random': {'num_trials': 2, 'space': {'seed': ('int', 0, 3)}}}", "'seed' is missing"),
    ("{'grid': {'seed': [0]}, 'random': {'num_trials': 1, 'seed': 0, 'space': {'seed': ('int', 0, 3)}}}",
     "grid['seed'] = [0]: expected a key swept once"),
    ("{'grid': {'optimizer.lerning_rate': [0.1]}}",
     "sweep entry grid['optimizer.lerning_rate'] = [0.1]: 'optimizer.lerning_rate' is not a config key of "
     "configs/mnist1d.py:logreg; expected a key of the preset (known keys in optimizer: ['b1'"),
    ("{'random': {'num_trials': 2, 'seed': 0, 'space': {'model.dropout_rate': ('uniform', 0, 0.3)}}}",
     "'model.dropout_rate' is not a config key of configs/mnist1d.py:logreg; expected a key of the preset (known "
     "keys in model: ['name', 'weight_init'])"),
    ("{'grid': {'optimizer': ['adam']}}", "expected a key of the preset (a key with a value, not the group"),
]


@pytest.mark.parametrize('body, message', BAD_SWEEPS)
def test_a_bad_sweep_file_is_refused_naming_the_entry(tmp_path, body, message):
  with pytest.raises(sweep.SweepError) as error:
    loaded = sweep.load_sweep(str(_sweep_file(tmp_path, body)))
    sweep.check_keys(loaded, mnist1d.get_config('logreg'), preset_name='configs/mnist1d.py:logreg')
  assert message in str(error.value) and '\n' not in str(error.value)


def test_a_missing_or_broken_file_or_no_get_sweep_is_refused(tmp_path):
  for text, message in (('def get_sweep(:\n', 'cannot load it: SyntaxError'),
                        ('SWEEP = {}\n', 'defines no get_sweep()'),
                        ('def get_sweep():\n  return 1 / 0\n', 'get_sweep() failed: ZeroDivisionError')):
    (tmp_path / 'bad.py').write_text(text)
    with pytest.raises(sweep.SweepError, match=message.replace('(', r'\(').replace(')', r'\)')):
      sweep.load_sweep(str(tmp_path / 'bad.py'))
  with pytest.raises(sweep.SweepError, match='no such file'):
    sweep.load_sweep(str(tmp_path / 'missing.py'))


def test_an_out_of_another_sweep_is_refused(tmp_path):
  sweep_file = _sweep_file(tmp_path, "{'grid': {'seed': [0]}}")
  record = {'preset': 'configs/mnist1d.py:logreg', 'sweep_file': str(sweep_file), 'sweep_source': 'A',
            'overrides': ['--config.steps=20'], 'command': 'python -m experiments.sweep ...'}
  out = tmp_path / 'out'
  sweep.check_out(str(out), record)  # New: fine.
  out.mkdir()
  sweep.check_out(str(out), record)  # Empty: fine.
  (out / 'notes.txt').write_text('x')
  with pytest.raises(sweep.SweepError, match='is not empty and holds no sweep.json'):
    sweep.check_out(str(out), record)
  (out / 'sweep.json').write_text(json.dumps(record))
  sweep.check_out(str(out), dict(record, command='another command line'))  # The same sweep: resumed.
  for key, value, message in (('preset', 'configs/mnist1d.py:mlp', "another preset (saved 'configs/mnist1d.py:logreg"),
                              ('sweep_file', str(tmp_path / 'other.py'), 'another sweep file'),
                              ('sweep_source', 'B', f'another sweep source ({sweep_file} changed since'),
                              ('overrides', [], 'another overrides')):
    with pytest.raises(sweep.SweepError, match=re.escape(message)):
      sweep.check_out(str(out), dict(record, **{key: value}))


def test_a_trial_config_that_fails_validation_exits_2_and_writes_nothing(tmp_path, env):
  sweep_file = _sweep_file(tmp_path, "{'grid': {'optimizer.learning_rate': [0.01, -1.0]}}")
  proc = _run(_cmd(tmp_path / 'out', sweep_file), env)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert proc.stderr.strip() == ("error: trial lr=-1: config key 'optimizer.learning_rate' = -1.0: expected a value "
                                 '> 0')
  assert not (tmp_path / 'out').exists()


def test_trial_ids_name_the_swept_values_or_fall_back_to_a_hash():
  names = sweep.short_names(['optimizer.learning_rate', 'seed', 'model.dropout_rate', 'optimizer.name'])
  assert names == {'optimizer.learning_rate': 'lr', 'seed': 'seed', 'model.dropout_rate': 'dropout',
                   'optimizer.name': 'opt'}
  assert sweep.trial_id({'optimizer.learning_rate': 1e-3, 'seed': 0}, names) == 'lr=0.001_seed=0'
  assert sweep.trial_id({'optimizer.learning_rate': 3e-5, 'optimizer.name': 'adam'}, names) == 'lr=3e-05_opt=adam'
  assert sweep.short_names(['a.size', 'b.size']) == {'a.size': 'a.size', 'b.size': 'b.size'}  # Clash: full keys.
  odd = sweep.trial_id({'model.name': 'a b/c'}, {'model.name': 'model'})
  long = sweep.trial_id({f'k{i}': 0.123456 for i in range(10)}, {f'k{i}': f'k{i}' for i in range(10)})
  assert odd.startswith('trial_') and long.startswith('trial_') and len(odd) == len(long) == 16 and odd != long
  assert sweep.format_override('optimizer.learning_rate', 3e-5) == '--config.optimizer.learning_rate=3e-05'
  assert sweep.format_override('model.channels', (8, 8)) == '--config.model.channels=(8, 8)'


def _random(num_trials=4, seed=0):
  return {'num_trials': num_trials, 'seed': seed,
          'space': {'optimizer.learning_rate': ('log_uniform', 1e-4, 1e-1), 'optimizer.name': ('choice', ['a', 'b']),
                    'model.dropout_rate': ('uniform', 0.0, 0.3), 'model.hidden_size': ('int', 8, 9)}}


def test_random_samples_are_deterministic_in_range_and_combined_with_every_grid_point():
  grid, random = sweep.check_sweep({'grid': {'seed': [0, 1, 2]}, 'random': _random()})
  samples = sweep.sample(random)
  assert samples == sweep.sample(random) and samples != sweep.sample(_random(seed=1))
  for s in samples:
    assert 1e-4 <= s['optimizer.learning_rate'] <= 1e-1 and 0 <= s['model.dropout_rate'] <= 0.3
    assert s['optimizer.name'] in ('a', 'b') and s['model.hidden_size'] in (8, 9)
    assert float(f"{s['optimizer.learning_rate']:.4g}") == s['optimizer.learning_rate']  # Rounded: ids are exact.
  assert {s['model.hidden_size'] for s in sweep.sample(_random(num_trials=50))} == {8, 9}  # 'int' includes hi.

  trials = sweep.expand(sweep.Sweep('x.py', '', grid, random))
  assert len(trials) == 12 and len({t.id for t in trials}) == 12
  assert [t.values for t in trials] == [{**s, 'seed': seed} for s in samples for seed in (0, 1, 2)]
  assert trials[0].id.startswith(f"lr={samples[0]['optimizer.learning_rate']:.4g}_opt=")
  assert trials[0].id.endswith('_seed=0') and trials[0].overrides[-1] == '--config.seed=0'
  assert [t.id for t in sweep.expand(sweep.Sweep('x.py', '', grid, random))] == [t.id for t in trials]


def test_seed_groups_sorting_and_trial_budgets():
  def row(lr, seed, acc, status='finished'):
    return {'values': {'lr': lr, 'seed': seed}, 'status': status, 'test_accuracy': acc, 'test_loss': acc and 1 - acc,
            'train_flops': 10.0, 'wall_s': 1.0, 'energy_j': 2.0, 'energy_source': 'estimate'}

  rows = [row(0.1, 0, 0.5), row(0.1, 1, 0.7), row(0.3, 0, 0.8), row(0.3, 1, None, 'not run')]
  assert [r['test_accuracy'] for r in sweep.sort_rows(rows)] == [0.8, 0.7, 0.5, None]
  groups = sweep.seed_groups(rows)
  assert [(g['values'], g['finished'], g['trials']) for g in groups] == [({'lr': 0.3}, 1, 2), ({'lr': 0.1}, 2, 2)]
  assert groups[1]['test_accuracy_mean'] == pytest.approx(0.6) and groups[1]['test_accuracy_std'] == pytest.approx(0.1)
  assert groups[0]['test_accuracy_std'] == 0.0 and groups[0]['energy_source'] == 'estimate'

  budget = sweep.Budget(max_flops=10.0)
  spent, trial_spent = {'max_seconds': 5.0, 'max_flops': 6.0, 'max_joules': 1.0}, sweep.card_cost(None)
  assert sweep.trial_budget(budget, spent, trial_spent) == {'max_flops': 4.0}
  assert sweep.trial_budget(budget, spent, {**trial_spent, 'max_flops': 2.0}) == {'max_flops': 6.0}  # Resumed.
  assert sweep.trial_budget(budget, spent, trial_spent, sweep.Budget(max_flops=3.0)) == {'max_flops': 3.0}
  assert sweep.budget_reached(budget, spent) is None
  assert sweep.budget_reached(budget, {**spent, 'max_flops': 10.0}) == 'max_flops'


# A stand-in for experiments.train, to test the runner without JAX: argv = [mode, workdir]. 'ok' writes a finished
# card; 'fail' prints to stderr and exits 3; 'wait' marks itself started and runs until SIGTERM, then writes a
# 'preempted' card and exits 0, as training does.
FAKE_TRIAL = '''
import json, os, signal, sys, time
mode, workdir = sys.argv[1:]
os.makedirs(workdir, exist_ok=True)
def card(stop_reason, accuracy):
  with open(os.path.join(workdir, 'run_card.json'), 'w') as f:
    json.dump({'stop_reason': stop_reason, 'steps': 7, 'final_metrics': {'test_accuracy': accuracy, 'test_loss': 1.0},
               'flops': {'total_train': 100.0}, 'time': {'wall_s': 1.0}, 'energy': {'joules': 2.0, 'source': 'x'}}, f)
if mode == 'ok':
  card('steps', 0.5)
elif mode == 'fail':
  print('Traceback (most recent call last):', file=sys.stderr)
  print('RuntimeError: boom', file=sys.stderr)
  sys.exit(3)
else:
  signal.signal(signal.SIGTERM, lambda *_: (card('preempted', 0.25), sys.exit(0)))
  open(os.path.join(workdir, 'started'), 'w').close()
  while True:
    time.sleep(0.01)
'''


def _fake_runner(tmp_path, modes, **kwargs):
  (tmp_path / 'fake_trial.py').write_text(FAKE_TRIAL)
  trials = [sweep.Trial(f't{i}', {'seed': i}, (f'--config.seed={i}',)) for i in range(len(modes))]
  out = str(tmp_path / 'out')
  runner = sweep.Runner(
      trials, out=out, header={'command': 'test', 'preset': 'p', 'sweep_file': 's', 'keys': ['seed']},
      command=lambda t: [sys.executable, str(tmp_path / 'fake_trial.py'), modes[int(t.id[1:])], runner.workdir(t)],
      **kwargs)
  return runner


def test_a_failed_trial_is_recorded_with_its_stderr_and_the_sweep_goes_on(tmp_path):
  lines = []
  runner = _fake_runner(tmp_path, ['ok', 'fail', 'ok'], parallel=2, log=lines.append)
  outcome = runner.run()
  assert outcome.stop is None and outcome.started == 3 and outcome.failed == 1
  assert [s.status for s in outcome.states.values()] == ['finished', 'failed', 'finished']
  assert '[2/3] t1 failed (exit 3): RuntimeError: boom' in '\n'.join(lines)
  summary = _summary(tmp_path / 'out')
  failed = next(r for r in summary['trials'] if r['trial_id'] == 't1')
  assert failed['exit_code'] == 3 and failed['error'].endswith('RuntimeError: boom\n')
  assert summary['trials'][-1]['trial_id'] == 't1'  # No accuracy: last.
  assert 'RuntimeError: boom' in (tmp_path / 'out' / 'table.md').read_text()


RUN_FAKE_SWEEP = '''
import json, sys
sys.path.insert(0, {root!r})
from tests import sweep_test
import pathlib
outcome = sweep_test._fake_runner(pathlib.Path({tmp!r}), ['wait', 'wait', 'ok'], parallel=2).run()
print(json.dumps({{'stop': outcome.stop, 'status': [s.status for s in outcome.states.values()]}}))
'''


def test_sigterm_is_forwarded_to_the_running_trials_and_the_sweep_exits_0(tmp_path):
  proc = subprocess.Popen([sys.executable, '-c', RUN_FAKE_SWEEP.format(root=ROOT, tmp=str(tmp_path))], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  for trial in ('t0', 't1'):
    _wait_for(tmp_path / 'out' / 'trials' / trial / 'started', proc, timeout=60)
  proc.send_signal(signal.SIGTERM)
  stdout, stderr = proc.communicate(timeout=60)
  assert proc.returncode == 0, stderr[-3000:]
  assert 'received SIGTERM: sending SIGTERM to 2 running trial(s)' in stdout
  assert json.loads(stdout.splitlines()[-1]) == {'stop': 'SIGTERM', 'status': ['stopped', 'stopped', 'not run']}
  assert [r['status'] for r in _summary(tmp_path / 'out')['trials']] == ['stopped', 'stopped', 'not run']
