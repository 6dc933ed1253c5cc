"""Two-hidden-layer MLP: the MNIST-1D paper's (second layer residual) or the classic plain one (1024-1024)."""

import flax.linen as nn
import jax

from research.models.layers import dense, Dropout


class MLP(nn.Module):
  """h = relu(W1 x); h = h + relu(W2 h); logits = W3 h (Greydanus 2020, `MLPBase`).

  MNIST-1D with hidden 100: 4,100 + 10,100 + 1,010 = 15,210 params.

  Attributes:
    num_classes: number of output logits.
    hidden_size: width of both hidden layers.
    dropout_rate: dropout after each hidden layer (train only); the paper uses none, the classic MNIST MLP 0.5.
    residual: the paper's h + relu(W2 h) second layer; False gives the plain relu(W2 h) of the classic MLP.
    weight_init: 'flax' (flax's default initialisers) or 'pytorch' (PyTorch's defaults; layers.dense).
  """

  num_classes: int
  hidden_size: int = 100
  dropout_rate: float = 0.0
  residual: bool = True
  weight_init: str = 'flax'

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Args: x: [batch, ...] (flattened); train: enables dropout. Returns: logits [batch, num_classes]."""
    x = x.reshape(x.shape[0], -1)  # [batch, features]
    drop = Dropout(self.dropout_rate, deterministic=not train)
    h = drop(nn.relu(dense(self.hidden_size, init=self.weight_init, fan_in=x.shape[-1])(x)))
    # Hidden-to-hidden: the input side takes 'embed' (FSDP) so that a tensor axis splits one side only.
    second = nn.relu(dense(self.hidden_size, init=self.weight_init, fan_in=self.hidden_size)(h))
    h = drop(h + second if self.residual else second)  # The paper's second layer is residual.
    return dense(self.num_classes, init=self.weight_init, fan_in=self.hidden_size, axes=('mlp', 'classes'))(h)
