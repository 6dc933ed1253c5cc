r"""Example sweep: random search over the optimizer, its learning rate and dropout (8 trials).

  python -m experiments.sweep --config=configs/mnist1d.py:cnn --sweep=configs/sweeps/random_search.py \
      --out=sweeps/cnn_random --parallel=2 --max_seconds=600

'random' draws `num_trials` points with numpy's default_rng(seed), so the same file always gives the same trials.
Each key of 'space' is a config key (as in --config.KEY overrides) with a spec:
  ('log_uniform', lo, hi)  log-uniform in [lo, hi], lo > 0 (scale parameters: learning rates, weight decay)
  ('uniform', lo, hi)      uniform in [lo, hi]
  ('int', lo, hi)          an integer in [lo, hi], both included
  ('choice', [values])     one of the values, equally likely
Sampled floats are rounded to 4 significant digits, so the trial id (lr=0.008145_opt=sgd_dropout=0.01229) names the
exact value the trial ran with. A 'grid' may be added too: every random sample is then run with every grid point
(e.g. 'grid': {'seed': [0, 1, 2]} for three seeds of each sample).

The preset must have every key: model.dropout_rate exists for the mlp, cnn, gru, lstm and transformer presets, not
for logreg (the sweep then stops before running anything, naming the key).
"""


def get_sweep() -> dict:
  return {
      'random': {
          'num_trials': 8,
          'seed': 0,
          'space': {
              'optimizer.learning_rate': ('log_uniform', 1e-4, 1e-1),
              'optimizer.name': ('choice', ['adam', 'sgd', 'momentum']),
              'model.dropout_rate': ('uniform', 0.0, 0.3),
          },
      },
  }
