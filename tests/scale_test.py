"""Scale-out on conftest's 8 emulated CPU devices: strategies give the 1-device numbers, shards have the promised
shapes, accumulation equals the large batch, checkpoints restore onto other meshes, bf16 and remat run."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import conftest  # tests/ is on sys.path (rootdir conftest): the emulated devices' XLA flags.

from configs import base, mnist1d
from research import checkpointing, sharding
from research.config import ConfigError, validate
from research.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 20


def _config(preset='transformer', **overrides):
  """A small run: batch 64 (divisible by 8 devices and by microbatches of 4 x 2 shards), eval batch 200; the
  Transformer with one block (compiling for 8 devices dominates these tests' time)."""
  config = mnist1d.get_config(preset)
  with config.unlocked():
    config.steps, config.batch_size, config.eval_batch_size = STEPS, 64, 200
    if preset == 'transformer':
      config.model.num_layers = 1
    config.log_every = config.eval_every = config.checkpoint_every = STEPS
    config.progress = False
    for key, value in overrides.items():
      group, _, leaf = key.rpartition('.')
      (config[group] if group else config)[leaf] = value
  validate(config, base.get_base_config())
  return config


@pytest.fixture(autouse=True)
def _load_each_dataset_once(monkeypatch):
  """Every test here trains on MNIST-1D: read its files once per process (1.2 s each time otherwise)."""
  load = loop.data.load_dataset
  cached = functools.lru_cache(maxsize=None)(lambda name, variant, data_dir: load(
      ml_collections.ConfigDict({'name': name, 'variant': variant, 'data_dir': data_dir})))
  monkeypatch.setattr(loop.data, 'load_dataset', lambda c: cached(c.name, c.variant, c.data_dir))


def _train(config, steps=STEPS):
  """Per-step losses and the final state, with the training loop's own mesh, state, step and data stream."""
  mesh, dataset, (model, tx, schedule, state) = loop._build(config)
  train_step = loop.make_jit_train_step(config, model, tx, schedule, mesh, state)
  batches = loop._train_iterator(config, dataset)
  losses = []
  for _ in range(steps):
    state, metrics = train_step(state, sharding.put_batch(next(batches), mesh))
    losses.append(metrics['loss'])
  return np.asarray(jax.device_get(losses)), state


@functools.lru_cache(maxsize=None)
def _one_device(preset='transformer'):
  return _train(_config(preset, **{'mesh.num_devices': 1}))


def _shard_shape(x):
  return x.sharding.shard_shape(x.shape)


def _data_parallel_shards(state):
  """data=8: every device holds all of every leaf."""
  assert all(_shard_shape(x) == x.shape for x in jax.tree.leaves(state))


def _fsdp_shards(state):
  """fsdp=4: 'embed' dimensions split 4 ways, in the params and in Adam's moments alike."""
  block, mu = state.params['Block_0'], state.opt_state.inner_state[0][0].mu['Block_0']
  assert block['Dense_0']['kernel'].shape == (32, 128) and _shard_shape(block['Dense_0']['kernel']) == (8, 128)
  assert _shard_shape(mu['Dense_0']['kernel']) == (8, 128)
  assert _shard_shape(block['Dense_1']['kernel']) == (128, 8)  # ('mlp', 'embed')
  assert _shard_shape(block['SelfAttention_0']['query']['kernel']) == (8, 4, 8)  # ('embed', 'heads', 'kv')
  assert _shard_shape(state.params['head']['kernel']) == (8, 10) and _shard_shape(state.params['head']['bias']) == (10,)


def _tensor_shards(state):
  """tensor=4 (Megatron): q/k/v split by heads (columns), the output projection by heads (rows); the MLP's first
  matmul by columns, its second by rows; 'embed' whole."""
  block = state.params['Block_0']
  attention = block['SelfAttention_0']
  assert _shard_shape(attention['query']['kernel']) == (32, 1, 8) and _shard_shape(attention['value']['bias']) == (1, 8)
  assert _shard_shape(attention['out']['kernel']) == (1, 8, 32) and _shard_shape(attention['out']['bias']) == (32,)
  assert _shard_shape(block['Dense_0']['kernel']) == (32, 32) and _shard_shape(block['Dense_0']['bias']) == (32,)
  assert _shard_shape(block['Dense_1']['kernel']) == (32, 32)
  assert _shard_shape(state.params['embed']['kernel']) == (4, 32)


def _fsdp_and_tensor_shards(state):
  """fsdp=2 x tensor=4: both splits at once, on different dimensions of one kernel."""
  block = state.params['Block_0']
  assert _shard_shape(block['Dense_0']['kernel']) == (16, 32)  # ('embed' / 2, 'mlp' / 4)
  assert _shard_shape(block['SelfAttention_0']['out']['kernel']) == (1, 8, 16)  # ('heads' / 4, 'kv', 'embed' / 2)


@pytest.mark.parametrize('mesh,batch_rows,check_shards', [
    ({'mesh.data': 8}, 8, _data_parallel_shards),
    ({'mesh.data': 2, 'mesh.fsdp': 4}, 8, _fsdp_shards),
    ({'mesh.data': 2, 'mesh.tensor': 4}, 32, _tensor_shards),
    ({'mesh.data': 1, 'mesh.fsdp': 2, 'mesh.tensor': 4}, 32, _fsdp_and_tensor_shards),
], ids=['data8', 'data2_fsdp4', 'data2_tensor4', 'fsdp2_tensor4'])
def test_every_strategy_gives_the_one_device_losses_with_the_promised_shards(mesh, batch_rows, check_shards):
  reference, _ = _one_device()
  losses, state = _train(_config(**mesh))
  np.testing.assert_allclose(losses, reference, rtol=1e-5)
  assert losses[-1] < losses[0]  # It trains.
  check_shards(state)  # After 20 steps: the step's out_shardings keep the layout.
  device_mesh = state.params['head']['kernel'].sharding.mesh
  assert device_mesh.devices.size == 8
  assert sharding.batch_sharding(device_mesh).shard_shape((64, 40)) == (batch_rows, 40)  # Over data x fsdp.


def test_a_dimension_the_axis_does_not_divide_stays_whole():
  mesh = sharding.make_mesh({'data': 1, 'fsdp': 8, 'tensor': 1}, batch_sizes={})
  rules = (('embed', 'fsdp'), ('classes', None))
  assert sharding.spec_for(jax.sharding.PartitionSpec('embed', 'classes'), (40, 10), mesh, rules) == \
      jax.sharding.PartitionSpec('fsdp')
  assert sharding.spec_for(jax.sharding.PartitionSpec('embed', 'classes'), (100, 10), mesh, rules) == \
      jax.sharding.PartitionSpec()  # 100 % 8 != 0: replicated rather than an uneven split jit would reject.


def test_accumulating_k_microbatches_equals_one_k_times_larger_batch():
  mesh = {'mesh.data': 2, 'mesh.fsdp': 4}
  reference, _ = _train(_config('mlp', **mesh))  # batch 64 in one piece.
  losses, _ = _train(_config('mlp', accumulate_steps=4, **mesh))  # 4 microbatches of 16, each split 8 ways.
  np.testing.assert_allclose(losses, reference, rtol=1e-5)


def test_microbatches_must_split_over_the_batch_shards():
  config = _config('mlp', accumulate_steps=16, **{'mesh.data': 8})  # Microbatches of 4 rows on 8 shards.
  with pytest.raises(ConfigError, match="'accumulate_steps' = 16: expected a divisor of batch_size"):
    loop._build(config)


def test_bfloat16_compute_keeps_float32_params_and_tracks_the_float32_run():
  reference, _ = _one_device('mlp')
  losses, state = _train(_config('mlp', compute_dtype='bfloat16', **{'mesh.num_devices': 1}))
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype('float32')}
  assert not np.array_equal(losses, reference)  # bf16 really ran ...
  np.testing.assert_allclose(losses, reference, rtol=0.02)  # ... within bf16's ~3 significant digits.


