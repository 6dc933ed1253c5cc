"""Tests of research.data: the MNIST-1D builder, dataset loading by name, and the batch pipeline."""

import json

import ml_collections
import mnist1d.data
import numpy as np
import pytest
import tensorflow_datasets as tfds

from research import data
from research.config import ConfigError
from research.data import datasets


def _config(name='mnist1d', variant='standard', data_dir=''):
  return ml_collections.ConfigDict({'name': name, 'data_dir': data_dir, 'variant': variant})


def _indexed_dataset(num_train, num_test=7):
  """A Dataset whose example i has inputs filled with i and label i % 10, so batches name their examples."""
  def source(n):
    inputs = np.repeat(np.arange(n, dtype=np.float32)[:, None], 40, axis=1)
    return datasets.ArraySource(inputs=inputs, labels=np.arange(n) % 10, spec=data.DATASETS['mnist1d'])
  return data.Dataset(name='indexed', train=source(num_train), test=source(num_test), num_classes=10,
                      input_shape=(40,), num_train=num_train, num_test=num_test)


def _ids(batch):
  return batch['inputs'][:, 0].astype(np.int64)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def mnist1d_standard(data_dir):
  return data.load_dataset(_config(variant='standard'), data_dir=data_dir)


@pytest.fixture(scope='module')
def mnist1d_shuffled(data_dir):
  return data.load_dataset(_config(variant='shuffled'), data_dir=data_dir)


def test_mnist1d_builder_writes_make_dataset_with_default_args(data_dir, mnist1d_standard):
  del mnist1d_standard  # Prepared the files.
  reference = mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())
  # Read the directory by name, as any TFDS user would, to check it is a complete TFDS dataset.
  splits = tfds.data_source('mnist1d/standard', split=['train', 'test'], data_dir=data_dir, download=False)
  for source, x, y in zip(splits, ('x', 'x_test'), ('y', 'y_test')):
    assert len(source) == len(reference[y])
    for index in (0, 1, 17, len(source) - 1):
      record = source[index]
      assert record['inputs'].shape == (40,) and record['inputs'].dtype == np.float32
      np.testing.assert_array_equal(record['inputs'], reference[x][index].astype(np.float32))
      assert record['labels'] == reference[y][index]
  assert [len(s) for s in splits] == [4000, 1000]


def test_load_dataset_mnist1d(mnist1d_standard):
  ds = mnist1d_standard
  assert (ds.name, ds.num_train, ds.num_test, ds.num_classes, ds.input_shape) == ('mnist1d', 4000, 1000, 10, (40,))
  assert (len(ds.train), len(ds.test)) == (4000, 1000)
  example = ds.train[3]
  assert example['inputs'].shape == (40,) and example['inputs'].dtype == np.float32
  assert example['labels'].dtype == np.int32
  labels = np.concatenate([ds.train[np.arange(4000)]['labels'], ds.test[np.arange(1000)]['labels']])
  np.testing.assert_array_equal(np.bincount(labels), np.full(10, 500))  # make_dataset: 500 per class.
  # make_dataset standardizes the whole dataset to mean 0, std 1.
  inputs = np.concatenate([ds.train.inputs, ds.test.inputs])
  assert abs(inputs.mean()) < 1e-4 and abs(inputs.std() - 1) < 1e-4


def test_mnist1d_shuffled_is_one_fixed_permutation_of_positions(mnist1d_standard, mnist1d_shuffled):
  standard, shuffled = mnist1d_standard.train.inputs, mnist1d_shuffled.train.inputs
  np.testing.assert_array_equal(mnist1d_standard.train.labels, mnist1d_shuffled.train.labels)
  np.testing.assert_allclose(np.sort(standard, axis=1), np.sort(shuffled, axis=1), atol=1e-5)
  # Recover the permutation column by column: shuffled[:, j] == standard[:, perm[j]] in every row.
  distance = np.abs(shuffled[:, :, None] - standard[:, None, :]).max(axis=0)  # [40 shuffled, 40 standard]
  perm = distance.argmin(axis=1)
  assert sorted(perm) == list(range(40)) and (perm != np.arange(40)).sum() > 30
  np.testing.assert_allclose(standard[:, perm], shuffled, atol=1e-5)
  np.testing.assert_allclose(mnist1d_standard.test.inputs[:, perm], mnist1d_shuffled.test.inputs, atol=1e-5)


