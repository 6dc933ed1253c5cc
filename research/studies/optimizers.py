"""Which optimizer, at its best learning rate? SGD, SGD+momentum, Nesterov, AdaGrad, RMSprop, Adam and AdamW on the
MNIST-1D CNN and MLP.

Per model and optimizer: the learning rates of a log grid train together as one vectorized program (seed 0); the
rate with the best final test accuracy is then trained as ordinary runs with fresh seeds (1, 2, 3: the reported
numbers are not the ones the rate was picked on), whose curves give test accuracy against step and train time.
"""

import math

import matplotlib.pyplot as plt
import numpy as np

from research.studies import common

OPTIMIZERS = ('sgd', 'momentum', 'nesterov', 'adagrad', 'rmsprop', 'adam', 'adamw')
ADAMW_WEIGHT_DECAY = 1e-2  # PyTorch's AdamW default (optax's is 1e-4); decoupled, kernels only.
FULL = dict(models=('cnn', 'mlp'), lrs=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0), seeds=(1, 2, 3),
            steps=3000)
QUICK = dict(models=('mlp',), lrs=(1e-3, 1e-2, 1e-1), seeds=(1,), steps=400)
NEAR_BEST = 0.02  # A learning rate within this much test accuracy of the best counts as "near the best".


def score(run: common.Run) -> float:
  """Final test accuracy; -inf for a run stopped by non-finite losses (it diverged)."""
  acc = run.card['final_metrics'].get('test_accuracy')
  return -math.inf if run.card['stop_reason'] == 'nonfinite' or acc is None or not math.isfinite(acc) else acc


def run(ctx: common.Context) -> common.Result:
  plan = QUICK if ctx.quick else FULL
  rows, curves = [], {}
  for model in plan['models']:
    for opt in OPTIMIZERS:
      extra = {'optimizer.weight_decay': ADAMW_WEIGHT_DECAY} if opt == 'adamw' else {}
      base = {'optimizer.name': opt, 'steps': plan['steps'], **extra}
      names = [f'{model}/{opt}/tune_lr={lr:g}' for lr in plan['lrs']]
      tuned = ctx.train_group(names, [ctx.config(model, base | {'optimizer.learning_rate': lr, 'seed': 0})
                                      for lr in plan['lrs']])
      scores = [score(r) for r in tuned]
      best = int(np.argmax(scores))
      lr = plan['lrs'][best]
      finals = [ctx.train(f'{model}/{opt}/lr={lr:g}_s{seed}',
                          ctx.config(model, base | {'optimizer.learning_rate': lr, 'seed': seed}))
                for seed in plan['seeds']]
      acc = [r.test_accuracy for r in finals]
      near = [plan['lrs'][i] for i, s in enumerate(scores) if s >= scores[best] - NEAR_BEST]
      rows.append({'model': model, 'optimizer': opt, 'best_lr': lr, 'tune_accuracy': dict(zip(map(str, plan['lrs']),
                                                                                               scores)),
                   'near_best_lrs': near, 'test_accuracy': acc, 'mean': float(np.mean(acc)),
                   'std': float(np.std(acc)),
                   'train_time_s': float(np.mean([r.cost('time', 'train_s') for r in finals])),
                   'ms_per_step': float(np.mean([1e3 * r.cost('time', 'train_s') / r.card['steps'] for r in finals])),
                   'steps': finals[0].card['steps'], 'params': finals[0].card['params']['count']})
      curves[(model, opt)] = finals
  plot = 'optimizers.png'
  _plot(ctx, plan, rows, curves, plot)
  return common.Result(
      title='Optimizers on MNIST-1D: each at its best learning rate',
      question='Which optimizer reaches the best test accuracy, how fast (in steps and in seconds), and how '
               'sensitive is each to its learning rate?',
      findings=_findings(plan, rows), sections=_sections(plan, rows), plots=[plot],
      summary={'rows': rows, 'plan': plan},
      notes=[f"{plan['steps']} steps of batch 100, constant learning rate; MNIST-1D preset otherwise "
             '(configs/mnist1d.py).',
             f"Learning rate chosen on seed 0 from {', '.join(f'{lr:g}' for lr in plan['lrs'])} (trained together as "
             f"one vectorized program per model and optimizer); reported: seeds {', '.join(map(str, plan['seeds']))} "
             'at that rate, trained as ordinary runs. MNIST-1D has no validation split, so the rate is picked on '
             'the test split; the fresh seeds keep the seed-0 luck out of the reported mean.',
             f'AdamW decays kernels by {ADAMW_WEIGHT_DECAY:g} (decoupled; PyTorch\'s default); the others use no '
             'weight decay. Momentum and Nesterov use 0.9, RMSprop decay 0.9 with momentum 0.9 (configs/base.py).',
             'Train time is the loop\'s train_s (compile, eval and checkpoints excluded).'])


