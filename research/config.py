"""Validation of a resolved config: every problem is reported as one ConfigError naming the key.

Runs before any work starts (nothing is written to the workdir for a bad config). The schema is the base config
(configs/base.py, passed in as `schema`), plus each model's dataclass fields for the `model` group.
"""

import os
from typing import Any

import ml_collections


class ConfigError(ValueError):
  """A config value that is not allowed: names the key, the value and what is allowed."""

  def __init__(self, key: str, value: Any, allowed: str):
    self.key, self.value, self.allowed = key, value, allowed
    super().__init__(f'config key {key!r} = {value!r}: expected {allowed}')


def _type_name(t) -> str:
  return str(t) if getattr(t, '__origin__', None) else t.__name__  # 'tuple[int, ...]', 'int'


def _check_type(key: str, value: Any, expected_type) -> None:
  """Checks `value` against a python type or a tuple[int, ...]-style annotation."""
  if expected_type is float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  elif expected_type is int:
    ok = isinstance(value, int) and not isinstance(value, bool)
  elif getattr(expected_type, '__origin__', None) is tuple:
    (elem, *_) = expected_type.__args__
    ok = isinstance(value, (tuple, list)) and all(isinstance(v, elem) and not isinstance(v, bool) for v in value)
  else:
    ok = isinstance(value, expected_type)
  if not ok:
    raise ConfigError(key, value, f'a value of type {_type_name(expected_type)}')


def _check_keys(config: ml_collections.ConfigDict, schema: ml_collections.ConfigDict, prefix: str = '') -> None:
  """Rejects unknown keys and wrong types by comparing with the base config; recurses into groups."""
  for key, value in config.items():
    full = prefix + key
    if full == 'model':
      continue  # Checked against the model's dataclass in _check_model.
    if key not in schema:
      raise ConfigError(full, value, f'one of the known keys {sorted(schema.keys())}')
    expected = schema[key]
    if isinstance(expected, ml_collections.ConfigDict):
      if not isinstance(value, ml_collections.ConfigDict):
        raise ConfigError(full, value, 'a config group')
      _check_keys(value, expected, full + '.')
    else:
      _check_type(full, value, type(expected))


def _check_choice(key: str, value: Any, allowed) -> None:
  if value not in allowed:
    raise ConfigError(key, value, f'one of {sorted(allowed)}')


def _check_model(model_config) -> None:
  from research import models  # pylint: disable=g-import-not-at-top

  _check_choice('model.name', model_config.name, models.MODELS)
  fields = models.model_fields(model_config.name)
  for key, value in model_config.items():
    if key == 'name':
      continue
    if key not in fields:
      raise ConfigError(f'model.{key}', value, f'a field of model {model_config.name!r}: {sorted(fields)}')
    _check_type(f'model.{key}', value, fields[key][0])
  if 'attention' in fields:
    from research.models import gpt  # pylint: disable=g-import-not-at-top
    _check_choice('model.attention', model_config.get('attention', 'auto'), gpt.ATTENTIONS)
  rate = model_config.get('dropout_rate', 0.0)
  if not 0.0 <= rate < 1.0:
    raise ConfigError('model.dropout_rate', rate, 'a value in [0, 1)')


