"""CIFAR-10 presets (needs the TFDS `cifar10` dataset prepared: internet on first use).

  python -m experiments.train --config=configs/cifar10.py:cnn2d --workdir=runs/cifar10_cnn2d
"""

import ml_collections

from configs import images

PRESETS = ('cnn2d', 'lenet5', 'transformer')


def get_config(arg: str = 'cnn2d') -> ml_collections.ConfigDict:
  """CIFAR-10 preset `arg`, one of PRESETS: about 40 epochs of batch 128."""
  return images.image_config('cifar10', arg, allowed=PRESETS, steps=16000)
