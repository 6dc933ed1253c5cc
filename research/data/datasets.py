"""Datasets by name: the `DATASETS` registry and `load_dataset`, which reads a TFDS dataset into memory.

Two tasks: classification (`{"inputs", "labels"}` examples with one class each) and language modelling
(`task='lm'`: text read as one stream of byte tokens per split, served as packed windows of `dataset.seq_len`
tokens whose labels are the next tokens; research/data/text.py).

Every dataset we train on fits in host memory (CIFAR-10, the largest, is 180 MB as uint8), so each
split is read once from its TFDS array_record files into numpy arrays; batches are then gathered with
one fancy index instead of per-record reads (see pipeline.py). Inputs stay in their stored dtype
(uint8 images) and are converted to normalized float32 per batch, so memory stays at the raw size.
"""

import dataclasses
import importlib.util
import os
from typing import Any

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from research.config import ConfigError
from research.data import mnist1d, text


class DataUnavailableError(RuntimeError):
  """A dataset that is neither prepared nor preparable here, or whose files are corrupt; the message says how to
  provide it."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """How to find a dataset in TFDS and turn its records into `{"inputs", "labels"}` examples."""
  tfds_name: str  # TFDS catalog name, or the name of `builder_cls`.
  input_key: str  # Record feature holding the inputs.
  label_key: str  # Record feature holding the integer class.
  num_classes: int
  input_shape: tuple[int, ...]  # Shape of one example's inputs.
  # Per-channel mean and std of the [0, 1]-scaled pixels; None: inputs are floats, already standardized.
  pixel_mean: tuple[float, ...] | None = None
  pixel_std: tuple[float, ...] | None = None
  # A builder generated locally (no download); None: a TFDS catalog dataset, found by name.
  builder_cls: type[tfds.core.DatasetBuilder] | None = None
  variants: tuple[str, ...] = ('standard',)  # Allowed `dataset.variant` values (builder configs).
  train_split: str = 'train'
  test_split: str = 'test'  # The split evaluated during and after training (a validation split for some).
  task: str = 'classify'  # 'classify' | 'lm' (inputs: the `input_key` text; num_classes: the vocabulary).

  def preprocess(self, inputs: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Maps raw record fields to model-ready arrays; works on one example or a stacked batch.

    Args:
      inputs: [..., *input_shape] raw inputs (uint8 pixels, or float signals).
      labels: [...] integer classes.

    Returns:
      {"inputs": float32 [..., *input_shape], "labels": int32 [...]}.
    """
    inputs = inputs.astype(np.float32)  # A fresh array: the in-place ops below never touch the source.
    if self.pixel_mean is not None:
      # (x / 255 - mean) / std as one in-place multiply-add with [*input_shape] coefficients: numpy
      # broadcasting a [channels] vector loops over 1-3 elements at a time, and fresh temporaries of a
      # batch are page-faulted in; together ~8x slower (1.9 vs 0.23 ms for 100 CIFAR images).
      std = np.asarray(self.pixel_std, np.float32)
      scale = np.ascontiguousarray(np.broadcast_to(1 / (255 * std), self.input_shape))
      shift = np.ascontiguousarray(np.broadcast_to(-np.asarray(self.pixel_mean, np.float32) / std, self.input_shape))
      inputs *= scale
      inputs += shift
    return {'inputs': inputs, 'labels': labels.astype(np.int32)}


