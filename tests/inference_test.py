"""Tests of research.inference and its entry points experiments.evaluate / experiments.predict on a tiny trained run."""

import json
import os
import re
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from configs import mnist1d
from research import data, inference
from research.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """An MLP trained 30 steps in-process on a 4-device mesh, with checkpoints at steps 15 and 30."""
  data_dir = tmp_path_factory.mktemp('tfds')
  workdir = tmp_path_factory.mktemp('runs') / 'mlp'
  config = mnist1d.get_config('mlp')
  config.steps, config.checkpoint_every, config.eval_every, config.log_every = 30, 15, 30, 10
  config.progress = False
  config.dataset.data_dir = str(data_dir)
  config.mesh.data = config.mesh.num_devices = 4  # batch_size 100 does not split over conftest's 8 devices.
  card = loop.train_and_evaluate(config, str(workdir))
  run = inference.load_run(str(workdir))
  dataset = data.load_dataset(run.config.dataset)
  return types.SimpleNamespace(workdir=str(workdir), data_dir=str(data_dir), card=card, run=run, dataset=dataset)


@pytest.fixture(scope='module')
def test_predictions(trained):
  return inference.predict(trained.run, trained.dataset.test.inputs, batch_size=300)  # 4 batches, the last padded.


def test_evaluate_equals_the_run_cards_final_metrics(trained):
  assert trained.run.step == 30 and trained.run.input_shape == (40,) and trained.run.num_classes == 10
  assert trained.run.mesh.devices.size == 4  # The run's mesh, as in training: the same sums in the same order.
  metrics = inference.evaluate(trained.run, 'test')
  assert metrics['loss'] == trained.card['final_metrics']['test_loss']
  assert metrics['accuracy'] == trained.card['final_metrics']['test_accuracy']
  assert metrics['num_examples'] == 1000
  assert inference.evaluate(trained.run, 'train')['num_examples'] == 4000


def test_load_run_restores_the_requested_step(trained):
  earlier = inference.load_run(trained.workdir, step=15)
  assert earlier.step == 15
  difference = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                            earlier.params, trained.run.params)
  assert max(jax.tree.leaves(difference)) > 0  # 15 more Adam steps changed the weights.


