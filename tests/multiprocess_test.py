"""Two `python -m experiments.train` processes on localhost, one run: SIGKILL-and-resume and a SIGTERM to one of them.

Each process has 2 CPU devices (mesh data=2 x fsdp=2 over the 4), reads its own shard of the data and writes its
part of every checkpoint; only process 0 writes config.json, metrics.jsonl, TensorBoard events and the run card.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

import conftest  # tests/ is on sys.path (rootdir conftest): the emulated devices' XLA flags.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCESSES = 2
SUMMARY = '[mlp on mnist1d] '


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  """Subprocess environment: 2 CPU devices per process (not conftest's 8) and a prepared MNIST-1D data dir.

  The data is generated here, once: two processes preparing it at the same time would race in one directory.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  from research import data  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  data.load_dataset(ml_collections.ConfigDict({'name': 'mnist1d', 'variant': 'standard', 'data_dir': data_dir}))
  return dict(os.environ, TFDS_DATA_DIR=data_dir, JAX_PLATFORMS='cpu',
              XLA_FLAGS='--xla_force_host_platform_device_count=2 ' + conftest.CPU_COLLECTIVE_PATIENCE)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


class _Run:
  """Both processes of one session; their stdout and stderr go to files (pipes left unread could fill and block)."""

  def __init__(self, workdir, logs, env, *overrides):
    port, self.logs, self.procs = _free_port(), logs, []
    logs.mkdir(parents=True, exist_ok=True)
    for i in range(PROCESSES):
      cmd = [sys.executable, '-m', 'experiments.train', '--config=configs/mnist1d.py:mlp', f'--workdir={workdir}',
             '--config.progress=False', '--config.mesh.fsdp=2',
             f'--config.distributed.coordinator_address=localhost:{port}',
             f'--config.distributed.num_processes={PROCESSES}', f'--config.distributed.process_id={i}', *overrides]
      with open(logs / f'{i}.out', 'w') as out, open(logs / f'{i}.err', 'w') as err:
        self.procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err, text=True))

  def stdout(self, i: int) -> str:
    return (self.logs / f'{i}.out').read_text()

  def stderr_tails(self) -> str:
    return '\n'.join(f'--- process {i} stderr:\n{(self.logs / f"{i}.err").read_text()[-2000:]}'
                     for i in range(PROCESSES))

  def assert_running(self) -> None:
    for i, proc in enumerate(self.procs):
      assert proc.poll() is None, f'process {i} exited ({proc.returncode}) early\n{self.stderr_tails()}'

  def wait(self, timeout: float) -> list[int]:
    """Return codes of both, waiting at most `timeout` seconds in all."""
    deadline = time.time() + timeout
    try:
      return [proc.wait(timeout=max(0.0, deadline - time.time())) for proc in self.procs]
    except subprocess.TimeoutExpired:
      pytest.fail(f'the processes did not exit within {timeout} s\n{self.stderr_tails()}')

  def kill(self) -> None:
    """SIGKILLs whichever process still runs (also what a failing test leaves behind)."""
    for proc in self.procs:
      if proc.poll() is None:
        proc.kill()
      proc.wait()


def _checkpoint_steps(workdir) -> list[int]:
  """Committed checkpoints: Orbax renames a save's temporary directory to the bare step once every process wrote."""
  ckpt = workdir / 'checkpoints'
  return sorted(int(n) for n in os.listdir(ckpt) if n.isdigit()) if ckpt.exists() else []


def _wait_for_checkpoint(workdir, run: _Run, *, timeout: float = 180) -> int:
  deadline = time.time() + timeout
  while time.time() < deadline:
    if steps := _checkpoint_steps(workdir):
      return steps[-1]
    run.assert_running()
    time.sleep(0.02)
  pytest.fail(f'no checkpoint appeared within {timeout} s\n{run.stderr_tails()}')


def _card(workdir) -> dict:
  with open(workdir / 'run_card.json') as f:
    return json.load(f)


def _metric_records(workdir) -> list[tuple[int, str]]:
  with open(workdir / 'metrics.jsonl') as f:
    return [(r['step'], r['split']) for r in map(json.loads, f)]


def _summary_lines(run: _Run) -> list[list[str]]:
  return [[line for line in run.stdout(i).splitlines() if line.startswith(SUMMARY)] for i in range(PROCESSES)]


def _assert_scale_out(card: dict) -> None:
  assert card['scale_out']['processes'] == PROCESSES
  assert card['scale_out']['mesh'] == {'data': 2, 'fsdp': 2, 'tensor': 1}
  assert card['environment']['process_count'] == PROCESSES and card['environment']['device_count'] == 4


