"""research.report and experiments.report: discovery, rows of complete/older/LM cards, Pareto fronts, seed groups."""

import json
import math
import os
import subprocess
import sys

import pytest

from research import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 2**20
VERSIONS = {'python': '3.11', 'jax': 'test'}


def _config(seed: int, *, lr: float = 0.01, log_every: int = 50, model: str = 'cnn') -> dict:
  return {'seed': seed, 'batch_size': 100, 'steps': 6000, 'log_every': log_every, 'progress': False,
          'dataset': {'name': 'mnist1d', 'variant': 'standard', 'data_dir': ''},
          'model': {'name': model}, 'optimizer': {'name': 'adam', 'learning_rate': lr}}


def _complete_card(*, accuracy: float = 0.934, flops: float = 1.23e12, joules: float = 812.4,
                   wall_s: float = 20.25) -> dict:
  """A card with every key the training loop writes now."""
  return {
      'model': 'cnn', 'dataset': 'mnist1d', 'steps': 6000, 'stop_reason': 'steps', 'restarts': 0,
      'final_metrics': {'train_loss': 0.01, 'test_loss': 0.42, 'test_accuracy': accuracy},
      'params': {'count': 5210, 'bytes': 20840},
      'flops': {'train_step': {'analytic': 2e8, 'xla': 2.05e8}, 'eval_example': {'analytic': 7e5, 'xla': 7.1e5},
                'total_train': flops},
      'time': {'compile_s': 2.7, 'train_s': 11.3, 'eval_s': 1.0, 'checkpoint_s': 0.1, 'data_wait_s': 0.2,
               'wall_s': wall_s},
      'throughput': {'examples_per_s': 53210.7},
      'mfu': {'value': 0.123, 'peak_flops_per_s': 1e11, 'peak_source': 'measured'},
      'memory': {'predicted_bytes': 3 * MIB, 'measured_peak_bytes': int(10.5 * MIB)},
      'energy': {'joules': joules, 'source': 'estimate',
                 'assumptions': 'estimate, not a measurement: process CPU time x 5 W per busy core'},
      'co2_g': 0.0812, 'inference': {'batch1_p50_ms': 0.314, 'batch1_p99_ms': 7.97},
      'environment': {'backend': 'cpu', 'device_kind': 'cpu', 'cpu': 'AMD EPYC'},
  }


# A card from before the cost accounting (as in results/mnist1d/runs): no FLOPs, energy, MFU, memory or latency.
OLD_CARD = {'model': 'mlp', 'dataset': 'mnist1d', 'steps': 300, 'stop_reason': 'preempted',
            'final_metrics': {'train_loss': 1.1, 'test_loss': 1.13, 'test_accuracy': 0.569},
            'params': {'count': 15210}, 'time': {'compile_s': 1.0, 'train_s': 3.0}, 'wall_time_s': 5.5}

LM_CARD = {'model': 'transformer', 'dataset': 'tinyshakespeare', 'steps': 1000, 'stop_reason': 'steps',
           'final_metrics': {'train_loss': 1.5, 'eval_loss': 1.61234, 'eval_bits_per_byte': 2.33},
           'params': {'count': 812345}, 'flops': {'total_train': 4.5e13}, 'time': {'wall_s': 250.0},
           'energy': {'joules': 2.5e4, 'source': 'nvml'}, 'mfu': {'value': 0.004}}


def _write_run(path, card: dict | str, config: dict | None = None):
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, 'run_card.json'), 'w') as f:
    f.write(card if isinstance(card, str) else json.dumps(card))
  if config is not None:
    with open(os.path.join(path, 'config.json'), 'w') as f:
      json.dump(config, f)
  return str(path)


def _table_row(markdown: str, run: str) -> str:
  return next(line for line in markdown.splitlines() if line.startswith(f'| {run} |'))


# Pareto fronts.


def test_pareto_front_higher_is_better_with_ties():
  costs = [1, 2, 2, 3, 4, 4, 5, 0.5]
  values = [0.5, 0.7, 0.6, 0.7, 0.9, 0.9, 0.8, 0.2]
  # 0.5@1 and 0.7@2 each beat everything cheaper; 0.6@2 loses to 0.7 at the same cost; 0.7@3 only equals a cheaper
  # point; the two 0.9@4 are exact duplicates (both on the front); 0.8@5 is worse and dearer.
  assert report.pareto_front(costs, values, higher_is_better=True) == [7, 0, 1, 4, 5]


