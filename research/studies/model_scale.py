"""Model scale on MNIST-1D: width and depth sweeps of the CNN and a width sweep of the MLP; test accuracy against
parameters and against training FLOPs, with the compute-efficient frontier (the runs no cheaper run beats).

Every size trains with the MNIST-1D recipe (Adam 1e-2, batch 100) for the same number of steps, so training FLOPs
grow with the model; FLOPs are XLA's count of the compiled train step times the steps (the run card's
flops.total_train).
"""

import matplotlib.pyplot as plt
import numpy as np

from research import report
from research.studies import common

KERNELS = (5, 3, 3, 3, 3)  # The preset's (5, 3, 3), extended for deeper CNNs; stride 2 each.
FULL = dict(cnn_widths=(4, 8, 16, 25, 48, 96), cnn_depths=(1, 2, 3, 4, 5), depth_width=25,
            mlp_widths=(25, 50, 100, 200, 400, 800), seeds=(0, 1), steps=3000)
QUICK = dict(cnn_widths=(8, 25), cnn_depths=(2,), depth_width=25, mlp_widths=(50, 200), seeds=(0,), steps=300)


def sizes(plan: dict) -> list[tuple[str, str, dict]]:
  """(family, label, model overrides) per size, without repeats (the CNN of width depth_width and depth 3 is in both
  of its sweeps)."""
  out = []
  cnn = lambda width, depth: {'model.channels': (width,) * depth, 'model.kernel_sizes': KERNELS[:depth],
                              'model.strides': (2,) * depth}
  for w in plan['cnn_widths']:
    out.append(('CNN width (depth 3)', f'cnn_w{w}_d3', cnn(w, 3)))
  for d in plan['cnn_depths']:
    if not (d == 3 and plan['depth_width'] in plan['cnn_widths']):
      out.append((f"CNN depth (width {plan['depth_width']})", f"cnn_w{plan['depth_width']}_d{d}",
                  cnn(plan['depth_width'], d)))
  for w in plan['mlp_widths']:
    out.append(('MLP width', f'mlp_w{w}', {'model.hidden_size': w}))
  return out


def run(ctx: common.Context) -> common.Result:
  plan = QUICK if ctx.quick else FULL
  rows = []
  for family, label, overrides in sizes(plan):
    preset = label.split('_')[0]
    runs = [ctx.train(f'{label}_s{s}', ctx.config(preset, overrides | {'steps': plan['steps'], 'seed': s}))
            for s in plan['seeds']]
    acc = [r.test_accuracy for r in runs]
    rows.append({'family': family, 'label': label, 'params': runs[0].card['params']['count'],
                 'train_flops': float(np.mean([r.cost('flops', 'total_train') for r in runs])),
                 'train_time_s': float(np.mean([r.cost('time', 'train_s') for r in runs])),
                 'test_accuracy': acc, 'mean': float(np.mean(acc)), 'std': float(np.std(acc))})
  # A size in two sweeps (CNN w25 d3) is one run: one row, one point on the frontier, on both sweeps' lines.
  families = {}
  for r in rows:
    families.setdefault(r['family'], []).append(r)
  shared = next((r for r in rows if r['label'] == f"cnn_w{plan['depth_width']}_d3"), None)
  depth_family = f"CNN depth (width {plan['depth_width']})"
  if shared is not None and depth_family in families:
    families[depth_family] = sorted(families[depth_family] + [shared], key=lambda r: r['label'])
  front = report.pareto_front([r['train_flops'] for r in rows], [r['mean'] for r in rows], higher_is_better=True)
  for i, r in enumerate(rows):
    r['on_frontier'] = i in front
  plot = 'model_scale.png'
  _plot(ctx, rows, families, front, plot)
  return common.Result(
      title='Model scale on MNIST-1D: accuracy against parameters and training FLOPs',
      question='How does test accuracy grow with width and depth, per parameter and per training FLOP, and which '
               'sizes are compute-efficient (no cheaper model is as accurate)?',
      findings=_findings(rows, families, front), sections=_sections(rows, plan), plots=[plot],
      summary={'rows': rows, 'plan': plan, 'frontier': [rows[i]['label'] for i in front]},
      notes=[f"{plan['steps']} steps of batch 100 per size, Adam 1e-2 (the MNIST-1D recipe), seeds "
             f"{', '.join(map(str, plan['seeds']))}; test accuracy is the mean over seeds.",
             f"CNN: stride-2 convs with kernels {KERNELS} (first `depth` of them), `width` channels each; the "
             "preset is width 25, depth 3. MLP: two hidden layers of `width` (the preset's 100, residual).",
             'Frontier: the runs that no run with fewer training FLOPs matches in mean test accuracy '
             '(research.report.pareto_front).'])


