"""research/vectorized.py: a vectorized group equals the sequential runs of its trials; `experiments.sweep
--vectorize` end to end. About 20 s on 2 cores (MNIST-1D MLP, 30 steps)."""

import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from configs import base, mnist1d
from research import data, inference, sharding, vectorized
from research.config import validate
from research.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 30


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('tfds'))
  data.load_dataset(ml_collections.ConfigDict({'name': 'mnist1d', 'variant': 'standard', 'data_dir': path}))
  return path


def _config(data_dir: str, preset: str = 'mlp', **overrides) -> ml_collections.ConfigDict:
  config = mnist1d.get_config(preset)
  with config.unlocked():
    config.steps = config.log_every = config.eval_every = STEPS
    config.progress = False
    config.mesh.num_devices = config.mesh.data = 1
    config.dataset.data_dir = data_dir
    for key, value in overrides.items():
      group, _, name = key.rpartition('.')
      (config[group] if group else config)[name] = value
  validate(config, base.get_base_config())
  return config


def _sequential(config) -> tuple[dict, object]:
  """The ordinary run's steps (training.loop's pieces, one device): final metrics as its card has them, params."""
  mesh = sharding.make_mesh(config.mesh, batch_sizes={'batch_size': config.batch_size})
  dataset = data.load_dataset(config.dataset)
  model, tx, schedule, state = loop.create_model_and_state(config, num_classes=dataset.num_classes,
                                                           input_shape=dataset.input_shape, mesh=mesh)
  step = loop.make_jit_train_step(config, model, tx, schedule, mesh, state)
  batches, pending = loop._train_iterator(config, dataset), []
  for _ in range(config.steps):
    state, metrics = step(state, next(batches))
    pending.append(metrics)
  eval_step = loop.make_jit_eval_step(model, mesh, state.params)
  last_eval = loop.evaluate(eval_step, state.params, dataset, 'test', batch_size=config.eval_batch_size, mesh=mesh)
  return loop.final_metrics('classify', loop._reduce_metrics(pending), last_eval), state.params


def test_group_equals_sequential_runs_and_writes_ordinary_workdirs(tmp_path, data_dir):
  # Every vectorizable key differs: the seed (init, dropout, data order: each trial reads its own batches),
  # learning rate, weight decay (0 in trial a: its optimizer chain has no decay step), dropout, L1 and L2.
  configs = [_config(data_dir, **{'optimizer.l1': 1e-4}),
             _config(data_dir, seed=1, **{'optimizer.learning_rate': 3e-3, 'optimizer.weight_decay': 1e-3,
                                          'model.dropout_rate': 0.1, 'optimizer.l2': 1e-3})]
  workdirs = [str(tmp_path / f'trial{i}') for i in range(2)]
  cards = vectorized.train_group(configs, workdirs, ['a', 'b'])
  assert cards[0]['final_state_sha256'] != cards[1]['final_state_sha256']
  for i, (config, card, workdir) in enumerate(zip(configs, cards, workdirs)):
    expected, params = _sequential(config)
    got = card['final_metrics']
    assert got['test_accuracy'] == expected['test_accuracy']
    for key in ('train_loss', 'test_loss'):
      assert abs(got[key] - expected[key]) < 1e-4, (key, got[key], expected[key])
    if i == 0:  # The checkpoint is an ordinary run's: experiments.evaluate's loader restores it.
      run = inference.load_run(workdir)
      assert run.step == STEPS
      jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5), run.params, params)
    assert card['steps'] == STEPS and card['stop_reason'] == 'steps'
    assert card['vectorized']['group_size'] == 2 and card['vectorized']['trials'] == ['a', 'b']
    assert card['time']['wall_s'] == pytest.approx(card['vectorized']['shared_wall_s'] / 2)
    assert card['flops']['total_train'] == pytest.approx(STEPS * card['flops']['train_step']['xla'])
    with open(os.path.join(workdir, 'config.json')) as f:
      assert json.load(f)['seed'] == config.seed
  # One program for two trials: the per-trial FLOPs are half the group's, close to one ordinary step's.
  analytic = cards[0]['flops']['train_step']['analytic']
  assert 0.5 * analytic < cards[0]['flops']['train_step']['xla'] < 2 * analytic


def test_check_group_names_the_key_that_cannot_be_vectorized(data_dir):
  ok = [_config(data_dir), _config(data_dir, seed=3, **{'optimizer.learning_rate': 0.1})]
  assert vectorized.check_group(ok, ['a', 'b']) == ['optimizer.learning_rate', 'seed']
  with pytest.raises(vectorized.VectorizeError, match=r"trial b: optimizer.name = 'sgd' \(trial a: 'adam'\) cannot "
                                                      'be vectorized'):
    vectorized.check_group([_config(data_dir), _config(data_dir, **{'optimizer.name': 'sgd'})], ['a', 'b'])
  with pytest.raises(vectorized.VectorizeError, match='batch_size = 50 .* another batch shape'):
    vectorized.check_group([_config(data_dir), _config(data_dir, batch_size=50)], ['a', 'b'])
  with pytest.raises(vectorized.VectorizeError, match='budget.max_flops'):
    vectorized.check_group([_config(data_dir, **{'budget.max_flops': 1e9})], ['a'])
  with pytest.raises(vectorized.VectorizeError, match='compression.sparsity = 0.5: compression is not vectorized'):
    vectorized.check_group([_config(data_dir, **{'compression.sparsity': 0.5})], ['a'])


def test_sweep_vectorize_end_to_end(tmp_path, data_dir):
  sweep_file = tmp_path / 'sweep.py'
  sweep_file.write_text("def get_sweep():\n  return {'grid': {'optimizer.learning_rate': [0.01, 0.03]}}\n")
  out = tmp_path / 'out'
  env = dict(os.environ, TFDS_DATA_DIR=data_dir, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  cmd = [sys.executable, '-m', 'experiments.sweep', '--config=configs/mnist1d.py:logreg', f'--sweep={sweep_file}',
         f'--out={out}', '--vectorize', '--', '--config.steps=10', '--config.eval_every=10']
  result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert 'Vectorized group 1/1: 2 trials in one program: lr=0.01, lr=0.03' in result.stdout
  assert 'Sweep done: 2 of 2 trials finished, 0 failed.' in result.stdout
  with open(out / 'summary.json') as f:
    rows = {r['trial_id']: r for r in json.load(f)['trials']}
  assert {i: r['status'] for i, r in rows.items()} == {'lr=0.01': 'finished', 'lr=0.03': 'finished'}
  for trial_id in rows:
    with open(out / 'trials' / trial_id / 'run_card.json') as f:
      card = json.load(f)
    assert rows[trial_id]['test_accuracy'] == card['final_metrics']['test_accuracy']
    assert rows[trial_id]['wall_s'] == card['time']['wall_s'] == card['vectorized']['shared_wall_s'] / 2
  rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0 and 'Nothing to run: 2 of 2 trials had finished' in rerun.stdout
