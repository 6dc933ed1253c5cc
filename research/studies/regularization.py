"""Regularization in an overfitting regime: L1, L2, decoupled weight decay and dropout on the MNIST-1D MLP trained on
300 examples (of 4000), 3 seeds each.

Every (method, strength, seed) with Adam trains in one vectorized program (the penalties, the dropout rate and the
seed are per-trial values there), AdamW's decoupled weight decay in a second one (another optimizer). The train
accuracy is the mean over the last log interval's batches, which at 300 examples and batch 100 cover the train set
several times; the gap is train minus test accuracy.
"""

import math

import matplotlib.pyplot as plt
import numpy as np

from research.studies import common

TRAIN_EXAMPLES = 300
# Method -> (config key, strengths, optimizer). 'none' is the unregularized baseline.
METHODS = {
    'L1': ('optimizer.l1', (1e-5, 1e-4, 1e-3, 1e-2), 'adam'),
    'L2': ('optimizer.l2', (1e-4, 1e-3, 1e-2, 1e-1), 'adam'),
    'dropout': ('model.dropout_rate', (0.1, 0.25, 0.5, 0.75), 'adam'),
    'weight decay (AdamW)': ('optimizer.weight_decay', (0.1, 1.0, 3.0, 10.0), 'adamw'),
}
FULL = dict(steps=3000, seeds=(0, 1, 2), strengths=None)
QUICK = dict(steps=300, seeds=(0,), strengths=2)  # The first two strengths of each method.
LEARNING_RATE = 1e-3


def _slug(name: str) -> str:
  return name.split(' (')[0].replace(' ', '_')


def run(ctx: common.Context) -> common.Result:
  plan = QUICK if ctx.quick else FULL
  points = [('none', None, 0.0, 'adam')] + [
      (method, key, s, opt) for method, (key, strengths, opt) in METHODS.items()
      for s in strengths[:plan['strengths']]]
  base = {'dataset.train_examples': TRAIN_EXAMPLES, 'steps': plan['steps'], 'optimizer.learning_rate': LEARNING_RATE}
  results = {}
  for opt in ('adam', 'adamw'):
    mine = [(m, k, s, seed) for m, k, s, o in points if o == opt for seed in plan['seeds']]
    names = [f'{_slug(m)}={s:g}_s{seed}' for m, k, s, seed in mine]
    configs = [ctx.config('mlp', base | {'optimizer.name': opt, 'seed': seed} | ({k: s} if k else {}))
               for m, k, s, seed in mine]
    for (m, _, s, _), r in zip(mine, ctx.train_group(names, configs)):
      results.setdefault((m, s), []).append(r)
  rows = [_row(m, s, runs) for (m, s), runs in results.items()]
  plot = 'regularization.png'
  _plot(ctx, rows, plot)
  return common.Result(
      title=f'Regularization with {TRAIN_EXAMPLES} training examples (MNIST-1D MLP)',
      question='In an overfitting regime, how much do L1, L2, decoupled weight decay and dropout close the '
               'train/test gap and raise test accuracy, and at which strength?',
      findings=_findings(rows, plan), sections=_sections(rows, plan), plots=[plot],
      summary={'rows': rows, 'plan': plan, 'train_examples': TRAIN_EXAMPLES},
      notes=[f"MLP preset (hidden 100, residual), {plan['steps']} steps of batch 100 on the first "
             f"{TRAIN_EXAMPLES} training examples (dataset.train_examples), Adam at {LEARNING_RATE:g} (AdamW for "
             f"weight decay), seeds {', '.join(map(str, plan['seeds']))}; test on all 1000 test examples.",
             'L1 and L2 add coef x sum|w| and coef/2 x sum w^2 over kernels to the loss (coupled: Adam rescales '
             'their gradients); AdamW subtracts lr x wd x w from kernels after the Adam update (decoupled, '
             'Loshchilov & Hutter 2019); dropout follows each hidden layer.',
             'All trials of one optimizer train as one vectorized program; a trial\'s train time is its share.'])


def _row(method: str, strength: float, runs: list[common.Run]) -> dict:
  test = [r.test_accuracy for r in runs]
  train = [r.last_train.get('accuracy', math.nan) for r in runs]
  gap = [a - b for a, b in zip(train, test)]
  return {'method': method, 'strength': strength, 'test_accuracy': test, 'test_mean': float(np.mean(test)),
          'test_std': float(np.std(test)), 'train_mean': float(np.mean(train)), 'gap_mean': float(np.mean(gap)),
          'gap_std': float(np.std(gap)),
          'test_loss': float(np.mean([r.card['final_metrics']['test_loss'] for r in runs]))}


