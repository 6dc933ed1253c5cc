"""Gradient descent in batch and stochastic form: full-batch GD vs mini-batch SGD vs batch size 1, on the MNIST-1D MLP
with plain SGD, compared at equal epochs (the same examples seen) and at an equal wall-clock budget.

Per method the learning rate comes from a log grid (trained together as one vectorized program, seed 0, at the
equal-epoch length); the chosen rate then trains as ordinary runs with fresh seeds, once for the epochs and once
for the wall-clock budget (budget.max_seconds: the run stops itself, with its card, when the time is up).
"""

import matplotlib.pyplot as plt
import numpy as np

from research.studies import common
from research.studies.optimizers import score

# (name, batch size); 4000 is MNIST-1D's whole train split.
METHODS = (('full batch (GD)', common.MNIST1D_TRAIN), ('mini-batch', 100), ('batch size 1 (SGD)', 1))
FULL = dict(epochs=10, seconds=30.0, lrs=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0), seeds=(1, 2, 3))
QUICK = dict(epochs=1, seconds=5.0, lrs=(1e-2, 1e-1), seeds=(1,))
UNBOUNDED_STEPS = 10**7  # Steps of an equal-time run: its budget stops it long before.


def _slug(name: str) -> str:
  return name.split(' (')[0].replace(' ', '_')


def run(ctx: common.Context) -> common.Result:
  plan = QUICK if ctx.quick else FULL
  rows, epoch_runs, time_runs = [], {}, {}
  for name, bs in METHODS:
    steps = plan['epochs'] * common.MNIST1D_TRAIN // bs
    base = {'optimizer.name': 'sgd', 'batch_size': bs, 'steps': steps}
    tuned = ctx.train_group([f'{_slug(name)}/tune_lr={lr:g}' for lr in plan['lrs']],
                            [ctx.config('mlp', base | {'optimizer.learning_rate': lr, 'seed': 0}, evals=10)
                             for lr in plan['lrs']])
    scores = [score(r) for r in tuned]
    lr = plan['lrs'][int(np.argmax(scores))]
    epoch_runs[name] = [ctx.train(f'{_slug(name)}/epochs_lr={lr:g}_s{s}',
                                  ctx.config('mlp', base | {'optimizer.learning_rate': lr, 'seed': s}))
                        for s in plan['seeds']]
    timed = base | {'optimizer.learning_rate': lr, 'steps': UNBOUNDED_STEPS, 'budget.max_seconds': plan['seconds']}
    # Evaluations every ~1/20 of the budget, from the step time the equal-epoch run measured.
    step_s = np.mean([r.cost('time', 'train_s') / r.card['steps'] for r in epoch_runs[name]])
    eval_every = max(1, int(plan['seconds'] / 20 / step_s))
    time_runs[name] = [ctx.train(f'{_slug(name)}/time_lr={lr:g}_s{s}',
                                 _every(ctx.config('mlp', timed | {'seed': s}), eval_every))
                       for s in plan['seeds']]
    rows.append(_row(name, bs, lr, scores, plan, epoch_runs[name], time_runs[name]))
  plot = 'gradient_descent.png'
  _plot(ctx, plan, epoch_runs, time_runs, plot)
  return common.Result(
      title='Gradient descent: full batch vs mini-batch vs batch size 1 (MNIST-1D MLP, plain SGD)',
      question='Given the same number of epochs (the same examples, about the same FLOPs), or the same wall-clock '
               'time, which form of gradient descent trains the better model?',
      findings=_findings(plan, rows), sections=_sections(plan, rows), plots=[plot],
      summary={'rows': rows, 'plan': plan},
      notes=[f"Equal epochs: {plan['epochs']} passes over the 4000 training examples for every method (steps = "
             'epochs x 4000 / batch size): the same forward and backward passes, plus one optimizer update per '
             'step (the train FLOPs column is XLA\'s count of all of it).',
             f"Equal time: each run stops itself at budget.max_seconds={plan['seconds']:g} of wall-clock time "
             '(compile, evaluation and checkpoint included, as the budget counts them).',
             f"Learning rate per method from {', '.join(f'{lr:g}' for lr in plan['lrs'])} on seed 0 at the "
             f"equal-epoch length (one vectorized program per method); reported: seeds "
             f"{', '.join(map(str, plan['seeds']))} as ordinary runs.",
             'Plain SGD (no momentum), constant rate, MNIST-1D MLP preset otherwise (configs/mnist1d.py).'])


