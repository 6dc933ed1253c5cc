"""Shared builder for the image presets (mnist.py, fashion_mnist.py, cifar10.py); not a preset file itself."""

import ml_collections

from configs import base

# Every model field is listed (so each can be overridden).
MODELS = {
    'logreg': {},
    'mlp': dict(hidden_size=256, dropout_rate=0.0),
    'cnn2d': dict(channels=(32, 64), hidden_size=128, dropout_rate=0.25),
    'lenet5': dict(dropout_rate=0.0),
    'gru': dict(hidden_size=128, num_layers=1, bidirectional=False, head='last', dropout_rate=0.0, unroll=1),
    'lstm': dict(hidden_size=128, num_layers=1, bidirectional=False, head='last', dropout_rate=0.0, unroll=1),
    'transformer': dict(d_model=64, num_heads=4, num_layers=4, mlp_ratio=4, dropout_rate=0.1, patch_size=1),
}


def image_config(dataset: str, arg: str, *, allowed: tuple[str, ...], steps: int) -> ml_collections.ConfigDict:
  """A preset for `dataset` with model `arg`: Adam 1e-3, batch 128, cosine decay with 2% warmup."""
  if arg not in allowed:
    raise ValueError(f'configs/{dataset}.py preset {arg!r}: expected one of {sorted(allowed)}')
  config = base.get_base_config()
  config.dataset.name = dataset
  config.model.name = arg
  config.model.update(MODELS[arg])
  config.steps = steps
  config.batch_size = 128
  config.eval_batch_size = 1000
  config.eval_every = 1000
  config.checkpoint_every = 1000
  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = 1e-3
  config.optimizer.schedule = 'warmup_cosine'
  config.optimizer.warmup_steps = steps // 50
  return config
