"""Models by name: the explicit `MODELS` registry of flax linen modules, `get_model`, `model_fields`, `dummy_input`.

Every model is a dataclass whose first field is `num_classes`; its other fields are its hyperparameters (typed
int, float, bool, str or tuple[int, ...]) with the MNIST-1D paper's settings as defaults, so config validation
derives the allowed `model.*` keys from them. `model.apply(variables, x, train=...)` maps inputs [batch, ...] to
logits [batch, num_classes] (classifiers) or token ids [batch, time] to next-token logits [batch, time, vocab]
(the language model 'gpt', whose num_classes is the vocabulary); dropout draws from the 'dropout' rng when
train=True.
"""

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models.cnn import CNN, CNN2D, LeNet5
from research.models.gpt import GPT
from research.models.linear import LogReg
from research.models.mlp import MLP
from research.models.rnn import GRU, LSTM
from research.models.transformer import Transformer

MODELS: dict[str, type[nn.Module]] = {
    'logreg': LogReg,
    'mlp': MLP,
    'cnn': CNN,
    'cnn2d': CNN2D,
    'lenet5': LeNet5,
    'gru': GRU,
    'lstm': LSTM,
    'transformer': Transformer,
    'gpt': GPT,
}

_NOT_HYPERPARAMETERS = ('num_classes', 'parent', 'name')  # parent/name: flax's own Module fields.


def _model_class(name: str) -> type[nn.Module]:
  if name not in MODELS:
    raise ValueError(f'model.name ({name!r}) must be one of {sorted(MODELS)}')
  return MODELS[name]


def model_fields(name: str) -> dict[str, tuple[Any, Any]]:
  """The config fields of model `name`.

  Args:
    name: a key of MODELS.

  Returns:
    {field: (type, default)}, e.g. {'hidden_size': (int, 100), 'dropout_rate': (float, 0.0)} for 'mlp'.

  Raises:
    ValueError: `name` is not a key of MODELS.
  """
  return {f.name: (f.type, f.default) for f in dataclasses.fields(_model_class(name))
          if f.name not in _NOT_HYPERPARAMETERS}


def is_language_model(name: str) -> bool:
  """Whether model `name` maps token ids to next-token logits (a language model) rather than classifying."""
  return _model_class(name) is GPT


def dummy_input(model: nn.Module, input_shape: tuple[int, ...], *, batch: int = 1) -> jax.Array:
  """Zeros of one batch's shape in the dtype `model` reads (token ids for language models, else float32)."""
  return jnp.zeros((batch, *input_shape), getattr(model, 'input_dtype', jnp.float32))


def get_model(model_config: Mapping[str, Any], *, num_classes: int) -> nn.Module:
  """Builds the model named by `model_config['name']`, the other entries overriding field defaults.

  Args:
    model_config: `name` plus any fields of that model (an ml_collections.ConfigDict or a dict).
    num_classes: number of output logits.

  Returns:
    The unbound flax module.

  Raises:
    ValueError: an unknown name or field.
  """
  name = model_config['name']
  fields = model_fields(name)
  overrides = {}
  for key, value in model_config.items():
    if key == 'name':
      continue
    if key not in fields:
      raise ValueError(f'model.{key} ({value!r}) is not a field of model {name!r}; fields: {sorted(fields)}')
    overrides[key] = tuple(value) if isinstance(value, list) else value  # Lists from the command line.
  return _model_class(name)(num_classes=num_classes, **overrides)
