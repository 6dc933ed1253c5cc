"""Bad input to `python -m experiments.train`, as a user types it: exit 2, at most 3 lines on stderr naming the key,
file or value and what is allowed, no traceback, and nothing created or changed in the workdir.

Each case is a real subprocess. docs/reliability.md lists these cases; keep the two in step.
"""

import hashlib
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """A prepared MNIST-1D data dir: runs read it (no generation output on stderr); DATA cases damage copies."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from research import data  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp('prepared'))
  data.load_dataset(ml_collections.ConfigDict({'name': 'mnist1d', 'variant': 'standard', 'data_dir': data_dir}))
  return data_dir


@pytest.fixture(scope='module')
def env(prepared):
  out = dict(os.environ, TFDS_DATA_DIR=prepared, JAX_PLATFORMS='cpu')
  out.pop('XLA_FLAGS', None)  # One CPU device, as on a laptop.
  return out


@pytest.fixture(scope='module')
def trained(tmp_path_factory, env):
  """A finished short run, copied by the cases that need an existing workdir."""
  workdir = tmp_path_factory.mktemp('trained') / 'run'
  proc = subprocess.run(_train(str(workdir), '--config.steps=20', '--config.checkpoint_every=10'), cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def _train(workdir, *args, preset='configs/mnist1d.py:mlp'):
  config = [f'--config={preset}', '--config.progress=False'] if preset else []
  return [sys.executable, '-m', 'experiments.train', *config, *([f'--workdir={workdir}'] if workdir else []), *args]


def _flip_byte(path, offset):
  with open(path, 'r+b') as f:
    f.seek(offset)
    byte = f.read(1)
    f.seek(offset)
    f.write(bytes([byte[0] ^ 0xFF]))


def _corrupt_dataset(source_dir, tmp, how):
  """Copies a prepared MNIST-1D to tmp/tfds and damages its train file; returns the data_dir override."""
  data_dir = os.path.join(tmp, 'tfds')
  shutil.copytree(source_dir, data_dir)
  version_dir = os.path.join(data_dir, 'mnist1d', 'standard', '1.0.0')
  train_file = next(os.path.join(version_dir, n) for n in os.listdir(version_dir) if '-train.' in n)
  if how == 'flip':
    _flip_byte(train_file, os.path.getsize(train_file) // 3)
  elif how == 'truncate':
    os.truncate(train_file, os.path.getsize(train_file) // 2)
  else:
    os.remove(train_file)
  return f'--config.dataset.data_dir={data_dir}'


# (id, extra args, text the error must contain), on the mnist1d:mlp preset. 'PRESET:x' switches to preset x;
# 'DATA:how' points the run at a damaged copy of the prepared MNIST-1D.
CASES = [
    ('typo_in_key', ['--config.optimizer.lerning_rate=3e-3'], "unknown config key 'optimizer.lerning_rate'"),
    ('unknown_top_key', ['--config.stepz=10'], "unknown config key 'stepz'"),
    ('unknown_model_field', ['--config.model.hidden=3'], "unknown config key 'model.hidden'"),
    ('float_for_int', ['--config.steps=1.5'], '--config.steps=1.5'),
    ('bool_for_int', ['--config.steps=True'], '--config.steps=True'),
    ('text_for_float', ['--config.optimizer.learning_rate=fast'], '--config.optimizer.learning_rate=fast'),
    ('negative_seed', ['--config.seed=-1'], "'seed' = -1: expected an integer in [0, 4294967295]"),
    ('zero_steps', ['--config.steps=0'], "'steps' = 0: expected a value > 0"),
    ('negative_batch', ['--config.batch_size=-5'], "'batch_size' = -5: expected a value > 0"),
    ('zero_log_every', ['--config.log_every=0'], "'log_every' = 0"),
    ('negative_lr', ['--config.optimizer.learning_rate=-0.1'], "'optimizer.learning_rate' = -0.1"),
    ('unknown_optimizer', ['--config.optimizer.name=adamax'], "'optimizer.name' = 'adamax': expected one of"),
    ('unknown_schedule', ['--config.optimizer.schedule=cosine'], "'optimizer.schedule' = 'cosine'"),
    ('unknown_model', ['--config.model.name=resnet'], "'model.name' = 'resnet'"),
    ('unknown_dataset', ['--config.dataset.name=imagenet'], "'dataset.name' = 'imagenet'"),
    ('unknown_variant', ['--config.dataset.variant=permuted'], "'dataset.variant' = 'permuted'"),
    ('unknown_order', ['--config.dataset.order=random'], "'dataset.order' = 'random': expected one of"),
    ('dropout_out_of_range', ['--config.model.dropout_rate=1.0'], "'model.dropout_rate' = 1.0"),
    ('momentum_out_of_range', ['--config.optimizer.b1=1.5'], "'optimizer.b1' = 1.5: expected a value in [0, 1)"),
    ('warmup_longer_than_run', ['--config.optimizer.schedule=warmup_cosine', '--config.optimizer.warmup_steps=9000'],
     "'optimizer.warmup_steps' = 9000: expected fewer than steps"),
    ('model_cannot_build', ['PRESET:cnn', '--config.model.channels=(8,8)'], 'must have the same length'),
    ('unknown_weight_init', ['--config.model.weight_init=he'], "model.weight_init ('he') must be one of"),
    ('heads_do_not_divide_width', ['PRESET:transformer', '--config.model.num_heads=5'],
     'must be divisible by model.num_heads'),
    ('mesh_larger_than_devices', ['--config.mesh.data=4'], "'mesh.data' = 4: expected mesh axes whose product"),
    ('mesh_two_fill_axes', ['--config.mesh.fsdp=-1'], "'mesh.fsdp' = -1: expected a device count: only one axis"),
    ('mesh_more_devices_than_here', ['--config.mesh.num_devices=2'], "'mesh.num_devices' = 2: expected -1 (all)"),
    ('process_id_out_of_range', ['--config.distributed.coordinator_address=localhost:1234',
                                 '--config.distributed.num_processes=2', '--config.distributed.process_id=2'],
     "'distributed.process_id' = 2: expected an index in [0, 2)"),
    ('batch_larger_than_split', ['--config.batch_size=5000'], "'batch_size' = 5000: expected at most the 4000"),
    ('eval_batch_larger_than_split', ['--config.eval_batch_size=1001'], "'eval_batch_size' = 1001: expected at most"),
    ('negative_train_examples', ['--config.dataset.train_examples=-5'], "'dataset.train_examples' = -5: expected a "
     'value >= 0'),
    ('train_examples_beyond_split', ['--config.dataset.train_examples=5000'],
     "'dataset.train_examples' = 5000: expected 0 (all) or at most the 4000 examples"),
    ('qat_bits_out_of_range', ['--config.compression.qat_bits=16'],
     "'compression.qat_bits' = 16: expected 0 (off) or a bit width in [2, 8]"),
    ('sparsity_out_of_range', ['--config.compression.sparsity=1.0'], "'compression.sparsity' = 1.0: expected a "
     'fraction in [0, 1)'),
    ('teacher_missing', ['--config.compression.teacher=/nonexistent/run'],
     "'compression.teacher' = '/nonexistent/run': expected a trained run's workdir that exists"),
    ('int8_matmul_when_training', ['--config.compression.int8_matmul=True'],
     "'compression.int8_matmul' = True: expected False when training"),
    ('unknown_flag', ['--wrokdir=x'], 'wrokdir'),
    ('positional_argument', ['extra'], "unexpected arguments: ['extra']"),
    ('dataset_byte_flipped', ['DATA:flip'], 'is unreadable (Corrupted'),
    ('dataset_truncated', ['DATA:truncate'], 'is unreadable'),
    ('dataset_file_missing', ['DATA:missing'], 'is unreadable'),
    ('catalog_dataset_not_prepared', ['PRESET:logreg', '--config.dataset.name=mnist'],
     "dataset 'mnist' is not prepared"),
]


def _snapshot(path):
  """(relative path, sha256) of every file under `path`, or None if it does not exist."""
  if not os.path.exists(path):
    return None
  if os.path.isfile(path):
    with open(path, 'rb') as f:
      return hashlib.sha256(f.read()).hexdigest()
  out = []
  for root, _, files in sorted(os.walk(path)):
    for name in sorted(files):
      with open(os.path.join(root, name), 'rb') as f:
        out.append((os.path.relpath(os.path.join(root, name), path), hashlib.sha256(f.read()).hexdigest()))
  return out


def _assert_clean_failure(proc, message):
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
  assert message in proc.stderr, proc.stderr
  assert 'Traceback' not in proc.stderr
  assert len(proc.stderr.strip().splitlines()) <= 3, proc.stderr


@pytest.mark.parametrize('args,message', [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_config_or_data_exits_2_and_writes_nothing(tmp_path, env, args, message):
  preset = 'configs/mnist1d.py:mlp'
  if args[0].startswith('PRESET:'):
    preset, args = f'configs/mnist1d.py:{args[0].split(":")[1]}', args[1:]
  if args[0].startswith('DATA:'):
    args = [_corrupt_dataset(env['TFDS_DATA_DIR'], str(tmp_path), args[0].split(':')[1])]
  workdir = tmp_path / 'run'
  proc = subprocess.run(_train(str(workdir), *args, preset=preset), cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
  _assert_clean_failure(proc, message)
  assert not workdir.exists()


def test_batch_not_divisible_by_devices_exits_2(tmp_path, env):
  two_devices = dict(env, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  proc = subprocess.run(_train(str(tmp_path / 'run'), '--config.batch_size=7', '--config.mesh.data=2'), cwd=ROOT,
                        env=two_devices, capture_output=True, text=True, timeout=300)
  _assert_clean_failure(proc, "'batch_size' = 7: expected a multiple of the batch shards data x fsdp = 2 x 1 = 2")
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('argv,message', [
    (['--config=configs/nope.py:cnn'], 'could not load the config'),
    (['--config=configs/mnist1d.py:resnet'], "preset 'resnet': expected one of"),
    ([], '--config is required'),
])
def test_bad_config_file_or_preset_exits_2(tmp_path, env, argv, message):
  proc = subprocess.run(_train(str(tmp_path / 'run'), *argv, preset=None), cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
  _assert_clean_failure(proc, message)
  assert not (tmp_path / 'run').exists()


def test_missing_workdir_flag_exits_2(env):
  proc = subprocess.run(_train(None), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  _assert_clean_failure(proc, '--workdir is required')


@pytest.mark.parametrize('case', ['workdir_is_a_file', 'parent_is_a_file', 'unreadable_saved_config',
                                  'changed_learning_rate', 'changed_model', 'every_checkpoint_unusable'])
def test_unusable_workdir_exits_2_and_is_left_unchanged(tmp_path, env, trained, case):
  workdir = tmp_path / 'run'
  args, message = [], None
  if case == 'workdir_is_a_file':
    workdir.write_text('not a directory')
    message = 'is a file, not a directory'
  elif case == 'parent_is_a_file':
    (tmp_path / 'file').write_text('x')
    workdir = tmp_path / 'file' / 'run'
    message = 'cannot be created'
  else:
    shutil.copytree(trained, workdir)
    if case == 'unreadable_saved_config':
      (workdir / 'config.json').write_text('{"steps": 20, ')
      message = 'cannot read the saved config'
    elif case == 'every_checkpoint_unusable':
      for step in ('10', '20'):
        os.remove(workdir / 'checkpoints' / step / 'state' / '_METADATA')
      message = 'no usable checkpoint in'
    elif case == 'changed_learning_rate':
      args, message = ['--config.optimizer.learning_rate=0.5'], 'optimizer.learning_rate: 0.01 -> 0.5'
    else:
      args, message = ['--config.model.hidden_size=50'], 'model.hidden_size: 100 -> 50'
  before = _snapshot(workdir)
  proc = subprocess.run(_train(str(workdir), '--config.steps=20', '--config.checkpoint_every=10', *args), cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=300)
  _assert_clean_failure(proc, message)
  assert _snapshot(workdir) == before


def test_debug_flag_shows_the_traceback(tmp_path, env):
  proc = subprocess.run(_train(str(tmp_path / 'run'), '--config.batch_size=5000', '--debug'), cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and 'Traceback' in proc.stderr and "'batch_size' = 5000" in proc.stderr
