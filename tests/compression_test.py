"""Pruning, QAT, distillation in the train step, and `python -m experiments.compress` end to end.

research/compression/quantize.py and storage.py: compression_storage_test.py; structured.py: structured_test.py.
"""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.compression import pruning, quantize, storage
from research.training import losses, steps as steps_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _params(seed=0):
  k = jax.random.split(jax.random.key(seed), 3)
  return {'a': {'kernel': jax.random.normal(k[0], (40, 50)), 'bias': jax.random.normal(k[1], (50,))},
          'b': {'kernel': jax.random.normal(k[2], (50, 10)) * 0.1, 'bias': jnp.ones((10,))}}


def _weight_sparsity(params):
  return storage.sparsity(jax.device_get(params))


@pytest.mark.parametrize('scope', pruning.SCOPES)
def test_one_shot_prunes_the_fraction_of_weights_and_no_bias(scope):
  params = _params()
  pruned = pruning.prune(params, 0.9, scope=scope)
  assert _weight_sparsity(pruned) == pytest.approx(0.9, abs=1e-3)
  for layer in ('a', 'b'):
    np.testing.assert_array_equal(pruned[layer]['bias'], params[layer]['bias'])
    kept = np.asarray(pruned[layer]['kernel']) != 0
    # Every kept weight is at least as large as every pruned one (in its scope).
    if scope == 'layer':
      w = np.abs(np.asarray(params[layer]['kernel']))
      assert w[kept].min() >= w[~kept].max()
      assert 1 - kept.mean() == pytest.approx(0.9, abs=1e-3)
  if scope == 'global':  # Layer b's weights are 10x smaller: a global threshold prunes it harder.
    assert (np.asarray(pruned['b']['kernel']) == 0).mean() > (np.asarray(pruned['a']['kernel']) == 0).mean()


def test_sparsity_ramp_is_zhu_and_gupta_cubic():
  at = lambda t: float(pruning.sparsity_at(t, target=0.8, start=100, end=200))
  assert at(0) == 0.0 and at(100) == 0.0 and at(200) == pytest.approx(0.8) and at(500) == pytest.approx(0.8)
  assert at(150) == pytest.approx(0.8 * (1 - 0.5 ** 3))
  assert float(pruning.sparsity_at(5, target=0.5, start=5, end=0)) == 0.5  # One shot.


def test_gradual_pruning_keeps_pruned_weights_at_zero_and_reaches_the_target():
  params = _params()
  tx = optax.chain(optax.adam(1e-2), pruning.magnitude_pruning(0.75, start=0, end=40, every=10))
  state = tx.init(params)
  target = jax.tree.map(lambda x: x * 0 + 1.0, params)  # Pulls every weight towards 1: pruned ones must stay 0.

  @jax.jit
  def step(params, state):
    grads = jax.grad(lambda p: sum(jnp.sum((x - t) ** 2) for x, t in zip(jax.tree.leaves(p),
                                                                          jax.tree.leaves(target))))(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  seen = []
  for _ in range(60):
    params, state = step(params, state)
    seen.append(_weight_sparsity(params))
  assert seen[0] == 0.0  # s_0 = 0 on the ramp's first step.
  assert seen[-1] == pytest.approx(0.75, abs=2e-3)
  assert all(b >= a - 1e-9 for a, b in zip(seen, seen[1:]))  # Never regrows.
  frozen = jax.device_get(params)
  for _ in range(5):
    params, state = step(params, state)
  for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(jax.device_get(params))):
    if a.ndim >= 2:
      np.testing.assert_array_equal(a == 0, b == 0)  # After `end` the mask is frozen.


def test_bad_pruning_arguments():
  with pytest.raises(ValueError, match='sparsity'):
    pruning.prune(_params(), 1.0)
  with pytest.raises(ValueError, match='scope'):
    pruning.magnitude_pruning(0.5, scope='row')
  with pytest.raises(ValueError, match='every'):
    pruning.magnitude_pruning(0.5, every=0)


