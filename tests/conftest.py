"""Test setup: 8 fake CPU devices so sharding code runs anywhere; set before jax is imported."""

import atexit
import os
import shutil
import tempfile

# Emulated devices are threads of one process; a collective waits for all of them, and XLA:CPU aborts the process
# when one arrives more than 40 s late. On 2 busy cores (a pytest worker beside subprocess runs) a thread can be
# descheduled that long: measured here with four training processes at once. Wait longer instead of aborting.
CPU_COLLECTIVE_PATIENCE = ('--xla_cpu_collective_call_terminate_timeout_seconds=600 '
                           '--xla_cpu_collective_call_warn_stuck_timeout_seconds=120')
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8 '
                           + CPU_COLLECTIVE_PATIENCE).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# One persistent XLA compilation cache for the whole session, the xdist workers and every subprocess they start
# (they inherit the environment): many tests train the same model configs, and compiling is most of a short run's
# time. The dir is made once, by pytest's main process (workers inherit the variable). With a maximum size JAX
# locks each read and write (filelock), so that two processes never see half of an entry. The first compile of
# each program in a session still goes through XLA.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='costlab-test-xla-cache-')
  atexit.register(shutil.rmtree, os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
os.environ.setdefault('JAX_COMPILATION_CACHE_MAX_SIZE', str(4 << 30))


def pytest_collection_modifyitems(items):
  """Longest tests first (marked `long`): with two xdist workers, a long test collected last would otherwise run
  alone at the end while the other worker idles."""
  items.sort(key=lambda item: (item.get_closest_marker('long') is None, _LONG_ORDER.get(item.name, 0)))


# Among the long tests: the longest first, and the two multi-process tests (4 training processes between them)
# apart, so that they do not run at the same time on 2 cores. Any other `long` test goes first of all (0).
_LONG_ORDER = {name: i for i, name in enumerate([
    'test_all_quick_studies_write_their_tables_plots_and_summaries',
    'test_five_sigkills_at_random_points_resume_to_the_same_final_state',
    'test_two_processes_train_checkpoint_are_killed_and_resume',
    'test_quick_pipeline_writes_table_summary_and_plot',
    'test_compress_writes_a_measured_table_and_models_that_evaluate',
    'test_grid_sweep_runs_in_parallel_writes_the_table_and_a_rerun_starts_nothing',
    'test_sigterm_to_one_process_stops_both_at_the_same_step_with_a_checkpoint_also_during_startup',
], start=1)}