def _traced_matmuls(config) -> int:
  """dot_generals in the train step's jaxpr, traced on abstract values (nothing compiled or run)."""
  mesh = sharding.make_mesh(config.mesh, batch_sizes={})
  model, tx, schedule, state = loop.create_model_and_state(config, num_classes=10, input_shape=(40,), mesh=mesh,
                                                           abstract=True)
  batch = {'inputs': jax.ShapeDtypeStruct((64, 40), jnp.float32), 'labels': jax.ShapeDtypeStruct((64,), jnp.int32)}
  step = loop.make_jit_train_step(config, model, tx, schedule, mesh, state)
  return str(step.trace(state, batch).jaxpr).count('dot_general')


def test_remat_recomputes_blocks_with_the_same_numbers():
  reference, _ = _one_device()
  config = _config(**{'mesh.num_devices': 1, 'model.remat': True})
  losses, _ = _train(config)
  np.testing.assert_allclose(losses, reference, rtol=1e-6)
  # The blocks' forward matmuls run again in the backward pass.
  assert _traced_matmuls(config) > _traced_matmuls(_config(**{'mesh.num_devices': 1}))


def test_checkpoint_restores_onto_another_mesh_with_identical_values(tmp_path):
  _, state = _train(_config(**{'mesh.data': 8}), steps=2)
  saved = jax.device_get(state)
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=3, async_save=False)
  ckpt.save(2, state, {})
  for mesh in [{'mesh.data': 2, 'mesh.fsdp': 4}, {'mesh.data': 2, 'mesh.tensor': 4}, {'mesh.num_devices': 1}]:
    other = _config(**mesh)
    target = loop.create_model_and_state(other, num_classes=10, input_shape=(40,), abstract=True,
                                         mesh=sharding.make_mesh(other.mesh, batch_sizes={})).state
    restored = ckpt.restore(target).state  # Verified against the saved sha256s too.
    assert jax.tree.map(lambda x: x.sharding, restored) == jax.tree.map(lambda x: x.sharding, target)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), saved)
  ckpt.close()


