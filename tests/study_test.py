"""experiments.study on a tiny budget (--quick --max_steps): each study's outputs and their structure; the findings
themselves come from running the studies (results/studies/)."""

import json
import os
import subprocess
import sys

import pytest

from research.studies import batch_size, common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG = b'\x89PNG\r\n\x1a\n'


def _run(args, tmp_path, timeout=900):
  env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path / 'tfds'), JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  return subprocess.run([sys.executable, '-m', 'experiments.study', *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


# Per study: its plot, the table headings it writes, and the summary's keys per row.
EXPECTED = {
    'optimizers': ('optimizers.png', ['Each optimizer at its best learning rate', 'Learning-rate sweep'],
                   {'model', 'optimizer', 'best_lr', 'tune_accuracy', 'mean', 'std', 'train_time_s'}),
    'gradient_descent': ('gradient_descent.png', ['Results (mean ± std over seeds)', 'Learning-rate sweep'],
                         {'method', 'batch_size', 'lr', 'epochs', 'time'}),
    'batch_size': ('batch_size.png', ['Per batch size', 'Final test accuracy (seed 0) and steps to target'],
                   {'batch_size', 'best_lr', 'fastest_lr', 'min_steps_to_target', 'examples_per_s', 'joules'}),
    'regularization': ('regularization.png', ['Each method at its best strength', 'Every strength'],
                       {'method', 'strength', 'test_mean', 'gap_mean', 'train_mean'}),
    'model_scale': ('model_scale.png', ['Every size, by training FLOPs'],
                    {'family', 'label', 'params', 'train_flops', 'mean', 'on_frontier'}),
}


@pytest.mark.long
def test_all_quick_studies_write_their_tables_plots_and_summaries(tmp_path):
  """`all --quick` with 8 steps per run: every study writes table.md (question, generated findings, its tables, the
  command), summary.json and a PNG; a rerun trains nothing and writes the same findings."""
  out = tmp_path / 'studies'
  proc = _run(['all', '--quick', '--max_steps=8', f'--out={out}'], tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name, (plot, headings, keys) in EXPECTED.items():
    d = out / f'{name}_quick'
    table = (d / 'table.md').read_text()
    assert table.startswith('# ') and '**Question.**' in table and '**Findings.**' in table
    assert all(f'## {h}' in table for h in headings), (name, table[:2000])
    assert f'![{plot}]({plot})' in table and 'Command: `python -m experiments.study all --quick' in table
    assert (d / plot).read_bytes()[:8] == PNG
    summary = json.loads((d / 'summary.json').read_text())
    assert summary['study'] == name and summary['quick'] and summary['max_steps'] == 8
    assert summary['findings'] and summary['findings'] in table
    rows = summary['results']['rows']
    assert rows and all(keys <= set(row) for row in rows), (name, rows[0])
    assert {'jax', 'flax', 'optax'} <= set(summary['versions'])
    cards = [os.path.join(r, 'run_card.json') for r, _, files in os.walk(d / 'runs') if 'run_card.json' in files]
    assert cards, name
    assert all(json.load(open(c))['steps'] <= 8 for c in cards)
  reg = json.loads((out / 'regularization_quick' / 'summary.json').read_text())['results']['rows']
  assert {r['method'] for r in reg} == {'none', 'L1', 'L2', 'dropout', 'weight decay (AdamW)'}

  findings = json.loads((out / 'model_scale_quick' / 'summary.json').read_text())['findings']
  again = _run(['model_scale', '--quick', '--max_steps=8', f'--out={out}/model_scale_quick'], tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  assert '(0 runs trained now)' in again.stdout
  assert json.loads((out / 'model_scale_quick' / 'summary.json').read_text())['findings'] == findings


@pytest.mark.parametrize('args, message', [
    ([], 'expected one study name'),
    (['optimizer'], "expected one study name, one of ['optimizers'"),
    (['optimizers', '--max_steps=-1'], '--max_steps=-1: expected a positive number'),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, args, message):
  proc = _run([*args, f'--out={tmp_path}/out'], tmp_path, timeout=120)
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
  assert not (tmp_path / 'out').exists()


def _run_with(evals, steps=100):
  return common.Run('r', None, {}, [{'step': s, 'accuracy': a} for s, a in zip(range(steps // len(evals), steps + 1,
                                                                                       steps // len(evals)), evals)],
                    {})


def test_steps_to_target_is_the_first_evaluation_at_or_above_it():
  run = _run_with([0.2, 0.5, 0.7, 0.65])
  assert batch_size.steps_to(run, 0.5) == 50 and batch_size.steps_to(run, 0.69) == 75
  assert batch_size.steps_to(run, 0.8) is None


def test_critical_batch_size_is_the_last_batch_within_the_slack_of_perfect_scaling():
  rows = [{'batch_size': b, 'min_steps_to_target': s} for b, s in ((8, 1000), (32, 300), (128, 150), (512, 140))]
  # Perfect scaling from B=8: 250 steps at 32 (300 is within 2x), 62.5 at 128 (150 > 125: not within).
  assert batch_size.critical_batch_size(rows) == 32
  rows[2]['min_steps_to_target'] = 100
  assert batch_size.critical_batch_size(rows) == 128
  assert batch_size.critical_batch_size([{'batch_size': 8, 'min_steps_to_target': None}]) is None


def test_context_config_applies_overrides_caps_steps_and_validates(tmp_path):
  from research.config import ConfigError

  ctx = common.Context('t', out=str(tmp_path), runs_dir=str(tmp_path / 'runs'), quick=True, max_steps=30)
  config = ctx.config('cnn', {'steps': 3000, 'optimizer.name': 'sgd', 'model.channels': (8, 8),
                                'model.kernel_sizes': (5, 3), 'model.strides': (2, 2)}, evals=10)
  assert config.steps == 30 and config.eval_every == 3 and config.log_every == 3 and config.checkpoint_every == 30
  assert config.optimizer.name == 'sgd' and tuple(config.model.channels) == (8, 8) and not config.progress
  with pytest.raises(ConfigError, match='optimizer.name'):
    ctx.config('mlp', {'optimizer.name': 'adamax'})
