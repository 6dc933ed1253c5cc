r"""A compute-scaling study of byte-level GPT language models: model sizes x FLOP budgets, power-law fits.

Each (size, budget) pair is one training run whose length is set so that its training FLOPs, counted as
6 N + 12 L T d per token (cost.model_flops_per_token), equal the budget; its learning-rate schedule (warmup + cosine)
ends at that length, as Hoffmann et al. (2022) show it must for a fair comparison across budgets. For every budget C
the final validation losses over model sizes are fitted with a parabola in log N (an "IsoFLOP" curve, Hoffmann et al.
approach 2); its minimum gives the compute-optimal size N_opt(C) and loss L_opt(C). Power laws are then fitted over the budgets whose optimum
lies inside the sizes run: N_opt = k C^a and L_opt = A C^-alpha, and the tokens per parameter at the optimum,
D / N with D = C / (FLOPs per token at N_opt).

N is the non-embedding parameter count (Kaplan et al. 2020's convention: the token and position tables excluded).
Published values: Kaplan et al. 2020: N_opt ~ C^0.73, L ~ C^-0.050 (their C_min law); Hoffmann et al. 2022
(Chinchilla): N_opt ~ C^0.50 (0.49 and 0.46 by their approaches 1 and 3) with ~20 tokens per parameter.

  plan = study_plan(quick=False)   # [Point(size='s3', budget=1e13, steps=..., overrides=(...)), ...]
  results = analyse(plan, cards)   # fits, table rows
  write_results(results, 'results/scaling', command=...)
"""

import dataclasses
import json
import os
from typing import Any, Sequence

import numpy as np

# Model sizes: (layers, width); heads of 32 dims. Context 64 and batch 16: 1024 tokens per step.
SIZES = {'s0': (1, 32), 's1': (2, 32), 's2': (2, 64), 's3': (3, 96), 's4': (4, 128), 's5': (5, 160)}
BUDGETS = (1e12, 3e12, 1e13)
QUICK_SIZES = {'q1': (1, 32), 'q2': (2, 32), 'q3': (2, 64)}
QUICK_BUDGETS = (2e10, 6e10)
SEQ_LEN, BATCH_SIZE, HEAD_DIM, VOCAB = 64, 16, 32, 256
EVALS_PER_RUN = 4  # Validation points per run (the last at the end), for the loss-vs-FLOPs curves.
EVAL_EXAMPLES = 1000  # Validation windows per evaluation: 64k tokens, evenly spaced over the split.
MIN_STEPS = 20
PUBLISHED = {
    'kaplan2020': {'n_opt_exponent': 0.73, 'loss_exponent': 0.050, 'tokens_per_param': None},
    'hoffmann2022': {'n_opt_exponent': 0.50, 'loss_exponent': None, 'tokens_per_param': 20.0},
}