def test_pareto_front_lower_is_better():
  costs = [1.0, 2.0, 3.0, 3.0, 10.0]
  losses = [3.0, 2.5, 2.5, 1.0, 1.0]
  assert report.pareto_front(costs, losses, higher_is_better=False) == [0, 1, 3]
  assert report.pareto_front(costs, losses, higher_is_better=True) == [0]  # The cheapest is also the best.
  assert report.pareto_front([], [], higher_is_better=True) == []


def test_pareto_front_rejects_bad_points():
  with pytest.raises(ValueError, match='same length'):
    report.pareto_front([1, 2], [1], higher_is_better=True)
  with pytest.raises(ValueError, match='finite'):
    report.pareto_front([1, 2], [1, math.nan], higher_is_better=True)


# Rows and tables.


def test_rows_of_complete_older_and_lm_cards(tmp_path):
  runs = report.load_runs([_write_run(tmp_path / 'cnn_s0', _complete_card(), _config(0)),
                           _write_run(tmp_path / 'old', OLD_CARD),
                           _write_run(tmp_path / 'lm', LM_CARD, _config(3, model='transformer'))])
  rows = [report.run_row(r) for r in runs]
  assert [r['run'] for r in rows] == ['cnn_s0', 'old', 'lm']
  complete, old, lm = rows
  assert (complete['metric'], complete['metric_value'], complete['higher_is_better']) == ('test_accuracy', 0.934,
                                                                                          True)
  assert complete['train_flops'] == 1.23e12 and complete['energy_source'] == 'estimate' and complete['seed'] == 0
  assert old['wall_s'] == 5.5 and old['seed'] is None  # Older cards: top-level wall_time_s, no config.json.
  assert all(old[k] is None for k in ('train_flops', 'energy_j', 'mfu', 'co2_g', 'batch1_p50_ms', 'examples_per_s'))
  assert (lm['metric'], lm['metric_value'], lm['higher_is_better']) == ('eval_loss', 1.61234, False)

  table = report.format_runs_table(rows)
  assert _table_row(table, 'cnn_s0') == ('| cnn_s0 | cnn | mnist1d | 0 | 6,000 | steps | 93.4% test_accuracy | 5,210 '
                                         '| 1.2e12 | 20.2 | 53,211 | 12.3% | 3.0 / 10.5 | 812 J (estimate) '
                                         '| 0.0812 | 0.314 |')
  assert _table_row(table, 'old') == ('| old | mlp | mnist1d | — | 300 | preempted | 56.9% test_accuracy | 15,210 '
                                      '| — | 5.50 | — | — | — / — | — | — | — |')
  assert _table_row(table, 'lm') == ('| lm | transformer | tinyshakespeare | 3 | 1,000 | steps | 1.612 eval_loss '
                                     '| 812,345 | 4.5e13 | 250 | — | 0.4% | — / — | 25,000 J (nvml) | — | — |')


def test_missing_and_malformed_values_show_as_dash(tmp_path):
  card = {'model': 'cnn', 'final_metrics': {'test_accuracy': None}, 'energy': {'joules': 'lots'},
          'flops': [1, 2], 'mfu': {'value': float('nan')}, 'time': {'wall_s': True}}
  row = report.run_row(report.load_runs([_write_run(tmp_path / 'r', card)])[0])
  assert row['metric'] is None and row['energy_j'] is None and row['train_flops'] is None and row['mfu'] is None
  assert row['wall_s'] is None and row['dataset'] is None
  assert _table_row(report.format_runs_table([row]), 'r') == ('| r | cnn | — | — | — | — | — | — | — | — | — | — '
                                                              '| — / — | — | — | — |')


