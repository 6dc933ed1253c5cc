"""TFDS builder that generates MNIST-1D offline (Greydanus & Kobak, 2020, arXiv:2011.14439).

MNIST-1D is small enough to regenerate from its procedural definition in ~3 s, so the builder calls
`mnist1d.data.make_dataset` with the paper's default arguments (5000 samples, seed 42, 80/20 split ->
4000 train / 1000 test) instead of `get_dataset`, which downloads a pickle. The result is a regular
TFDS dataset directory (`<data_dir>/mnist1d/<config>/1.0.0/`, array_record files) that
`tfds.data_source('mnist1d/<config>', data_dir=...)` reads without TensorFlow.

TFDS 4.9.10 writes array_record without TensorFlow as long as no feature needs TF to encode: the
features here are a float32 `Tensor` and a `ClassLabel`, serialized by TFDS's protobuf-only
example serializer. (Image features are different: they PNG-encode with `tf.image`.)
"""

import random

import numpy as np
import tensorflow_datasets as tfds

_CITATION = """\
@article{greydanus2020scaling,
  title={Scaling Down Deep Learning with MNIST-1D},
  author={Greydanus, Sam and Kobak, Dmitry},
  journal={arXiv preprint arXiv:2011.14439},
  year={2020}
}"""

_SEQUENCE_LENGTH = 40  # `final_seq_length` of the paper's default arguments.
_NUM_CLASSES = 10


# skip_registration: TFDS would otherwise add the class to its global registry when this module is
# imported (an import-time side effect, and a name clash should the catalog ever gain an
# `mnist1d`). Callers instantiate the class directly; once prepared, `tfds.data_source` still finds
# the dataset by name through the files in `data_dir`.
class Mnist1d(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """MNIST-1D: 1-D signals of length 40 in 10 classes, generated from the paper's defaults."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'make_dataset(get_dataset_args()): 4000 train / 1000 test.'}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name='standard', description='The paper\'s default dataset.'),
      tfds.core.BuilderConfig(
          name='shuffled',
          description='Same examples with one fixed permutation of the 40 positions (shuffle_seq=True), '
          'which removes spatial structure (the paper\'s shuffled variant).'),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    # `tfds.core.DatasetInfo` directly rather than `dataset_info_from_configs`, which looks for
    # metadata files (README, CITATIONS) in a per-dataset package folder that this module lacks.
    return tfds.core.DatasetInfo(
        builder=self,
        description='MNIST-1D: a procedurally generated 1-D analogue of MNIST for fast experiments.',
        features=tfds.features.FeaturesDict({
            'inputs': tfds.features.Tensor(shape=(_SEQUENCE_LENGTH,), dtype=np.float32),
            'labels': tfds.features.ClassLabel(num_classes=_NUM_CLASSES),
        }),
        supervised_keys=('inputs', 'labels'),
        homepage='https://github.com/greydanus/mnist1d',
        citation=_CITATION,
        # make_dataset already shuffled the examples with its seed; keeping its order makes record i
        # of each split equal to row i of make_dataset's arrays.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Generated, nothing to download.
    data = generate(shuffle_seq=self.builder_config.name == 'shuffled')
    return {
        'train': self._generate_examples(data['x'], data['y']),
        'test': self._generate_examples(data['x_test'], data['y_test']),
    }

  def _generate_examples(self, inputs: np.ndarray, labels: np.ndarray):
    """Yields (key, example) pairs.

    Args:
      inputs: [num_examples, 40] standardized signals.
      labels: [num_examples] integer classes in [0, 10).
    """
    for index, (signal, label) in enumerate(zip(inputs, labels)):
      yield index, {'inputs': signal.astype(np.float32), 'labels': int(label)}


def generate(*, shuffle_seq: bool) -> dict[str, np.ndarray]:
  """Runs `mnist1d.data.make_dataset` with the paper's default arguments.

  Args:
    shuffle_seq: apply one fixed random permutation to the 40 positions of every signal.

  Returns:
    make_dataset's dict: 'x' [4000, 40] and 'x_test' [1000, 40] float64, 'y' [4000] and
    'y_test' [1000] int, plus 't' and 'templates'.
  """
  # Imported here: the mnist1d package imports matplotlib.pyplot and scipy.interpolate (1.4 s), and generating
  # happens once per data dir, while every run imports this module.
  import mnist1d.data  # pylint: disable=g-import-not-at-top

  args = mnist1d.data.get_dataset_args()
  args.shuffle_seq = shuffle_seq
  # make_dataset reseeds the global `random` and `np.random` generators (its way of being
  # reproducible); restore them so that generating data does not change the caller's random state.
  python_state, numpy_state = random.getstate(), np.random.get_state()
  try:
    return mnist1d.data.make_dataset(args)
  finally:
    random.setstate(python_state)
    np.random.set_state(numpy_state)
