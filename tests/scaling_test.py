"""The compute-scaling study: its plan, the IsoFLOP and power-law fits on known curves, and its outputs."""

import os
import subprocess
import sys

import numpy as np
import pytest

from configs import base
from experiments import sweep as sweep_cli
from research import scaling
from research import sweep as sweep_lib
from research.config import validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('quick', [False, True])
def test_plan_spends_each_budget_and_its_configs_validate(quick):
  plan = scaling.study_plan(quick=quick)
  assert len({p.id for p in plan}) == len(plan)
  for p in plan:
    flops = p.steps * scaling.flops_per_step(p)
    if p.steps > scaling.MIN_STEPS:
      assert abs(flops - p.budget) <= scaling.flops_per_step(p) / 2 + 1
  point = plan[-1]
  config = sweep_cli.resolve_config('configs/lm.py:tiny', list(point.overrides))
  validate(config, base.get_base_config())
  assert (config.steps, config.model.num_layers, config.model.d_model) == (point.steps, point.layers, point.width)


def _card(loss):
  return {'stop_reason': 'steps', 'final_metrics': {'eval_loss': loss}, 'time': {'wall_s': 1.0},
          'flops': {'total_train': 1.0}, 'energy': {'joules': 2.0, 'source': 'estimate'}}


def _synthetic_cards(plan, scale):
  """Losses parabolic in ln N around N* = scale C^0.5 with the minimum loss 10 C^-0.05 at each budget C."""
  return {p.id: _card(10 * p.budget ** -0.05 + 0.1 * np.log(p.non_embedding_params / (scale * p.budget ** 0.5)) ** 2)
          for p in plan}


def test_fits_recover_a_known_frontier(tmp_path):
  plan = scaling.study_plan(quick=False)
  results = scaling.analyse(plan, _synthetic_cards(plan, scale=0.05))  # N* from 50k to 158k: inside the grid.
  assert results['n_opt_law']['exponent'] == pytest.approx(0.5, abs=1e-6)
  assert results['loss_law']['exponent'] == pytest.approx(-0.05, abs=1e-6)
  sizes = sorted({(p.non_embedding_params, p.flops_per_token) for p in plan})
  for budget, fit in results['isoflops'].items():
    n = fit['n_opt']
    assert n == pytest.approx(0.05 * float(budget) ** 0.5, rel=1e-6) and fit['inside']
    (_, f_lo), (_, f_hi) = [s for s in sizes if s[0] <= n][-1], [s for s in sizes if s[0] >= n][0]
    assert float(budget) / (f_hi * n) <= results['tokens_per_param'][budget] <= float(budget) / (f_lo * n)
  paths = scaling.write_results(results, {}, str(tmp_path), command='cmd', versions={'jax': 'x'})
  table = open(paths[0]).read()
  assert '| N_opt ~ C^a: a | 0.50 | 0.73 | 0.50 |' in table and 'Findings' in table
  assert os.path.getsize(paths[2]) > 10_000  # The plot.


def test_an_optimum_beyond_the_sizes_run_is_left_out_of_the_laws():
  plan = scaling.study_plan(quick=False)
  results = scaling.analyse(plan, _synthetic_cards(plan, scale=0.01))  # N* = 10k at 1e12: below the smallest size.
  assert not results['isoflops']['1e+12']['inside'] and '1e+12' not in results['tokens_per_param']
  assert results['n_opt_law']['exponent'] == pytest.approx(0.5, abs=1e-6)  # From the two budgets inside.
  assert 'left out of the laws' in scaling.findings(results)


def test_unfinished_runs_leave_the_fits_empty_not_wrong():
  plan = scaling.study_plan(quick=True)
  results = scaling.analyse(plan, {plan[0].id: _card(3.0)})
  assert results['n_opt_law'] is None and all(f is None for f in results['isoflops'].values())
  assert 'Not enough finished runs' in scaling.findings(results)


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
  proc = subprocess.run([sys.executable, '-m', 'experiments.scaling', '--dry_run', f'--out={tmp_path}/runs',
                         f'--results={tmp_path}/results'], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert '18 runs' in proc.stdout and 's5_C1e13' in proc.stdout
  assert not os.listdir(tmp_path)


def test_a_rerun_resumes_the_same_plan_and_refuses_another(tmp_path):
  trials = lambda quick: [sweep_lib.Trial(p.id, {}, p.overrides) for p in scaling.study_plan(quick=quick)]
  record = scaling.study_record(trials(True), 'cmd', preset='p')
  sweep_lib.write_json_atomic(str(tmp_path / 'sweep.json'), record)
  sweep_lib.check_out(str(tmp_path), scaling.study_record(trials(True), 'cmd', preset='p'))  # Same plan: resumes.
  with pytest.raises(sweep_lib.SweepError, match='another sweep source'):
    sweep_lib.check_out(str(tmp_path), scaling.study_record(trials(False), 'cmd', preset='p'))