def _every(config, eval_every: int):
  config.eval_every = eval_every
  config.log_every = min(config.log_every, eval_every)
  config.checkpoint_every = config.steps
  return config


def _row(name, bs, lr, scores, plan, epoch_runs, time_runs) -> dict:
  mean = lambda runs, *keys: float(np.mean([r.cost(*keys) for r in runs]))
  e_acc, t_acc = [r.test_accuracy for r in epoch_runs], [r.test_accuracy for r in time_runs]
  return {
      'method': name, 'batch_size': bs, 'lr': lr,
      'tune_accuracy': dict(zip(map(str, plan['lrs']), scores)),
      'epochs': {'steps': epoch_runs[0].card['steps'], 'test_accuracy': e_acc, 'mean': float(np.mean(e_acc)),
                 'std': float(np.std(e_acc)), 'train_time_s': mean(epoch_runs, 'time', 'train_s'),
                 'train_flops': mean(epoch_runs, 'flops', 'total_train')},
      'time': {'steps': float(np.mean([r.card['steps'] for r in time_runs])),
               'epochs': float(np.mean([r.card['steps'] for r in time_runs])) * bs / common.MNIST1D_TRAIN,
               'test_accuracy': t_acc, 'mean': float(np.mean(t_acc)), 'std': float(np.std(t_acc)),
               'train_time_s': mean(time_runs, 'time', 'train_s'),
               'train_flops': mean(time_runs, 'flops', 'total_train'),
               'examples_per_s': mean(time_runs, 'throughput', 'examples_per_s')},
  }


def _findings(plan, rows) -> str:
  by_epochs = sorted(rows, key=lambda r: -r['epochs']['mean'])
  by_time = sorted(rows, key=lambda r: -r['time']['mean'])
  gd = next(r for r in rows if r['batch_size'] == common.MNIST1D_TRAIN)
  one = next(r for r in rows if r['batch_size'] == 1)
  e, t = by_epochs[0], by_time[0]
  flops = [r['epochs']['train_flops'] for r in rows]
  most = max(rows, key=lambda r: r['epochs']['train_flops'])
  edge = [r['method'] for r in rows if r['lr'] in (plan['lrs'][0], plan['lrs'][-1])]
  return (
      f"At equal epochs ({plan['epochs']}: every method sees the same examples; XLA counts "
      f"{common.num(min(flops), '.3g')}-{common.num(max(flops), '.3g')} train FLOPs, the most for {most['method']}, "
      f"which also applies the optimizer update {most['epochs']['steps']:,} times), {e['method']} wins with "
      f"{common.pct(e['epochs']['mean'], e['epochs']['std'])}; full-batch GD takes only {gd['epochs']['steps']} "
      f"steps in that budget and reaches {common.pct(gd['epochs']['mean'], gd['epochs']['std'])}, while batch size 1 "
      f"takes {one['epochs']['steps']:,} steps ({common.pct(one['epochs']['mean'], one['epochs']['std'])}) but "
      f"needs {one['epochs']['train_time_s'] / max(gd['epochs']['train_time_s'], 1e-9):.0f}x GD's train time for "
      f"the same epochs: small batches use the hardware poorly ({common.num(one['time']['examples_per_s'], '.3g')} "
      f"vs {common.num(gd['time']['examples_per_s'], '.3g')} examples/s). Given the same "
      f"{plan['seconds']:g} s instead, {t['method']} wins with {common.pct(t['time']['mean'], t['time']['std'])} "
      f"after {t['time']['epochs']:.0f} epochs; GD gets through {gd['time']['epochs']:.0f} epochs and reaches "
      f"{common.pct(gd['time']['mean'], gd['time']['std'])}, batch size 1 only {one['time']['epochs']:.1f} epochs "
      f"({common.pct(one['time']['mean'], one['time']['std'])})." + _verdict(e, t)
      + (f" {', '.join(edge)}: the chosen rate is at an end of the grid, so a better one may lie beyond it."
         if edge else ''))