def test_predict_matches_the_model_and_evaluate(trained, test_predictions):
  preds = test_predictions
  inputs = trained.dataset.test[np.arange(trained.dataset.num_test)]['inputs']
  logits = np.asarray(trained.run.model.apply({'params': trained.run.params}, inputs, train=False))
  assert preds.logits.shape == preds.probabilities.shape == (1000, 10) and preds.labels.shape == (1000,)
  np.testing.assert_allclose(preds.logits, logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(preds.labels, logits.argmax(axis=-1))
  np.testing.assert_allclose(preds.probabilities.sum(axis=-1), 1.0, rtol=1e-5)
  correct = int(np.sum(preds.labels == trained.dataset.test.labels))
  assert correct == round(trained.card['final_metrics']['test_accuracy'] * 1000)


def test_predict_measures_latency_and_throughput(test_predictions):
  timing = test_predictions.timing
  assert timing.timed_examples == 100 and timing.batch_size == 300 and timing.device == 'cpu'
  assert 0 < timing.p50_ms <= timing.p99_ms
  assert timing.throughput_per_s > 1000 / timing.p50_ms  # A batch of 300 beats 300 calls of one.


def test_predict_one_example(trained, test_predictions):
  preds = inference.predict(trained.run, trained.dataset.test.inputs[7], batch_size=16, latency_examples=3)
  assert preds.labels.shape == (1,) and preds.timing.timed_examples == 1
  assert preds.labels[0] == test_predictions.labels[7]
  np.testing.assert_allclose(preds.logits[0], test_predictions.logits[7], rtol=1e-5, atol=1e-5)


def test_predict_compiles_once_per_batch_shape(trained, monkeypatch):
  forwards = []
  make_forward = inference._make_forward  # pylint: disable=protected-access
  monkeypatch.setattr(inference, '_make_forward', lambda model: forwards.append(make_forward(model)) or forwards[-1])
  inference.predict(trained.run, trained.dataset.test.inputs[:250], batch_size=100, latency_examples=5)
  assert forwards[0]._cache_size() == 2  # [100, 40] for all 3 batches (the last padded), [1, 40] for latency.


@pytest.mark.parametrize('make_inputs,message', [
    (lambda x: x[:, :39], r'shape \(1000, 39\); expected \[N, 40\] or one example \(40,\)'),
    (lambda x: x[:, :, None], r'shape \(1000, 40, 1\); expected \[N, 40\]'),
    (lambda x: x[:0], r'no examples'),
    (lambda x: np.full(x.shape, 'a'), r'dtype <U1; expected an integer or float array'),
    (lambda x: np.where(np.arange(40) == 3, np.nan, x)[:5], r'NaN or inf in 5 example\(s\), the first at index 0'),
])
def test_predict_rejects_bad_inputs(trained, make_inputs, message):
  with pytest.raises(ValueError, match=message):
    inference.predict(trained.run, make_inputs(trained.dataset.test.inputs), batch_size=8)


def test_predict_rejects_a_bad_batch_size(trained):
  with pytest.raises(ValueError, match=r'batch_size \(0\) must be >= 1'):
    inference.predict(trained.run, trained.dataset.test.inputs, batch_size=0)


def test_load_run_errors_name_the_path(trained, tmp_path):
  with pytest.raises(inference.RunNotFoundError, match=f'{tmp_path}/nope does not exist.*experiments.train'):
    inference.load_run(str(tmp_path / 'nope'))
  with pytest.raises(inference.RunNotFoundError, match=f'{tmp_path}/config.json does not exist'):
    inference.load_run(str(tmp_path))
  with open(tmp_path / 'config.json', 'w') as f:
    f.write(open(os.path.join(trained.workdir, 'config.json')).read())
  with pytest.raises(inference.RunNotFoundError, match=f'no checkpoint in {tmp_path}/checkpoints'):
    inference.load_run(str(tmp_path))
  assert not (tmp_path / 'checkpoints').exists()  # Looking wrote nothing.
  with pytest.raises(inference.RunNotFoundError, match=r'no checkpoint at step 7 .* available steps: \[15, 30\]'):
    inference.load_run(trained.workdir, step=7)


# Entry points, run as a user runs them: one CPU device (the run's 4-device mesh falls back to it).
def _cli_commands(trained, tmp):
  np.save(tmp / 'test.npy', trained.dataset.test.inputs)
  np.save(tmp / 'short.npy', trained.dataset.test.inputs[:, :39])
  return {
      'evaluate': ['experiments.evaluate', f'--workdir={trained.workdir}', '--json'],
      'evaluate_missing': ['experiments.evaluate', f'--workdir={tmp}/nope'],
      'predict': ['experiments.predict', f'--workdir={trained.workdir}', f'--inputs={tmp}/test.npy',
                  f'--out={tmp}/pred.npy', '--batch_size=256'],
      'predict_short': ['experiments.predict', f'--workdir={trained.workdir}', f'--inputs={tmp}/short.npy'],
      'predict_no_file': ['experiments.predict', f'--workdir={trained.workdir}', f'--inputs={tmp}/none.npy'],
  }


@pytest.fixture(scope='module')
def cli(trained, tmp_path_factory):
  """Runs every command at once (each spends seconds importing JAX) and returns name -> (rc, stdout, stderr)."""
  tmp = tmp_path_factory.mktemp('cli')
  env = dict(os.environ, TFDS_DATA_DIR=trained.data_dir, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  procs = {name: subprocess.Popen([sys.executable, '-m', *args], cwd=ROOT, env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
           for name, args in _cli_commands(trained, tmp).items()}
  results = {name: (proc.communicate(timeout=300), proc.returncode) for name, proc in procs.items()}
  return types.SimpleNamespace(tmp=tmp, **{name: types.SimpleNamespace(rc=rc, stdout=out, stderr=err)
                                           for name, ((out, err), rc) in results.items()})


def test_evaluate_cli_prints_the_run_cards_metrics(cli, trained):
  assert cli.evaluate.rc == 0, cli.evaluate.stderr[-3000:]
  line, json_line = cli.evaluate.stdout.splitlines()
  match = re.fullmatch(r'\[mlp on mnist1d\] step=30 split=test loss=(\S+) accuracy=(\S+) examples=1000', line)
  assert match, line
  final = trained.card['final_metrics']
  assert float(match[2]) == round(final['test_accuracy'], 4)
  assert float(match[1]) == pytest.approx(final['test_loss'], abs=1e-4)
  result = json.loads(json_line)
  assert (result['step'], result['split'], result['num_examples']) == (30, 'test', 1000)
  assert result['accuracy'] == final['test_accuracy']  # Counts: exact on any device count.
  assert result['loss'] == pytest.approx(final['test_loss'], rel=1e-6)  # 1 device: sums in another order.


def test_predict_cli_prints_rows_and_latency(cli, trained, test_predictions):
  assert cli.predict.rc == 0, cli.predict.stderr[-3000:]
  lines = cli.predict.stdout.splitlines()
  assert lines[0] == f'mlp on mnist1d, step 30 ({trained.workdir})'
  rows = [tuple(line.split()) for line in lines[2:22]]
  labels, probabilities = test_predictions.labels, test_predictions.probabilities
  assert rows == [(str(i), str(labels[i]), f'{probabilities[i, labels[i]]:.4f}') for i in range(20)]
  assert lines[1].split() == ['index', 'class', 'probability'] and lines[22] == '   ... 980 more'
  assert lines[23].startswith('1000 predictions; count per predicted class: ')
  assert re.fullmatch(r'latency at batch 1: p50=\S+ ms p99=\S+ ms \(100 examples\); '
                      r'throughput at batch 256: [\d,]+ examples/s \(cpu\)', lines[-1]), lines[-1]


def test_predict_cli_writes_labels_and_summary(cli, test_predictions):
  assert cli.predict.rc == 0, cli.predict.stderr[-3000:]
  np.testing.assert_array_equal(np.load(cli.tmp / 'pred.npy'), test_predictions.labels)
  with open(cli.tmp / 'pred.json') as f:
    summary = json.load(f)
  assert summary['num_predictions'] == 1000 and summary['step'] == 30
  assert summary['timing']['batch_size'] == 256 and summary['timing']['timed_examples'] == 100
  assert sum(summary['class_counts'].values()) == 1000
  assert cli.predict.stdout.splitlines()[24] == (f'wrote 1000 labels (int32) to {cli.tmp}/pred.npy and a summary '
                                                 f'to {cli.tmp}/pred.json')


@pytest.mark.parametrize('name,message', [
    ('evaluate_missing', 'error: workdir {tmp}/nope does not exist (train first: python -m experiments.train'),
    ('predict_short', 'error: --inputs={tmp}/short.npy: inputs have shape (1000, 39); expected [N, 40]'),
    ('predict_no_file', 'error: --inputs={tmp}/none.npy: no such file'),
])
def test_cli_errors_exit_2_with_one_line(cli, name, message):
  result = getattr(cli, name)
  assert result.rc == 2, result.stderr[-3000:]
  line, = result.stderr.strip().splitlines()
  assert line.startswith(message.format(tmp=cli.tmp)), line
  assert 'Traceback' not in result.stderr and not result.stdout


def test_a_compressed_model_directory_holds_one_params_file(tmp_path):
  assert inference.compressed_file(str(tmp_path)) is None
  (tmp_path / 'model.safetensors.xz').write_bytes(b'')
  assert inference.compressed_file(str(tmp_path)) == str(tmp_path / 'model.safetensors.xz')
  (tmp_path / 'model.safetensors').write_bytes(b'')
  with pytest.raises(inference.RunNotFoundError, match='both model.safetensors and model.safetensors.xz'):
    inference.compressed_file(str(tmp_path))
