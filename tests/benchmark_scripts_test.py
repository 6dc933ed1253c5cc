"""The measurement scripts under benchmarks/ that README and docs quote: each runs end to end on a tiny budget and
prints the rows its figures come from (they are not imported by the library, so nothing else would notice them
break)."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script(name: str, *args: str) -> str:
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  env.pop('XLA_FLAGS', None)  # conftest's 8 host devices: the scripts measure the one device a user has.
  proc = subprocess.run([sys.executable, os.path.join('benchmarks', name), *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


@pytest.mark.slow
def test_accounting_overhead_compares_runs_with_and_without_accounting():
  out = _script('accounting_overhead.py', '--models=logreg', '--steps=60', '--repeats=1')
  row = next(line for line in out.splitlines() if line.startswith('logreg'))
  # wall off, wall on, ratio, train off, train on, ratio, end-of-run section: each "min / median".
  assert len(re.findall(r'[\d.]+ / +[\d.]+', row)) == 7, row
  assert re.search(r'per-step hook: budget check [\d.]+ us/step', out), out


@pytest.mark.slow
def test_cost_table_measures_a_step_heap_by_owner():
  out = _script('cost_table.py', '--models=logreg')
  rows = [line for line in out.splitlines() if line.startswith('| logreg |')]
  assert len(rows) == 2, out  # The FLOPs row and the memory row.
  memory = [cell.strip() for cell in rows[1].strip('|').split('|')]
  assert len(memory) == 11 and all(float(cell.replace(',', '')) >= 0 for cell in memory[1:]), rows[1]
