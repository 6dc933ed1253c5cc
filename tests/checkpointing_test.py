"""Checkpointer: exact round trips with shardings; damaged checkpoints are detected and skipped, never restored.

Each fault is injected into real Orbax files the way it happens on disk (a flipped byte, a truncated file, a
deleted file, an interrupted save, a full disk), and the tests check which checkpoint comes back and its contents.
"""

import functools
import glob
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import ml_collections
import optax
import orbax.checkpoint as ocp
import pytest

from research import checkpointing, sharding
from research.training.train_state import create_train_state, state_sha256


class _Dense(nn.Module):
  features: int = 4

  @nn.compact
  def __call__(self, x, *, train: bool):
    del train
    return nn.Dense(self.features)(x)


@functools.lru_cache(maxsize=None)  # Each call compiles the init; the arrays are immutable, so sharing is safe.
def _state(seed, n_devices=8, size=3):
  mesh = sharding.make_mesh(ml_collections.ConfigDict({'data': n_devices, 'num_devices': n_devices}), batch_sizes={})
  return create_train_state(_Dense(features=size), optax.adam(1e-3), input_shape=(size,), seed=seed, mesh=mesh)


def _two_checkpoints(directory, size=3):
  """Commits steps 1 and 2 (states of seeds 1 and 2) and returns their states."""
  states = {1: _state(seed=1, size=size), 2: _state(seed=2, size=size)}
  ckpt = checkpointing.Checkpointer(str(directory), keep=3)
  for step, state in states.items():
    ckpt.save(step, state, {'i': step}, extra={'train_s': 1.5 * step})
  ckpt.close()
  return states


def _largest_file(directory):
  return max(glob.glob(os.path.join(directory, '*')), key=os.path.getsize)


def _flip_byte(path, offset):
  with open(path, 'r+b') as f:
    f.seek(offset)
    byte = f.read(1)[0]
    f.seek(offset)
    f.write(bytes([byte ^ 0x01]))


def _restore_expecting_fallback(directory, size, capsys):
  """Restores from `directory` whose step 2 is damaged; checks the stderr warning line and the state of step 1."""
  ckpt = checkpointing.Checkpointer(str(directory), keep=3)
  restored = ckpt.restore(_state(seed=0, size=size))
  assert restored.step == 1 and restored.data_state == {'i': 1} and restored.extra == {'train_s': 1.5}
  assert state_sha256(restored.state) == state_sha256(_state(seed=1, size=size))
  assert [step for step, _ in ckpt.skipped] == [2]
  err = capsys.readouterr().err
  assert f'warning: checkpoint 2 in {directory} is unusable (' in err and '); falling back to 1' in err
  assert ckpt.all_steps() == [1]  # Step 2 was moved aside as evidence, out of Orbax's view.
  assert [n for n in os.listdir(directory) if n.startswith('2.corrupt-')]
  ckpt.close()
  return ckpt.skipped[0][1]


def test_round_trip_is_exact_and_keeps_shardings(tmp_path):
  state = _state(seed=1)
  ckpt = checkpointing.Checkpointer(str(tmp_path / 'ckpt'), keep=2)
  ckpt.save(10, state, {'next_index': 1234, 'epoch': [1, 2]}, extra={'train_s': 12.3, 'restarts': 1})
  ckpt.wait()
  restored = ckpt.restore(_state(seed=2))
  assert restored.data_state == {'next_index': 1234, 'epoch': [1, 2]}
  assert restored.extra == {'train_s': 12.3, 'restarts': 1} and restored.step == 10
  assert state_sha256(restored.state) == state_sha256(state)
  assert int(restored.state.step) == 0
  leaf = jax.tree.leaves(restored.state.params)[0]
  assert leaf.sharding.is_equivalent_to(jax.tree.leaves(state.params)[0].sharding, leaf.ndim)
  assert ckpt.skipped == []
  ckpt.close()


def test_keeps_newest_and_restores_latest(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path / 'ckpt'), keep=2)
  states = {s: _state(seed=s) for s in (1, 2, 3)}
  for s, state in states.items():
    ckpt.save(s, state, {'s': s})
  ckpt.close()
  assert sorted(os.listdir(tmp_path / 'ckpt')) == ['2', '3']
  reopened = checkpointing.Checkpointer(str(tmp_path / 'ckpt'), keep=2)
  assert reopened.latest_step() == 3
  restored = reopened.restore(_state(seed=0))
  assert restored.data_state == {'s': 3} and restored.extra == {}
  assert state_sha256(restored.state) == state_sha256(states[3])
  assert reopened.restore(_state(seed=0), step=2).data_state == {'s': 2}
  reopened.close()


