"""Tests of research.cost.comm: collective bytes read from compiled SPMD programs, and the textbook estimates.

The compiled programs run in one subprocess with 8 CPU devices (a fresh JAX, whatever this process initialised);
the expected bytes are derived here from the shapes. XLA:CPU emits no async collectives, so the `*-start`, async
wrapper and loop cases are also checked on hand-written HLO in the form XLA:GPU prints.
"""

import json
import os
import subprocess
import sys

import pytest

import conftest  # tests/ is on sys.path (rootdir conftest): the emulated devices' XLA flags.

from research.cost import comm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F32 = 4

# Prints {case: collective_bytes(...)} for programs over a (data=2, fsdp=4) mesh of 8 CPU devices.
_PROGRAMS = r'''
import json
import jax, jax.numpy as jnp, numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from research.cost.comm import collective_bytes

mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ('data', 'fsdp'))
S = lambda *spec: NamedSharding(mesh, P(*spec))
compile_ = lambda f, args, ins, out: jax.jit(f, in_shardings=ins, out_shardings=out).lower(*args).compile()
x, w = jnp.ones((64, 128)), jnp.ones((32, 32))
chain = lambda c, w, n: lax.scan(lambda c, _: (jnp.tanh(c @ w), None), c, None, length=n)[0]

def loss(params, batch):
  h = jnp.tanh(batch['inputs'] @ params['w1'] + params['b1'])
  return jnp.mean((h @ params['w2'] + params['b2'] - batch['labels']) ** 2)

def train_step(params, batch):
  return jax.tree.map(lambda p, g: p - 0.1 * g, params, jax.grad(loss)(params, batch))

def exchange(x):  # [16, 8] per device.
  x = lax.all_to_all(x, 'fsdp', 0, 0, tiled=True)
  x = lax.ppermute(x, 'fsdp', [(i, (i + 1) % 4) for i in range(4)])
  return lax.psum_scatter(x, 'fsdp', scatter_dimension=0, tiled=True)  # [4, 8]

params = {'w1': jnp.ones((16, 64)), 'b1': jnp.ones((64,)), 'w2': jnp.ones((64, 8)), 'b2': jnp.ones((8,))}
batch = {'inputs': jnp.ones((32, 16)), 'labels': jnp.ones((32, 8))}
programs = {
    'sum': compile_(lambda x: x.sum(0), (x,), (S('data', 'fsdp'),), S('fsdp')),
    'gather': compile_(lambda x: 2 * x, (x,), (S(None, 'fsdp'),), S()),
    'scan': compile_(lambda c, w: chain(c, w, 5), (jnp.ones((16, 32)), w), (S(None, 'fsdp'), S('fsdp')),
                     S(None, 'fsdp')),
    'nested_scan': compile_(lambda c, w: lax.scan(lambda c, _: (chain(c, w, 5), None), c, None, length=3)[0],
                            (jnp.ones((16, 32)), w), (S(None, 'fsdp'), S('fsdp')), S(None, 'fsdp')),
    'data_parallel': compile_(train_step, (params, batch), (S(), S('data')), S()),
    'shard_map': compile_(jax.shard_map(exchange, mesh=mesh, in_specs=P(None, 'fsdp'), out_specs=P(None, 'fsdp')),
                          (jnp.ones((16, 32)),), (S(None, 'fsdp'),), S(None, 'fsdp')),
}
print(json.dumps({name: collective_bytes(compiled) for name, compiled in programs.items()}))
'''


