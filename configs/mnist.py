"""MNIST presets (needs the TFDS `mnist` dataset prepared: internet on first use).

  python -m experiments.train --config=configs/mnist.py:cnn2d --workdir=runs/mnist_cnn2d
"""

import ml_collections

from configs import images

PRESETS = ('logreg', 'mlp', 'cnn2d', 'lenet5', 'gru', 'lstm', 'transformer')


def get_config(arg: str = 'cnn2d') -> ml_collections.ConfigDict:
  """MNIST preset `arg`, one of PRESETS: about 10 epochs of batch 128."""
  return images.image_config('mnist', arg, allowed=PRESETS, steps=5000)