@pytest.mark.long
def test_two_processes_train_checkpoint_are_killed_and_resume(tmp_path, env):
  workdir = tmp_path / 'run'
  first = _Run(workdir, tmp_path / 'first', env, '--config.steps=3000', '--config.checkpoint_every=100')
  try:
    _wait_for_checkpoint(workdir, first)
  finally:
    first.kill()
  assert not (workdir / 'run_card.json').exists(), 'the run finished before it was killed'
  resume_step = _checkpoint_steps(workdir)[-1]  # Read once both are dead: a later save may have committed meanwhile.
  assert resume_step >= 100 and resume_step % 100 == 0

  second = _Run(workdir, tmp_path / 'second', env, '--config.steps=300', '--config.checkpoint_every=100')
  try:
    assert second.wait(timeout=180) == [0, 0], second.stderr_tails()
  finally:
    second.kill()
  assert f'Resuming from the checkpoint at step {resume_step} ' in second.stdout(0)
  card = _card(workdir)
  assert card['steps'] == 300 and card['stop_reason'] == 'steps'
  assert card['resumed_from_step'] == resume_step and card['restarts'] == 1
  _assert_scale_out(card)
  # One summary line for the run, from process 0, with the card's state hash.
  lead, other = _summary_lines(second)
  assert len(lead) == 1 and other == [], (lead, other)
  assert 'steps=300 stop=steps ' in lead[0]
  assert card['final_state_sha256'].startswith(lead[0].rsplit('sha256=', 1)[1])
  assert 300 in _checkpoint_steps(workdir)
  # Process 1 wrote nothing outside checkpoints/: every log point once (none twice, none past the resume point of
  # the killed session) and one TensorBoard events file per session of process 0.
  log_points = [(s, split) for s in range(50, 301, 50) for split in ('train', 'eval') if split == 'train' or s >= 250]
  assert _metric_records(workdir) == log_points  # log_every 50, eval_every 250 and at the end.
  events = [n for n in os.listdir(workdir) if n.startswith('events.out.tfevents')]
  assert len(events) == 2, events
  assert set(os.listdir(workdir)) - set(events) == {'checkpoints', 'config.json', 'metrics.jsonl', 'run_card.json'}


@pytest.mark.long
def test_sigterm_to_one_process_stops_both_at_the_same_step_with_a_checkpoint_also_during_startup(tmp_path, env):
  workdir = tmp_path / 'run'
  run = _Run(workdir, tmp_path / 'logs', env, '--config.steps=3000', '--config.checkpoint_every=100')
  try:
    seen = _wait_for_checkpoint(workdir, run)  # Training is under way, past JAX's distributed initialisation.
    t0 = time.time()
    run.procs[1].send_signal(signal.SIGTERM)
    # JAX's coordination service spreads the notice; both processes stop at the step it agrees on, not by signal.
    assert run.wait(timeout=60) == [0, 0], run.stderr_tails()
    seconds_to_exit = time.time() - t0
  finally:
    run.kill()
  print(f'both processes exited {seconds_to_exit:.1f} s after the SIGTERM')
  assert seconds_to_exit < 30, seconds_to_exit  # Within the usual 30 s preemption notice (about 5 s here).
  card = _card(workdir)
  assert card['stop_reason'] == 'preempted' and seen < card['steps'] < 3000, card['steps']
  stop_step = card['steps']
  assert stop_step in _checkpoint_steps(workdir), _checkpoint_steps(workdir)
  for i in range(PROCESSES):  # The same step on both: neither left the other waiting in a collective.
    assert f'stopped at step {stop_step} with a checkpoint.' in run.stdout(i), run.stdout(i)[-2000:]
  _assert_scale_out(card)
  lead, other = _summary_lines(run)
  assert len(lead) == 1 and other == [] and f'steps={stop_step} stop=preempted ' in lead[0]
  assert _metric_records(workdir)[-2:] == [(stop_step, 'train'), (stop_step, 'eval')]

  # A notice during the next session's startup (restore, compile): JAX's sync point is then step 1, which a resumed
  # run never reaches; StopRequest's first check catches it, so both stop after their first step.
  resumed = _Run(workdir, tmp_path / 'resumed', env, '--config.steps=3000', '--config.checkpoint_every=100')
  try:
    deadline = time.time() + 180
    while f'Resuming from the checkpoint at step {stop_step} ' not in resumed.stdout(0):
      resumed.assert_running()
      assert time.time() < deadline, resumed.stderr_tails()
      time.sleep(0.02)
    resumed.procs[1].send_signal(signal.SIGTERM)
    assert resumed.wait(timeout=90) == [0, 0], resumed.stderr_tails()
  finally:
    resumed.kill()
  card = _card(workdir)
  assert card['stop_reason'] == 'preempted' and card['resumed_from_step'] == stop_step, card
  assert stop_step < card['steps'] < stop_step + 100, card['steps']  # Not trained on to the next checkpoint.
  assert card['steps'] in _checkpoint_steps(workdir)
