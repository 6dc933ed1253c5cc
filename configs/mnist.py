"""MNIST presets: the classic recipes (needs the TFDS `mnist` dataset: prepared on first use with internet, or
already in --config.dataset.data_dir).

  python -m experiments.train --config=configs/mnist.py:cnn --workdir=runs/mnist_cnn

Presets (name: model, recipe):
  cnn     cnn2d: conv32-conv64 3x3 + 2x2 max pool + fc128 (dropout 0.25), SGD momentum 0.9, lr 0.01, 10 epochs.
  mlp     1024-1024 MLP with dropout 0.5, Adam lr 1e-3, batch 128, 10 epochs.
  lenet5, logreg, gru, lstm, transformer: Adam lr 1e-3, batch 128, 10 epochs.
"""

import ml_collections

from configs import images

NUM_TRAIN = 60_000
PRESETS = {
    'cnn': dict(model='cnn2d', optimizer='momentum', learning_rate=0.01),
    'mlp': dict(model='mlp'),
    'lenet5': dict(model='lenet5'),
    'logreg': dict(model='logreg'),
    'gru': dict(model='gru'),
    'lstm': dict(model='lstm'),
    'transformer': dict(model='transformer'),
}


def get_config(arg: str = 'cnn') -> ml_collections.ConfigDict:
  """MNIST preset `arg`, one of PRESETS."""
  if arg not in PRESETS:
    raise ValueError(f'configs/mnist.py preset {arg!r}: expected one of {sorted(PRESETS)}')
  return images.image_config('mnist', num_train=NUM_TRAIN, epochs=10, batch_size=128, **PRESETS[arg])