def _verdict(by_epochs: dict, by_time: dict) -> str:
  if by_epochs['batch_size'] == by_time['batch_size'] == 100:
    return (' Mini-batches win both ways: many updates per epoch, and enough examples per step to use most of the '
            "hardware's throughput.")
  if by_epochs['batch_size'] == by_time['batch_size']:
    return f" {by_epochs['method']} wins both ways here."
  return (f" The answer depends on the budget: {by_epochs['method']} per FLOP, {by_time['method']} per second.")


def _sections(plan, rows) -> list[tuple[str, str]]:
  main = common.table(
      ['method', 'batch', 'lr', f"equal epochs ({plan['epochs']}): test acc", 'steps', 'train time', 'train FLOPs',
       f"equal time ({plan['seconds']:g} s): test acc", 'steps', 'epochs', 'examples/s'],
      [[r['method'], r['batch_size'], f"{r['lr']:g}", common.pct(r['epochs']['mean'], r['epochs']['std']),
        f"{r['epochs']['steps']:,}", common.num(r['epochs']['train_time_s'], '.1f', ' s'),
        common.num(r['epochs']['train_flops'], '.3g'), common.pct(r['time']['mean'], r['time']['std']),
        f"{r['time']['steps']:,.0f}", common.num(r['time']['epochs'], '.1f'),
        common.num(r['time']['examples_per_s'], '.3g')] for r in sorted(rows, key=lambda r: -r['epochs']['mean'])])
  sweep = common.table(['method', *[f'lr={lr:g}' for lr in plan['lrs']]],
                       [[r['method'], *[common.sweep_cell(r['tune_accuracy'][str(lr)], lr == r['lr'])
                                        for lr in plan['lrs']]] for r in rows])
  return [('Results (mean ± std over seeds)', main),
          ('Learning-rate sweep (seed 0, equal epochs, final test accuracy; bold: chosen; — diverged)', sweep)]


def _plot(ctx, plan, epoch_runs, time_runs, name) -> None:
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  for method, _ in METHODS:
    runs = time_runs[method]
    xs, mean, std = common.mean_curve(runs, 'step')
    line = common.plot_band(axes[0], xs, mean, std, label=method)
    xs_t, mean_t, std_t = common.mean_curve(runs, 'train_time_s')
    common.plot_band(axes[1], xs_t, mean_t, std_t, label=method, color=line.get_color())
    flops_per_step = runs[0].cost('flops', 'total_train') / runs[0].card['steps']
    common.plot_band(axes[2], xs * flops_per_step, mean, std, label=method, color=line.get_color())
    xs_e, mean_e, _ = common.mean_curve(epoch_runs[method], 'step')  # The equal-epoch runs: the early steps.
    axes[0].plot(xs_e, mean_e, linestyle='--', color=line.get_color())
    axes[2].plot(xs_e * flops_per_step, mean_e, linestyle='--', color=line.get_color())
    e_steps = epoch_runs[method][0].card['steps']
    e_mean = np.mean([r.test_accuracy for r in epoch_runs[method]])
    axes[0].plot([e_steps], [e_mean], marker='*', markersize=12, color=line.get_color())
    axes[2].plot([e_steps * flops_per_step], [e_mean], marker='*', markersize=12, color=line.get_color())
  axes[0].set(xscale='log', xlabel='step', ylabel='test accuracy',
              title=f"vs steps (solid: {plan['seconds']:g} s runs; dashed, ★: {plan['epochs']} epochs)")
  axes[1].set(xlabel='train time (s)', ylabel='test accuracy', title=f"vs train time ({plan['seconds']:g} s budget)")
  axes[2].set(xscale='log', xlabel='train FLOPs', ylabel='test accuracy', title='vs train FLOPs (dashed, ★: equal epochs)')
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.set_ylim(0, 1)
  axes[0].legend(loc='upper left')
  common.save_figure(fig, f'{ctx.out}/{name}')
