r"""Launches a training run on a Cloud TPU VM: builds the gcloud command sequence, then prints (--dry_run) or runs it.

Usage:
  python -m experiments.launch tpu --name=costlab-v5e --zone=us-west4-a --accelerator=v5litepod-8 --dry_run \
      -- --config=configs/mnist1d.py:transformer --workdir=runs/tpu
  python -m experiments.launch tpu --name=costlab-v5e --zone=us-west4-a --accelerator=v5litepod-8 --spot \
      --bucket=my-bucket -- --config=configs/mnist1d.py:transformer --workdir=/mnt/gcs/runs/tpu

Phases: create the TPU VM; ship the committed code (git HEAD) to every worker and install the locked environment
plus jax[tpu]; with --bucket, mount the bucket at /mnt/gcs on every worker (gcsfuse); train on all workers at once
(gcloud streams every worker's output); delete the VM (skipped with --keep). Everything after `--` goes to
`experiments.train` unchanged. A failed phase is named on stderr, the delete phase still runs (unless --keep), and
the exit code is 1. Bad input exits 2 with one line naming the flag. docs/cloud_tpu.md walks through it.
"""

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

from absl import app, flags

from experiments import cli

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOUNT_POINT = '/mnt/gcs'  # Where --bucket is mounted on every worker; a workdir under it outlives the VM.
# TPU generation (the accelerator type's prefix) -> the runtime (VM image) for JAX on it.
RUNTIME_VERSIONS = {
    'v2': 'tpu-ubuntu2204-base',
    'v3': 'tpu-ubuntu2204-base',
    'v4': 'tpu-ubuntu2204-base',
    'v5litepod': 'v2-alpha-tpuv5-lite',
    'v5p': 'v2-alpha-tpuv5',
    'v6e': 'v2-alpha-tpuv6e',
}
# Must come after the user's --config=: config_flags rejects a --config.KEY override that precedes --config.
AUTO_DETECT = '--config.distributed.auto_detect=true'
SUBCOMMANDS = ('tpu',)

_NAME = flags.DEFINE_string('name', None, 'TPU VM name: a lowercase letter, then lowercase letters, digits, hyphens.')
_ZONE = flags.DEFINE_string('zone', None, 'Zone of the TPU VM, e.g. us-west4-a (it must offer the accelerator).')
_ACCELERATOR = flags.DEFINE_string('accelerator', None, 'Accelerator type, e.g. v5litepod-8, v5p-8, v6e-8, v4-8.')
_PROJECT = flags.DEFINE_string('project', None, 'Google Cloud project; default: gcloud config get project.')
_VERSION = flags.DEFINE_string('version', None, 'TPU runtime version; default: the one for the accelerator type.')
_SPOT = flags.DEFINE_bool('spot', False, 'Create a spot VM: cheaper, but Google Cloud may reclaim it at any time.')
_KEEP = flags.DEFINE_bool('keep', False, 'Do not delete the VM at the end (it keeps costing money until deleted).')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the commands, one per line, and run nothing.')
_BUCKET = flags.DEFINE_string('bucket', None, f'GCS bucket to mount at {MOUNT_POINT} on every worker (gcsfuse).')


class LaunchInputError(ValueError):
  """Bad launcher input (flags or training arguments); the message names the flag, the value and what is allowed."""


@dataclasses.dataclass(frozen=True)
class TpuSpec:
  """What to create: validated flag values."""
  name: str
  zone: str
  accelerator: str
  version: str
  project: str | None = None
  spot: bool = False
  bucket: str | None = None


@dataclasses.dataclass(frozen=True)
class Phase:
  """One step of the launch: a description (the dry run's comment) and its commands (argv lists), run in order."""
  name: str
  description: str
  commands: tuple[tuple[str, ...], ...]


def runtime_version(accelerator: str, version: str | None = None) -> str:
  """Returns `version`, or the default runtime for the accelerator type's generation.

  Raises:
    LaunchInputError: the accelerator type is not GENERATION-SIZE, or its generation is unknown and no version given.
  """
  match = re.fullmatch(r'([a-z][a-z0-9]*)-([0-9]+)', accelerator)
  if match is None:
    raise LaunchInputError(f'--accelerator={accelerator} is not an accelerator type: expected GENERATION-SIZE, '
                           'e.g. v5litepod-8, v5p-8, v6e-8, v4-8')
  if version:
    return version
  generation = match.group(1)
  if generation not in RUNTIME_VERSIONS:
    raise LaunchInputError(f'--accelerator={accelerator}: unknown TPU generation {generation!r}; known: '
                           f'{", ".join(RUNTIME_VERSIONS)} (or pass --version=RUNTIME for another one)')
  return RUNTIME_VERSIONS[generation]