def _check_model_builds(model_config, dataset_config) -> None:
  """Checks that the model suits the dataset's task, then traces its init on abstract inputs (no compute):
  inconsistent fields fail here, not mid-run."""
  import jax  # pylint: disable=g-import-not-at-top
  from research import data, models  # pylint: disable=g-import-not-at-top

  spec = data.DATASETS[dataset_config.name]
  language_model = models.is_language_model(model_config.name)
  if language_model != (spec.task == 'lm'):
    lms = [name for name in models.MODELS if models.is_language_model(name)]
    allowed = (f'a language model ({lms}) for the text dataset {dataset_config.name!r}' if spec.task == 'lm' else
               f'a classifier (not {lms}) for {dataset_config.name!r}; language models train on '
               f'{sorted(n for n, s in data.DATASETS.items() if s.task == "lm")}')
    raise ConfigError('model.name', model_config.name, allowed)
  model = models.get_model(model_config, num_classes=spec.num_classes)
  if language_model:
    if dataset_config.seq_len <= 0:
      raise ConfigError('dataset.seq_len', dataset_config.seq_len, 'a value > 0')
    if dataset_config.seq_len > model.context:
      raise ConfigError('dataset.seq_len', dataset_config.seq_len, f'at most model.context ({model.context})')
  shape = data.example_shape(dataset_config)
  inputs = jax.eval_shape(lambda: models.dummy_input(model, shape))
  try:
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), inputs)
  except (ValueError, TypeError) as e:
    fields = {k: v for k, v in model_config.items() if k != 'name'}
    raise ConfigError('model', fields, f'fields that build a {model_config.name!r} model for '
                      f'{dataset_config.name} inputs {shape}; building it failed: {str(e).splitlines()[0]}') from e


def _check_positive(config, keys, *, allow_zero: bool = False) -> None:
  for key in keys:
    value = config
    for part in key.split('.'):
      value = value[part]
    if value < 0 or (value == 0 and not allow_zero):
      raise ConfigError(key, value, 'a value >= 0' if allow_zero else 'a value > 0')


def check_distributed(dist) -> None:
  """The `distributed` group's keys agree with each other (research.distributed.initialize reads them)."""
  if not dist.coordinator_address:
    return
  if ':' not in dist.coordinator_address:
    raise ConfigError('distributed.coordinator_address', dist.coordinator_address, "'host:port'")
  if dist.num_processes < 1:
    raise ConfigError('distributed.num_processes', dist.num_processes, 'a positive number of processes')
  if not 0 <= dist.process_id < dist.num_processes:
    raise ConfigError('distributed.process_id', dist.process_id, f'an index in [0, {dist.num_processes})')
  if dist.auto_detect:
    raise ConfigError('distributed.auto_detect', True, 'False when distributed.coordinator_address is set')


def _check_scale_out(config: ml_collections.ConfigDict) -> None:
  """Mesh, accumulation, precision and process keys; what needs the devices is checked by sharding.make_mesh."""
  from research import sharding  # pylint: disable=g-import-not-at-top
  from research.training import steps  # pylint: disable=g-import-not-at-top

  for axis in ('num_devices', *sharding.AXES):
    if config.mesh[axis] != -1 and config.mesh[axis] <= 0:
      raise ConfigError(f'mesh.{axis}', config.mesh[axis], '-1 (the devices left) or a positive device count')
  sharding.check_rules(config.mesh.rules)
  _check_positive(config, ['accumulate_steps'])
  if config.batch_size % config.accumulate_steps:
    raise ConfigError('accumulate_steps', config.accumulate_steps, f'a divisor of batch_size ({config.batch_size})')
  _check_choice('compute_dtype', config.compute_dtype, steps.COMPUTE_DTYPES)
  check_distributed(config.distributed)