def _best_per_method(rows):
  best = {}
  for r in rows:
    if r['method'] not in best or r['test_mean'] > best[r['method']]['test_mean']:
      best[r['method']] = r
  return best


def _findings(rows, plan) -> str:
  best = _best_per_method(rows)
  none = best.pop('none')
  ranked = sorted(best.values(), key=lambda r: -r['test_mean'])
  top = ranked[0]
  parts = [f"Without regularization the MLP reaches {common.pct(none['train_mean'])} train accuracy on its "
           f"{TRAIN_EXAMPLES} examples and {common.pct(none['test_mean'], none['test_std'])} on the test set: a "
           f"{100 * none['gap_mean']:.0f}-point gap."]
  verb = 'helps most' if top['test_mean'] > none['test_mean'] else 'is the best of them but does not help'
  parts.append(f"{top['method']} at {top['strength']:g} {verb}: {common.pct(top['test_mean'], top['test_std'])} "
               f"({100 * (top['test_mean'] - none['test_mean']):+.1f} points), gap {100 * top['gap_mean']:.0f} "
               'points.')
  others = ', '.join(f"{r['method']} {common.pct(r['test_mean'], r['test_std'])} at {r['strength']:g} "
                     f"({100 * (r['test_mean'] - none['test_mean']):+.1f})" for r in ranked[1:])
  parts.append(f'Then: {others}.')
  too_strong = [r for r in rows if r['method'] != 'none' and r['test_mean'] < none['test_mean'] - 0.02]
  if too_strong:
    parts.append('Too much hurts: ' + ', '.join(f"{r['method']} {r['strength']:g} "
                                                 f"({common.pct(r['test_mean'])})" for r in too_strong) + '.')
  edge = [r['method'] for r in ranked if r['strength'] == METHODS[r['method']][1][:plan['strengths']][-1]]
  if edge:
    parts.append(f"{', '.join(edge)}: the best strength is the grid's largest, so a stronger setting may do better.")
  if len(plan['seeds']) > 1:
    parts.append(f"Differences smaller than about {100 * 2 * max(r['test_std'] for r in rows):.1f} points (twice the "
                 'largest std over seeds) are within seed noise.')
  return ' '.join(parts)


def _sections(rows, plan) -> list[tuple[str, str]]:
  best = _best_per_method(rows)
  summary = common.table(
      ['method', 'best strength', 'test accuracy', 'train accuracy', 'gap (train - test)', 'test loss'],
      [[r['method'], f"{r['strength']:g}", common.pct(r['test_mean'], r['test_std']), common.pct(r['train_mean']),
        f"{100 * r['gap_mean']:.1f} ± {100 * r['gap_std']:.1f}", f"{r['test_loss']:.3f}"]
       for r in sorted(best.values(), key=lambda r: -r['test_mean'])])
  every = common.table(
      ['method', 'strength', f"test accuracy ({len(plan['seeds'])} seeds)", 'train accuracy', 'gap', 'test loss'],
      [[r['method'], f"{r['strength']:g}", common.pct(r['test_mean'], r['test_std']), common.pct(r['train_mean']),
        f"{100 * r['gap_mean']:.1f}", f"{r['test_loss']:.3f}"] for r in rows])
  return [('Each method at its best strength (sorted by test accuracy)', summary), ('Every strength', every)]


def _plot(ctx, rows, name) -> None:
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
  none = next(r for r in rows if r['method'] == 'none')
  for ax, key, std, label in ((axes[0], 'test_mean', 'test_std', 'test accuracy'),
                              (axes[1], 'gap_mean', 'gap_std', 'train - test accuracy')):
    for method in METHODS:
      mine = [r for r in rows if r['method'] == method]
      ax.errorbar([r['strength'] for r in mine], [r[key] for r in mine], yerr=[r[std] for r in mine], marker='o',
                  capsize=3, label=method)
    ax.axhline(none[key], color='k', linestyle=':', label='none')
    ax.set(xscale='log', xlabel='strength (coefficient or dropout rate)', ylabel=label)
    ax.grid(alpha=0.3, which='both')
  axes[0].set_title(f'test accuracy ({TRAIN_EXAMPLES} training examples; mean ± std over seeds)')
  axes[1].set_title('overfitting: train/test gap')
  axes[0].legend(fontsize=8)
  common.save_figure(fig, f'{ctx.out}/{name}')
