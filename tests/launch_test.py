"""Tests of experiments.launch: the gcloud commands it prints (--dry_run) and runs, against a fake `gcloud` on PATH.

Every test runs the launcher as a subprocess (as a user would); none needs gcloud, a TPU or a network. The real
(non-dry) path runs the fake gcloud, which records its argv, and a real `git archive` into a temporary directory.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUTO_DETECT = '--config.distributed.auto_detect=true'
TRAIN_ARGS = ['--config=configs/mnist1d.py:transformer', '--workdir=runs/tpu test', '--config.steps=100']
TPU = ['tpu', '--name=costlab-test', '--zone=us-west4-a', '--accelerator=v5litepod-8']

# Records its argv as one JSON line in $FAKE_GCLOUD_LOG; exits 3 when an argument contains $FAKE_GCLOUD_FAIL_ON.
FAKE_GCLOUD = """#!{python} -S
import json, os, sys
with open(os.environ['FAKE_GCLOUD_LOG'], 'a') as f:
  f.write(json.dumps(sys.argv[1:]) + '\\n')
fail_on = os.environ.get('FAKE_GCLOUD_FAIL_ON')
sys.exit(3 if fail_on and any(fail_on in a for a in sys.argv[1:]) else 0)
"""


def _launch(args: list[str], tmp_path, *, fail_on: str | None = None) -> subprocess.CompletedProcess:
  """Runs `python -m experiments.launch ARGS` with the fake gcloud first on PATH and TMPDIR in tmp_path."""
  bin_dir, tmp_dir = tmp_path / 'bin', tmp_path / 'tmp'
  for d in (bin_dir, tmp_dir):
    d.mkdir(exist_ok=True)
  fake = bin_dir / 'gcloud'
  fake.write_text(FAKE_GCLOUD.format(python=sys.executable))
  fake.chmod(0o755)
  env = dict(os.environ, PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', TMPDIR=str(tmp_dir),
             FAKE_GCLOUD_LOG=str(tmp_path / 'gcloud.log'))
  env.pop('FAKE_GCLOUD_FAIL_ON', None)
  if fail_on:
    env['FAKE_GCLOUD_FAIL_ON'] = fail_on
  return subprocess.run([sys.executable, '-m', 'experiments.launch', *args], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=60, check=False)


def _gcloud_calls(tmp_path) -> list[list[str]]:
  log = tmp_path / 'gcloud.log'
  return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _dry_run(args: list[str], tmp_path) -> tuple[list[list[str]], str]:
  """Runs a dry run; returns the printed commands (each split back into its argv) and the whole stdout."""
  split = args.index('--') if '--' in args else len(args)  # Launcher flags go before `--`.
  result = _launch([*args[:split], '--dry_run', *args[split:]], tmp_path)
  assert result.returncode == 0, result.stderr
  assert not (tmp_path / 'gcloud.log').exists(), 'a dry run called gcloud'
  assert not os.listdir(tmp_path / 'tmp'), 'a dry run wrote the tarball'
  commands = [shlex.split(line) for line in result.stdout.splitlines() if line and not line.startswith('#')]
  return commands, result.stdout


def _remote_command(argv: list[str]) -> str:
  """The --command=... of a `gcloud ... ssh` argv."""
  (command,) = [a.split('=', 1)[1] for a in argv if a.startswith('--command=')]
  return command


def _verb(argv: list[str]) -> str:
  """'create', 'scp', 'ssh', 'delete' for gcloud commands; 'git' for the local git archive."""
  return argv[4] if argv[0] == 'gcloud' else argv[0]


def test_dry_run_prints_each_phase_and_runs_nothing(tmp_path):
  commands, stdout = _dry_run([*TPU, '--spot', '--', *TRAIN_ARGS], tmp_path)

  assert [_verb(c) for c in commands] == ['create', 'git', 'scp', 'ssh', 'ssh', 'delete']
  assert re.findall(r'^# Phase (\d)/4 \((\w+)\)', stdout, flags=re.MULTILINE) == [
      ('1', 'create'), ('2', 'ship'), ('3', 'train'), ('4', 'delete')]
  create, archive, scp, setup, train, delete = commands
  assert create == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'costlab-test', '--zone=us-west4-a',
                    '--accelerator-type=v5litepod-8', '--version=v2-alpha-tpuv5-lite', '--spot']
  sha = archive[-1]  # HEAD when the launcher ran (read from the output: others may commit meanwhile).
  assert re.fullmatch('[0-9a-f]{12}', sha)
  subprocess.run(['git', 'cat-file', '-e', f'{sha}^{{commit}}'], cwd=REPO_ROOT, check=True)
  tarball = os.path.join(str(tmp_path / 'tmp'), f'costlab-{sha}.tar.gz')
  assert archive == ['git', 'archive', '--format=tar.gz', '-o', tarball, sha]
  assert scp == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', tarball, 'costlab-test:~/', '--worker=all',
                 '--zone=us-west4-a']
  for ssh in (setup, train):
    assert ssh[4:8] == ['ssh', 'costlab-test', '--worker=all', '--zone=us-west4-a']
  lock = subprocess.run(['git', 'show', f'{sha}:requirements.lock'], cwd=REPO_ROOT, capture_output=True, text=True,
                        check=True).stdout
  (jax_version,) = re.findall(r'^jax==(\S+)$', lock, flags=re.MULTILINE)
  assert shlex.split(_remote_command(setup))[-3:] == ['.venv/bin/pip', 'install', f'jax[tpu]=={jax_version}']
  assert f'tar -xzf costlab-{sha}.tar.gz -C costlab && cd costlab' in _remote_command(setup)
  # The argument with a space survives the remote shell as one argument; auto_detect comes after --config=.
  assert shlex.split(_remote_command(train)) == [
      'cd', 'costlab', '&&', '.venv/bin/python', '-m', 'experiments.train', *TRAIN_ARGS, AUTO_DETECT]
  assert delete == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'costlab-test', '--zone=us-west4-a', '--quiet']


def test_keep_drops_the_delete_phase_and_project_reaches_every_gcloud_command(tmp_path):
  commands, stdout = _dry_run([*TPU, '--keep', '--project=my-proj', '--', *TRAIN_ARGS], tmp_path)

  assert [_verb(c) for c in commands] == ['create', 'git', 'scp', 'ssh', 'ssh']
  assert '--spot' not in commands[0]
  assert '(delete)' not in stdout and 'tpu-vm delete' not in stdout
  assert all('--project=my-proj' in c for c in commands if c[0] == 'gcloud')


def test_bucket_mounts_on_every_worker_before_training(tmp_path):
  commands, _ = _dry_run([*TPU, '--bucket=gs://my-bucket', '--', '--config=configs/mnist1d.py:cnn',
                          '--workdir=/mnt/gcs/runs/cnn'], tmp_path)

  assert [_verb(c) for c in commands] == ['create', 'git', 'scp', 'ssh', 'ssh', 'ssh', 'delete']
  mount = commands[4]
  assert mount[4:8] == ['ssh', 'costlab-test', '--worker=all', '--zone=us-west4-a']
  assert 'gcsfuse --implicit-dirs --rename-dir-limit=100000 my-bucket /mnt/gcs' in _remote_command(mount)
  assert '--workdir=/mnt/gcs/runs/cnn' in _remote_command(commands[5])


@pytest.mark.parametrize('accelerator, version', [
    ('v5litepod-8', 'v2-alpha-tpuv5-lite'), ('v5p-8', 'v2-alpha-tpuv5'), ('v6e-8', 'v2-alpha-tpuv6e'),
    ('v4-8', 'tpu-ubuntu2204-base'), ('v3-8', 'tpu-ubuntu2204-base'), ('v2-8', 'tpu-ubuntu2204-base')])
def test_runtime_version_follows_the_generation(tmp_path, accelerator, version):
  commands, _ = _dry_run([*TPU[:3], f'--accelerator={accelerator}', '--', *TRAIN_ARGS], tmp_path)
  assert commands[0][7:9] == [f'--accelerator-type={accelerator}', f'--version={version}']


def test_explicit_version_allows_an_unknown_generation(tmp_path):
  commands, _ = _dry_run([*TPU[:3], '--accelerator=v9x-8', '--version=my-runtime', '--', *TRAIN_ARGS], tmp_path)
  assert commands[0][7:9] == ['--accelerator-type=v9x-8', '--version=my-runtime']


@pytest.mark.parametrize('args, expected', [
    (['tpu', '--zone=us-west4-a', '--accelerator=v5litepod-8', '--', *TRAIN_ARGS], '--name is required'),
    (['tpu', '--name=t', '--accelerator=v5litepod-8', '--', *TRAIN_ARGS], '--zone is required'),
    (['tpu', '--name=t', '--zone=us-west4-a', '--', *TRAIN_ARGS], '--accelerator is required'),
    ([*TPU[:3], '--accelerator=v9x-8', '--', *TRAIN_ARGS], "--accelerator=v9x-8: unknown TPU generation 'v9x'"),
    ([*TPU[:3], '--accelerator=tpu8', '--', *TRAIN_ARGS], '--accelerator=tpu8 is not an accelerator type'),
    (['tpu', '--name=My_TPU', *TPU[2:], '--', *TRAIN_ARGS], '--name=My_TPU is not allowed'),
    ([*TPU], 'no training arguments'),
    ([*TPU, '--'], 'no training arguments'),
    ([*TPU, '--', '--workdir=runs/x'], 'lack --config='),
    ([*TPU, '--', '--config=configs/mnist1d.py:cnn'], 'lack --workdir='),
    ([*TPU, '--', '--config', 'configs/mnist1d.py:cnn', '--workdir=runs/x'], '--config after -- needs its value'),
    ([*TPU, '--', '--config=configs/mnist1d.py:cnn', '--workdir=gs://b/runs/x'], 'gs:// workdirs are not supported'),
    (['gpu', *TPU[1:], '--', *TRAIN_ARGS], "unknown subcommand 'gpu'; allowed: tpu"),
    (TPU[1:] + ['--', *TRAIN_ARGS], 'no subcommand; allowed: tpu'),
    ([*TPU, '--acclerator=v4-8', '--', *TRAIN_ARGS], 'acclerator'),
])
def test_bad_input_exits_2_naming_the_flag(tmp_path, args, expected):
  result = _launch(args, tmp_path)
  assert result.returncode == 2, result.stdout + result.stderr
  assert expected in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert 'Traceback' not in result.stderr
  assert not _gcloud_calls(tmp_path)


def test_run_executes_the_phases_in_order_and_ships_head(tmp_path):
  result = _launch([*TPU, '--', *TRAIN_ARGS], tmp_path)

  assert result.returncode == 0, result.stderr
  calls = _gcloud_calls(tmp_path)
  assert [c[3] for c in calls] == ['create', 'scp', 'ssh', 'ssh', 'delete']
  assert 'make venv' in _remote_command(calls[2]) and 'experiments.train' in _remote_command(calls[3])
  (tarball,) = os.listdir(tmp_path / 'tmp')  # Written by the real git archive, then passed to scp.
  assert calls[1][4] == str(tmp_path / 'tmp' / tarball)
  with tarfile.open(tmp_path / 'tmp' / tarball) as archive:
    names = set(archive.getnames())
  assert {'Makefile', 'requirements.lock', 'experiments/train.py'} <= names


@pytest.mark.parametrize('keep', [False, True])
def test_a_failed_train_phase_still_deletes_the_vm_and_exits_1(tmp_path, keep):
  result = _launch([*TPU, *(['--keep'] if keep else []), '--', *TRAIN_ARGS], tmp_path, fail_on='experiments.train')

  assert result.returncode == 1
  assert 'error: phase train failed' in result.stderr and 'exited with code 3' in result.stderr
  verbs = [c[3] for c in _gcloud_calls(tmp_path)]
  assert verbs == (['create', 'scp', 'ssh', 'ssh'] if keep else ['create', 'scp', 'ssh', 'ssh', 'delete'])


def test_a_failed_create_skips_to_the_delete_phase(tmp_path):
  result = _launch([*TPU, '--', *TRAIN_ARGS], tmp_path, fail_on='--accelerator-type=')

  assert result.returncode == 1
  assert 'error: phase create failed' in result.stderr
  assert [c[3] for c in _gcloud_calls(tmp_path)] == ['create', 'delete']
  assert not os.listdir(tmp_path / 'tmp')  # The ship phase did not run.


def _stub(path, script: str) -> None:
  path.write_text('#!/bin/sh\n' + script)
  path.chmod(0o755)


@pytest.mark.parametrize('has_python311', [True, False])
def test_remote_commands_unpack_install_and_train_with_the_arguments_intact(tmp_path, has_python311):
  """Runs the printed setup and train commands in bash, in a fake home with stub make/sudo/python3.11."""
  commands, _ = _dry_run([*TPU, '--', *TRAIN_ARGS], tmp_path)
  _, archive, _, setup, train, _ = commands
  home, bin_dir = tmp_path / 'home', tmp_path / 'remote-bin'
  home.mkdir()
  bin_dir.mkdir()
  archive[4] = str(home / os.path.basename(archive[4]))  # Where scp puts it: the home directory.
  subprocess.run(archive, cwd=REPO_ROOT, check=True)
  for tool in ('tar', 'gzip', 'mkdir', 'cp'):
    os.symlink(shutil.which(tool), bin_dir / tool)
  log, recorder = tmp_path / 'remote.log', tmp_path / 'recorder'
  # make venv creates .venv/bin/{pip,python}: copies of a recorder that logs its name and arguments, one per line.
  _stub(recorder, f'echo "${{0##*/}}" >> {log}; for a in "$@"; do printf "%s\\n" "$a" >> {log}; done\n')
  _stub(bin_dir / 'make', f'echo "make $*" >> {log}; mkdir -p .venv/bin; for t in pip python; do '
        f'cp {recorder} .venv/bin/$t; done\n')
  _stub(bin_dir / 'sudo', f'echo "sudo $*" >> {log}\n')
  if has_python311:
    _stub(bin_dir / 'python3.11', 'exit 0\n')
  env = {'PATH': str(bin_dir), 'HOME': str(home)}

  for command in (setup, train):
    subprocess.run(['/bin/bash', '-c', _remote_command(command)], cwd=home, env=env, check=True, timeout=30)

  assert (home / 'costlab' / 'Makefile').exists() and (home / 'costlab' / 'requirements.lock').exists()
  lines = log.read_text().splitlines()
  sudo = [line for line in lines if line.startswith('sudo ')]
  assert bool(sudo) != has_python311
  if sudo:
    assert 'python3.11 python3.11-venv make' in sudo[-1]
  make_at, pip_at, python_at = lines.index('make venv'), lines.index('pip'), lines.index('python')
  assert make_at < pip_at < python_at
  assert lines[pip_at + 1:python_at] == ['install', shlex.split(_remote_command(setup))[-1]]
  assert lines[python_at + 1:] == ['-m', 'experiments.train', *TRAIN_ARGS, AUTO_DETECT]