def make_spec(*, name: str | None, zone: str | None, accelerator: str | None, version: str | None = None,
              project: str | None = None, spot: bool = False, bucket: str | None = None) -> TpuSpec:
  """Validates the flag values.

  Raises:
    LaunchInputError: naming the first missing or malformed flag.
  """
  required = (('name', name, 'e.g. --name=costlab-v5e'), ('zone', zone, 'e.g. --zone=us-west4-a'),
              ('accelerator', accelerator, 'e.g. --accelerator=v5litepod-8'))
  for flag, value, example in required:
    if not value:
      raise LaunchInputError(f'--{flag} is required ({example})')
  checks = (
      ('name', name, r'[a-z]([-a-z0-9]{0,61}[a-z0-9])?', 'a lowercase letter, then up to 62 lowercase letters, '
       'digits or hyphens, not ending in a hyphen'),
      ('zone', zone, r'[a-z]+-[a-z]+[0-9]+-[a-z]', 'a zone such as us-west4-a'),
      ('project', project, r'[a-z][-a-z0-9.:]*[a-z0-9]', 'a project id such as my-project-123'),
      ('version', version, r'[A-Za-z0-9][-A-Za-z0-9._]*', 'a TPU runtime version such as v2-alpha-tpuv5-lite'),
  )
  for flag, value, pattern, allowed in checks:
    if value is not None and not re.fullmatch(pattern, value):
      raise LaunchInputError(f'--{flag}={value} is not allowed: expected {allowed}')
  if bucket is not None:
    bucket = bucket.removeprefix('gs://').rstrip('/')
    if not re.fullmatch(r'[a-z0-9][-a-z0-9._]{1,220}[a-z0-9]', bucket):
      raise LaunchInputError(f'--bucket={bucket} is not a bucket name: expected lowercase letters, digits, '
                             'hyphens, underscores and dots, e.g. --bucket=my-bucket')
  return TpuSpec(name=name, zone=zone, accelerator=accelerator, version=runtime_version(accelerator, version),
                 project=project, spot=spot, bucket=bucket)


def check_train_args(train_args: list[str] | None) -> None:
  """Checks the arguments after `--` name a config and a local workdir (experiments.train checks the rest on the VM).

  Raises:
    LaunchInputError: naming the missing or unsupported flag.
  """
  example = '-- --config=configs/mnist1d.py:cnn --workdir=runs/tpu'
  if not train_args:
    raise LaunchInputError(f'no training arguments: put experiments.train flags after --, e.g. {example}')
  for flag in ('config', 'workdir'):
    if f'--{flag}' in train_args:
      raise LaunchInputError(f'--{flag} after -- needs its value in the same argument: --{flag}=VALUE')
    values = [a.split('=', 1)[1] for a in train_args if a.startswith(f'--{flag}=')]
    if not values:
      raise LaunchInputError(f'the training arguments after -- lack --{flag}=...; got {shlex.join(train_args)}; '
                             f'expected e.g. {example}')
    if flag == 'workdir' and values[-1].startswith('gs://'):
      raise LaunchInputError(f'--workdir={values[-1]}: gs:// workdirs are not supported yet; pass --bucket=BUCKET '
                             f'and a workdir under {MOUNT_POINT}/ (the bucket mounted with gcsfuse)')


def workdir_warnings(spec: TpuSpec, train_args: list[str]) -> list[str]:
  """Where the workdir will not outlive the VM although it should (a warning, not an error)."""
  workdir = [a.split('=', 1)[1] for a in train_args if a.startswith('--workdir=')][-1]
  on_bucket = workdir.startswith(MOUNT_POINT + '/')
  if spec.bucket and not on_bucket:
    return [f'--workdir={workdir} is on the VM disk, not in --bucket={spec.bucket} (mounted at {MOUNT_POINT}/)']
  if not spec.bucket and not on_bucket and spec.spot:
    return [f'--workdir={workdir} is on the VM disk: a reclaimed spot VM takes it along; use --bucket and a '
            f'workdir under {MOUNT_POINT}/ to resume (docs/cloud_tpu.md)']
  return []


def locked_jax_version(lock_text: str) -> str:
  """Returns the version of the `jax==` line of a requirements.lock text.

  Raises:
    LaunchInputError: there is no such line.
  """
  match = re.search(r'^jax==(\S+)\s*$', lock_text, flags=re.MULTILINE)
  if match is None:
    raise LaunchInputError('requirements.lock has no jax==VERSION line (run make lock)')
  return match.group(1)


def _gcloud(spec: TpuSpec, verb: str, *args: str, last: tuple[str, ...] = ()) -> tuple[str, ...]:
  """A `gcloud compute tpus tpu-vm VERB ARGS [--project=P] LAST` argv (every command names the project, if given)."""
  project = (f'--project={spec.project}',) if spec.project else ()
  return ('gcloud', 'compute', 'tpus', 'tpu-vm', verb, *args, *project, *last)