def test_a_workdir_resumes_under_a_new_mesh(tmp_path):
  workdir = str(tmp_path / 'run')
  first = loop.train_and_evaluate(_config('mlp', **{'mesh.data': 8, 'steps': 10, 'checkpoint_every': 10}), workdir)
  assert first['scale_out']['mesh'] == {'data': 8, 'fsdp': 1, 'tensor': 1}
  second = loop.train_and_evaluate(_config('mlp', **{'mesh.data': 2, 'mesh.fsdp': 4}), workdir)
  assert second['resumed_from_step'] == 10 and second['steps'] == STEPS and second['stop_reason'] == 'steps'
  assert second['scale_out']['mesh'] == {'data': 2, 'fsdp': 4, 'tensor': 1}
  assert second['scale_out']['sharded_params']['fsdp'] > 0


def test_the_same_command_scales_by_flags_only_and_the_card_records_it(tmp_path):
  """experiments.train as a user runs it, on 8 emulated devices, tensor parallel."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8 ' + conftest.CPU_COLLECTIVE_PATIENCE, JAX_PLATFORMS='cpu')
  workdir = tmp_path / 'tp'
  proc = subprocess.run(
      [sys.executable, '-m', 'experiments.train', '--config=configs/mnist1d.py:transformer', f'--workdir={workdir}',
       '--config.steps=20', '--config.eval_every=20', '--config.checkpoint_every=20', '--config.batch_size=64',
       '--config.eval_batch_size=200', '--config.mesh.data=2', '--config.mesh.tensor=4'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(workdir / 'run_card.json') as f:
    card = json.load(f)
  scale = card['scale_out']
  assert scale['mesh'] == {'data': 2, 'fsdp': 1, 'tensor': 4} and card['environment']['device_count'] == 8
  assert scale['sharded_params']['tensor'] > 0 and 'fsdp' not in scale['sharded_params']
  # Tensor parallel moves activations: the compiled step has collectives; the textbook figure leaves them out.
  assert scale['comm_bytes_per_step']['hlo']['result_bytes'] > 0
  assert scale['comm_bytes_per_step']['analytic']['tensor_parallel'] is None
  assert card['memory']['predicted_per'] == 'device' and card['memory']['predicted_bytes'] > 0
