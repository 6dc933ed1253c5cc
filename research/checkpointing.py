"""Orbax checkpoints of the train state, the data iterator's state and a small JSON dict, verified by sha256.

Layout of one checkpoint, <workdir>/checkpoints/<step>/, written by an Orbax CheckpointManager as one Composite:
  state/      the TrainState arrays (StandardSave: OCDBT + zarr, zstd-compressed chunks)
  data/       the grain iterator's JSON state, so a resumed run continues the exact data order
  extra/      a small JSON dict from the training loop (cost ledger, counters)
  integrity/  sha256 of every state leaf's bytes and of the canonical JSON of data and extra

What Orbax guarantees on local disk, and what this module adds:
  * Orbax writes a step into `<step>.orbax-checkpoint-tmp*` and renames it to `<step>` once every item is written:
    the rename is the commit (its `_CHECKPOINT_METADATA` and `commit_success.txt` files are not checked on local
    disk). The integrity record is an item of the same step, so it is committed by the same rename.
  * OCDBT checksums its B-tree nodes (where arrays up to 1 KiB sit inline) but not the chunks of larger arrays: a
    flipped byte there restores silently with wrong values. We recompute the sha256s after every restore and treat
    any mismatch as a corrupt checkpoint.
  * Orbax's restore of a damaged checkpoint raises, with no fallback. `restore()` falls back to older checkpoints,
    says so on stderr, and raises CheckpointError only when none is usable.
  * Orbax leaves the temporary directories of interrupted saves behind; we delete them on open.
  * Orbax deletes checkpoints beyond `max_to_keep` only after the new step is committed, and not at all when the
    save fails, so the last good checkpoint survives a failed save (tests/checkpointing_test.py shows it).
"""

import hashlib
import json
import os
import shutil
import sys
import time
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

# Bump when the integrity record's layout changes.
_INTEGRITY_FORMAT = 1


class CheckpointError(RuntimeError):
  """A checkpoint could not be saved, or no usable checkpoint could be restored."""


class Restored(NamedTuple):
  """What `Checkpointer.restore` returns.

  Attributes:
    state: the train state, with the template's shapes, dtypes and shardings.
    data_state: the data iterator's JSON state.
    extra: the JSON dict passed to `save` ({} for checkpoints written before it existed).
    step: the checkpoint's step.
  """
  state: Any
  data_state: dict
  extra: dict
  step: int


def json_sha256(obj) -> str:
  """sha256 of the canonical JSON of `obj` (sorted keys, no spaces): equal before saving and after a JSON round trip."""
  return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(',', ':')).encode()).hexdigest()


def leaf_digests(tree) -> dict[str, dict]:
  """sha256, dtype and shape of every array leaf, keyed by its path (jax.tree_util.keystr).

  Copies the leaves to host, so the caller may donate `tree` afterwards. Multi-process runs: a leaf that is neither
  fully addressable nor fully replicated has no complete copy on this process; its sha256 is recorded as None and
  not checked (our states are replicated, so this does not happen today).
  """
  paths_leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  hashable = [not isinstance(leaf, jax.Array) or leaf.is_fully_addressable or leaf.is_fully_replicated
              for _, leaf in paths_leaves]
  host = iter(jax.device_get([leaf for (_, leaf), ok in zip(paths_leaves, hashable) if ok]))  # One transfer.
  digests = {}
  for (path, leaf), ok in zip(paths_leaves, hashable):
    array = np.ascontiguousarray(next(host)) if ok else None
    digests[jax.tree_util.keystr(path)] = {
        'sha256': hashlib.sha256(array.tobytes()).hexdigest() if ok else None,
        'dtype': str(np.dtype(leaf.dtype)), 'shape': [int(d) for d in np.shape(leaf)]}
  return digests


def _integrity_record(state, data_state: dict, extra: dict) -> dict:
  return {'format': _INTEGRITY_FORMAT, 'state': leaf_digests(state),
          'data_sha256': json_sha256(data_state), 'extra_sha256': json_sha256(extra)}


