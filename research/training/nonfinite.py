"""After NaN/Inf losses: no checkpoint while steps are being skipped, and a stop with the last good checkpoint.

The step itself skips non-finite updates (optax.apply_if_finite, see optim.make_optimizer); the loop calls these
at checkpoint and log points, where it syncs with the device anyway.
"""

from research import checkpointing
from research.training.train_state import TrainState


def finite_now(step_metrics: dict, step: int) -> bool:
  """False while the latest steps are being skipped: their params already gave a NaN/Inf, so no checkpoint."""
  streak = int(step_metrics['nonfinite_streak'])  # A sync, but only at checkpoint time, which syncs anyway.
  if streak:
    print(f'\nwarning: no checkpoint at step {step}: its last {streak} steps had a NaN/Inf loss or gradient',
          flush=True)
  return not streak


def restore_last_good(ckpt: checkpointing.Checkpointer, state: TrainState, step: int, *,
                      streak: int) -> tuple[TrainState, int | None]:
  """After `streak` non-finite steps ending at `step`: the newest checkpoint from before the divergence and its
  step, or (state, None) if there is none.

  Step k computes its loss with the params after k - 1 updates. The first bad step, step - streak + 1, thus saw
  the params after step - streak updates, which are bad although finite (an update blew them up); the newest
  good checkpoint is the newest one before that.
  """
  ckpt.wait()
  good = [s for s in ckpt.all_steps() if s < step - streak]
  if not good:
    return state, None
  restored = ckpt.restore(state, step=max(good))
  return restored.state, restored.step


def message(config, step: int, restored_step: int | None, streak: int) -> str:
  """What the user reads on stderr when the run stops: where it diverged, what was kept, what to try."""
  first_bad = step - streak + 1
  final = (f'Final state: the checkpoint at step {restored_step}, the newest from before.' if restored_step else
           f'No checkpoint predates step {first_bad}: the final state (step {step}) is suspect.')
  return (f'training stopped at step {step}: the loss or gradient was NaN/Inf at every step since step {first_bad} '
          f'({streak} in a row, max_consecutive_nonfinite={config.max_consecutive_nonfinite}); those updates were '
          f'skipped. {final}\nTry a lower optimizer.learning_rate (now {config.optimizer.learning_rate}) or '
          'optimizer.grad_clip_norm > 0, in a new --workdir.')