@pytest.fixture(scope='module')
def compiled_bytes() -> dict:
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8 ' + conftest.CPU_COLLECTIVE_PATIENCE, 'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run([sys.executable, '-c', _PROGRAMS], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _ring_all_reduce(size: int, n: int) -> float:
  return 2 * (n - 1) / n * size


def test_sum_over_a_sharded_axis_is_one_all_reduce(compiled_bytes):
  # x [64, 128] split (data=2, fsdp=4): each device sums its [32, 32] block over rows, then the 2 devices along
  # 'data' add their [32] partial sums; the result stays split over 'fsdp'.
  got = compiled_bytes['sum']
  assert got['by_op'] == {'all-reduce': 32 * F32} and got['count'] == {'all-reduce': 1}
  assert got['estimated_wire_bytes'] == _ring_all_reduce(32 * F32, 2)


def test_replicated_output_of_a_sharded_input_is_one_all_gather(compiled_bytes):
  got = compiled_bytes['gather']  # Every device ends with the whole [64, 128], 3/4 of it from the other 3.
  assert got['by_op'] == {'all-gather': 64 * 128 * F32} and got['count'] == {'all-gather': 1}
  assert got['estimated_wire_bytes'] == 3 / 4 * 64 * 128 * F32


def test_scan_counts_the_all_reduce_of_every_iteration(compiled_bytes):
  # c [16, 32] split on columns, w [32, 32] on rows over 'fsdp': each step's c @ w adds 4 partial [16, 32] products.
  step = 16 * 32 * F32
  got = compiled_bytes['scan']
  assert got['count']['all-reduce'] == 5 and got['by_op']['all-reduce'] == 5 * step
  assert got['wire_by_op']['all-reduce'] == 5 * _ring_all_reduce(step, 4)
  nested = compiled_bytes['nested_scan']  # 3 outer x 5 inner iterations.
  assert nested['count']['all-reduce'] == 15 and nested['by_op']['all-reduce'] == 15 * step


def test_data_parallel_step_all_reduces_the_gradients_once(compiled_bytes):
  param_bytes = (16 * 64 + 64 + 64 * 8 + 8) * F32
  got = compiled_bytes['data_parallel']
  # XLA combines the 4 gradients into one tuple all-reduce over the 2 'data' devices.
  assert got['by_op'] == {'all-reduce': param_bytes} and got['count'] == {'all-reduce': 1}
  estimate = comm.analytic_comm_bytes(param_bytes=param_bytes, mesh_shape={'data': 2, 'fsdp': 1})
  assert got['estimated_wire_bytes'] == estimate['total'] == _ring_all_reduce(param_bytes, 2)


def test_all_to_all_permute_and_reduce_scatter(compiled_bytes):
  block = 16 * 8 * F32  # Each device's [16, 8] column block.
  got = compiled_bytes['shard_map']
  # XLA:CPU splits the tiled all-to-all into a tuple of 4 [4, 8] pieces: still the whole block.
  assert got['by_op'] == {'all-to-all': block, 'collective-permute': block, 'reduce-scatter': block // 4}
  assert got['wire_by_op'] == {'all-to-all': 3 / 4 * block, 'collective-permute': block,
                               'reduce-scatter': 3 * block // 4}


@pytest.mark.parametrize('groups, size', [
    ('replica_groups={{0,1},{2,3},{4,5},{6,7}}', 2),
    ('replica_groups={{0,1,2,3,4,5,6,7}}', 8),
    ('replica_groups={}', 8),
    ('source_target_pairs={{0,1},{1,0}}', 8),
    ('replica_groups=[2,4]<=[8]', 4),
    ('replica_groups=[4,2]<=[2,4]T(1,0)', 2),
    ("replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_0'}", 2),
    ("replica_groups=mesh['axis_0'=1,'axis_1'=4,'axis_2'=2], device_ids=([2,4]T(1,0)) {'axis_1'}", 4),
    ("replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_0','axis_1'}", 8),
    ("replica_groups=mesh['axis_0'=2,'axis_1'=4], device_ids=([2,2,2]T(2,1,0)) {'axis_1':(2)2}", 2),
    ('replica_groups=maximal_mesh[device_id=3]', 1),
])
def test_replica_group_size(groups, size):
  line = f'  %ar = f32[8]{{0}} all-reduce(%p), channel_id=1, {groups}, use_global_device_ids=true, to_apply=%add'
  assert comm.replica_group_size(line, num_devices=8) == size


def test_replica_group_size_rejects_an_unknown_form():
  with pytest.raises(ValueError, match='replica_groups'):
    comm.replica_group_size('all-reduce(%p), replica_groups=<something new>', num_devices=8)


# Async collectives as XLA:GPU prints them, a collective wrapped in async-start, one in a fusion, and loops.
_ASYNC_HLO = '''HloModule jit_step, is_scheduled=true, num_partitions=8

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %sum = f32[] add(%a, %b)
}

%scatter_computation (p: f32[64]) -> f32[16] {
  %p = f32[64]{0} parameter(0)
  ROOT %rs = f32[16]{0} reduce-scatter(%p), channel_id=3, replica_groups=[2,4]<=[8], dimensions={0}, to_apply=%add
}

%fused_all_reduce (q: f32[32]) -> f32[32] {
  %q = f32[32]{0} parameter(0)
  ROOT %ar.f = f32[32]{0} all-reduce(%q), replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_0','axis_1'}, to_apply=%add
}

%body (loop: (s32[], bf16[8,128])) -> (s32[], bf16[8,128]) {
  %loop = (s32[], bf16[8,128]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%loop), index=0
  %x = bf16[8,128]{1,0} get-tuple-element(%loop), index=1
  %ags = (bf16[8,128], bf16[32,128]) all-gather-start(%x), replica_groups=[2,4]<=[2,4]T(1,0), dimensions={0}
  %agd = bf16[32,128]{1,0} all-gather-done(%ags)
  %cps = (bf16[8,128], bf16[8,128], u32[], u32[]) collective-permute-start(%x), source_target_pairs={{0,1},{1,0}}
  %cpd = bf16[8,128]{1,0} collective-permute-done(%cps)
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  ROOT %out = (s32[], bf16[8,128]{1,0}) tuple(%next, %cpd)
}

%body.unknown (loop.2: (s32[], bf16[8,128])) -> (s32[], bf16[8,128]) {
  %loop.2 = (s32[], bf16[8,128]{1,0}) parameter(0)
  %i.2 = s32[] get-tuple-element(%loop.2), index=0
  %x.2 = bf16[8,128]{1,0} get-tuple-element(%loop.2), index=1
  %a2a = bf16[8,128]{1,0} all-to-all(%x.2), channel_id=6, replica_groups={{0,1,2,3},{4,5,6,7}}, dimensions={0}
  ROOT %out.2 = (s32[], bf16[8,128]{1,0}) tuple(%i.2, %a2a)
}

%cond (loop.1: (s32[], bf16[8,128])) -> pred[] {
  %loop.1 = (s32[], bf16[8,128]{1,0}) parameter(0)
  %i.1 = s32[] get-tuple-element(%loop.1), index=0
  %n = s32[] constant(3)
  ROOT %lt = pred[] compare(%i.1, %n), direction=LT
}

ENTRY %main (p0: f32[1024], p1: f32[64], p2: bf16[8,128], p3: f32[32]) -> (f32[1024], f32[64]) {
  %p0 = f32[1024]{0} parameter(0)
  %p1 = f32[64]{0} parameter(1)
  %p2 = bf16[8,128]{1,0} parameter(2)
  %p3 = f32[32]{0} parameter(3)
  %ars = f32[1024]{0} all-reduce-start(%p0), channel_id=1, replica_groups={{0,1,2,3,4,5,6,7}}, to_apply=%add
  %ard = f32[1024]{0} all-reduce-done(%ars)
  %ars.old = (f32[64], f32[64]) all-reduce-start(%p1), replica_groups={{0,1},{2,3},{4,5},{6,7}}, to_apply=%add
  %ard.old = f32[64]{0} all-reduce-done(%ars.old)
  %ars.two = (f32[1024]{0}, f32[64]{0}) all-reduce-start(%p0, %p1), channel_id=7, replica_groups={}, to_apply=%add
  %ard.two = (f32[1024]{0}, f32[64]{0}) all-reduce-done(%ars.two)
  %rss = ((f32[64]{0}), f32[16]{0}, s32[]) async-start(%p1), calls=%scatter_computation
  %rsd = f32[16]{0} async-done(%rss), calls=%scatter_computation
  %fusion = f32[32]{0} fusion(%p3), kind=kCustom, calls=%fused_all_reduce
  %zero = s32[] constant(0)
  %init = (s32[], bf16[8,128]{1,0}) tuple(%zero, %p2)
  %while = (s32[], bf16[8,128]) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  %while.unknown = (s32[], bf16[8,128]{1,0}) while(%init), condition=%cond, body=%body.unknown
  ROOT %result = (f32[1024]{0}, f32[64]{0}) tuple(%ard, %ard.old)
}
'''


def test_async_starts_wrappers_fusions_and_loops():
  got = comm.hlo_collective_bytes(_ASYNC_HLO)
  # all-reduce-start: new style (the result), old style (operand, result: half counts), two operands; one in a fusion.
  all_reduce = [(1024 * F32, 8), (64 * F32, 2), ((1024 + 64) * F32, 8), (32 * F32, 8)]
  gathered, block = 32 * 128 * 2, 8 * 128 * 2  # bf16, in the loop run 3 times.
  assert got['by_op'] == {'all-reduce': sum(size for size, _ in all_reduce), 'reduce-scatter': 16 * F32,
                          'all-gather': 3 * gathered, 'collective-permute': 3 * block, 'all-to-all': block}
  assert got['count'] == {'all-reduce': 4, 'reduce-scatter': 1, 'all-gather': 3, 'collective-permute': 3,
                          'all-to-all': 1}  # The loop without a known trip count counts once.
  assert got['wire_by_op'] == {'all-reduce': round(sum(_ring_all_reduce(s, n) for s, n in all_reduce)),
                               'reduce-scatter': 3 * 16 * F32, 'all-gather': 3 * 3 / 4 * gathered,
                               'collective-permute': 3 * block, 'all-to-all': 3 / 4 * block}
  assert got['total'] == sum(got['by_op'].values())
  assert got['estimated_wire_bytes'] == sum(got['wire_by_op'].values())


def test_shape_bytes():
  assert comm.shape_bytes('f32[8,16]{1,0}') == 512
  assert comm.shape_bytes('(bf16[4]{0}, pred[3], s4[5], token[])') == 8 + 3 + 3
  assert comm.shape_bytes('f32[]') == 4 and comm.shape_bytes('f32[<=10]') == 40


def test_analytic_comm_bytes():
  p = 1200
  assert comm.analytic_comm_bytes(param_bytes=p, mesh_shape={'data': 4})['total'] == 2 * 3 / 4 * p
  fsdp = comm.analytic_comm_bytes(param_bytes=p, mesh_shape={'data': 1, 'fsdp': 4})  # ZeRO-3: 3 (f-1)/f p.
  assert fsdp['total'] == 3 * 3 / 4 * p and fsdp['data_parallel_all_reduce'] == 0
  hybrid = comm.analytic_comm_bytes(param_bytes=p, mesh_shape={'data': 2, 'fsdp': 4, 'tensor': 3})
  assert hybrid['data_parallel_all_reduce'] == 2 * 1 / 2 * p / 3 / 4  # Each device's 1/(f t) of the gradient.
  assert hybrid['fsdp_all_gather'] == 2 * 3 / 4 * p / 3 and hybrid['tensor_parallel'] is None
  with pytest.raises(ValueError, match='positive'):
    comm.analytic_comm_bytes(param_bytes=p, mesh_shape={'data': 0})
