"""Where compression training gets its starting params and its teacher: other runs' workdirs or saved files."""

import os

import jax
import numpy as np

from research.config import ConfigError
from research.training import steps as steps_lib


def _load_run(workdir: str, key: str):
  # research.inference builds on the training loop, which calls this module: imported here, not at the top.
  from research import inference  # pylint: disable=g-import-not-at-top
  try:
    return inference.load_run(workdir)
  except ValueError as e:  # RunNotFoundError or an unreadable config.json.
    raise ConfigError(key, workdir, f'a trained run\'s workdir ({e})') from e


def init_params(path: str, template):
  """Params to start training from, placed like `template` (the fresh state's params).

  Args:
    path: a trained run's workdir (its latest checkpoint) or a .safetensors file of research.compression.storage.
    template: the params of the state training would start from (their shapes, dtypes and shardings).

  Raises:
    ConfigError (key compression.init_from): nothing usable at `path`, or params of another model.
  """
  key = 'compression.init_from'
  if os.path.isfile(path):
    from research.compression import storage  # pylint: disable=g-import-not-at-top
    try:
      loaded, _, _ = storage.load(path)
    except ValueError as e:
      raise ConfigError(key, path, f'a params file written by research.compression.storage ({e})') from e
  else:
    loaded = jax.device_get(_load_run(path, key).params)
  from research import inference  # pylint: disable=g-import-not-at-top  (see _load_run)
  try:
    return inference.place_params(loaded, template)
  except ValueError as e:
    raise ConfigError(key, path, f'params of this config\'s model: {e}; the model config must match the one they '
                      'were trained or saved with') from e


def teacher(comp) -> steps_lib.Teacher | None:
  """The distillation teacher named by the `compression` config group, or None when compression.teacher is ''."""
  if not comp.teacher:
    return None
  run = _load_run(comp.teacher, 'compression.teacher')
  model, params = run.model, run.params
  qat_bits = run.config.compression.qat_bits

  def logits(inputs):
    out = model.apply({'params': steps_lib.forward_params(params, qat_bits)}, inputs, train=False)
    return jax.lax.stop_gradient(out.astype(np.float32))

  return steps_lib.Teacher(logits=logits, temperature=comp.temperature, weight=comp.distill_weight)
