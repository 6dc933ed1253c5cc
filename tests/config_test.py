"""Config validation: every preset is valid and complete; bad values name the key, the value and what is allowed."""

import importlib

import pytest

from configs import base
from research import models
from research.config import ConfigError, validate

PRESETS = {
    'mnist1d': ('logreg', 'mlp', 'cnn', 'gru', 'lstm', 'transformer'),
    'mnist': ('cnn', 'mlp', 'lenet5', 'logreg', 'gru', 'lstm', 'transformer'),
    'fashion_mnist': ('cnn', 'mlp', 'lenet5', 'logreg', 'gru', 'lstm', 'transformer'),
    'cifar10': ('lenet5', 'cnn', 'transformer'),
}
ALL = [(f, p) for f, presets in PRESETS.items() for p in presets]


def _get(file: str, preset: str):
  return importlib.import_module(f'configs.{file}').get_config(preset)


@pytest.mark.parametrize('file,preset', ALL)
def test_presets_are_valid_and_list_every_model_field(file, preset):
  config = _get(file, preset)
  validate(config, base.get_base_config())
  # Every model field is in the preset, so any of them can be overridden with --config.model.KEY=VALUE.
  assert set(config.model.keys()) - {'name'} == set(models.model_fields(config.model.name))


def test_unknown_preset_names_the_choices():
  with pytest.raises(ValueError, match='cnn'):
    _get('mnist1d', 'resnet')


@pytest.mark.parametrize('key,value,match', [
    ('steps', 0, "'steps' = 0: expected a value > 0"),
    ('optimizer.learning_rate', -1.0, 'optimizer.learning_rate'),
    ('optimizer.name', 'adamax', "one of \\['adagrad', 'adam', 'adamw'"),
    ('optimizer.schedule', 'linear', 'optimizer.schedule'),
    ('dataset.name', 'imagenet', "'dataset.name' = 'imagenet'"),
    ('model.name', 'resnet', "'model.name' = 'resnet'"),
    ('model.dropout_rate', 1.0, r'\[0, 1\)'),
    ('model.channels', ('a', 'b', 'c'), r'type tuple\[int, ...\]'),
    ('optimizer.momentum', 1.5, 'optimizer.momentum'),
    # Scale-out keys (tests/bad_input_test.py has the ones that need the devices, through the command line).
    ('mesh.tensor', 0, r"'mesh.tensor' = 0: expected -1 \(the devices left\)"),
    ('mesh.rules', (('embed', 'model'),), r"'mesh.rules' = \('embed', 'model'\): expected mesh axes"),
    ('mesh.rules', (('embed',),), r"'mesh.rules' = \('embed',\): expected pairs"),
    ('accumulate_steps', 3, "'accumulate_steps' = 3: expected a divisor of batch_size"),
    ('accumulate_steps', 0, "'accumulate_steps' = 0: expected a value > 0"),
    ('compute_dtype', 'float16', "'compute_dtype' = 'float16': expected one of"),
    ('distributed.coordinator_address', 'localhost', "'distributed.coordinator_address' = 'localhost'"),
])
def test_bad_values_raise_with_key(key, value, match):
  config = _get('mnist1d', 'cnn')
  *groups, leaf = key.split('.')
  node = config
  for g in groups:
    node = node[g]
  with config.unlocked():
    node[leaf] = value
  with pytest.raises(ConfigError, match=match):
    validate(config, base.get_base_config())


def test_unknown_keys_are_rejected():
  config = _get('mnist1d', 'cnn')
  with config.unlocked():
    config.lerning_rate = 0.1
  with pytest.raises(ConfigError, match="'lerning_rate'"):
    validate(config, base.get_base_config())
  config = _get('mnist1d', 'cnn')
  with config.unlocked():
    config.model.hidden = 3
  with pytest.raises(ConfigError, match="'model.hidden'.*a field of model 'cnn'"):
    validate(config, base.get_base_config())


@pytest.mark.parametrize('preset,field,value,match', [
    ('cnn', 'channels', (8, 8), 'must have the same length'),
    ('transformer', 'num_heads', 5, 'must be divisible by model.num_heads'),
    ('transformer', 'patch_size', 3, 'patch_size'),
])
def test_fields_that_cannot_build_the_model_are_rejected_before_training(preset, field, value, match):
  config = _get('mnist1d', preset)
  config.model[field] = value
  with pytest.raises(ConfigError, match=match) as info:
    validate(config, base.get_base_config())
  assert info.value.key == 'model'
