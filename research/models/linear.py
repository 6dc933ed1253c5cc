"""Logistic regression: one linear layer on the flattened input (the MNIST-1D paper's linear baseline)."""

import flax.linen as nn
import jax


class LogReg(nn.Module):
  """Multinomial logistic regression (Greydanus 2020, `LinearBase`). MNIST-1D: 40*10 + 10 = 410 params.

  Attributes:
    num_classes: number of output logits.
  """

  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Args: x: [batch, ...] (flattened); train: unused. Returns: logits [batch, num_classes]."""
    del train  # No dropout or batch statistics.
    x = x.reshape(x.shape[0], -1)  # [batch, features]
    return nn.Dense(self.num_classes)(x)
