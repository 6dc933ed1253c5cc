"""The MNIST-1D paper's MLP: two hidden layers, the second one residual."""

import flax.linen as nn
import jax


class MLP(nn.Module):
  """h = relu(W1 x); h = h + relu(W2 h); logits = W3 h (Greydanus 2020, `MLPBase`).

  MNIST-1D with hidden 100: 4,100 + 10,100 + 1,010 = 15,210 params.

  Attributes:
    num_classes: number of output logits.
    hidden_size: width of both hidden layers.
    dropout_rate: dropout on the last hidden layer (train only); the paper uses none.
  """

  num_classes: int
  hidden_size: int = 100
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Args: x: [batch, ...] (flattened); train: enables dropout. Returns: logits [batch, num_classes]."""
    x = x.reshape(x.shape[0], -1)  # [batch, features]
    h = nn.relu(nn.Dense(self.hidden_size)(x))
    h = h + nn.relu(nn.Dense(self.hidden_size)(h))  # The paper's residual second layer.
    h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    return nn.Dense(self.num_classes)(h)
