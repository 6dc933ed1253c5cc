"""Shared builder for the image presets (mnist.py, fashion_mnist.py, cifar10.py); not a preset file itself."""

import ml_collections

from configs import base

# Every model field is listed (so each can be overridden). cnn2d and lenet5 follow PyTorch recipes (examples/mnist,
# the CIFAR-10 tutorial), so they start from PyTorch's initialisation; the Keras-style MLP and the rest from flax's.
MODELS = {
    'logreg': dict(weight_init='flax'),
    'mlp': dict(hidden_size=1024, dropout_rate=0.5, residual=False, weight_init='flax'),
    'cnn2d': dict(channels=(32, 64), hidden_size=128, dropout_rate=0.25, weight_init='pytorch'),
    'lenet5': dict(dropout_rate=0.0, weight_init='pytorch'),
    'gru': dict(hidden_size=128, num_layers=1, bidirectional=False, head='last', dropout_rate=0.0, unroll=1,
                weight_init='flax'),
    'lstm': dict(hidden_size=128, num_layers=1, bidirectional=False, head='last', dropout_rate=0.0, unroll=1,
                 weight_init='flax'),
    'transformer': dict(d_model=64, num_heads=4, num_layers=4, mlp_ratio=4, dropout_rate=0.1, patch_size=1,
                        remat=False),
}


def image_config(dataset: str, model: str, *, num_train: int, epochs: int, batch_size: int = 128,
                 optimizer: str = 'adam', learning_rate: float = 1e-3) -> ml_collections.ConfigDict:
  """A preset for `dataset` with model `model`, trained for `epochs` passes over `num_train` examples.

  Args:
    dataset: a dataset name of research.data.DATASETS.
    model: a key of MODELS.
    num_train: train-split size (to turn epochs into steps).
    epochs: passes over the train split.
    batch_size: global batch size.
    optimizer: optimizer name; 'momentum' uses momentum 0.9.
    learning_rate: constant learning rate.

  Returns:
    The config.
  """
  config = base.get_base_config()
  config.dataset.name = dataset
  config.model.name = model
  config.model.update(MODELS[model])
  config.batch_size = batch_size
  config.steps = epochs * num_train // batch_size
  config.eval_batch_size = 1000
  config.eval_every = max(config.steps // 10, 1)
  config.log_every = min(100, config.eval_every)
  config.checkpoint_every = config.eval_every
  config.optimizer.name = optimizer
  config.optimizer.learning_rate = learning_rate
  config.optimizer.momentum = 0.9
  return config
