"""CIFAR-10 presets (needs the TFDS `cifar10` dataset: prepared on first use with internet, or already in
--config.dataset.data_dir).

  python -m experiments.train --config=configs/cifar10.py:lenet5 --workdir=runs/cifar10_lenet5

Presets:
  lenet5       LeNet-5 (62,006 params on 32x32x3) with the PyTorch CIFAR-10 tutorial's recipe: SGD momentum 0.9,
               lr 0.001, batch 4, 2 epochs.
  cnn          cnn2d (conv32-conv64 + pool + fc128), Adam lr 1e-3, batch 128, 20 epochs.
  transformer  rows as tokens, Adam lr 1e-3, batch 128, 20 epochs.
"""

import ml_collections

from configs import images

NUM_TRAIN = 50_000
PRESETS = {
    'lenet5': dict(model='lenet5', optimizer='momentum', learning_rate=0.001, batch_size=4, epochs=2),
    'cnn': dict(model='cnn2d', batch_size=128, epochs=20),
    'transformer': dict(model='transformer', batch_size=128, epochs=20),
}


def get_config(arg: str = 'lenet5') -> ml_collections.ConfigDict:
  """CIFAR-10 preset `arg`, one of PRESETS."""
  if arg not in PRESETS:
    raise ValueError(f'configs/cifar10.py preset {arg!r}: expected one of {sorted(PRESETS)}')
  return images.image_config('cifar10', num_train=NUM_TRAIN, **PRESETS[arg])