def test_train_batches_have_exact_shapes_and_dtypes(mnist1d_standard):
  batch = next(data.make_train_iterator(mnist1d_standard, batch_size=100, seed=0))
  assert set(batch) == {'inputs', 'labels'}
  assert batch['inputs'].shape == (100, 40) and batch['inputs'].dtype == np.float32
  assert batch['labels'].shape == (100,) and batch['labels'].dtype == np.int32
  assert batch['labels'].min() >= 0 and batch['labels'].max() <= 9


def test_train_iterator_is_deterministic_in_the_seed(mnist1d_standard):
  def first_batches(seed):
    return _take(data.make_train_iterator(mnist1d_standard, batch_size=100, seed=seed), 3)
  for a, b in zip(first_batches(0), first_batches(0)):
    np.testing.assert_array_equal(a['inputs'], b['inputs'])
    np.testing.assert_array_equal(a['labels'], b['labels'])
  assert not np.array_equal(first_batches(0)[0]['inputs'], first_batches(1)[0]['inputs'])


def test_each_epoch_is_a_fresh_permutation_of_all_examples():
  iterator = data.make_train_iterator(_indexed_dataset(1000), batch_size=100, seed=3)
  epochs = [np.concatenate([_ids(b) for b in _take(iterator, 10)]) for _ in range(3)]
  for order in epochs:
    np.testing.assert_array_equal(np.sort(order), np.arange(1000))
  assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
  assert not np.array_equal(epochs[0], np.arange(1000))


def test_stored_order_takes_the_split_in_its_stored_order_every_epoch():
  # The MNIST-1D paper's train_model: batch `step * batch_size mod n` of the stored training set.
  iterator = data.make_train_iterator(_indexed_dataset(1050), batch_size=100, seed=3, order='stored')
  for _ in range(3):
    np.testing.assert_array_equal(np.concatenate([_ids(b) for b in _take(iterator, 10)]), np.arange(1000))


def test_unknown_order_is_refused():
  with pytest.raises(ValueError, match="order 'random' must be one of"):
    data.make_train_iterator(_indexed_dataset(100), batch_size=10, seed=0, order='random')


def test_each_epoch_drops_its_remainder():
  # 1050 examples in batches of 100: 10 batches an epoch, a different 50 examples dropped each time.
  iterator = data.make_train_iterator(_indexed_dataset(1050), batch_size=100, seed=0)
  epochs = [np.concatenate([_ids(b) for b in _take(iterator, 10)]) for _ in range(5)]
  for order in epochs:
    assert len(np.unique(order)) == 1000
  assert len(np.unique(np.concatenate(epochs))) > 1000


def test_set_state_resumes_the_exact_batch_sequence():
  dataset = _indexed_dataset(1000)
  iterator = data.make_train_iterator(dataset, batch_size=100, seed=5)
  _take(iterator, 7)
  state = json.loads(json.dumps(iterator.get_state()))  # Checkpoints store it as JSON.
  expected = _take(iterator, 5)  # Crosses the epoch boundary at step 10.
  resumed = data.make_train_iterator(dataset, batch_size=100, seed=5)
  resumed.set_state(state)
  for a, b in zip(expected, _take(resumed, 5)):
    np.testing.assert_array_equal(a['inputs'], b['inputs'])
    np.testing.assert_array_equal(a['labels'], b['labels'])