def _verify(record: dict, state, data_state: dict, extra: dict) -> None:
  """Raises CheckpointError naming the first leaf (or JSON item) whose contents differ from `record`."""
  expected, actual = record['state'], leaf_digests(state)
  if expected.keys() != actual.keys():
    raise CheckpointError(f'leaf paths differ from the integrity record: missing {sorted(expected - actual.keys())}, '
                          f'unexpected {sorted(actual - expected.keys())}')
  for path, want in expected.items():
    got = actual[path]
    if (want['dtype'], want['shape']) != (got['dtype'], got['shape']):
      raise CheckpointError(f'{path} is {got["dtype"]}{got["shape"]}, recorded as {want["dtype"]}{want["shape"]}')
    if want['sha256'] is not None and got['sha256'] is not None and want['sha256'] != got['sha256']:
      raise CheckpointError(f'sha256 mismatch in {path}')
  if json_sha256(data_state) != record['data_sha256']:
    raise CheckpointError('sha256 mismatch in the data iterator state')
  if json_sha256(extra) != record['extra_sha256']:
    raise CheckpointError('sha256 mismatch in extra')


def _reason(error: BaseException) -> str:
  """One line for a log: Orbax and TensorStore errors run to pages (the full TensorStore spec).

  Drops TensorStore's spec dump and keeps both ends of the rest: the operation comes first, the cause last
  ('... Error decoding b-tree node: CRC-32C checksum verification failed', '... File too large').
  """
  lines = str(error).strip().splitlines()
  text = lines[0].split(' [tensorstore_spec')[0] if lines else ''
  text = text if len(text) <= 320 else f'{text[:160]} ... {text[-160:]}'
  return text if isinstance(error, CheckpointError) else f'{type(error).__name__}: {text}'


