"""Multi-process runs: `jax.distributed.initialize` from the config's `distributed` group, before JAX touches devices.

One process per host (or per GPU); after initialization `jax.devices()` lists every process's devices and the mesh
spans them all. Three ways in:
  * explicit: distributed.coordinator_address=HOST:PORT, num_processes=N, process_id=I on each process (localhost
    tests, bare-metal clusters);
  * auto_detect=True: JAX detects the cluster (Cloud TPU pods, SLURM, Open MPI, GKE); experiments.launch sets it;
  * neither: one process, nothing to initialize.
"""

import jax

from research.config import check_distributed


def initialize(dist_config) -> bool:
  """Initializes JAX's distributed runtime as `dist_config` asks; returns whether it did.

  Must run before anything creates a JAX array or lists devices (config validation builds models abstractly, so
  the entry point calls this first).

  Raises:
    ConfigError: inconsistent keys.
  """
  check_distributed(dist_config)
  if dist_config.coordinator_address:
    jax.distributed.initialize(coordinator_address=dist_config.coordinator_address,
                               num_processes=dist_config.num_processes, process_id=dist_config.process_id)
    return True
  if dist_config.auto_detect:
    jax.distributed.initialize()
    return True
  return False
