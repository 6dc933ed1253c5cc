"""Batch size x learning rate on the MNIST-1D CNN (SGD with momentum 0.9): where does scaling the learning rate with
the batch size hold, and where does a larger batch stop buying fewer steps (the critical batch size)?

Per batch size B, the learning rates of a log grid train together as one vectorized program (seed 0) for
max(EPOCHS x 4000 / B, MIN_STEPS) steps. From the test-accuracy curves: the best final accuracy and its rate, and
the fewest steps to a target accuracy (the first evaluation at or above it) over the rates, with that rate. With
perfect scaling, doubling B halves the steps to the target (the examples to the target stay the same); past the
critical batch size the steps stop falling and the examples grow (McCandlish et al. 2018, "An Empirical Model of
Large-Batch Training"). The fastest rate per B then trains as ordinary runs (fresh seeds) for examples/s and energy.
"""

import math

import matplotlib.pyplot as plt
import numpy as np

from research.studies import common
from research.studies.optimizers import score

FULL = dict(batch_sizes=(8, 32, 128, 512, 2048), lrs=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0), epochs=20,
            min_steps=400, seeds=(1, 2))
QUICK = dict(batch_sizes=(16, 256), lrs=(1e-2, 1e-1), epochs=2, min_steps=50, seeds=(1,))
EVALS = 40  # Evaluations per run: the resolution of "steps to the target".
TARGET_FRACTION = 0.9  # Target = this fraction of the lowest best-accuracy over the batch sizes (all reach it).
SCALING_SLACK = 2.0  # Steps within this factor of perfect scaling from the smallest batch count as "scaling".


