"""Convolutional classifiers: the MNIST-1D paper's 1-D CNN, the classic MNIST 2-D CNN, and LeNet-5.

All convolutions use `layers.Im2colConv` and pooling `layers.max_pool`: the same functions and parameters as
`nn.Conv` / `nn.max_pool`, in formulations that are faster on XLA:CPU (tests/models_test.py checks equality).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models.layers import dense, Dropout, Im2colConv, max_pool


def _require_images(model: str, x: jax.Array) -> None:
  if x.ndim != 4:
    raise ValueError(f'{model} takes images [batch, H, W, C], got shape {x.shape}')


class CNN(nn.Module):
  """1-D CNN of Greydanus 2020 (`ConvBase`): three strided convs with ReLU, then a linear head.

  MNIST-1D: lengths 40 -> 19 -> 10 -> 5; params 150 + 1,900 + 1,900 + 1,260 = 5,210. The head reads the features
  position-major ([L, C] flattened), a permutation of PyTorch's channel-major flatten: same function class.

  Attributes:
    num_classes: number of output logits.
    channels: output channels of each conv.
    kernel_sizes: kernel size of each conv.
    strides: stride of each conv.
    padding: zeros added at both ends before every conv.
    dropout_rate: dropout on the flattened features (train only); the paper uses none.
    weight_init: 'flax' (flax's default initialisers) or 'pytorch' (PyTorch's defaults; layers.dense).
  """

  num_classes: int
  channels: tuple[int, ...] = (25, 25, 25)
  kernel_sizes: tuple[int, ...] = (5, 3, 3)
  strides: tuple[int, ...] = (2, 2, 2)
  padding: int = 1
  dropout_rate: float = 0.0
  weight_init: str = 'flax'

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Args: x: [batch, length] or [batch, length, channels]. Returns: logits [batch, num_classes]."""
    if not len(self.channels) == len(self.kernel_sizes) == len(self.strides):
      raise ValueError(f'model.channels {self.channels}, model.kernel_sizes {self.kernel_sizes} and model.strides '
                       f'{self.strides} must have the same length')
    if x.ndim == 2:
      x = x[..., None]  # [batch, length, 1]
    if x.ndim != 3:
      raise ValueError(f'cnn takes [batch, length] or [batch, length, channels], got shape {x.shape}')
    for features, k, s in zip(self.channels, self.kernel_sizes, self.strides):
      conv = Im2colConv(features, (k,), (s,), self.padding, weight_init=self.weight_init)
      x = nn.relu(conv(x))  # [batch, (L + 2p - k) // s + 1, features]
    x = x.reshape(x.shape[0], -1)  # [batch, length' * features]
    x = Dropout(self.dropout_rate, deterministic=not train)(x)
    return dense(self.num_classes, init=self.weight_init, fan_in=x.shape[-1], axes=('embed', 'classes'))(x)


class CNN2D(nn.Module):
  """The classic MNIST CNN (Keras `mnist_cnn`, PyTorch `examples/mnist`): VALID 3x3 convs, one 2x2 max pool.

  conv32 -> relu -> conv64 -> relu -> pool -> dropout -> fc128 -> relu -> dropout -> fc. 28x28x1: 28 -> 26 -> 24
  -> 12; params 320 + 18,496 + 1,179,776 + 1,290 = 1,199,882. The examples use dropout 0.25 / 0.5; here one rate.

  Attributes:
    num_classes: number of output logits.
    channels: output channels of each 3x3 conv.
    hidden_size: width of the fully connected hidden layer.
    dropout_rate: dropout after the pool and after the hidden layer (train only).
    weight_init: 'flax' (flax's default initialisers) or 'pytorch' (PyTorch's defaults; layers.dense).
  """

  num_classes: int
  channels: tuple[int, ...] = (32, 64)
  hidden_size: int = 128
  dropout_rate: float = 0.0
  weight_init: str = 'flax'

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Args: x: images [batch, H, W, C]. Returns: logits [batch, num_classes]."""
    _require_images('cnn2d', x)
    for features in self.channels:
      # im2col only when training: it makes the gradient 3x faster but the forward pass slower (see layers).
      conv = Im2colConv(features, (3, 3), weight_init=self.weight_init)
      x = nn.relu(conv(x, im2col=train))  # [batch, H - 2, W - 2, features]
    x = max_pool(x, (2, 2))  # [batch, H / 2, W / 2, features]
    x = Dropout(self.dropout_rate, deterministic=not train)(x.reshape(x.shape[0], -1))  # [batch, H*W*C / 4]
    x = nn.relu(dense(self.hidden_size, init=self.weight_init, fan_in=x.shape[-1])(x))
    x = Dropout(self.dropout_rate, deterministic=not train)(x)
    return dense(self.num_classes, init=self.weight_init, fan_in=self.hidden_size, axes=('mlp', 'classes'))(x)


class LeNet5(nn.Module):
  """LeNet-5 (LeCun et al. 1998) for 32x32 inputs; smaller images (MNIST 28x28) are zero-padded to 32x32.

  conv6 5x5 -> pool -> conv16 5x5 -> pool -> fc120 -> fc84 -> fc. ReLU and 2x2 max pooling (the common modern
  variant) replace the original scaled tanh and trainable subsampling. 32x32x1: 61,706 params.

  Attributes:
    num_classes: number of output logits.
    dropout_rate: dropout before the last layer (train only); the original uses none.
    weight_init: 'flax' (flax's default initialisers) or 'pytorch' (PyTorch's defaults; layers.dense).
  """

  num_classes: int
  dropout_rate: float = 0.0
  weight_init: str = 'flax'

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Args: x: images [batch, H, W, C], padded up to 32x32. Returns: logits [batch, num_classes]."""
    _require_images('lenet5', x)
    pad_h, pad_w = max(32 - x.shape[1], 0), max(32 - x.shape[2], 0)
    x = jnp.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    conv = lambda features: Im2colConv(features, (5, 5), weight_init=self.weight_init)
    x = max_pool(nn.relu(conv(6)(x)), (2, 2))  # [batch, 14, 14, 6] for 32x32
    x = max_pool(nn.relu(conv(16)(x)), (2, 2))  # [batch, 5, 5, 16]
    x = x.reshape(x.shape[0], -1)  # [batch, 400]
    x = nn.relu(dense(120, init=self.weight_init, fan_in=x.shape[-1])(x))
    x = nn.relu(dense(84, init=self.weight_init, fan_in=120)(x))
    x = Dropout(self.dropout_rate, deterministic=not train)(x)
    return dense(self.num_classes, init=self.weight_init, fan_in=84, axes=('mlp', 'classes'))(x)
