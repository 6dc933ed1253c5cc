r"""Prints, per sharding strategy, what one train step holds and moves per device: a markdown table for docs/scaling.md.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/scaling_table.py \
        [--preset=transformer] [--batch_size=64] [--d_model=256]

For each mesh of the 8 (emulated) devices: parameter + optimizer bytes per device (from the shardings), XLA's
predicted memory of the step per device, and the collectives of the compiled step per device (result bytes and
ring-algorithm wire bytes, research.cost.comm) beside the textbook data-parallel/FSDP estimate. Everything is
read from compiled programs; nothing is timed (emulated CPU devices share the host's cores, so their speed says
nothing about real accelerators).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np

from configs import base, mnist1d
from research import cost, sharding
from research.config import validate
from research.training import loop

_PRESET = flags.DEFINE_string('preset', 'transformer', 'configs/mnist1d.py preset.')
_BATCH = flags.DEFINE_integer('batch_size', 64, 'Global batch size (a multiple of 8).')
_D_MODEL = flags.DEFINE_integer('d_model', 0, 'Transformer width (0: the preset\'s 32).')

MESHES = [('1 device', {'num_devices': 1}), ('data 8', {'data': 8}), ('data 2 x fsdp 4', {'data': 2, 'fsdp': 4}),
          ('fsdp 8', {'data': 1, 'fsdp': 8}), ('data 2 x tensor 4', {'data': 2, 'tensor': 4}),
          ('fsdp 2 x tensor 4', {'data': 1, 'fsdp': 2, 'tensor': 4})]


def _row(name: str, mesh_overrides: dict) -> str:
  config = mnist1d.get_config(_PRESET.value)
  with config.unlocked():
    config.batch_size = _BATCH.value
    if _D_MODEL.value:
      config.model.d_model = _D_MODEL.value
    for key, value in mesh_overrides.items():
      config.mesh[key] = value
  validate(config, base.get_base_config())
  mesh = sharding.make_mesh(config.mesh, batch_sizes={'batch_size': config.batch_size})
  model, tx, schedule, state = loop.create_model_and_state(config, num_classes=10, input_shape=(40,), mesh=mesh,
                                                           abstract=True)
  batch = {'inputs': jax.ShapeDtypeStruct((config.batch_size, 40), jnp.float32, sharding=sharding.batch_sharding(mesh)),
           'labels': jax.ShapeDtypeStruct((config.batch_size,), jnp.int32, sharding=sharding.batch_sharding(mesh))}
  compiled = loop.make_jit_train_step(config, model, tx, schedule, mesh, state).lower(state, batch).compile()
  held = sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize for x in jax.tree.leaves(state))
  comm = cost.collective_bytes(compiled)
  params = cost.param_stats(state.params)
  analytic = cost.analytic_comm_bytes(param_bytes=params['bytes'], mesh_shape=dict(mesh.shape))
  ops = ', '.join(f'{op} {n}' for op, n in sorted(comm['count'].items())) or 'none'
  return (f'| {name} | {held / 1e3:,.1f} | {cost.predicted_memory_bytes(compiled) / 1e3:,.1f} | '
          f'{comm["total"] / 1e3:,.1f} | {comm["estimated_wire_bytes"] / 1e3:,.1f} | {analytic["total"] / 1e3:,.1f} | '
          f'{ops} |')


def main(argv):
  del argv
  if jax.device_count() < 8:
    sys.exit('needs 8 devices: XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/scaling_table.py')
  print(f'{_PRESET.value} (MNIST-1D), batch {_BATCH.value}, f32, per device per train step; kB = 1000 bytes\n')
  print('| mesh | state held (kB) | predicted memory (kB) | collective results (kB) | wire, ring (kB) | '
        'textbook DP/FSDP (kB) | collectives |')
  print('|---|---|---|---|---|---|---|')
  for name, overrides in MESHES:
    print(_row(name, overrides), flush=True)
  print(f'\njax {jax.__version__}, {jax.devices()[0].device_kind} x {jax.device_count()} (emulated)')


if __name__ == '__main__':
  app.run(main)
