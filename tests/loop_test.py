"""train_and_evaluate in-process: the MNIST and CIFAR-10 recipes end to end on tfds.testing.mock_data."""

import importlib

import pytest
import tensorflow_datasets as tfds

from configs import base
from research import run_card
from research.config import validate
from research.training import loop


@pytest.mark.parametrize('file,preset,batch_size', [
    ('mnist', 'cnn', 32), ('mnist', 'mlp', 32), ('fashion_mnist', 'lenet5', 32), ('cifar10', 'lenet5', 4),
    ('cifar10', 'cnn', 16),
])
def test_image_recipes_train_end_to_end_on_mock_data(tmp_path, file, preset, batch_size):
  config = importlib.import_module(f'configs.{file}').get_config(preset)
  with config.unlocked():
    config.steps, config.batch_size, config.eval_batch_size = 4, batch_size, 64
    config.eval_every = config.checkpoint_every = config.log_every = 2
    config.progress = False
    config.mesh.data = config.mesh.num_devices = 1
  validate(config, base.get_base_config())
  with tfds.testing.mock_data(num_examples=96, policy=tfds.testing.MockPolicy.USE_CODE):
    card = loop.train_and_evaluate(config, str(tmp_path))
  assert card == run_card.read(str(tmp_path))  # The card on disk is the one returned.
  assert card['steps'] == 4 and card['stop_reason'] == 'steps'
  assert card['dataset'] == file
  assert 0.0 <= card['final_metrics']['test_accuracy'] <= 1.0
  assert card['final_metrics']['test_loss'] > 0


def test_train_and_eval_steps_compile_once_ahead_of_time_for_the_whole_run(tmp_path, monkeypatch):
  from configs import mnist1d  # pylint: disable=g-import-not-at-top
  jitted = {}
  for name in ('make_jit_train_step', 'make_jit_eval_step'):
    make = getattr(loop, name)
    monkeypatch.setattr(loop, name, lambda *a, _make=make, _name=name, **k: jitted.setdefault(_name, _make(*a, **k)))
  config = mnist1d.get_config('mlp')
  with config.unlocked():
    config.steps, config.eval_every, config.checkpoint_every, config.log_every = 6, 3, 3, 2
    config.progress = False
    config.mesh.data = config.mesh.num_devices = 1
  validate(config, base.get_base_config())
  card = loop.train_and_evaluate(config, str(tmp_path))
  assert card['steps'] == 6
  # The loop compiles each step once, ahead of time (_compile_steps), and runs that executable for every batch,
  # every eval pass (the last batch padded) and the card's latency: the jitted functions themselves were never
  # traced again by a call (an AOT executable takes only its one signature: another shape would be an error, never
  # a silent recompile).
  assert jitted['make_jit_train_step']._cache_size() == 0
  assert jitted['make_jit_eval_step']._cache_size() == 0