# Pixel statistics are over all pixels of the train split. For CIFAR-10 that std is (0.247, 0.243,
# 0.261); the widely copied (0.2023, 0.1994, 0.2010) is not the std of the pixels.
DATASETS: dict[str, DatasetSpec] = {
    'mnist1d': DatasetSpec(
        tfds_name='mnist1d', input_key='inputs', label_key='labels', num_classes=10,
        input_shape=(40,), builder_cls=mnist1d.Mnist1d, variants=('standard', 'shuffled')),
    'mnist': DatasetSpec(
        tfds_name='mnist', input_key='image', label_key='label', num_classes=10,
        input_shape=(28, 28, 1), pixel_mean=(0.1307,), pixel_std=(0.3081,)),
    'fashion_mnist': DatasetSpec(
        tfds_name='fashion_mnist', input_key='image', label_key='label', num_classes=10,
        input_shape=(28, 28, 1), pixel_mean=(0.2860,), pixel_std=(0.3530,)),
    'cifar10': DatasetSpec(
        tfds_name='cifar10', input_key='image', label_key='label', num_classes=10,
        input_shape=(32, 32, 3), pixel_mean=(0.4914, 0.4822, 0.4465), pixel_std=(0.2470, 0.2435, 0.2616)),
    # Language modelling on byte tokens; input_shape is (dataset.seq_len,), set per run (`example_shape`).
    'shakespeare': DatasetSpec(
        tfds_name='shakespeare', input_key='text', label_key='', num_classes=text.VOCAB_SIZE, input_shape=(),
        builder_cls=text.Shakespeare, test_split='validation', task='lm'),
    # TFDS catalog text (needs internet to prepare): Karpathy's 1 MB tiny Shakespeare, and the One Billion Word
    # benchmark (~4 GB of text: its train split is read into memory as bytes).
    'tiny_shakespeare': DatasetSpec(
        tfds_name='tiny_shakespeare', input_key='text', label_key='', num_classes=text.VOCAB_SIZE, input_shape=(),
        test_split='validation', task='lm'),
    'lm1b': DatasetSpec(
        tfds_name='lm1b', input_key='text', label_key='', num_classes=text.VOCAB_SIZE, input_shape=(), task='lm'),
}


def example_shape(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """One example's input shape for the `dataset` config group: (seq_len,) for language modelling."""
  spec = DATASETS[config.name]
  return (config.seq_len,) if spec.task == 'lm' else spec.input_shape


@dataclasses.dataclass(frozen=True, eq=False)
class ArraySource:
  """Random-access examples held in memory as raw arrays, preprocessed when read.

  `source[i]` is one example and `source[index_array]` a stacked batch, both as returned by
  `DatasetSpec.preprocess`, so a batch costs one numpy gather rather than one call per example.
  """
  inputs: np.ndarray  # [num_examples, *input_shape] raw inputs.
  labels: np.ndarray  # [num_examples] integer classes.
  spec: DatasetSpec

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int | np.ndarray) -> dict[str, np.ndarray]:
    return self.spec.preprocess(self.inputs[index], self.labels[index])


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Both splits of a dataset plus what a model needs to know about its examples."""
  name: str
  train: Any  # Random-access source (len, __getitem__) of {"inputs", "labels"} examples.
  test: Any
  num_classes: int
  input_shape: tuple[int, ...]
  num_train: int
  num_test: int
  task: str = 'classify'  # DatasetSpec.task.


def resolve_data_dir(data_dir: str | None) -> str:
  """Returns `data_dir`, or TFDS's default when empty: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  data_dir = data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'
  return os.path.expanduser(data_dir)


def load_dataset(config: ml_collections.ConfigDict, *, data_dir: str | None = None) -> Dataset:
  """Loads both splits of `config.name` into memory, preparing MNIST-1D first if it is missing.

  Catalog datasets (mnist, fashion_mnist, cifar10) are downloaded and prepared by TFDS on first use,
  which needs internet access and, because TFDS encodes their images with `tf.image`, TensorFlow.
  Reading a prepared copy needs neither.

  Args:
    config: the `dataset` config group (fields `name`, `data_dir`, `variant`, `train_examples`, `seq_len`).
    data_dir: overrides `config.data_dir`; both empty -> $TFDS_DATA_DIR or ~/tensorflow_datasets.

  Returns:
    The Dataset; `train[i]` / `test[i]` are {"inputs": float32 [*input_shape], "labels": int32 []}.

  Raises:
    ValueError: unknown `config.name`, or a `config.variant` the dataset does not have.
    ConfigError: `config.train_examples` beyond the train split (or set for a language-model corpus).
    DataUnavailableError: the dataset is not prepared and cannot be here, or its files are missing or corrupt.
  """
  if config.name not in DATASETS:
    raise ValueError(f'Unknown dataset.name {config.name!r}; expected one of {sorted(DATASETS)}.')
  spec = DATASETS[config.name]
  if config.variant not in spec.variants:
    raise ValueError(f'dataset.variant {config.variant!r} is not available for dataset.name '
                     f'{config.name!r}; expected one of {list(spec.variants)}.')
  data_dir = resolve_data_dir(data_dir or config.data_dir)
  read = _read_into_memory if spec.task == 'classify' else lambda r, _: _read_windows(r, spec, config.seq_len)
  try:
    records = _open_splits(spec, variant=config.variant, data_dir=data_dir)
    train, test = (read(records[split], spec) for split in ('train', 'test'))
  except DataUnavailableError:
    raise
  except text.CorpusUnavailableError as e:
    raise DataUnavailableError(str(e)) from e
  except (RuntimeError, OSError, ValueError) as e:
    # array_record checks a hash per chunk: a truncated or flipped file fails here, never trains on garbage.
    fix = ('delete it to have it generated again' if spec.builder_cls is not None
           else f'delete it and prepare {spec.tfds_name} again')
    raise DataUnavailableError(
        f'dataset {config.name!r} in {os.path.join(data_dir, spec.tfds_name)} is unreadable '
        f'({" ".join(str(e).split())[:200]}); {fix}') from e
  train_examples = config.get('train_examples', 0)
  if train_examples:
    if spec.task != 'classify' or train_examples > len(train):
      raise ConfigError('dataset.train_examples', train_examples,
                        f'0 (all) or at most the {len(train)} examples of the train split of a classification '
                        f'dataset ({config.name!r})')
    train = ArraySource(train.inputs[:train_examples], train.labels[:train_examples], spec)
  return Dataset(name=config.name, train=train, test=test, num_classes=spec.num_classes,
                 input_shape=example_shape(config), num_train=len(train), num_test=len(test),
                 task=spec.task)