@dataclasses.dataclass(frozen=True)
class Point:
  """One run of the study."""
  size: str
  layers: int
  width: int
  budget: float  # Training FLOPs (6 N + 12 L T d per token).
  steps: int
  flops_per_token: float
  non_embedding_params: int

  @property
  def id(self) -> str:
    return f'{self.size}_C{self.budget:.0e}'.replace('+', '')

  @property
  def overrides(self) -> tuple[str, ...]:
    warmup = max(1, min(100, self.steps // 10))
    eval_every = max(1, self.steps // EVALS_PER_RUN)
    return (f'--config.model.num_layers={self.layers}', f'--config.model.d_model={self.width}',
            f'--config.model.num_heads={self.width // HEAD_DIM}', f'--config.model.context={SEQ_LEN}',
            f'--config.dataset.seq_len={SEQ_LEN}', f'--config.batch_size={BATCH_SIZE}', f'--config.steps={self.steps}',
            f'--config.optimizer.warmup_steps={warmup}', f'--config.eval_every={eval_every}',
            f'--config.eval_examples={EVAL_EXAMPLES}', f'--config.checkpoint_every={max(1, self.steps // 2)}',
            '--config.log_every=50', '--config.progress=False')


def _counts(layers: int, width: int) -> tuple[float, int]:
  """(training FLOPs per token, non-embedding params) of a study model, from the model's own init."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from research import cost  # pylint: disable=g-import-not-at-top

  model = ml_collections.ConfigDict({'name': 'gpt', 'num_layers': layers, 'd_model': width,
                                     'num_heads': width // HEAD_DIM, 'context': SEQ_LEN})
  per_token = cost.model_flops_per_token(model, seq_len=SEQ_LEN, vocab=VOCAB)
  # Non-embedding parameters: without the token and position tables.
  n = cost.param_count(model, (SEQ_LEN,), VOCAB) - (VOCAB + SEQ_LEN) * width
  return per_token, n


def study_plan(*, quick: bool) -> list[Point]:
  """The runs of the study (or of its quick version), smallest budget first."""
  sizes, budgets = (QUICK_SIZES, QUICK_BUDGETS) if quick else (SIZES, BUDGETS)
  points = []
  for budget in budgets:
    for size, (layers, width) in sizes.items():
      per_token, n = _counts(layers, width)
      steps = max(MIN_STEPS, round(budget / (per_token * SEQ_LEN * BATCH_SIZE)))
      points.append(Point(size, layers, width, budget, steps, per_token, n))
  return points


def _final_loss(card: dict | None) -> float | None:
  if not card or card.get('stop_reason') != 'steps':
    return None
  return card['final_metrics'].get('eval_loss')


def fit_isoflop(log_n: np.ndarray, loss: np.ndarray) -> dict[str, Any] | None:
  """Parabola loss = a (ln N)^2 + b ln N + c through one budget's runs; None with fewer than 3 or no minimum.

  Returns:
    {'a', 'b', 'c', 'n_opt', 'loss_opt', 'inside'}: inside is False when the minimum lies outside the sizes run
    (an extrapolation: the grid should then be widened).
  """
  if len(log_n) < 3:
    return None
  a, b, c = np.polyfit(log_n, loss, 2)
  if a <= 0:
    return None
  x = -b / (2 * a)
  return {'a': float(a), 'b': float(b), 'c': float(c), 'n_opt': float(np.exp(x)),
          'loss_opt': float(c - b * b / (4 * a)), 'inside': bool(log_n.min() <= x <= log_n.max())}


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> dict[str, float] | None:
  """y = k x^e fitted in log-log space; None with fewer than 2 points."""
  if len(x) < 2:
    return None
  e, log_k = np.polyfit(np.log(x), np.log(y), 1)
  return {'exponent': float(e), 'coefficient': float(np.exp(log_k))}


def analyse(plan: Sequence[Point], cards: dict[str, dict | None]) -> dict:
  """Fits the study's finished runs.

  Args:
    plan: study_plan().
    cards: run id -> its run card (None if not finished).

  Returns:
    {'runs': [...], 'isoflops': {budget: fit}, 'n_opt_law', 'loss_law', 'tokens_per_param': {budget: D/N}}.
  """
  runs = []
  for p in plan:
    card = cards.get(p.id)
    runs.append({'id': p.id, 'size': p.size, 'layers': p.layers, 'width': p.width, 'budget': p.budget,
                 'steps': p.steps, 'non_embedding_params': p.non_embedding_params,
                 'tokens': p.steps * SEQ_LEN * BATCH_SIZE, 'eval_loss': _final_loss(card),
                 'wall_s': card['time']['wall_s'] if card else None,
                 'train_flops_xla': card['flops']['total_train'] if card else None,
                 'joules': card['energy']['joules'] if card else None,
                 'energy_source': card['energy']['source'] if card else None})
  isoflops = {}
  for budget in sorted({p.budget for p in plan}):
    done = [r for r in runs if r['budget'] == budget and r['eval_loss'] is not None]
    isoflops[budget] = fit_isoflop(np.log([r['non_embedding_params'] for r in done]),
                                   np.array([r['eval_loss'] for r in done]))
  # Only optima inside the sizes run enter the laws: a parabola's vertex beyond the grid is an extrapolation.
  optima = {c: f for c, f in isoflops.items() if f is not None and f['inside']}
  # FLOPs per token at N_opt, interpolated in log-log over the sizes run: at these sizes attention and the embedding
  # head are a large share of a token's FLOPs, so 6 N alone would overstate the tokens a budget buys.
  sizes = sorted({(p.non_embedding_params, p.flops_per_token) for p in plan})
  per_token = lambda n: float(np.exp(np.interp(np.log(n), *np.log(np.array(sizes)).T)))
  return {
      'runs': runs,
      'isoflops': {f'{c:.0e}': f for c, f in isoflops.items()},
      'n_opt_law': fit_power_law(list(optima), [f['n_opt'] for f in optima.values()]),
      'loss_law': fit_power_law(list(optima), [f['loss_opt'] for f in optima.values()]),
      # D / N at the optimum: D = C / (FLOPs per token at N_opt).
      'tokens_per_param': {f'{c:.0e}': c / per_token(f['n_opt']) / f['n_opt'] for c, f in optima.items()},
      'published': PUBLISHED,
  }


def _fmt(value, spec: str) -> str:
  return '—' if value is None else format(value, spec)


def findings(results: dict) -> str:
  """A paragraph generated from the fits: the exponents beside the published ones, and how far they can speak."""
  n_law, loss_law, tpp = results['n_opt_law'], results['loss_law'], results['tokens_per_param']
  if n_law is None or loss_law is None:
    return ('Not enough finished runs to fit the power laws (each budget needs 3 sizes with a minimum inside '
            'them, and two such budgets are needed for a law).')
  ratios = ', '.join(f'{v:.0f} at C={c}' for c, v in tpp.items())
  inside = [c for c, f in results['isoflops'].items() if f and f['inside']]
  outside = [c for c, f in results['isoflops'].items() if f and not f['inside']]
  edge = (f' The fitted optimum at C={", ".join(outside)} lies outside the sizes run (an extrapolation), so that '
          'budget is left out of the laws.' if outside else '')
  return (
      f'Compute-optimal size grows as N_opt ~ C^{n_law["exponent"]:.2f} (Hoffmann et al. 2022: 0.50; Kaplan et al. '
      f'2020: 0.73) and the optimal loss falls as L_opt ~ C^-{-loss_law["exponent"]:.3f} (Kaplan et al.: 0.050 for '
      f'L(C_min), with an irreducible term folded in here). Tokens per non-embedding parameter at the optimum: '
      f'{ratios} (Hoffmann et al.: about 20). The fits rest on {len(inside)} budgets spanning '
      f'{_span(inside)} of compute and models of {_sizes(results)} non-embedding parameters, trained for minutes on '
      f'a CPU with one learning rate; the published laws span 6+ orders of magnitude up to 10^23 FLOPs. Exponents '
      f'from a few-fold range of compute are uncertain to +-0.2 or more, small models are dominated by their '
      f'embeddings (excluded from N), and byte-level Shakespeare is not web text, so agreement or disagreement here '
      f'is suggestive, not a test of the published laws.{edge} Budgets with the optimum inside the grid: '
      f'{", ".join(inside) or "none"}.')


def _span(budgets: list[str]) -> str:
  budgets = [float(c) for c in budgets]
  return f'{max(budgets) / min(budgets):.3g}x'


def _sizes(results: dict) -> str:
  n = [r['non_embedding_params'] for r in results['runs']]
  return f'{min(n) / 1e3:.0f}k-{max(n) / 1e6:.2f}M'


def format_table(results: dict, *, command: str, versions: dict) -> str:
  """results/scaling/table.md: every run, the IsoFLOP optima, the fitted laws beside the published ones."""
  lines = ['# Compute scaling of byte-level GPT language models (offline Shakespeare)', '',
           f'Made by `{command}`', f'Versions: {", ".join(f"{k} {v}" for k, v in versions.items())}', '',
           '## Runs (final validation loss, nats/byte)', '',
           '| run | layers x width | non-emb. params | budget (FLOPs) | steps | tokens | eval_loss | wall s | '
           'energy J |', '|---|---|---|---|---|---|---|---|---|']
  for r in results['runs']:
    lines.append(f"| {r['id']} | {r['layers']} x {r['width']} | {r['non_embedding_params']:,} | {r['budget']:.0e} | "
                 f"{r['steps']} | {r['tokens']:,} | {_fmt(r['eval_loss'], '.4f')} | {_fmt(r['wall_s'], '.0f')} | "
                 f"{_fmt(r['joules'], '.3g')}{' (' + r['energy_source'] + ')' if r['energy_source'] else ''} |")
  lines += ['', '## Compute-optimal model per budget (parabola in ln N through each budget\'s runs)', '',
            '| budget | N_opt | L_opt | tokens/param | optimum inside the grid (used by the laws) |',
            '|---|---|---|---|---|']
  for c, f in results['isoflops'].items():
    if f is None:
      lines.append(f'| {c} | — | — | — | (fewer than 3 runs or no minimum) |')
    else:
      tokens = _fmt(results['tokens_per_param'].get(c), '.1f')
      lines.append(f"| {c} | {f['n_opt']:,.0f} | {f['loss_opt']:.4f} | {tokens} | "
                   f"{'yes' if f['inside'] else 'no (extrapolated)'} |")
  n_law, loss_law = results['n_opt_law'], results['loss_law']
  lines += ['', '## Fitted laws vs published', '', '| quantity | this study | Kaplan et al. 2020 | Hoffmann et al. 2022 |',
            '|---|---|---|---|',
            f"| N_opt ~ C^a: a | {_fmt(n_law and n_law['exponent'], '.2f')} | 0.73 | 0.50 |",
            f"| L_opt ~ C^-alpha: alpha | {_fmt(loss_law and -loss_law['exponent'], '.3f')} | 0.050 | — |",
            f"| tokens per parameter at the optimum | "
            f"{', '.join(f'{v:.0f}' for v in results['tokens_per_param'].values()) or '—'} | — | ~20 |",
            '', '## Findings', '', findings(results), '', '![loss vs compute](scaling.png)', '']
  return '\n'.join(lines)


def plot(results: dict, curves: dict[str, list[tuple[float, float]]], path: str) -> None:
  """Two panels: validation loss vs training FLOPs per model size (each run's evaluations, final points marked)
  with the fitted frontier L_opt(C); and the IsoFLOP parabolas, loss vs N per budget."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, (ax, iso) = plt.subplots(1, 2, figsize=(12, 4.8))
  sizes = sorted({r['size'] for r in results['runs']})
  colors = dict(zip(sizes, plt.cm.viridis(np.linspace(0, 0.9, len(sizes)))))
  for r in results['runs']:
    points = curves.get(r['id']) or []
    if points:
      ax.plot(*zip(*points), color=colors[r['size']], alpha=0.35, lw=1)
  for size in sizes:
    done = [r for r in results['runs'] if r['size'] == size and r['eval_loss'] is not None]
    if done:
      ax.plot([r['budget'] for r in done], [r['eval_loss'] for r in done], 'o-', color=colors[size],
              label=f"{size}: {done[0]['non_embedding_params'] / 1e3:.0f}k params")
  law = results['loss_law']
  if law:
    c = np.geomspace(min(r['budget'] for r in results['runs']) / 3, max(r['budget'] for r in results['runs']), 50)
    ax.plot(c, law['coefficient'] * c ** law['exponent'], 'k--',
            label=f"frontier L = {law['coefficient']:.3g} C^{law['exponent']:.3f}")
  ax.set(xscale='log', xlabel='training FLOPs (6N + 12LTd per token)', ylabel='validation loss (nats/byte)',
         title='Loss vs compute per model size')
  ax.legend(fontsize=8)
  budgets = list(results['isoflops'])
  bcolors = dict(zip(budgets, plt.cm.plasma(np.linspace(0, 0.8, len(budgets)))))
  for c, f in results['isoflops'].items():
    done = [r for r in results['runs'] if f'{r["budget"]:.0e}' == c and r['eval_loss'] is not None]
    iso.plot([r['non_embedding_params'] for r in done], [r['eval_loss'] for r in done], 'o', color=bcolors[c],
             label=f'C = {c}')
    if f:
      n = np.geomspace(min(r['non_embedding_params'] for r in done), max(r['non_embedding_params'] for r in done))
      iso.plot(n, f['a'] * np.log(n) ** 2 + f['b'] * np.log(n) + f['c'], '-', color=bcolors[c], alpha=0.7)
      if f['inside']:  # A vertex beyond the sizes run is an extrapolation: the table lists it, the plot does not.
        iso.plot([f['n_opt']], [f['loss_opt']], '*', ms=12, color=bcolors[c])
  iso.set(xscale='log', xlabel='non-embedding parameters N', ylabel='validation loss (nats/byte)',
          title='IsoFLOP curves (stars: fitted optima inside the grid)')
  iso.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def eval_curve(workdir: str, flops_per_step: float) -> list[tuple[float, float]]:
  """(training FLOPs, validation loss) at each evaluation of a run, from its metrics.jsonl."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [(r['step'] * flops_per_step, r['metrics']['loss']) for r in rows if r.get('split') == 'eval']


def write_results(results: dict, curves: dict, out: str, *, command: str, versions: dict) -> list[str]:
  """Writes OUT/table.md, OUT/summary.json and OUT/scaling.png; returns their paths."""
  os.makedirs(out, exist_ok=True)
  paths = [os.path.join(out, name) for name in ('table.md', 'summary.json', 'scaling.png')]
  with open(paths[0], 'w') as f:
    f.write(format_table(results, command=command, versions=versions))
  with open(paths[1], 'w') as f:
    json.dump({**results, 'command': command, 'versions': versions}, f, indent=2, sort_keys=True)
    f.write('\n')
  plot(results, curves, paths[2])
  return paths


def study_record(trials, command: str, *, preset: str) -> dict:
  """OUT/sweep.json of the study (research.sweep.check_out's identity keys): a rerun resumes only the same plan; a
  changed grid needs a new --out.

  Args:
    trials: research.sweep.Trial per Point (id, overrides).
    command: the command line, recorded.
    preset: the config every run starts from.
  """
  plan = [{'id': t.id, 'overrides': list(t.overrides)} for t in trials]
  return {'preset': preset, 'sweep_file': 'research/scaling.py', 'sweep_source': json.dumps(plan), 'overrides': [],
          'command': command, 'trials': plan}


def flops_per_step(point: Point) -> float:
  return point.flops_per_token * SEQ_LEN * BATCH_SIZE


def total_flops(plan: Sequence[Point]) -> float:
  return sum(p.steps * flops_per_step(p) for p in plan)


def describe(plan: Sequence[Point]) -> str:
  """The plan as lines: run id, model, steps, FLOPs."""
  lines = [f'{len(plan)} runs, {total_flops(plan):.3g} training FLOPs in all:']
  for p in plan:
    lines.append(f'  {p.id:<12} {p.layers} x {p.width:<4} N={p.non_embedding_params:>9,}  steps={p.steps:>6}  '
                 f'{p.steps * flops_per_step(p):.2e} FLOPs')
  return '\n'.join(lines)