@pytest.mark.parametrize('shard_count,batch_size', [(2, 100), (3, 111)])
def test_shards_are_disjoint_and_cover_the_train_split(shard_count, batch_size):
  dataset = _indexed_dataset(1000)
  per_shard = 1000 // shard_count  # 3 shards: 333 each, one example unused so all have equal epochs.
  shards = []
  for shard_index in range(shard_count):
    iterator = data.make_train_iterator(dataset, batch_size=batch_size, seed=0, shard_index=shard_index,
                                        shard_count=shard_count)
    shards.append(np.concatenate([_ids(b) for b in _take(iterator, per_shard // batch_size)]))  # One epoch.
    assert len(np.unique(shards[-1])) == per_shard
  everything = np.concatenate(shards)
  assert len(np.unique(everything)) == len(everything) == per_shard * shard_count  # Disjoint.
  assert per_shard * shard_count < 1000 or np.array_equal(np.sort(everything), np.arange(1000))


def test_make_train_iterator_rejects_bad_arguments():
  dataset = _indexed_dataset(100)
  with pytest.raises(ValueError, match='shard_index'):
    data.make_train_iterator(dataset, batch_size=10, seed=0, shard_index=2, shard_count=2)
  with pytest.raises(ValueError, match=r'batch_size \(60\)'):
    data.make_train_iterator(dataset, batch_size=60, seed=0, shard_count=2)


def test_eval_batches_cover_every_example_once_with_masks():
  dataset = _indexed_dataset(num_train=1050, num_test=7)
  batches = list(data.eval_batches(dataset, 'train', batch_size=100))
  assert len(batches) == 11
  for batch in batches:
    assert batch['inputs'].shape == (100, 40) and batch['inputs'].dtype == np.float32
    assert batch['labels'].shape == (100,) and batch['labels'].dtype == np.int32
    assert batch['mask'].shape == (100,) and batch['mask'].dtype == np.float32
  mask = np.concatenate([b['mask'] for b in batches])
  np.testing.assert_array_equal(mask, np.arange(1100) < 1050)
  ids = np.concatenate([_ids(b) for b in batches])
  np.testing.assert_array_equal(ids[:1050], np.arange(1050))  # In order.
  assert not batches[-1]['inputs'][50:].any() and not batches[-1]['labels'][50:].any()  # Zero padding.
  (test_batch,) = data.eval_batches(dataset, 'test', batch_size=100)
  assert test_batch['mask'].sum() == 7
  with pytest.raises(ValueError, match='validation'):
    next(data.eval_batches(dataset, 'validation', batch_size=100))


@pytest.mark.parametrize('name,shape', [('mnist', (28, 28, 1)), ('fashion_mnist', (28, 28, 1)),
                                        ('cifar10', (32, 32, 3))])
def test_catalog_datasets_load_from_mocked_tfds(name, shape):
  # USE_CODE: fake records from the builder's feature spec; the pip wheel ships no metadata files
  # for the default AUTO policy to use. mock_data also ignores data_dir and never downloads.
  with tfds.testing.mock_data(num_examples=130, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = data.load_dataset(_config(name=name), data_dir='/nonexistent')
  assert (ds.num_train, ds.num_test, ds.num_classes, ds.input_shape) == (130, 130, 10, shape)
  assert ds.train.inputs.dtype == np.uint8  # Kept raw in memory, converted per batch.
  spec = data.DATASETS[name]
  expected = (ds.train.inputs[5] / 255 - np.array(spec.pixel_mean)) / np.array(spec.pixel_std)
  np.testing.assert_allclose(ds.train[5]['inputs'], expected, rtol=1e-5, atol=1e-5)
  batch = next(data.make_train_iterator(ds, batch_size=32, seed=0))
  assert batch['inputs'].shape == (32, *shape) and batch['inputs'].dtype == np.float32
  assert batch['labels'].shape == (32,) and batch['labels'].dtype == np.int32
  eval_shapes = [b['inputs'].shape for b in data.eval_batches(ds, 'test', batch_size=100)]
  assert eval_shapes == [(100, *shape)] * 2


def test_train_examples_keeps_the_first_n_training_examples(data_dir, mnist1d_standard):
  config = _config(variant='standard')
  config.train_examples = 300
  small = data.load_dataset(config, data_dir=data_dir)
  assert small.num_train == 300 and small.num_test == mnist1d_standard.num_test
  np.testing.assert_array_equal(small.train[np.arange(300)]['inputs'],
                                mnist1d_standard.train[np.arange(300)]['inputs'])
  config.train_examples = mnist1d_standard.num_train + 1
  with pytest.raises(ConfigError, match="'dataset.train_examples' = 4001: expected 0 .all. or at most the 4000"):
    data.load_dataset(config, data_dir=data_dir)


def test_unknown_name_or_variant_raises_with_allowed_values():
  with pytest.raises(ValueError, match=r"'imagenet'.*\['cifar10', 'fashion_mnist', 'lm1b', 'mnist', 'mnist1d', 'shakespeare'"):
    data.load_dataset(_config(name='imagenet'))
  with pytest.raises(ValueError, match=r"'shuffled'.*'mnist'.*\['standard'\]"):
    data.load_dataset(_config(name='mnist', variant='shuffled'))
  with pytest.raises(ValueError, match=r"'reversed'.*\['standard', 'shuffled'\]"):
    data.load_dataset(_config(variant='reversed'))


def test_resolve_data_dir(monkeypatch):
  monkeypatch.setenv('TFDS_DATA_DIR', '/from/env')
  assert datasets.resolve_data_dir('/explicit') == '/explicit'
  assert datasets.resolve_data_dir('') == '/from/env'
  monkeypatch.delenv('TFDS_DATA_DIR')
  assert datasets.resolve_data_dir(None).endswith('tensorflow_datasets')