def test_groups_over_seeds_ignore_logging_keys(tmp_path):
  runs = report.load_runs([
      _write_run(tmp_path / 's0', _complete_card(accuracy=0.90, joules=100.0), _config(0)),
      _write_run(tmp_path / 's1', _complete_card(accuracy=0.94, joules=300.0), _config(1, log_every=10)),
      _write_run(tmp_path / 'lr', _complete_card(accuracy=0.80), _config(0, lr=0.003)),
      _write_run(tmp_path / 'old', OLD_CARD)])
  groups = report.group_runs(runs)
  assert [g['runs'] for g in groups] == [['s0', 's1'], ['lr'], ['old']]
  pair = groups[0]
  assert pair['n'] == 2 and pair['seeds'] == [0, 1] and pair['metric'] == 'test_accuracy'
  assert pair['metric_mean'] == pytest.approx(0.92) and pair['metric_std'] == pytest.approx(0.02)
  assert pair['energy_j_mean'] == 200.0 and pair['energy_j_std'] == 100.0 and pair['energy_sources'] == ['estimate']
  assert 'seed' not in pair['config'] and 'log_every' not in pair['config'] and pair['config']['steps'] == 6000
  assert groups[2]['config'] == {} and groups[2]['energy_j_mean'] is None

  table = report.format_groups_table(groups)
  assert ('| cnn | mnist1d | adam, lr 0.01, batch 100 | 2 | 0, 1 | 92.0 ± 2.0% test_accuracy | 1.2e12 '
          '| 20.2 ± 0.00 | 200 ± 100 J (estimate) | 53,211 |') in table
  assert '| cnn | mnist1d | adam, lr 0.003, batch 100 | 1 | 0 | 80.0% test_accuracy |' in table
  assert '| mlp | mnist1d | no config.json | 1 | — | 56.9% test_accuracy |' in table


# Discovery and errors.


def test_discovery_recurses_and_names_clashing_runs(tmp_path):
  a = _write_run(tmp_path / 'results' / 'a' / 'runs' / 'cnn_s0', _complete_card())
  b = _write_run(tmp_path / 'results' / 'b' / 'runs' / 'cnn_s0', OLD_CARD)
  os.makedirs(tmp_path / 'results' / 'a' / 'runs' / 'cnn_s0' / 'checkpoints' / '10')  # Not searched: inside a run.
  too_deep = _write_run(tmp_path / 'results' / 'c' / 'x' / 'y' / 'z', OLD_CARD)
  assert report.find_run_dirs([str(tmp_path / 'results')]) == [a, b]
  assert report.find_run_dirs([str(tmp_path / 'results'), a, os.path.join(b, 'run_card.json')]) == [a, b]
  assert too_deep in report.find_run_dirs([str(tmp_path / 'results' / 'c')])
  assert [r.name for r in report.load_runs([str(tmp_path / 'results')])] == ['a/runs/cnn_s0', 'b/runs/cnn_s0']


def _missing(p):
  return str(p / 'nope')


def _empty(p):
  os.makedirs(p / 'empty' / 'sub')
  return str(p / 'empty')


def _truncated_card(p):
  return _write_run(p / 'bad', '{"model": "cnn", "ste')


def _list_card(p):
  return _write_run(p / 'list', '[1, 2]')


def _truncated_config(p):
  path = _write_run(p / 'cfg', OLD_CARD)
  with open(os.path.join(path, 'config.json'), 'w') as f:
    f.write('{')
  return path


@pytest.mark.parametrize('setup, message', [
    (_missing, 'nope: no such file or directory'),
    (_empty, 'empty: no run'),
    (_truncated_card, 'bad/run_card.json: unreadable run card'),
    (_list_card, 'list/run_card.json: unreadable run card (a JSON list'),
    (_truncated_config, 'cfg/config.json: unreadable config'),
])
def test_bad_inputs_raise_report_error(tmp_path, setup, message):
  with pytest.raises(report.ReportError, match=message.replace('(', r'\(')):
    report.load_runs([setup(tmp_path)])


# Files.