def test_distillation_kl_is_zero_for_the_teacher_itself_and_positive_otherwise():
  teacher = jax.random.normal(jax.random.key(0), (8, 10))
  np.testing.assert_allclose(losses.distillation_kl(teacher, teacher, 4.0), 0.0, atol=1e-6)
  student = jax.random.normal(jax.random.key(1), (8, 10))
  assert (losses.distillation_kl(student, teacher, 4.0) > 0).all()
  # The teacher is a constant: no gradient flows into it.
  g = jax.grad(lambda t: jnp.sum(losses.distillation_kl(student, t, 2.0)))(teacher)
  np.testing.assert_array_equal(g, 0.0)


def test_qat_eval_step_equals_the_int8_model():
  from research import models  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  model = models.get_model({'name': 'cnn'}, num_classes=10)
  x = jax.random.normal(jax.random.key(0), (16, 40))
  params = nn.unbox(model.init(jax.random.key(1), x, train=False))['params']
  batch = {'inputs': x, 'labels': jnp.arange(16) % 10, 'mask': jnp.ones(16)}
  qat = steps_lib.make_eval_step(model, qat_bits=8)(params, batch)
  int8 = steps_lib.make_eval_step(model)(quantize.dequantize_params(quantize.quantize_params(params)), batch)
  np.testing.assert_allclose(qat['loss_sum'], int8['loss_sum'], rtol=1e-5)
  assert float(qat['correct_sum']) == float(int8['correct_sum'])


_SMALL_GPT = {'name': 'gpt', 'context': 16, 'd_model': 32, 'num_heads': 4, 'num_layers': 2, 'attention': 'einsum'}


@pytest.mark.parametrize('config', [{'name': 'mlp'}, {'name': 'cnn'}, {'name': 'lenet5'}, {'name': 'gru'},
                                    {'name': 'lstm'}, {'name': 'transformer'}, _SMALL_GPT],
                         ids=lambda c: c['name'])
def test_integer_execution_runs_int8_matmuls_and_agrees_with_the_float_model(config):
  from research import models  # pylint: disable=g-import-not-at-top
  from research.compression import int8_exec  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  name = config['name']
  assert name in int8_exec.SUPPORTED
  model = models.get_model(config, num_classes=64 if name == 'gpt' else 10)
  if name == 'gpt':
    x = jax.random.randint(jax.random.key(0), (4, 16), 0, 64)
  else:
    x = jax.random.normal(jax.random.key(0), (16, 28, 28, 1) if name == 'lenet5' else (16, 40))
  # Jitted: eager init and apply compile every op on its own (several seconds for the Transformer).
  params = nn.unbox(jax.jit(lambda x: model.init(jax.random.key(1), x, train=False))(x))['params']
  qparams = jax.tree.map(jnp.asarray, quantize.quantize_params(params))
  model8 = int8_exec.Int8Model(model)
  forward = jax.jit(lambda p, x: model8.apply({'params': p}, x, train=False))
  logits = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))(params, x)
  logits8 = forward(qparams, x)
  # Every weight matmul is integer: as many int8 x int8 -> int32 dots as the model has kernels and token tables
  # (position tables and the Transformer's [heads, head_dim] biases are int8 on disk too, but added, not
  # multiplied), and the only float dots are attention's (activations x activations).
  hlo = forward.lower(qparams, x).as_text()
  weights = sum(1 for path, _ in jax.tree_util.tree_leaves_with_path(params)
                if path[-1].key in ('kernel', 'embedding'))
  int_dots = [line for line in hlo.splitlines() if 'dot_general' in line and 'xi8>' in line and 'xi32>' in line]
  float_dots = [line for line in hlo.splitlines() if 'dot_general' in line and 'xi8>' not in line]
  attention_dots = 2 * model.num_layers if name in ('transformer', 'gpt') else 0  # q k^T, weights v per block.
  assert len(int_dots) == weights and len(float_dots) == attention_dots, hlo[:3000]
  scale = float(jnp.abs(logits).max())
  np.testing.assert_allclose(logits8, logits, atol=0.05 * scale)
  assert float(jnp.mean(jnp.argmax(logits8, -1) == jnp.argmax(logits, -1))) >= 0.9