def test_restore_without_checkpoints_returns_none(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path / 'empty'), keep=1)
  assert ckpt.restore(_state(seed=0)) is None
  ckpt.close()


def test_a_save_right_after_another_is_not_skipped(tmp_path):
  # Orbax skips a save while an async one is in progress unless forced; the final checkpoint must never be lost.
  ckpt = checkpointing.Checkpointer(str(tmp_path / 'ckpt'), keep=5)
  state = _state(seed=1, size=2000)  # 4M params x 3 (Adam): a save slow enough to still be running.
  for step in (10, 11, 12):
    ckpt.save(step, state, {'s': step})
  ckpt.close()
  assert sorted(os.listdir(tmp_path / 'ckpt')) == ['10', '11', '12']


def test_checkpoint_without_extra_or_checksums_still_restores(tmp_path):
  # The layout before checksums: a Composite of state and data only.
  state = _state(seed=1)
  manager = ocp.CheckpointManager(str(tmp_path), options=ocp.CheckpointManagerOptions(create=True))
  manager.save(5, args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave({'i': 5})))
  manager.close()
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=2)
  restored = ckpt.restore(_state(seed=0))
  assert (restored.step, restored.data_state, restored.extra) == (5, {'i': 5}, {})
  assert state_sha256(restored.state) == state_sha256(state)
  ckpt.close()


@pytest.mark.parametrize('where, size', [('d', 3), ('ocdbt.process_0/d', 100)])
def test_flipped_byte_falls_back_to_the_previous_step(tmp_path, capsys, where, size):
  # Orbax's OCDBT store: <step>/state/d/ holds the B-tree, checksummed, with arrays up to 1 KiB inline, so a flip
  # there fails to decode (DATA_LOSS); bigger arrays' zstd chunks sit in ocdbt.process_0/d/, unchecked.
  _two_checkpoints(tmp_path, size=size)
  target = _largest_file(tmp_path / '2' / 'state' / where)
  _flip_byte(target, os.path.getsize(target) // 2)
  if size == 100:  # Plain Orbax restores the damaged step without complaint, with different values.
    manager = ocp.CheckpointManager(str(tmp_path))
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _state(seed=0, size=size))
    silent = manager.restore(2, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))['state']
    manager.close()
    assert state_sha256(silent) != state_sha256(_state(seed=2, size=size))
  reason = _restore_expecting_fallback(tmp_path, size, capsys)
  assert ('DATA_LOSS' in reason) if size == 3 else reason.startswith('sha256 mismatch in ')


def test_truncated_file_falls_back_to_the_previous_step(tmp_path, capsys):
  _two_checkpoints(tmp_path)
  target = _largest_file(tmp_path / '2' / 'state' / 'd')
  os.truncate(target, os.path.getsize(target) // 2)
  _restore_expecting_fallback(tmp_path, 3, capsys)


def test_missing_pytree_metadata_falls_back_to_the_previous_step(tmp_path, capsys):
  _two_checkpoints(tmp_path)
  os.remove(tmp_path / '2' / 'state' / '_METADATA')
  _restore_expecting_fallback(tmp_path, 3, capsys)


def test_missing_integrity_record_falls_back_to_the_previous_step(tmp_path, capsys):
  _two_checkpoints(tmp_path)
  shutil.rmtree(tmp_path / '2' / 'integrity')
  assert 'integrity record is missing' in _restore_expecting_fallback(tmp_path, 3, capsys)


def test_commit_marker_files_are_not_what_commits_a_step_on_local_disk(tmp_path):
  # On local disk Orbax commits a step by renaming its tmp directory; _CHECKPOINT_METADATA and commit_success.txt
  # are informational. Without them the step is still listed, and its contents still verify.
  states = _two_checkpoints(tmp_path)
  os.remove(tmp_path / '2' / '_CHECKPOINT_METADATA')
  os.remove(tmp_path / '2' / 'commit_success.txt')
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=3)
  restored = ckpt.restore(_state(seed=0))
  assert restored.step == 2 and state_sha256(restored.state) == state_sha256(states[2]) and ckpt.skipped == []
  ckpt.close()


