"""Fashion-MNIST presets (needs the TFDS `fashion_mnist` dataset prepared: internet on first use).

  python -m experiments.train --config=configs/fashion_mnist.py:cnn2d --workdir=runs/fmnist_cnn2d
"""

import ml_collections

from configs import images

PRESETS = ('mlp', 'cnn2d', 'lenet5')


def get_config(arg: str = 'cnn2d') -> ml_collections.ConfigDict:
  """Fashion-MNIST preset `arg`, one of PRESETS: about 10 epochs of batch 128."""
  return images.image_config('fashion_mnist', arg, allowed=PRESETS, steps=5000)