def steps_for(plan: dict, bs: int) -> int:
  return max(plan['epochs'] * common.MNIST1D_TRAIN // bs, plan['min_steps'])


def steps_to(run: common.Run, target: float) -> int | None:
  """The first evaluated step with test accuracy >= target; None if the run never got there."""
  return next((e['step'] for e in run.evals if e['accuracy'] >= target), None)


def run(ctx: common.Context) -> common.Result:
  plan = QUICK if ctx.quick else FULL
  grid = {}
  for bs in plan['batch_sizes']:
    base = {'optimizer.name': 'momentum', 'batch_size': bs, 'steps': steps_for(plan, bs), 'seed': 0}
    grid[bs] = ctx.train_group([f'bs={bs}/tune_lr={lr:g}' for lr in plan['lrs']],
                               [ctx.config('cnn', base | {'optimizer.learning_rate': lr}, evals=EVALS)
                                for lr in plan['lrs']])
  best = {bs: max(runs, key=score) for bs, runs in grid.items()}
  target = TARGET_FRACTION * min(score(r) for r in best.values())
  rows = []
  for bs, runs in grid.items():
    reach = [(steps_to(r, target), r) for r in runs]
    reached = [(s, r) for s, r in reach if s is not None]
    s_min, fastest = min(reached, key=lambda x: x[0]) if reached else (None, best[bs])
    lr = fastest.config.optimizer.learning_rate
    finals = [ctx.train(f'bs={bs}/lr={lr:g}_s{s}', ctx.config('cnn', {
        'optimizer.name': 'momentum', 'batch_size': bs, 'steps': steps_for(plan, bs), 'seed': s,
        'optimizer.learning_rate': lr}, evals=EVALS)) for s in plan['seeds']]
    acc = [r.test_accuracy for r in finals]
    mean = lambda *keys: float(np.mean([r.cost(*keys) for r in finals]))
    rows.append({
        'batch_size': bs, 'steps': steps_for(plan, bs),
        'accuracy': {str(r.config.optimizer.learning_rate): score(r) for r in runs},
        'steps_to_target': {str(r.config.optimizer.learning_rate): s for s, r in reach},
        'best_lr': best[bs].config.optimizer.learning_rate, 'best_accuracy': score(best[bs]),
        'fastest_lr': lr, 'min_steps_to_target': s_min,
        'examples_to_target': None if s_min is None else s_min * bs,
        'final_test_accuracy': acc, 'final_mean': float(np.mean(acc)), 'final_std': float(np.std(acc)),
        'examples_per_s': mean('throughput', 'examples_per_s'), 'train_time_s': mean('time', 'train_s'),
        'joules': mean('energy', 'joules'), 'energy_source': finals[0].card['energy']['source']})
  critical = critical_batch_size(rows)
  plot = 'batch_size.png'
  _plot(ctx, plan, rows, target, plot)
  return common.Result(
      title='Batch size and learning rate on MNIST-1D (CNN, SGD + momentum)',
      question='When the batch grows, should the learning rate grow with it, and up to which batch size does a '
               'larger batch still cut the number of steps (the critical batch size)?',
      findings=_findings(plan, rows, target, critical), sections=_sections(plan, rows, target), plots=[plot],
      summary={'rows': rows, 'plan': plan, 'target_accuracy': target, 'critical_batch_size': critical},
      notes=[f"Steps per batch size: max({plan['epochs']} epochs x 4000 / B, {plan['min_steps']}); {EVALS} "
             'evaluations per run (the resolution of steps to target).',
             f'Target accuracy = {TARGET_FRACTION:g} x the lowest best-accuracy over the batch sizes '
             f'= {100 * target:.1f}% (every batch size reaches it at some rate).',
             f"Learning-rate grid {', '.join(f'{lr:g}' for lr in plan['lrs'])} per batch size, seed 0, one "
             'vectorized program per batch size; examples/s and energy come from ordinary runs at the fastest rate '
             f"(seeds {', '.join(map(str, plan['seeds']))}).",
             f'Critical batch size: the largest B whose steps to target are within {SCALING_SLACK:g}x of perfect '
             'scaling from the smallest B (steps x B constant).'])


def critical_batch_size(rows: list[dict]) -> int | None:
  """The largest batch size whose steps to target stay within SCALING_SLACK of perfect scaling from the smallest."""
  reached = [r for r in rows if r['min_steps_to_target'] is not None]
  if not reached:
    return None
  base = reached[0]
  critical = base['batch_size']
  for r in reached[1:]:
    perfect = base['min_steps_to_target'] * base['batch_size'] / r['batch_size']
    if r['min_steps_to_target'] <= SCALING_SLACK * max(perfect, 1):
      critical = r['batch_size']
    else:
      break
  return critical


def _findings(plan, rows, target, critical) -> str:
  first, last = rows[0], rows[-1]
  # Linear scaling: the fastest rate grows in proportion to the batch. On a grid of ~3.2x steps and batches 4x
  # apart, a rate that grows at least 2x per batch step counts as following it.
  grows = [r['batch_size'] for a, r in zip(rows, rows[1:]) if r['fastest_lr'] >= 2 * a['fastest_lr']]
  stalls = [r['batch_size'] for a, r in zip(rows, rows[1:]) if r['fastest_lr'] < 2 * a['fastest_lr']]
  text = (f"The fastest learning rate (fewest steps to {100 * target:.1f}% test accuracy) goes from "
          f"{first['fastest_lr']:g} at batch {first['batch_size']} to {last['fastest_lr']:g} at batch "
          f"{last['batch_size']} ({last['fastest_lr'] / first['fastest_lr']:.3g}x for "
          f"{last['batch_size'] / first['batch_size']:.0f}x the batch). ")
  if grows and stalls:
    text += (f"It grows with the batch (linear scaling holds, within the grid's resolution) at batch sizes {grows} "
             f"and stops growing at {stalls}. ")
  elif grows:
    text += 'It grows with the batch at every step of the grid: linear scaling holds over this range. '
  else:
    text += 'It does not grow with the batch anywhere in this range: linear scaling does not hold here. '
  reached = [r for r in rows if r['min_steps_to_target'] is not None]
  if critical is not None and len(reached) > 1:
    steps = ', '.join(f"B={r['batch_size']}: {r['min_steps_to_target']:,} steps ({r['examples_to_target']:,} "
                      'examples)' for r in reached)
    if critical == reached[0]['batch_size']:
      text += (f'Already the step from batch {critical} up falls short of perfect scaling by more than '
               f'{SCALING_SLACK:g}x: {steps}. ')
    else:
      text += (f'Steps to the target fall nearly in proportion up to B = {critical} (within {SCALING_SLACK:g}x of '
               f'perfect scaling from the smallest batch), the critical batch size here; beyond it a larger batch '
               f'needs more examples for the same accuracy: {steps}. ')
  unstable = [r for r in rows if len(r['final_test_accuracy']) > 1
              and max(r['final_test_accuracy']) - min(r['final_test_accuracy']) > 0.2]
  for r in unstable:
    text += (f"At batch {r['batch_size']} the fastest rate ({r['fastest_lr']:g}) is on the edge of stability: its "
             f"seeds end at {', '.join(common.pct(a) for a in r['final_test_accuracy'])}. ")
  best = max(rows, key=lambda r: r['final_mean'])
  text += (f"Best final accuracy: {common.pct(best['final_mean'], best['final_std'])} at batch {best['batch_size']}. "
           f"Throughput grows from {common.num(first['examples_per_s'], '.3g')} examples/s at batch "
           f"{first['batch_size']} to {common.num(last['examples_per_s'], '.3g')} at {last['batch_size']}, so a "
           'larger batch can still save wall time where it no longer saves steps.')
  return text


def _sections(plan, rows, target) -> list[tuple[str, str]]:
  main = common.table(
      ['batch', 'steps', 'best lr', 'best acc (seed 0)', 'fastest lr', f'steps to {100 * target:.1f}%',
       'examples to target', f"test acc at fastest lr (seeds {', '.join(map(str, plan['seeds']))})",
       'examples/s', 'train time', 'energy/run'],
      [[r['batch_size'], f"{r['steps']:,}", f"{r['best_lr']:g}", common.pct(r['best_accuracy']),
        f"{r['fastest_lr']:g}", common.num(r['min_steps_to_target'], ','),
        common.num(r['examples_to_target'], ','), common.pct(r['final_mean'], r['final_std']),
        common.num(r['examples_per_s'], '.3g'), common.num(r['train_time_s'], '.1f', ' s'),
        f"{common.num(r['joules'], '.3g')} J ({r['energy_source']})"] for r in rows])
  heat = common.table(['batch', *[f'lr={lr:g}' for lr in plan['lrs']]],
                      [[r['batch_size'], *[_cell(r['accuracy'][str(lr)], r['steps_to_target'][str(lr)])
                                           for lr in plan['lrs']]] for r in rows])
  return [('Per batch size', main),
          ('Final test accuracy (seed 0) and steps to target, per batch size and learning rate (— diverged)', heat)]


def _cell(acc: float, steps: int | None) -> str:
  if not math.isfinite(acc):
    return '—'
  return f'{100 * acc:.1f}' + (f' ({steps:,})' if steps is not None else '')


def _plot(ctx, plan, rows, target, name) -> None:
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  lrs, bss = plan['lrs'], [r['batch_size'] for r in rows]
  heat = np.array([[r['accuracy'][str(lr)] if math.isfinite(r['accuracy'][str(lr)]) else np.nan for lr in lrs]
                   for r in rows])
  im = axes[0].imshow(heat, aspect='auto', origin='lower', vmin=0, vmax=1, cmap='viridis')
  axes[0].set(xticks=range(len(lrs)), xticklabels=[f'{lr:g}' for lr in lrs], yticks=range(len(bss)),
              yticklabels=bss, xlabel='learning rate', ylabel='batch size', title='final test accuracy (seed 0)')
  for i in range(len(bss)):
    for j in range(len(lrs)):
      if np.isfinite(heat[i, j]):
        axes[0].text(j, i, f'{100 * heat[i, j]:.0f}', ha='center', va='center', fontsize=7, color='w')
  fig.colorbar(im, ax=axes[0])
  fast = [r['fastest_lr'] for r in rows]
  axes[1].plot(bss, fast, 'o-', label='fastest rate (fewest steps to target)')
  axes[1].plot(bss, [r['best_lr'] for r in rows], 's--', label='best final accuracy')
  axes[1].plot(bss, [fast[0] * b / bss[0] for b in bss], 'k:', label='linear scaling from the smallest batch')
  axes[1].set(xscale='log', yscale='log', xlabel='batch size', ylabel='learning rate', title='learning rate vs batch')
  reached = [r for r in rows if r['min_steps_to_target'] is not None]
  if reached:
    b0, s0 = reached[0]['batch_size'], reached[0]['min_steps_to_target']
    axes[2].plot([r['batch_size'] for r in reached], [r['min_steps_to_target'] for r in reached], 'o-',
                 label='measured (best rate per batch)')
    axes[2].plot(bss, [s0 * b0 / b for b in bss], 'k:', label='perfect scaling (steps x B constant)')
  axes[2].set(xscale='log', yscale='log', xlabel='batch size', ylabel=f'steps to {100 * target:.1f}% test accuracy',
              title='steps to target vs batch size')
  for ax in axes[1:]:
    ax.set_xticks(bss, [str(b) for b in bss])
    ax.minorticks_off()
    ax.grid(alpha=0.3, which='both')
    ax.legend(fontsize=8)
  common.save_figure(fig, f'{ctx.out}/{name}')