def test_integer_execution_helpers():
  from research.compression import int8_exec  # pylint: disable=g-import-not-at-top
  x = jnp.array([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]])
  q, s = int8_exec.quantize_rows(x)
  assert q.dtype == jnp.int8 and q[0, 1] == -127 and float(s[1, 0]) == 1.0  # A zero row keeps a finite scale.
  w = jax.random.normal(jax.random.key(0), (3, 4))
  wq, ws = quantize.quantize_array(w)
  np.testing.assert_allclose(int8_exec.int8_matmul(x, wq, ws), x @ w, atol=0.05)


# --- experiments.compress end to end ---------------------------------------------------------------------------------

def _run(args, env, timeout=600):
  return subprocess.run([sys.executable, '-m', *args], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout)


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  out = dict(os.environ, TFDS_DATA_DIR=str(tmp_path_factory.mktemp('tfds')), JAX_PLATFORMS='cpu')
  out.pop('XLA_FLAGS', None)
  return out


@pytest.fixture(scope='module')
def trained(tmp_path_factory, env):
  workdir = str(tmp_path_factory.mktemp('cnn') / 'run')
  proc = _run(['experiments.train', '--config=configs/mnist1d.py:cnn', f'--workdir={workdir}', '--config.steps=150',
               '--config.progress=False'], env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


@pytest.mark.slow
@pytest.mark.long
def test_compress_writes_a_measured_table_and_models_that_evaluate(tmp_path, env, trained):
  out = str(tmp_path / 'comp')
  methods = 'int8,w8a8,qat,prune90,prune90_int8,prune80_kd,oneshot50,structured50,distill'
  proc = _run(['experiments.compress', f'--workdir={trained}', f'--out={out}', f'--methods={methods}',
               '--finetune_steps=30', '--seeds=1', '--distill_steps=30'], env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(out, 'summary.json')) as f:
    summary = json.load(f)
  assert set(summary['methods']) == {*methods.split(','), 'scratch'}
  base = summary['baseline']
  for name, entry in [('baseline', base), *summary['methods'].items()]:
    for key in ('test_accuracy', 'bytes_on_disk', 'params', 'flops_per_example', 'batch1_p50_ms', 'examples_per_s'):
      assert entry[key] is not None and entry[key] >= 0, (name, key)
    assert 0 <= entry['test_accuracy'] <= 1
    assert entry['bytes_on_disk'] == os.path.getsize(os.path.join(out, name, 'model.safetensors'))
  m = summary['methods']
  assert m['int8']['bytes_on_disk'] < 0.4 * base['bytes_on_disk']
  assert m['prune90']['sparsity'] == pytest.approx(0.9, abs=0.01)
  assert m['prune80_kd']['sparsity'] == pytest.approx(0.8, abs=0.01) and 'distilled from' in m['prune80_kd'][
      'description']
  with open(os.path.join(out, 'prune80_kd', 'train', 'config.json')) as f:  # The fine-tune's teacher: the run.
    assert json.load(f)['compression']['teacher'] == trained
  assert m['prune90_int8']['bytes_on_disk'] < m['prune90']['bytes_on_disk'] < 0.3 * base['bytes_on_disk']
  assert m['structured50']['flops_per_example'] <= 0.5 * base['flops_per_example']
  assert m['structured50']['params'] < base['params']
  assert len(m['distill']['seeds']) == 1 and m['distill']['params'] == m['scratch']['params']
  assert abs(m['int8']['test_accuracy'] - base['test_accuracy']) < 0.05  # 8 bits barely move a trained model.
  table = open(os.path.join(out, 'table.md')).read()
  assert all(f'| {name} |' in table for name in summary['methods'])
  assert os.path.getsize(os.path.join(out, 'compression.png')) > 10_000
  # Each compressed model loads through the normal eval path, with the table's numbers.
  for name in ('int8', 'w8a8', 'structured50'):
    proc = _run(['experiments.evaluate', f'--workdir={os.path.join(out, name)}', '--json'], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result['accuracy'] == pytest.approx(m[name]['test_accuracy'], abs=1e-6)
  # A rerun trains nothing again (finished fine-tunes are skipped) and gives the same accuracies; with --xz the
  # models (the baseline too) are stored LZMA-compressed in place of the plain files, smaller, and still evaluate.
  proc = _run(['experiments.compress', f'--workdir={trained}', f'--out={out}', '--methods=qat',
               '--finetune_steps=30', '--xz'], env)
  assert proc.returncode == 0 and not re.search(r'^\s+trained ', proc.stdout, re.M), proc.stdout[-2000:]
  with open(os.path.join(out, 'summary.json')) as f:
    again = json.load(f)
  assert again['methods']['qat']['test_accuracy'] == m['qat']['test_accuracy']
  for name, entry in (('baseline', again['baseline']), ('qat', again['methods']['qat'])):
    files = set(os.listdir(os.path.join(out, name)))
    assert 'model.safetensors.xz' in files and 'model.safetensors' not in files and entry['codec'] == 'xz'
    assert entry['bytes_on_disk'] == os.path.getsize(os.path.join(out, name, 'model.safetensors.xz'))
    assert entry['bytes_on_disk'] < (base if name == 'baseline' else m['qat'])['bytes_on_disk']
  assert 'bytes on disk, xz (% of f32 xz)' in open(os.path.join(out, 'table.md')).read()
  proc = _run(['experiments.evaluate', f'--workdir={os.path.join(out, "qat")}', '--json'], env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout.strip().splitlines()[-1])['accuracy'] == pytest.approx(m['qat']['test_accuracy'],
                                                                                      abs=1e-6)
  # Other options than the runs in --out were made with: refused (not silently reused), naming the run.
  proc = _run(['experiments.compress', f'--workdir={trained}', f'--out={out}', '--methods=qat',
               '--finetune_steps=30', '--lr_scale=0.5'], env)
  assert proc.returncode == 2 and 'qat/train was made with others' in proc.stderr, proc.stderr[-2000:]


def test_methods_parse_and_apply_per_model():
  from research.compression import compress  # pylint: disable=g-import-not-at-top
  assert compress.parse_methods('int8, prune90_int8,structured50') == ['int8', 'prune90_int8', 'structured50']
  assert compress.parse_methods('prune90_kd,prune90_kd_int8') == ['prune90_kd', 'prune90_kd_int8']
  compress.check_methods(['int8', 'w8a8', 'structured50', 'distill'], 'cnn')
  compress.check_methods(['int8', 'qat', 'prune90', 'structured50', 'distill'], 'gpt')
  with pytest.raises(ValueError, match=r"structured50 applies only to the models \('mlp', 'cnn', 'gpt'\), not 'gru'"):
    compress.check_methods(['structured50'], 'gru')
  compress.check_methods(['w8a8'], 'gru')  # Integer matmuls: every family.
  with pytest.raises(ValueError, match="distill applies only to .* not 'lstm'"):
    compress.check_methods(['distill'], 'lstm')


@pytest.mark.parametrize('args,message', [
    (['--methods=int8,prune'], "'prune' is not a method"),
    (['--methods=int8,int8'], "'int8' is given twice"),
    (['--methods=prune00'], 'asks for 0%'),
    (['--lr_scale=0'], '--lr_scale (0.0) must be > 0'),
])
def test_bad_methods_exit_2_and_write_nothing(tmp_path, env, trained, args, message):
  out = tmp_path / 'comp'
  proc = _run(['experiments.compress', f'--workdir={trained}', f'--out={out}', *args], env)
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr and not out.exists()


def test_methods_a_model_does_not_support_exit_2_and_write_nothing(tmp_path, env):
  workdir = str(tmp_path / 'gru')
  proc = _run(['experiments.train', '--config=configs/mnist1d.py:gru', f'--workdir={workdir}', '--config.steps=2',
               '--config.progress=False'], env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = tmp_path / 'comp'
  proc = _run(['experiments.compress', f'--workdir={workdir}', f'--out={out}', '--methods=int8,structured50'], env)
  assert proc.returncode == 2 and "structured50 applies only to the models" in proc.stderr and "not 'gru'" in \
      proc.stderr, proc.stderr[-2000:]
  assert not out.exists()


def test_compress_of_a_missing_run_exits_2(tmp_path, env):
  out = tmp_path / 'comp'
  proc = _run(['experiments.compress', f'--workdir={tmp_path / "nope"}', f'--out={out}'], env)
  assert proc.returncode == 2 and 'does not exist' in proc.stderr, proc.stderr[-2000:]
  assert not out.exists()