def _apt_install(*packages: str) -> str:
  # A fresh VM's unattended upgrades can hold the dpkg lock for minutes: wait for it rather than fail.
  return f'sudo apt-get update -q && sudo apt-get install -y -q -o DPkg::Lock::Timeout=600 {" ".join(packages)}'


def _setup_command(tarball: str, jax_version: str) -> str:
  # The Makefile's venv needs python3.11 and make; the runtime images' Ubuntu 22.04 ships python 3.10.
  ensure_tools = (f'if ! command -v python3.11 >/dev/null || ! command -v make >/dev/null; then '
                  f'{_apt_install("python3.11", "python3.11-venv", "make")}; fi')
  return (f'mkdir -p costlab && tar -xzf {tarball} -C costlab && cd costlab && {ensure_tools} && make venv && '
          f".venv/bin/pip install 'jax[tpu]=={jax_version}'")


def _mount_command(bucket: str) -> str:
  # --rename-dir-limit: Orbax commits a checkpoint by renaming its temporary directory, which gcsfuse refuses by
  # default on a flat bucket (it copies and deletes object by object, so the rename is not atomic).
  install = ('if ! command -v gcsfuse >/dev/null; then echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] '
             'https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) main" | '
             'sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null && '
             'curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | '
             f'sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null && {_apt_install("gcsfuse")}; fi')
  return (f'{install} && sudo mkdir -p {MOUNT_POINT} && sudo chown "$(id -un)" {MOUNT_POINT} && '
          f'{{ mountpoint -q {MOUNT_POINT} || gcsfuse --implicit-dirs --rename-dir-limit=100000 {bucket} '
          f'{MOUNT_POINT}; }}')


def tpu_phases(spec: TpuSpec, train_args: list[str], *, sha: str, jax_version: str, keep: bool,
               tmp_dir: str = '/tmp') -> list[Phase]:
  """The launch as phases of commands (argv tuples); the first command of `ship` runs locally (git archive).

  Args:
    spec: the validated TPU VM flags.
    train_args: experiments.train flags; passed on shell-quoted.
    sha: the commit to ship.
    jax_version: installed as jax[tpu]==jax_version on the workers (libtpu comes with it).
    keep: leave out the delete phase.
    tmp_dir: where the local tarball is written.

  Returns:
    create, ship, [mount,] train and, unless `keep`, delete.
  """
  tarball = f'costlab-{sha}.tar.gz'
  local_tarball = os.path.join(tmp_dir, tarball)
  zone = f'--zone={spec.zone}'
  on_all_workers = (spec.name, '--worker=all', zone)
  train = f'cd costlab && .venv/bin/python -m experiments.train {shlex.join(train_args)} {AUTO_DETECT}'
  phases = [
      Phase('create', f'create the TPU VM ({spec.accelerator}, runtime {spec.version}'
            f'{", spot" if spec.spot else ""})',
            (_gcloud(spec, 'create', spec.name, zone, f'--accelerator-type={spec.accelerator}',
                     f'--version={spec.version}', last=('--spot',) if spec.spot else ()),)),
      Phase('ship', f'package commit {sha} locally, copy it to every worker, unpack it into ~/costlab and install '
            f'the locked environment (make venv) plus jax[tpu]=={jax_version}', (
                ('git', 'archive', '--format=tar.gz', '-o', local_tarball, sha),
                _gcloud(spec, 'scp', local_tarball, f'{spec.name}:~/', '--worker=all', zone),
                _gcloud(spec, 'ssh', *on_all_workers, last=(f'--command={_setup_command(tarball, jax_version)}',)))),
  ]
  if spec.bucket:
    phases.append(Phase('mount', f'mount gs://{spec.bucket} at {MOUNT_POINT} on every worker (gcsfuse)',
                        (_gcloud(spec, 'ssh', *on_all_workers, last=(f'--command={_mount_command(spec.bucket)}',)),)))
  phases.append(Phase('train', 'train on all workers at once; gcloud streams every worker\'s output',
                      (_gcloud(spec, 'ssh', *on_all_workers, last=(f'--command={train}',)),)))
  if not keep:
    phases.append(Phase('delete', 'delete the TPU VM (its disk, and a workdir on it, go with it)',
                        (_gcloud(spec, 'delete', spec.name, zone, last=('--quiet',)),)))
  return phases


