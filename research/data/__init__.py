"""Input data: datasets by name (TFDS, read into memory) and the batches the training loop consumes.

    dataset = data.load_dataset(config.dataset)
    train_iter = data.make_train_iterator(dataset, batch_size=100, seed=0)
    batch = next(train_iter)  # {"inputs": float32 [100, 40], "labels": int32 [100]}
    state = train_iter.get_state()  # JSON-serializable; checkpoint it with the model.
    for batch in data.eval_batches(dataset, 'test', batch_size=1000): ...  # + "mask" [1000]
"""

from research.data.datasets import Dataset
from research.data.datasets import DATASETS
from research.data.datasets import DataUnavailableError
from research.data.datasets import DatasetSpec
from research.data.datasets import example_shape
from research.data.datasets import load_dataset
from research.data.pipeline import eval_batches
from research.data.pipeline import make_train_iterator
from research.data.pipeline import ORDERS
from research.data.pipeline import pad_rows

__all__ = ['DATASETS', 'DataUnavailableError', 'Dataset', 'DatasetSpec', 'eval_batches', 'example_shape', 'load_dataset',
           'make_train_iterator', 'ORDERS', 'pad_rows']