def local_builder(spec: DatasetSpec, *, variant: str, data_dir: str) -> tfds.core.DatasetBuilder:
  """The builder of a dataset built here (spec.builder_cls), with its `variant` config if it has configs."""
  configs = {'config': variant} if spec.builder_cls.BUILDER_CONFIGS else {}
  return spec.builder_cls(data_dir=data_dir, **configs)


def _open_splits(spec: DatasetSpec, *, variant: str, data_dir: str) -> dict[str, Any]:
  """Prepares the dataset if needed and returns {'train', 'test'} TFDS random-access data sources."""
  splits = {'train': spec.train_split, 'test': spec.test_split}
  if spec.builder_cls is not None:
    builder = local_builder(spec, variant=variant, data_dir=data_dir)
    builder.download_and_prepare(file_format='array_record')  # A no-op once the files exist.
    return builder.as_data_source(split=splits)
  builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
  if not builder.is_prepared() and not _preparation_is_mocked():
    # TFDS would first retry the download for minutes offline, then fail for want of TensorFlow (it encodes
    # these images with tf.image): say at once what is missing and how to provide it.
    if importlib.util.find_spec('tensorflow') is None:
      raise DataUnavailableError(
          f'dataset {spec.tfds_name!r} is not prepared in {data_dir}; preparing it needs internet and TensorFlow '
          f'(pip install tensorflow, then `tfds build {spec.tfds_name} --file_format=array_record '
          f'--data_dir={data_dir}`), or point --config.dataset.data_dir at a directory that holds it')
    builder.download_and_prepare(file_format='array_record')
  return tfds.data_source(spec.tfds_name, split=splits, data_dir=data_dir)


def _read_windows(records: Any, spec: DatasetSpec, seq_len: int) -> text.TokenWindows:
  """A text split as packed windows of `seq_len` byte tokens (text.TokenWindows)."""
  windows = text.TokenWindows(text.byte_tokens(records, spec.input_key), seq_len)
  if not len(windows):
    raise DataUnavailableError(f'{spec.tfds_name} has {len(windows.tokens)} tokens in a split, fewer than one '
                               f'window of dataset.seq_len + 1 = {seq_len + 1}')
  return windows


def _preparation_is_mocked() -> bool:
  """True under tfds.testing.mock_data, which fakes preparation and reading (then nothing needs preparing)."""
  return tfds.core.DatasetBuilder.download_and_prepare.__module__.startswith('tensorflow_datasets.testing')


def _read_into_memory(records: Any, spec: DatasetSpec) -> ArraySource:
  """Reads every record of a TFDS data source into an ArraySource.

  One pass of per-record reads (~0.1 ms per MNIST-1D record, ~0.5 ms per CIFAR-10 image, mostly
  protobuf parsing and PNG decoding) that training then never pays again.
  """
  first = records[0][spec.input_key]
  inputs = np.empty((len(records), *first.shape), first.dtype)
  labels = np.empty((len(records),), np.int64)
  for index in range(len(records)):
    record = records[index]
    inputs[index] = record[spec.input_key]
    labels[index] = record[spec.label_key]
  if inputs.shape[1:] != spec.input_shape:
    raise ValueError(f'{spec.tfds_name} inputs have shape {inputs.shape[1:]}, expected {spec.input_shape}.')
  return ArraySource(inputs=inputs, labels=labels, spec=spec)
