"""Test setup: 8 fake CPU devices so sharding code runs anywhere; set before jax is imported."""

import os

# Emulated devices are threads of one process; a collective waits for all of them, and XLA:CPU aborts the process
# when one arrives more than 40 s late. On 2 busy cores (a pytest worker beside subprocess runs) a thread can be
# descheduled that long: measured here with four training processes at once. Wait longer instead of aborting.
CPU_COLLECTIVE_PATIENCE = ('--xla_cpu_collective_call_terminate_timeout_seconds=600 '
                           '--xla_cpu_collective_call_warn_stuck_timeout_seconds=120')
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8 '
                           + CPU_COLLECTIVE_PATIENCE).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