class Checkpointer:
  """Saves and restores {state, data, extra} with an Orbax CheckpointManager, verified by sha256 on restore.

  Attributes:
    directory: the checkpoint directory.
    skipped: (step, reason) of every checkpoint that `restore` found unusable and skipped, in the order found;
      kept across calls (a later explicit-step restore does not clear it), for the run card.
    removed_tmp: names of leftover temporary directories deleted on open (interrupted saves).
  """

  def __init__(self, directory: str, *, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.skipped: list[tuple[int, str]] = []
    self.removed_tmp = self._remove_tmp_directories()
    # Orbax's own cleanup_tmp_directories=True deletes the same directories, but in a background thread awaited only
    # by the first save; ours is done when the constructor returns.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._pending_step: int | None = None

  def _remove_tmp_directories(self) -> list[str]:
    """Deletes `<step>.orbax-checkpoint-tmp*` directories: saves that never committed (Orbax never lists them)."""
    if jax.process_index() != 0 or not os.path.isdir(self.directory):
      return []
    removed = []
    for tmp in ocp.step.all_temporary_paths(self.directory):  # Orbax's own test for "temporary".
      path = tmp.get()
      shutil.rmtree(path)
      removed.append(path.name)
      print(f'checkpoint: removed {path.name} in {self.directory} (a save that never committed)',
            file=sys.stderr, flush=True)
    return removed

  def latest_step(self) -> int | None:
    """Step of the newest committed checkpoint, or None (it may still fail verification: see `restore`)."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Steps of the committed checkpoints, oldest first."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, data_state: dict, extra: dict | None = None) -> None:
    """Starts saving; device arrays are copied to host before this returns, so the state may then be donated.

    `force=True`: the loop decides when to save, not Orbax's save policy; a save Orbax still declines raises.

    Args:
      step: the checkpoint's step; a committed checkpoint at this step must not exist.
      state: the train state pytree.
      data_state: the data iterator's state, JSON-serialisable.
      extra: a small JSON-serialisable dict (cost ledger, counters); None saves {}.

    Raises:
      CheckpointError: this save, or the previous asynchronous one, failed.
    """
    extra = {} if extra is None else extra
    self.wait()  # Surfaces a failure of the previous asynchronous save under its own step.
    # Hashing copies the state to host here, before returning; Orbax's async save makes its own host copy too.
    record = _integrity_record(state, data_state, extra)
    try:
      saved = self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
          extra=ocp.args.JsonSave(extra), integrity=ocp.args.JsonSave(record)), force=True)
    except Exception as e:
      self._manager.reload()
      raise CheckpointError(f'saving the checkpoint at step {step} in {self.directory} failed: {_reason(e)}') from e
    if not saved:
      raise CheckpointError(f'Orbax did not save the checkpoint at step {step} in {self.directory}')
    self._pending_step = step

  def restore(self, template, step: int | None = None) -> Restored | None:
    """Restores a checkpoint with the shapes, dtypes and shardings of `template`, verified against its sha256s.

    With `step=None`, tries the checkpoints newest first: one that fails to restore or to verify is appended to
    `self.skipped` and the next older one is tried. Once an older one restores, each unusable newer one is
    reported on a stderr line and renamed to `<step>.corrupt-<time>`: out of Orbax's view (it
    lists only `<step>` names), so the run can save those steps again, while the files stay for inspection (and
    until deleted by hand: max_to_keep does not count them). Nothing is renamed when no checkpoint is usable: then
    the fault may be the template's, not the files'.

    Args:
      template: a state (or abstract state) with the checkpoint's tree structure.
      step: restore exactly this step; None: the newest usable one.

    Returns:
      Restored(state, data_state, extra, step), or None when there are no checkpoints at all.

    Raises:
      CheckpointError: checkpoints exist but none is usable (each step and reason listed), or `step` is missing or
        unusable.
    """
    self.wait()
    self._manager.reload()  # Re-list the directory: files may have changed since this object listed them.
    steps = self.all_steps()
    if step is not None:
      if step not in steps:
        raise CheckpointError(f'no checkpoint at step {step} in {self.directory}; available steps: {steps}')
      try:
        return self._restore_verified(template, step)
      except Exception as e:
        raise CheckpointError(f'checkpoint {step} in {self.directory} is unusable ({_reason(e)})') from e
    if not steps:
      return None
    newest_first, unusable = steps[::-1], []
    for candidate in newest_first:
      try:
        restored = self._restore_verified(template, candidate)
      except Exception as e:  # Orbax raises many types (ValueError, KeyError, OSError, JSONDecodeError, ...).
        unusable.append((candidate, _reason(e)))
        self.skipped.append(unusable[-1])
        continue
      for bad_step, reason in unusable:
        self._report_unusable(bad_step, reason, candidate)
      self._set_aside([s for s, _ in unusable])
      return restored
    raise CheckpointError(f'no usable checkpoint in {self.directory}: ' +
                          '; '.join(f'step {s}: {reason}' for s, reason in unusable))

  def _restore_verified(self, template, step: int) -> Restored:
    step_dir = os.path.join(self.directory, str(step))
    has_extra, has_integrity = (os.path.isdir(os.path.join(step_dir, item)) for item in ('extra', 'integrity'))
    if has_extra and not has_integrity:  # Both are written by every save since checksums exist.
      raise CheckpointError('its integrity record is missing')
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    items = {'state': ocp.args.StandardRestore(abstract), 'data': ocp.args.JsonRestore()}
    if has_integrity:
      items.update(extra=ocp.args.JsonRestore(), integrity=ocp.args.JsonRestore())
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    extra = restored['extra'] if has_integrity else {}
    if has_integrity:
      _verify(restored['integrity'], restored['state'], restored['data'], extra)
    else:
      print(f'checkpoint: {step} in {self.directory} predates checksums; restored unverified',
            file=sys.stderr, flush=True)
    return Restored(state=restored['state'], data_state=restored['data'], extra=extra, step=step)

  def _report_unusable(self, step: int, reason: str, restored_step: int) -> None:
    """One line on stderr per skipped checkpoint, once an older one restored (if none does, the CheckpointError
    lists them all). warnings.warn would add a second line with the source line, and show it once per call site."""
    print(f'warning: checkpoint {step} in {self.directory} is unusable ({reason}); falling back to {restored_step}',
          file=sys.stderr, flush=True)

  def _set_aside(self, steps: list[int]) -> None:
    """Renames unusable step directories out of Orbax's view (see `restore`); process 0 renames, all reload."""
    if not steps:
      return
    if jax.process_index() == 0:
      stamp = time.strftime('%Y%m%d-%H%M%S')
      for step in steps:
        target = os.path.join(self.directory, f'{step}.corrupt-{stamp}')
        n = 1
        while os.path.exists(target):
          target, n = os.path.join(self.directory, f'{step}.corrupt-{stamp}-{n}'), n + 1
        os.rename(os.path.join(self.directory, str(step)), target)
        print(f'checkpoint: moved unusable {step} aside to {target}', file=sys.stderr, flush=True)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('checkpointing.set_aside')
    self._manager.reload()

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are committed.

    Raises:
      CheckpointError: the pending save failed (then its step was not committed and older checkpoints remain).
    """
    step, self._pending_step = self._pending_step, None
    try:
      self._manager.wait_until_finished()
    except Exception as e:
      self._manager.reload()  # Orbax dropped the older steps from its list before the failed save; they remain.
      raise CheckpointError(f'saving the checkpoint at step {step} in {self.directory} failed: {_reason(e)}') from e

  def close(self) -> None:
    """Waits for pending saves (raising CheckpointError if one failed), then releases Orbax's resources."""
    try:
      self.wait()
    finally:
      self._manager.close()