def test_leftover_tmp_dir_is_removed_on_open_and_never_restored(tmp_path):
  states = _two_checkpoints(tmp_path)
  # An interrupted save of step 3: complete-looking files under the name Orbax gives a step before its commit.
  shutil.copytree(tmp_path / '2', tmp_path / '3.orbax-checkpoint-tmp-1234')
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=3)
  assert ckpt.removed_tmp == ['3.orbax-checkpoint-tmp-1234']
  assert sorted(os.listdir(tmp_path)) == ['1', '2']
  restored = ckpt.restore(_state(seed=0))
  assert restored.step == 2 and state_sha256(restored.state) == state_sha256(states[2])
  ckpt.close()


def test_all_checkpoints_unusable_raises_naming_every_step(tmp_path):
  _two_checkpoints(tmp_path)
  for step in ('1', '2'):
    os.remove(tmp_path / step / 'state' / '_METADATA')
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=3)
  with pytest.raises(checkpointing.CheckpointError, match=r'no usable checkpoint .*step 2: .*; step 1: '):
    ckpt.restore(_state(seed=0))
  assert [step for step, _ in ckpt.skipped] == [2, 1]
  assert sorted(os.listdir(tmp_path)) == ['1', '2']  # No fallback happened, so nothing was moved aside.
  with pytest.raises(checkpointing.CheckpointError, match=r'checkpoint 1 in .* is unusable'):
    ckpt.restore(_state(seed=0), step=1)
  with pytest.raises(checkpointing.CheckpointError, match=r'no checkpoint at step 7 .*available steps: \[1, 2\]'):
    ckpt.restore(_state(seed=0), step=7)
  ckpt.close()


def test_after_a_fallback_the_same_step_saves_again(tmp_path):
  _two_checkpoints(tmp_path)
  shutil.rmtree(tmp_path / '2' / 'integrity')
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=3)
  assert ckpt.restore(_state(seed=0)).step == 1
  ckpt.save(2, _state(seed=3), {'i': 22}, extra={'restarts': 1})
  assert ckpt.restore(_state(seed=0), step=2).data_state == {'i': 22}
  assert [step for step, _ in ckpt.skipped] == [2]  # Still there for the run card after a later restore.
  ckpt.close()
  reopened = checkpointing.Checkpointer(str(tmp_path), keep=3)
  restored = reopened.restore(_state(seed=0))
  assert (restored.step, restored.data_state, restored.extra) == (2, {'i': 22}, {'restarts': 1})
  assert state_sha256(restored.state) == state_sha256(_state(seed=3)) and reopened.skipped == []
  reopened.close()


def _save_under_file_size_limit(directory: str, limit_bytes: int) -> None:
  """Run in a subprocess: saves step 2 with writes beyond `limit_bytes` failing (EFBIG), as on a full disk."""
  import resource  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top
  state = _state(seed=2, size=200)  # A 160 KB kernel: its data file cannot be written under the limit.
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # Else the kernel kills the process instead of failing the write.
  resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, resource.RLIM_INFINITY))
  ckpt = checkpointing.Checkpointer(directory, keep=1)
  raised_by = 'save'
  try:
    ckpt.save(2, state, {'i': 2})
    raised_by = 'close'
    ckpt.close()
  except checkpointing.CheckpointError as e:
    print(f'RAISED_BY={raised_by} {e}', flush=True)


def test_disk_full_during_save_keeps_the_previous_checkpoint(tmp_path):
  # keep=1: Orbax deletes step 1 only after step 2 commits, so a save that fails midway must leave step 1 intact.
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=1)
  ckpt.save(1, _state(seed=1), {'i': 1})
  ckpt.close()
  code = f'import checkpointing_test as t; t._save_under_file_size_limit({str(tmp_path)!r}, 64 * 1024)'
  child = subprocess.run([sys.executable, '-c', code], cwd=os.path.dirname(__file__), capture_output=True,
                         text=True, timeout=120,
                         env={**os.environ, 'PYTHONPATH': os.path.dirname(os.path.dirname(__file__))})
  assert child.returncode == 0, child.stderr[-3000:]
  raised = [line for line in child.stdout.splitlines() if line.startswith('RAISED_BY=')]
  assert raised and 'saving the checkpoint at step 2' in raised[0] and 'File too large' in raised[0], child.stdout
  assert sorted(os.listdir(tmp_path)) == ['1', '2.orbax-checkpoint-tmp']
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=1)
  assert sorted(os.listdir(tmp_path)) == ['1']
  restored = ckpt.restore(_state(seed=0))
  assert restored.step == 1 and state_sha256(restored.state) == state_sha256(_state(seed=1)) and not ckpt.skipped
  ckpt.close()
