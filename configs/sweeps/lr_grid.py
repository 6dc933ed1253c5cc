r"""Example sweep: Adam's learning rate on a log grid, each with two seeds (4 x 2 = 8 trials).

  python -m experiments.sweep --config=configs/mnist1d.py:cnn --sweep=configs/sweeps/lr_grid.py --out=sweeps/cnn_lr
  python -m experiments.sweep --config=configs/mnist1d.py:mlp --sweep=configs/sweeps/lr_grid.py --out=sweeps/mlp_lr \
      --parallel=2 -- --config.steps=500        # overrides after -- apply to every trial

A sweep file is a Python file with `get_sweep()` returning a dict (docs/sweeps.md). A 'grid' maps config keys,
written as in --config.KEY overrides, to lists of values; the trials are their cartesian product, in order (the
first key varies slowest). Trial ids name the values: lr=0.001_seed=0, lr=0.001_seed=1, lr=0.003_seed=0, ...
Trials that differ only in `seed` are summarised as mean ± std in OUT/table.md.
"""


def get_sweep() -> dict:
  return {
      'grid': {
          'optimizer.learning_rate': [1e-3, 3e-3, 1e-2, 3e-2],  # The MNIST-1D presets use Adam at 1e-2.
          'seed': [0, 1],  # Init, dropout and data order.
      },
  }