def override(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  """Sets dotted keys in place, as --config.KEY=VALUE does ({'optimizer.name': 'sgd'}); returns `config`."""
  for key, value in overrides.items():
    parent = config
    *path, leaf = key.split('.')
    for part in path:
      parent = parent[part]
    parent[leaf] = value
  return config


def _check_compression(config: ml_collections.ConfigDict) -> None:
  """The `compression` group (research/compression); the workdirs it names are read when training starts."""
  comp = config.compression
  if comp.qat_bits and not 2 <= comp.qat_bits <= 8:
    raise ConfigError('compression.qat_bits', comp.qat_bits, '0 (off) or a bit width in [2, 8]')
  if not 0.0 <= comp.sparsity < 1.0:
    raise ConfigError('compression.sparsity', comp.sparsity, 'a fraction in [0, 1)')
  _check_choice('compression.prune_scope', comp.prune_scope, ('global', 'layer'))
  _check_positive(config, ['compression.prune_start', 'compression.prune_end'], allow_zero=True)
  _check_positive(config, ['compression.prune_every', 'compression.temperature'])
  if not 0.0 <= comp.distill_weight <= 1.0:
    raise ConfigError('compression.distill_weight', comp.distill_weight, 'a value in [0, 1]')
  for key in ('init_from', 'teacher'):
    path = comp[key]
    if path and not os.path.exists(path):
      raise ConfigError(f'compression.{key}', path, 'a trained run\'s workdir or a .safetensors file that exists'
                        if key == 'init_from' else 'a trained run\'s workdir that exists')


def validate(config: ml_collections.ConfigDict, schema: ml_collections.ConfigDict) -> None:
  """Checks a resolved config; raises ConfigError on the first problem.

  Args:
    config: the resolved config (preset + command-line overrides).
    schema: the base config (configs.base.get_base_config()) that declares every key and its type.
  """
  from research import data  # pylint: disable=g-import-not-at-top
  from research.training import optim  # pylint: disable=g-import-not-at-top

  _check_keys(config, schema)
  _check_positive(config, ['steps', 'batch_size', 'eval_batch_size', 'eval_every', 'log_every',
                           'checkpoint_every', 'keep_checkpoints', 'max_consecutive_nonfinite',
                           'optimizer.learning_rate'])
  _check_positive(config, ['eval_examples', 'optimizer.weight_decay', 'optimizer.grad_clip_norm', 'optimizer.l1', 'optimizer.l2',
                           'optimizer.warmup_steps', 'optimizer.min_learning_rate', 'optimizer.eps'],
                  allow_zero=True)
  if not 0 <= config.seed < 2**32:  # JAX's PRNG seeds are uint32 (and numpy's rngs want a non-negative seed).
    raise ConfigError('seed', config.seed, f'an integer in [0, {2**32 - 1}]')
  _check_choice('dataset.name', config.dataset.name, data.DATASETS)
  _check_choice('dataset.variant', config.dataset.variant,
                ('standard', 'shuffled') if config.dataset.name == 'mnist1d' else ('standard',))
  _check_choice('dataset.order', config.dataset.order, data.ORDERS)
  _check_positive(config, ['dataset.train_examples'], allow_zero=True)
  if config.dataset.train_examples and data.DATASETS[config.dataset.name].task != 'classify':
    raise ConfigError('dataset.train_examples', config.dataset.train_examples,
                      f'0: {config.dataset.name!r} is a language-model corpus (a subset is not defined)')
  _check_positive(config, ['budget.max_seconds', 'budget.max_flops', 'budget.max_joules',
                           'accounting.grid_co2_g_per_kwh'], allow_zero=True)
  _check_positive(config, ['accounting.watts_per_busy_core'])
  _check_choice('accounting.energy_source', config.accounting.energy_source, ('auto', 'nvml', 'rapl', 'estimate'))
  _check_choice('optimizer.name', config.optimizer.name, optim.OPTIMIZERS)
  _check_choice('optimizer.schedule', config.optimizer.schedule, optim.SCHEDULES)
  for key in ('momentum', 'b1', 'b2', 'decay'):
    value = config.optimizer[key]
    if not 0.0 <= value < 1.0:
      raise ConfigError(f'optimizer.{key}', value, 'a value in [0, 1)')
  if config.optimizer.schedule == 'warmup_cosine' and config.optimizer.warmup_steps >= config.steps:
    raise ConfigError('optimizer.warmup_steps', config.optimizer.warmup_steps, f'fewer than steps ({config.steps})')
  if config.optimizer.decay_every <= 0:
    raise ConfigError('optimizer.decay_every', config.optimizer.decay_every, 'a value > 0')
  _check_scale_out(config)
  _check_compression(config)
  _check_model(config.model)
  _check_model_builds(config.model, config.dataset)