def format_dry_run(phases: list[Phase], *, keep: bool) -> str:
  """The commands, shlex-quoted, one per line, under a numbered comment per phase."""
  lines = ['# Dry run: nothing is executed. Run the same command without --dry_run to execute these in order.']
  for i, phase in enumerate(phases, 1):
    lines.append(f'# Phase {i}/{len(phases)} ({phase.name}): {phase.description}')
    lines.extend(shlex.join(argv) for argv in phase.commands)
  if keep:
    lines.append('# No delete phase (--keep): the VM keeps running, and costing money, until you delete it.')
  return '\n'.join(lines)


def _run_phase(phase: Phase) -> str | None:
  """Runs a phase's commands in order; returns why it failed, or None."""
  for argv in phase.commands:
    print(f'+ {shlex.join(argv)}', flush=True)
    try:
      returncode = subprocess.run(argv, cwd=REPO_ROOT, check=False).returncode
    except KeyboardInterrupt:
      return f'interrupted (Ctrl-C) during {shlex.join(argv[:5])} ...'
    except OSError as e:
      return f'{argv[0]} could not be started: {e}'
    if returncode != 0:
      return f'{shlex.join(argv[:5])} ... exited with code {returncode}'
  return None


def run_phases(phases: list[Phase]) -> int:
  """Runs the phases in order; after a failure only the delete phase (if any) still runs.

  Returns:
    0 if every phase succeeded, else 1 (each failure is named on stderr).
  """
  failed = False
  for i, phase in enumerate(phases, 1):
    if failed and phase.name != 'delete':
      continue
    print(f'== phase {i}/{len(phases)} ({phase.name}): {phase.description}', flush=True)
    reason = _run_phase(phase)
    if reason is None:
      continue
    failed = True
    print(f'error: phase {phase.name} failed: {reason}', file=sys.stderr, flush=True)
    if phase.name == 'delete':
      print(f'error: the TPU VM may still exist and cost money; delete it with: {shlex.join(phase.commands[0])}',
            file=sys.stderr, flush=True)
  return 1 if failed else 0


def _git(*args: str) -> str:
  """Runs a read-only git command in the repository; its stdout."""
  try:
    return subprocess.run(('git', *args), cwd=REPO_ROOT, check=True, capture_output=True, text=True).stdout
  except (OSError, subprocess.CalledProcessError) as e:
    detail = ' '.join(str(getattr(e, 'stderr', None) or e).split())
    raise LaunchInputError(f'git {" ".join(args)} failed in {REPO_ROOT} ({detail}); the launcher ships a commit of '
                           'this git checkout') from e


def _parse_flags(argv: list[str]) -> list[str]:
  """cli.parse_flags on the arguments before `--`; returns [prog, positionals..., '--', train args...]."""
  if '--' not in argv:
    return cli.parse_flags(argv)
  split = argv.index('--')
  return cli.parse_flags(argv[:split]) + argv[split:]


def main(argv: list[str]) -> None:
  train_args = argv[argv.index('--') + 1:] if '--' in argv else None
  positional = argv[1:argv.index('--')] if '--' in argv else argv[1:]
  try:
    if not positional or positional[0] not in SUBCOMMANDS:
      got = f'unknown subcommand {positional[0]!r}' if positional else 'no subcommand'
      raise LaunchInputError(f'{got}; allowed: {", ".join(SUBCOMMANDS)} (for one host with several GPUs, run '
                             'experiments.train there: docs/cloud_tpu.md#multi-gpu-host)')
    if len(positional) > 1:
      raise LaunchInputError(f'unexpected arguments before --: {positional[1:]} (training flags go after --)')
    spec = make_spec(name=_NAME.value, zone=_ZONE.value, accelerator=_ACCELERATOR.value, version=_VERSION.value,
                     project=_PROJECT.value, spot=_SPOT.value, bucket=_BUCKET.value)
    check_train_args(train_args)
    if not _DRY_RUN.value and shutil.which('gcloud') is None:
      raise LaunchInputError('gcloud is not on PATH: install the Google Cloud CLI (docs/cloud_tpu.md)')
    sha = _git('rev-parse', '--short=12', 'HEAD').strip()
    jax_version = locked_jax_version(_git('show', f'{sha}:requirements.lock'))
    dirty = bool(_git('status', '--porcelain', '--untracked-files=no').strip())
  except LaunchInputError as e:
    cli.usage_error(str(e))
  warnings = workdir_warnings(spec, train_args)
  if dirty:
    warnings.append(f'uncommitted changes are not shipped; the VM gets commit {sha}')
  for warning in warnings:
    print(f'warning: {warning}', file=sys.stderr)
  phases = tpu_phases(spec, train_args, sha=sha, jax_version=jax_version, keep=_KEEP.value,
                      tmp_dir=tempfile.gettempdir())
  if _DRY_RUN.value:
    print(format_dry_run(phases, keep=_KEEP.value), flush=True)
    return
  sys.exit(run_phases(phases))


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
