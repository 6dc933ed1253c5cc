"""Ready-made studies: each answers one "how do I choose ...?" question by experiment (experiments/study.py).

Each study module has `run(ctx: common.Context) -> common.Result`; docs/studies.md describes them.
"""

import importlib

# Name -> module under research/studies; the order `experiments.study all` runs them in.
STUDIES = ('optimizers', 'gradient_descent', 'batch_size', 'regularization', 'model_scale')


def load(name: str):
  """The study module `name` (one of STUDIES)."""
  if name not in STUDIES:
    raise ValueError(f'unknown study {name!r}; expected one of {list(STUDIES)}')
  return importlib.import_module(f'research.studies.{name}')
