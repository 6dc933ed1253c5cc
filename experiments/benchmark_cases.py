"""The models of experiments.benchmark: names, their presets, and the benchmark case each builds.

Kept apart from experiments/benchmark.py (which defines absl flags) so that tests and benchmarks/profile_step.py
can import them next to other entry points without redefining flags.
"""

# name -> (preset module, preset argument)
CASES = {
    'mnist1d_cnn': ('mnist1d', 'cnn'),
    'mnist1d_mlp': ('mnist1d', 'mlp'),
    'mnist1d_gru': ('mnist1d', 'gru'),
    'mnist1d_lstm': ('mnist1d', 'lstm'),
    'mnist_cnn': ('mnist', 'cnn'),
    'lm_tiny': ('lm', 'tiny'),
    'lm_small': ('lm', 'small'),
}


def parse_models(spec: str) -> list[str]:
  names = list(CASES) if spec == 'all' else [n.strip() for n in spec.split(',') if n.strip()]
  unknown = [n for n in names if n not in CASES]
  if unknown or not names:
    raise ValueError(f'--models ({spec!r}): unknown {unknown or "(empty)"}; allowed: all or any of {list(CASES)}')
  return names


def make_case(name: str):
  """The benchmark case of `name`: its preset's config and its data's shapes (no dataset is read)."""
  import importlib  # pylint: disable=g-import-not-at-top
  from research import benchmark, data  # pylint: disable=g-import-not-at-top

  module, arg = CASES[name]
  config = importlib.import_module(f'configs.{module}').get_config(arg)
  spec = data.DATASETS[config.dataset.name]
  input_shape = (config.dataset.seq_len,) if spec.task == 'lm' else spec.input_shape
  return benchmark.Case(name, config, input_shape, spec.num_classes)
