"""Orbax checkpoints of the train state plus the data iterator's state, under <workdir>/checkpoints."""

import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores {state, data} pairs with an Orbax CheckpointManager.

  Each checkpoint holds the TrainState (arrays, restored with the shardings of a template state) and the grain
  iterator's JSON state, so a resumed run continues the exact data order. Orbax commits atomically (a step
  directory appears only when complete) and keeps the newest `keep` checkpoints.
  """

  def __init__(self, directory: str, *, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    """Step of the newest committed checkpoint, or None."""
    return self._manager.latest_step()

  def save(self, step: int, state, data_state: dict) -> None:
    """Starts saving; device arrays are copied to host before this returns, so the state may then be donated.

    `force=True`: the loop decides when to save, not Orbax's save policy; a save Orbax still declines raises.
    """
    saved = self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)
    if not saved:
      raise RuntimeError(f'Orbax did not save the checkpoint at step {step} in {self.directory}')

  def restore(self, template, step: int | None = None):
    """Restores (state, data_state) at `step` (default: latest) with the shapes, dtypes and shardings of `template`.

    Returns:
      (state, data_state), or None when there is no checkpoint.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
    return restored['state'], restored['data']

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