def _findings(plan: dict, rows: list[dict]) -> str:
  parts = []
  for model in plan['models']:
    mine = sorted((r for r in rows if r['model'] == model), key=lambda r: -r['mean'])
    best, worst = mine[0], mine[-1]
    rates = sorted(mine, key=lambda r: r['best_lr'])
    parts.append(
        f"On the {model.upper()}, {best['optimizer']} is best ({common.pct(best['mean'], best['std'])} at "
        f"lr={best['best_lr']:g}) and {worst['optimizer']} worst ({common.pct(worst['mean'], worst['std'])}); the "
        f"spread between them is {100 * (best['mean'] - worst['mean']):.1f} points. {_sensitivity(mine, plan)} "
        f"Best rates run from {rates[0]['best_lr']:g} ({rates[0]['optimizer']}) to {rates[-1]['best_lr']:g} "
        f"({rates[-1]['optimizer']}), {rates[-1]['best_lr'] / rates[0]['best_lr']:.0f}x apart: a rate tuned for one "
        f"optimizer does not carry over to another. {_step_costs(mine)}")
    edge = [r['optimizer'] for r in mine if r['best_lr'] in (plan['lrs'][0], plan['lrs'][-1])]
    if edge:
      parts.append(f"{', '.join(edge)} peaked at an end of the grid: {'its' if len(edge) == 1 else 'their'} best "
                   'rate may lie beyond it.')
  return ' '.join(parts)


def _sensitivity(rows: list[dict], plan: dict) -> str:
  counts = {r['optimizer']: len(r['near_best_lrs']) for r in rows}
  most, least = max(counts.values()), min(counts.values())
  near = f'within {100 * NEAR_BEST:.0f} points of the best one'
  if most == least:
    return f"Every optimizer has {most} of the {len(plan['lrs'])} grid rates {near}."
  widest = [o for o, c in counts.items() if c == most]
  narrowest = [o for o, c in counts.items() if c == least]
  least_text = (f"{' and '.join(narrowest)} the least ({least})" if len(narrowest) <= 2
                else f'the other {len(narrowest)} have {least}')
  return (f"{' and '.join(widest)} {'is' if len(widest) == 1 else 'are'} the most forgiving about the rate ({most} of "
          f"{len(plan['lrs'])} grid rates {near}); {least_text}.")


def _step_costs(rows: list[dict]) -> str:
  fastest, slowest = min(rows, key=lambda r: r['ms_per_step']), max(rows, key=lambda r: r['ms_per_step'])
  spread = slowest['ms_per_step'] / fastest['ms_per_step']
  if spread < 1.25:
    return (f"A step costs about the same with every optimizer ({fastest['ms_per_step']:.2f}-"
            f"{slowest['ms_per_step']:.2f} ms), so accuracy against train time ranks them as accuracy against steps "
            'does.')
  return (f"Steps cost from {fastest['ms_per_step']:.2f} ms ({fastest['optimizer']}) to {slowest['ms_per_step']:.2f} ms "
          f"({slowest['optimizer']}), {spread:.2f}x: against train time the curves shift by that much.")


def _sections(plan: dict, rows: list[dict]) -> list[tuple[str, str]]:
  ranked = sorted(rows, key=lambda r: (r['model'], -r['mean']))
  main = common.table(
      ['model', 'optimizer', 'best lr', f"test accuracy (seeds {', '.join(map(str, plan['seeds']))})",
       'rates near best', 'train time/run', 'ms/step', 'params'],
      [[r['model'], r['optimizer'], f"{r['best_lr']:g}", common.pct(r['mean'], r['std']),
        f"{len(r['near_best_lrs'])}/{len(plan['lrs'])}", common.num(r['train_time_s'], '.1f', ' s'),
        common.num(r['ms_per_step'], '.2f'), f"{r['params']:,}"] for r in ranked], left=2)
  sweep = common.table(
      ['model', 'optimizer', *[f'lr={lr:g}' for lr in plan['lrs']]],
      [[r['model'], r['optimizer'], *[common.sweep_cell(r['tune_accuracy'][str(lr)], lr == r['best_lr'])
                                      for lr in plan['lrs']]] for r in ranked], left=2)
  return [('Each optimizer at its best learning rate (sorted by test accuracy)', main),
          ('Learning-rate sweep (seed 0, final test accuracy; bold: the chosen rate; — diverged)', sweep)]


def _plot(ctx, plan, rows, curves, name) -> None:
  models = plan['models']
  fig, axes = plt.subplots(len(models), 3, figsize=(15, 4.2 * len(models)), squeeze=False)
  for m, model in enumerate(models):
    for opt in OPTIMIZERS:
      runs = curves[(model, opt)]
      for col, x in enumerate(('step', 'train_time_s')):
        xs, mean, std = common.mean_curve(runs, x)
        common.plot_band(axes[m, col], xs, mean, std, label=opt)
      row = next(r for r in rows if r['model'] == model and r['optimizer'] == opt)
      accs = [row['tune_accuracy'][str(lr)] for lr in plan['lrs']]
      axes[m, 2].plot(plan['lrs'], [a if math.isfinite(a) else np.nan for a in accs], marker='o', label=opt)
    axes[m, 0].set(xlabel='step', ylabel='test accuracy', title=f'{model.upper()}: test accuracy vs step '
                   f'(mean ± std over {len(plan["seeds"])} seed(s))')
    axes[m, 1].set(xlabel='train time (s)', ylabel='test accuracy', title=f'{model.upper()}: vs train time')
    axes[m, 2].set(xscale='log', xlabel='learning rate', ylabel='final test accuracy (seed 0)',
                   title=f'{model.upper()}: learning-rate sweep')
    finals = [r['mean'] for r in rows if r['model'] == model]
    for ax in axes[m, :2]:  # Zoomed on where the curves end (the first evaluations may fall below).
      ax.set_ylim(max(0.0, min(finals) - 0.2), min(1.0, max(finals) + 0.05))
    axes[m, 2].set_ylim(0, 1)
    for ax in axes[m]:
      ax.grid(alpha=0.3)
    axes[m, 2].legend(fontsize=8, loc='lower left')
  common.save_figure(fig, f'{ctx.out}/{name}')
