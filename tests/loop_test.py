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
