"""Logistic regression: one linear layer on the flattened input (the MNIST-1D paper's linear baseline)."""

import flax.linen as nn
import jax

from research.models.layers import dense


class LogReg(nn.Module):
  """Multinomial logistic regression (Greydanus 2020, `LinearBase`). MNIST-1D: 40*10 + 10 = 410 params.

  Attributes:
    num_classes: number of output logits.
    weight_init: 'flax' (flax's default initialisers) or 'pytorch' (PyTorch's defaults; layers.dense).
  """

  num_classes: int
  weight_init: str = 'flax'

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Args: x: [batch, ...] (flattened); train: unused. Returns: logits [batch, num_classes]."""
    del train  # No dropout or batch statistics.
    x = x.reshape(x.shape[0], -1)  # [batch, features]
    return dense(self.num_classes, init=self.weight_init, fan_in=x.shape[-1], axes=('embed', 'classes'))(x)