def test_write_report_tables_plots_and_pareto_fronts(tmp_path):
  runs = report.load_runs([
      _write_run(tmp_path / 'big', _complete_card(accuracy=0.95, flops=4e12, joules=2000.0, wall_s=80.0), _config(0)),
      _write_run(tmp_path / 'small', _complete_card(accuracy=0.90, flops=1e12, joules=500.0, wall_s=20.0), _config(1)),
      _write_run(tmp_path / 'worse', _complete_card(accuracy=0.85, flops=2e12, joules=900.0, wall_s=30.0),
                 _config(0, lr=0.1)),
      _write_run(tmp_path / 'lm', LM_CARD), _write_run(tmp_path / 'old', OLD_CARD)])
  out = tmp_path / 'out'
  result = report.write_report(str(out), runs, command='python -m experiments.report x --out=y', versions=VERSIONS)

  document = json.loads((out / 'report.json').read_text())
  assert document['runs'] == json.loads(json.dumps([report.run_row(r) for r in runs]))
  assert [g['n'] for g in document['groups']] == [2, 1, 1, 1]
  plots = {p['file']: p for p in document['plots']}
  assert sorted(plots) == sorted(result.files[2:]) == sorted(
      f'{m}_vs_{c}.png' for m in ('test_accuracy', 'eval_loss') for c in ('train_flops', 'energy', 'wall_time'))
  for name in plots:
    assert (out / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert plots['test_accuracy_vs_train_flops.png']['pareto_front'] == {'mnist1d': ['small', 'big']}
  assert plots['test_accuracy_vs_wall_time.png']['pareto_front'] == {'mnist1d': ['old', 'small', 'big']}
  assert plots['eval_loss_vs_energy.png']['pareto_front'] == {'tinyshakespeare': ['lm']}
  assert plots['test_accuracy_vs_energy.png']['cost_label'] == 'energy (J; estimate)'
  assert document['skipped_plots'] == []

  markdown = (out / 'report.md').read_text()
  assert markdown == result.markdown and markdown.index('| big |') < markdown.index('Energy `estimate`')
  assert 'Energy `estimate`: an estimate, not a measurement' in markdown and 'Energy `nvml`: measured' in markdown
  assert '5 W per busy core' in markdown  # The card's own assumptions are quoted.
  assert 'Command: `python -m experiments.report x --out=y`' in markdown and '"jax": "test"' in markdown
  assert '## Across seeds' in markdown
  assert '![test_accuracy vs train FLOPs](test_accuracy_vs_train_flops.png)' in markdown
  assert 'Pareto front: mnist1d: small, big.' in markdown


def test_plots_are_skipped_when_no_run_has_the_quantity(tmp_path):
  out = tmp_path / 'out'
  result = report.write_report(str(out), report.load_runs([_write_run(tmp_path / 'old', OLD_CARD)]), command='c',
                               versions=VERSIONS)
  assert result.document['skipped_plots'] == ['final metric vs train FLOPs: no run has train FLOPs',
                                              'final metric vs energy (J): no run has energy (J)']
  assert sorted(os.listdir(out)) == ['report.json', 'report.md', 'test_accuracy_vs_wall_time.png']
  assert 'Skipped plot: final metric vs energy (J): no run has energy (J).' in result.markdown
  assert 'no across-seed table' in result.markdown and 'Energy `' not in result.markdown


# The command.


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  return subprocess.run([sys.executable, '-m', 'experiments.report', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)


def test_command_finds_runs_below_a_directory(tmp_path):
  _write_run(tmp_path / 'results' / 'mnist1d' / 'runs' / 'cnn_s0', _complete_card(), _config(0))
  _write_run(tmp_path / 'results' / 'mnist1d' / 'runs' / 'cnn_s1', _complete_card(accuracy=0.9), _config(1))
  out = tmp_path / 'report'
  proc = _cli(str(tmp_path / 'results'), '--out', str(out))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '| cnn_s1 | cnn | mnist1d | 1 |' in proc.stdout and '2 runs; wrote report.md, report.json' in proc.stdout
  document = json.loads((out / 'report.json').read_text())
  assert [r['run'] for r in document['runs']] == ['cnn_s0', 'cnn_s1'] and document['groups'][0]['n'] == 2
  assert document['command'].startswith('python -m experiments.report ') and 'jax' in document['versions']
  assert (out / 'test_accuracy_vs_energy.png').is_file()


def test_command_bad_input_exits_2_with_one_line(tmp_path):
  _write_run(tmp_path / 'bad', '{not json')
  os.makedirs(tmp_path / 'empty')
  out = f'--out={tmp_path / "out"}'
  for args, message in [((str(tmp_path / 'missing'), out), f'{tmp_path / "missing"}: no such file or directory'),
                        ((str(tmp_path / 'empty'), out), f'{tmp_path / "empty"}: no run'),
                        ((str(tmp_path / 'bad'), out), f'{tmp_path / "bad" / "run_card.json"}: unreadable run card'),
                        ((out,), 'expected one or more run directories'),
                        ((str(tmp_path / 'bad'),), '--out is required')]:
    proc = _cli(*args)
    assert proc.returncode == 2, (args, proc.stderr)
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and message in proc.stderr, (args, proc.stderr)
  assert not (tmp_path / 'out').exists()
