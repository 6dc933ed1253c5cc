"""Fashion-MNIST presets, the MNIST recipes on Fashion-MNIST (needs the TFDS `fashion_mnist` dataset: prepared on
first use with internet, or already in --config.dataset.data_dir).

  python -m experiments.train --config=configs/fashion_mnist.py:cnn --workdir=runs/fmnist_cnn
"""

import ml_collections

from configs import images, mnist


def get_config(arg: str = 'cnn') -> ml_collections.ConfigDict:
  """Fashion-MNIST preset `arg`, one of configs/mnist.py's PRESETS."""
  if arg not in mnist.PRESETS:
    raise ValueError(f'configs/fashion_mnist.py preset {arg!r}: expected one of {sorted(mnist.PRESETS)}')
  return images.image_config('fashion_mnist', num_train=mnist.NUM_TRAIN, epochs=10, batch_size=128,
                             **mnist.PRESETS[arg])