def _findings(rows, families, front) -> str:
  parts = []
  for family, mine in families.items():
    size = (lambda r: r['label'].split('_d')[1]) if family.startswith('CNN depth') else (
        lambda r: r['label'].split('_w')[1].split('_')[0])
    best = max(mine, key=lambda r: r['mean'])
    parts.append(f"{family}: " + ', '.join(f"{size(r)} -> {common.pct(r['mean'])}" for r in mine)
                 + f" (best {best['label']}, {best['params']:,} params).")
  frontier = [rows[i] for i in front]
  cnn = [r for r in rows if r['label'].startswith('cnn')]
  mlp = [r for r in rows if r['label'].startswith('mlp')]
  parts.append('Compute-efficient frontier, cheapest first: ' + ', '.join(
      f"{r['label']} ({common.num(r['train_flops'], '.2g')} FLOPs, {common.pct(r['mean'])})" for r in frontier) + '.')
  if cnn and mlp:
    best_mlp = max(mlp, key=lambda r: r['mean'])
    cheaper = [r for r in cnn if r['train_flops'] < best_mlp['train_flops'] and r['mean'] > best_mlp['mean']]
    if cheaper:
      c = min(cheaper, key=lambda r: r['train_flops'])
      parts.append(f"The convolution's prior is worth more than scale: {c['label']} beats the best MLP "
                   f"({best_mlp['label']}, {common.pct(best_mlp['mean'])}) with "
                   f"{best_mlp['train_flops'] / c['train_flops']:.0f}x fewer training FLOPs and "
                   f"{best_mlp['params'] / c['params']:.0f}x fewer parameters.")
  return ' '.join(parts)


def _sections(rows, plan) -> list[tuple[str, str]]:
  body = common.table(
      ['sweep', 'size', 'params', 'train FLOPs', 'train time', f"test accuracy ({len(plan['seeds'])} seeds)",
       'frontier'],
      [[r['family'], r['label'], f"{r['params']:,}", common.num(r['train_flops'], '.3g'),
        common.num(r['train_time_s'], '.1f', ' s'), common.pct(r['mean'], r['std']), '✓' if r['on_frontier'] else '']
       for r in sorted(rows, key=lambda r: r['train_flops'])], left=2)
  return [('Every size, by training FLOPs', body)]


def _plot(ctx, rows, families, front, name) -> None:
  fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
  for ax, key, label in ((axes[0], 'params', 'parameters'), (axes[1], 'train_flops', 'training FLOPs')):
    for family, mine in families.items():
      mine = sorted(mine, key=lambda r: r[key])
      ax.errorbar([r[key] for r in mine], [r['mean'] for r in mine], yerr=[r['std'] for r in mine], marker='o',
                  capsize=3, label=family)
    ax.set(xscale='log', xlabel=label, ylabel='test accuracy', ylim=(0, 1))
    ax.grid(alpha=0.3, which='both')
  fr = [rows[i] for i in front]
  axes[1].plot([r['train_flops'] for r in fr], [r['mean'] for r in fr], 'k--', linewidth=1,
               label='compute-efficient frontier')
  axes[0].set_title('test accuracy vs parameters (mean ± std over seeds)')
  axes[1].set_title('test accuracy vs training FLOPs')
  axes[1].legend(fontsize=8, loc='lower right')
  common.save_figure(fig, f'{ctx.out}/{name}')
