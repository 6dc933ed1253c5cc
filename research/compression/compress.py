"""Compress a trained run by several methods and measure what each really saves: accuracy, bytes, latency, energy.

    comp = Compressor('runs/cnn', out='results/compression/mnist1d_cnn', options=Options())
    rows = comp.run(parse_methods('int8,qat,prune50,prune90,structured50,distill'))

Every method writes OUT/METHOD/ as a model directory that the normal eval path reads (config.json + model.safetensors,
`python -m experiments.evaluate --workdir=OUT/METHOD`); methods that train keep their run in OUT/METHOD/train (an
ordinary workdir with its run card; rerunning skips finished ones). Methods (`parse_methods`):

  finetune       the control for the methods that fine-tune: the same steps and learning rate, no compression
                 (a run that was still improving gains from the extra steps alone), stored float32.
  int8           post-training: weights int8 + a float32 scale per output channel (storage format int8); loaded
                 as float32 (weight-only quantization: the compute is float).
  w8a8           the same file, evaluated and timed with integer matmuls (int8 weights x int8 activations ->
                 int32, research/compression/int8_exec.py; compression.int8_matmul in its config.json).
  qat            fine-tune with 8-bit fake-quantized weights (straight-through gradient), then int8 as above.
  pruneNN        gradual magnitude pruning to NN% sparsity while fine-tuning (Zhu & Gupta 2017: cubic ramp over the
                 first 2/3 of the fine-tune, then the mask is frozen), stored sparse (bitmask + float32 values).
  pruneNN_int8   the same, stored as bitmask + int8 values.
  pruneNN_kd     the same pruning with the trained run as teacher: the fine-tune's loss is the distillation loss
                 (as `distill`), so the pruned model learns to match the dense one, not only the labels
                 (pruneNN_kd_int8: stored with int8 values).
  oneshotNN      magnitude pruning of the trained weights with no fine-tuning, stored sparse.
  structuredNN   whole channels / hidden units removed (research/compression/structured.py) down to a dense model
                 with at most NN% of the FLOPs, then fine-tuned; stored float32.
  distill        a student trained from scratch with the trained run as teacher (Hinton et al. 2015), for `seeds`
                 seeds, next to the same student without the teacher ('scratch'): the widths of structured25 for the
                 mlp and cnn, half the layers for the gpt.

Measured per model, one after another in this process on one device: test accuracy (eval loss for a language
model) through research.inference.evaluate, parameters (nonzero ones for pruned models), bytes of model.safetensors
(of model.safetensors.xz with Options.xz, the baseline's too), batch-1 latency (p50 of 50 calls), examples/s at the
eval batch size (both interleaved across the models, best of 3 rounds), analytic FLOPs per example
(research/cost/analytic.py: dense FLOPs; no sparse kernels run here, so pruning saves bytes, not FLOPs), and the
energy of 1,000 predictions from the run's energy source (an estimate on CPU: said so in the table).
"""

import dataclasses
import json
import os
import re
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from research import cost, data, inference, run_card
from research import workdir as workdir_lib
from research.compression import int8_exec, pruning, storage, structured
from research.config import ConfigError, override

_PATTERNS = {
    'finetune': r'finetune', 'int8': r'int8', 'w8a8': r'w8a8', 'qat': r'qat', 'prune': r'prune(\d\d)(_kd)?(_int8)?', 'oneshot': r'oneshot(\d\d)',
    'structured': r'structured(\d\d)', 'distill': r'distill'}
FORMS = 'finetune, int8, w8a8, qat, pruneNN, pruneNN_kd, pruneNN_int8, pruneNN_kd_int8, oneshotNN, structuredNN, distill (NN: two digits, e.g. prune90)'
DISTILL_FLOPS = 0.25  # The distilled student's FLOPs, as a fraction of the teacher's (its widths: structured25's).


def parse_methods(text: str) -> list[str]:
  """'int8,prune90' -> ['int8', 'prune90'].

  Raises:
    ValueError: an empty list, a repeated method, or one that matches no form (names it and the forms).
  """
  methods = [m.strip() for m in text.split(',') if m.strip()]
  if not methods:
    raise ValueError(f'--methods ({text!r}) names no method; expected a comma-separated list of {FORMS}')
  for m in methods:
    if not any(re.fullmatch(p, m) for p in _PATTERNS.values()):
      raise ValueError(f'--methods: {m!r} is not a method; expected {FORMS}')
    if methods.count(m) > 1:
      raise ValueError(f'--methods: {m!r} is given twice')
    if m.startswith(('prune', 'oneshot', 'structured')) and int(re.search(r'\d\d', m).group()) == 0:
      raise ValueError(f'--methods: {m!r} asks for 0%; use NN in 01..99')
  return methods


def check_methods(methods: list[str], model_name: str) -> None:
  """Raises ValueError (naming the methods and the models they support) for methods that do not apply to model
  `model_name`; checked before anything is written."""
  # distill's students: structured25's widths (mlp, cnn) or half the layers (gpt).
  limits = [(('structured', 'distill'), structured.SUPPORTED),
            (('w8a8',), int8_exec.SUPPORTED)]
  for prefixes, supported in limits:
    bad = [m for m in methods if m.startswith(prefixes)]
    if bad and model_name not in supported:
      raise ValueError(f'--methods: {",".join(bad)} applies only to the models {supported}, not {model_name!r}')


@dataclasses.dataclass(frozen=True)
class Options:
  """How the methods that train are run.

  Attributes:
    finetune_steps: steps of the qat, pruneNN and structuredNN fine-tunes.
    lr_scale: their learning rate, as a fraction of the trained run's (constant schedule).
    seeds: seeds of distill and its from-scratch twin.
    distill_steps: steps of those runs; 0: the trained run's own.
    xz: store every model, the baseline included, LZMA-compressed (model.safetensors.xz: entropy coding,
      research/compression/storage.py), so that bytes on disk compare compressed files with compressed files.
  """
  finetune_steps: int = 3000
  lr_scale: float = 1.0
  seeds: int = 3
  distill_steps: int = 0
  xz: bool = False


@dataclasses.dataclass
class Row:
  """One model of the table. `metric` is test accuracy for a classifier, eval loss (nats/token) for an LM."""
  method: str
  description: str
  metric: float
  metric_std: float | None
  params: int
  bytes_on_disk: int
  storage_format: str
  flops_per_example: float
  batch1_p50_ms: float
  examples_per_s: float
  joules_per_1000: float
  energy_source: str
  workdir: str
  extra: dict = dataclasses.field(default_factory=dict)
  codec: str = 'none'  # 'xz': the file is LZMA-compressed (Options.xz).


def _tuples(value):
  """JSON's lists back to the tuples the config schema declares (config.json stores tuples as lists)."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return tuple(_tuples(v) for v in value)
  return value


def _set(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` (from a config.json) with dotted-key `overrides`."""
  return override(ml_collections.ConfigDict(_tuples(config.to_dict())), overrides)


class Compressor:
  """Compresses one trained run into OUT/<method>/ and measures each result (see the module docstring)."""

  def __init__(self, workdir: str, *, out: str, options: Options = Options(),
               log: Callable[[str], None] = lambda line: print(line, flush=True)):
    self.source = inference.load_run(workdir)
    self.config = self.source.config
    self.out, self.options, self.log = out, options, log
    self.dataset = data.load_dataset(self.config.dataset)
    self.lm = self.dataset.task == 'lm'
    self.metric_name = 'eval_loss' if self.lm else 'test_accuracy'
    self._timed = []  # (row, jitted forward, params on one device) of each measured model, for time_all.
    self._inputs = self.dataset.test[np.arange(min(self.config.eval_batch_size, self.dataset.num_test))]['inputs']

  # --- writing and measuring a model directory -------------------------------------------------------------------

  def _write_model(self, name: str, config, params, fmt: str, *, int8_matmul: bool = False) -> str:
    directory = os.path.join(self.out, name)
    os.makedirs(directory, exist_ok=True)
    config = _set(config, {'compression.init_from': '', 'compression.teacher': '', 'compression.qat_bits': 0,
                           'compression.sparsity': 0.0, 'compression.int8_matmul': int8_matmul})
    plain, xz = (os.path.join(directory, name) for name in inference.COMPRESSED_FILES)
    path, other = (xz, plain) if self.options.xz else (plain, xz)
    storage.save(path, jax.device_get(params), fmt=fmt,
                 metadata={'method': name, 'source': self.source.workdir, 'step': self.source.step})
    if os.path.exists(other):  # From an earlier run with the other codec: the directory holds one model file.
      os.remove(other)
    with open(os.path.join(directory, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')
    return directory

  def measure(self, name: str, description: str, directory: str, **extra) -> Row:
    """Loads OUT/name through the normal eval path and measures its metric and size; its speed and energy are
    measured later, for all models together (`time_all`)."""
    run = inference.load_run(directory)
    metrics = inference.evaluate(run, 'test')
    path = inference.compressed_file(directory)
    decoded, fmt, _ = storage.load(path)
    leaves = jax.tree.leaves(decoded)
    # Stored parameters: a sparse format keeps only the nonzero weights (and every bias); others keep them all.
    params = (sum(int(np.count_nonzero(x)) if x.ndim >= 2 else int(x.size) for x in leaves)
              if fmt.startswith('sparse') else sum(int(x.size) for x in leaves))
    row = Row(
        method=name, description=description,
        metric=metrics['loss'] if self.lm else metrics['accuracy'], metric_std=None, params=params,
        bytes_on_disk=os.path.getsize(path), storage_format=fmt,
        flops_per_example=cost.analytic_flops(run.config.model, input_shape=run.input_shape,
                                              num_classes=run.num_classes),
        batch1_p50_ms=float('nan'), examples_per_s=float('nan'), joules_per_1000=float('nan'), energy_source='',
        workdir=directory, extra=extra, codec='xz' if path.endswith(storage.XZ_SUFFIX) else 'none')
    device = run.mesh.devices.flat[0]
    forward = jax.jit(lambda p, x: run.model.apply({'params': p}, x, train=False))
    self._timed.append((row, forward, jax.device_put(run.params, device)))
    self.log(f'  {name}: {self.metric_name}={row.metric:.4f} bytes={row.bytes_on_disk:,} params={row.params:,}')
    return row

  def time_all(self, rounds: int = 3, min_seconds: float = 0.3) -> None:
    """Batch-1 latency, throughput and energy of every measured model, interleaved over `rounds` rounds so that
    machine noise hits all alike.

    Per model and round: p50 of 50 batch-1 calls; examples/s of the median of 5 full eval batches; joules of full
    batches run for at least `min_seconds` and 1,000 predictions, per 1,000 predictions. Latency and throughput
    keep the best round, energy the median.
    """
    batch = self._inputs
    figures = {id(row): [] for row, _, _ in self._timed}
    for r in range(rounds):
      # Each round starts at another model, so that no model is always the first after a pause.
      for row, forward, params in self._timed[r:] + self._timed[:r]:
        latency = cost.batch1_latency_ms(forward, params, batch, examples=50)
        jax.block_until_ready(forward(params, batch))  # Compiles the full-batch shape.
        batch_ms = cost.call_latency_ms(forward, params, batch, calls=5)['p50_ms']
        meter = cost.EnergyMeter(self.config.accounting.energy_source,
                                 watts_per_core=self.config.accounting.watts_per_busy_core)
        meter.start()
        t0, predictions = time.perf_counter(), 0
        while predictions < 1000 or time.perf_counter() - t0 < min_seconds:
          jax.block_until_ready(forward(params, batch))
          predictions += len(batch)
        energy = meter.read()
        figures[id(row)].append((latency['p50_ms'], 1e3 * len(batch) / batch_ms,
                                 energy['joules'] * 1000 / predictions, energy['source'], energy['assumptions']))
    for row, _, _ in self._timed:
      f = figures[id(row)]
      # The best round for speed: batch-1 calls of a small model are mostly dispatch, which noise only slows.
      row.batch1_p50_ms = float(np.min([x[0] for x in f]))
      row.examples_per_s = float(np.max([x[1] for x in f]))
      row.joules_per_1000 = float(np.median([x[2] for x in f]))
      row.energy_source, row.extra['energy_assumptions'] = f[0][3], f[0][4]

  # --- training -------------------------------------------------------------------------------------------------

  def _train(self, workdir: str, config) -> tuple[Any, dict]:
    """Trains (or resumes, or skips when finished) one run; returns its params and run card."""
    from configs import base  # pylint: disable=g-import-not-at-top
    from research.config import validate  # pylint: disable=g-import-not-at-top
    from research.training import loop  # pylint: disable=g-import-not-at-top

    validate(config, base.get_base_config())
    try:  # A run made with other options (--finetune_steps, --lr_scale, ...) is not this method's result.
      workdir_lib.check_config(workdir, config, allow_change=False)
    except workdir_lib.WorkdirError as e:
      raise ConfigError('out', self.out, f'an output directory whose runs were made with these options: {workdir} '
                        f'was made with others ({" ".join(str(e).split())[:300]}); use a new --out') from e
    card_path = os.path.join(workdir, 'run_card.json')
    if not (os.path.exists(card_path) and run_card.read(workdir)['steps'] == config.steps):
      t0 = time.time()
      card = loop.train_and_evaluate(config, workdir)
      if card['stop_reason'] == 'preempted':
        raise KeyboardInterrupt(f'stopped during {workdir} (checkpointed): rerun the same command to continue')
      self.log(f'  trained {workdir} ({config.steps} steps, {time.time() - t0:.0f} s): '
               f'{self.metric_name}={card["final_metrics"].get(self.metric_name)}')
    return inference.load_run(workdir).params, run_card.read(workdir)

  def _finetune_config(self, model_config=None, **compression) -> ml_collections.ConfigDict:
    steps = self.options.finetune_steps
    overrides = {'steps': steps, 'eval_every': max(1, steps // 5), 'log_every': min(50, steps),
                 'checkpoint_every': steps, 'progress': False, 'optimizer.schedule': 'constant',
                 'optimizer.warmup_steps': 0,
                 'optimizer.learning_rate': self.config.optimizer.learning_rate * self.options.lr_scale,
                 'compression.init_from': self.source.workdir,
                 **{f'compression.{k}': v for k, v in compression.items()}}
    config = _set(self.config, overrides)
    if model_config is not None:
      config.model = ml_collections.ConfigDict(_tuples(model_config))
    return config

  # --- methods ----------------------------------------------------------------------------------------------------

  def baseline(self) -> Row:
    directory = self._write_model('baseline', self.config, self.source.params, 'float32')
    return self.measure('baseline', f'the trained run (step {self.source.step}), float32', directory)

  def finetune(self, name: str) -> Row:
    config = self._finetune_config()
    params, _ = self._train(os.path.join(self.out, name, 'train'), config)
    directory = self._write_model(name, config, params, 'float32')
    return self.measure(name, f'{config.steps} more steps of plain fine-tuning (the control for qat, pruneNN and '
                        'structuredNN), float32', directory)

  def int8(self, name: str) -> Row:
    directory = self._write_model(name, self.config, self.source.params, 'int8')
    return self.measure(name, 'post-training int8 weights, per output channel', directory)

  def w8a8(self, name: str) -> Row:
    config = _set(self.config, {})
    directory = self._write_model(name, config, self.source.params, 'int8', int8_matmul=True)
    return self.measure(name, 'int8 weights as int8, run with integer matmuls: activations quantized per row on '
                        'the fly, int8 x int8 -> int32 (research/compression/int8_exec.py)', directory)

  def qat(self, name: str) -> Row:
    config = self._finetune_config(qat_bits=8)
    params, _ = self._train(os.path.join(self.out, name, 'train'), config)
    directory = self._write_model(name, config, params, 'int8')
    return self.measure(name, f'{config.steps} steps of 8-bit quantization-aware fine-tuning, then int8', directory)

  def prune(self, name: str) -> Row:
    percent, kd, int8 = re.fullmatch(_PATTERNS['prune'], name).groups()
    target, steps = int(percent) / 100, self.options.finetune_steps
    end = max(1, 2 * steps // 3)
    config = self._finetune_config(sparsity=target, prune_start=0, prune_end=end, prune_every=max(1, end // 12),
                                   teacher=self.source.workdir if kd else '')
    train_dir = os.path.join(self.out, f'prune{percent}{kd or ""}', 'train')  # Shared by the _int8 twin.
    params, _ = self._train(train_dir, config)
    directory = self._write_model(name, config, params, 'sparse_int8' if int8 else 'sparse')
    teacher = (f', distilled from the trained run (T={config.compression.temperature:g}, '
               f'alpha={config.compression.distill_weight:g})' if kd else '')
    return self.measure(name, f'gradual magnitude pruning to {target:.0%} over {end} of {steps} fine-tune steps'
                        f'{teacher}, stored {"bitmask + int8" if int8 else "bitmask + float32"}', directory,
                        sparsity=storage.sparsity(jax.device_get(params)))

  def oneshot(self, name: str) -> Row:
    target = int(name[7:9]) / 100
    params = pruning.prune(self.source.params, target)
    directory = self._write_model(name, self.config, params, 'sparse')
    return self.measure(name, f'one-shot magnitude pruning to {target:.0%}, no fine-tuning', directory,
                        sparsity=storage.sparsity(jax.device_get(params)))

  def structured(self, name: str) -> Row:
    fraction = int(name[10:12]) / 100
    input_shape, num_classes = self.source.input_shape, self.source.num_classes
    keep = structured.keep_for_flops(self.config.model, input_shape=input_shape, num_classes=num_classes,
                                     flops_fraction=fraction)
    small_config, small_params = structured.shrink(self.config.model, jax.device_get(self.source.params), keep=keep)
    init = os.path.join(self.out, name, 'pruned.safetensors')
    os.makedirs(os.path.dirname(init), exist_ok=True)
    storage.save(init, small_params, fmt='float32')
    config = self._finetune_config(model_config=small_config)
    config.compression.init_from = init
    params, _ = self._train(os.path.join(self.out, name, 'train'), config)
    directory = self._write_model(name, config, params, 'float32')
    widths = {k: v for k, v in small_config.items() if k in ('channels', 'hidden_size', 'num_heads', 'mlp_dim')}
    return self.measure(name, f'{1 - keep:.0%} of the units removed (widths {widths}), '
                        f'{config.steps} fine-tune steps', directory, keep=keep, widths=widths)

  def _student(self) -> tuple[dict, str]:
    """The distilled student's model config and how it was made from the teacher's."""
    model = dict(_tuples(self.config.model.to_dict()))
    if model['name'] == 'gpt':  # DistilBERT / DistilGPT-2's choice: every other layer's worth, same width.
      model['num_layers'] = max(1, model['num_layers'] // 2)
      return model, f'{model["num_layers"]} of the teacher\'s layers, same width'
    keep = structured.keep_for_flops(model, input_shape=self.source.input_shape,
                                     num_classes=self.source.num_classes, flops_fraction=DISTILL_FLOPS)
    student, _ = structured.shrink(model, jax.device_get(self.source.params), keep=keep)
    return student, f'widths of structured{round(DISTILL_FLOPS * 100)}'

  def distill(self, name: str) -> list[Row]:
    student, how = self._student()
    steps = self.options.distill_steps or self.config.steps
    rows = []
    for label, teacher in (('distill', self.source.workdir), ('scratch', '')):
      values = []
      for seed in range(self.options.seeds):
        config = _set(self.config, {'seed': seed, 'steps': steps, 'checkpoint_every': steps, 'progress': False,
                                    'eval_every': max(1, min(self.config.eval_every, steps)),
                                    'compression.teacher': teacher})
        config.model = ml_collections.ConfigDict(_tuples(student))
        params, card = self._train(os.path.join(self.out, label, f'seed{seed}'), config)
        values.append(card['final_metrics'][self.metric_name])
        if seed == 0:
          self._write_model(label, config, params, 'float32')
      what = (f'student ({how}) distilled from the trained run, '
              f'T={self.config.compression.temperature:g}, alpha={self.config.compression.distill_weight:g}'
              if teacher else 'the same student trained from scratch')
      row = self.measure(label, f'{what}; {steps} steps, mean of {len(values)} seeds (the saved model: seed 0)',
                         os.path.join(self.out, label), seeds=values)
      row.metric, row.metric_std = float(np.mean(values)), float(np.std(values))
      rows.append(row)
    return rows

  def run(self, methods: list[str]) -> list[Row]:
    """The baseline and then each method, in order.

    Raises:
      ValueError: a method that does not apply to this model (check_methods); nothing is written then.
    """
    check_methods(methods, self.config.model.name)
    os.makedirs(self.out, exist_ok=True)
    rows = [self.baseline()]
    for name in methods:
      kind = next(k for k, p in _PATTERNS.items() if re.fullmatch(p, name))
      self.log(f'[{name}]')
      result = getattr(self, kind)(name)
      rows.extend(result if isinstance(result, list) else [result])
    self.log(f'Timing the {len(rows)} models, interleaved ...')
    self.time_all()
    return rows


def summary(rows: list[Row], *, lm: bool, command: str, machine: dict, versions: dict) -> dict:
  """summary.json: {'baseline': {...}, 'methods': {METHOD: {...}}, ...} with the issue's keys."""
  metric = 'eval_loss' if lm else 'test_accuracy'

  def entry(r: Row) -> dict:
    return {metric: r.metric, f'{metric}_std': r.metric_std, 'bytes_on_disk': r.bytes_on_disk, 'params': r.params,
            'flops_per_example': r.flops_per_example, 'batch1_p50_ms': r.batch1_p50_ms,
            'examples_per_s': r.examples_per_s, 'joules_per_1000_predictions': r.joules_per_1000,
            'energy_source': r.energy_source, 'storage_format': r.storage_format, 'codec': r.codec,
            'description': r.description,
            'workdir': r.workdir, **{k: v for k, v in r.extra.items() if k != 'energy_assumptions'}}

  base = rows[0]
  return {'baseline': entry(base), 'methods': {r.method: entry(r) for r in rows[1:]}, 'metric': metric,
          'energy_assumptions': base.extra.get('energy_assumptions'), 'command': command, 'machine': machine,
          'versions': versions}


def table(rows: list[Row], *, lm: bool) -> str:
  """The markdown table: method, metric (delta vs baseline), params, bytes (% of float32), latency, throughput,
  FLOPs, energy per 1,000 predictions."""
  base = rows[0]
  metric = 'eval loss (nats/token)' if lm else 'test accuracy'
  size = 'bytes on disk, xz (% of f32 xz)' if base.codec == 'xz' else 'bytes on disk (% of f32)'
  lines = [f'| method | {metric} (Δ vs baseline) | parameters | {size} | batch-1 p50 | '
           f'examples/s | FLOPs/example | energy / 1,000 predictions |',
           '|---|---:|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    if lm:
      value = f'{r.metric:.4f}' + (f' ± {r.metric_std:.4f}' if r.metric_std is not None else '')
      delta = f'{r.metric - base.metric:+.4f}'
    else:
      value = f'{100 * r.metric:.1f}%' + (f' ± {100 * r.metric_std:.1f}' if r.metric_std is not None else '')
      delta = f'{100 * (r.metric - base.metric):+.1f}'
    lines.append(
        f'| {r.method} | {value} ({delta if r is not base else "—"}) | {r.params:,} | {r.bytes_on_disk:,} '
        f'({100 * r.bytes_on_disk / base.bytes_on_disk:.0f}%) | {r.batch1_p50_ms:.3f} ms | {r.examples_per_s:,.0f} | '
        f'{run_card.format_si(r.flops_per_example)} | {r.joules_per_1000:.3g} J ({r.energy_source}) |')
  return '\n'.join(lines)


def plot(rows: list[Row], path: str, *, lm: bool) -> None:
  """Metric vs bytes on disk and vs batch-1 latency, one labelled point per method."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  scale = 1 if lm else 100
  for ax, attr, label in ((axes[0], 'bytes_on_disk', 'bytes on disk (log)'),
                          (axes[1], 'batch1_p50_ms', 'batch-1 latency p50, ms')):
    for r in rows:
      x, y = getattr(r, attr), scale * r.metric
      ax.scatter([x], [y], color='black' if r is rows[0] else 'C0', zorder=3)
      if r.metric_std is not None:
        ax.errorbar([x], [y], yerr=[scale * r.metric_std], color='C0', capsize=3)
      ax.annotate(r.method, (x, y), textcoords='offset points', xytext=(4, 4), fontsize=8)
    if attr == 'bytes_on_disk':
      ax.set_xscale('log')
    ax.set_xlabel(label)
    ax.set_ylabel('eval loss (nats/token, lower is better)' if lm else 'test accuracy (%)')
    ax.grid(alpha=0.3)
  fig.suptitle('What each compression method costs and saves (measured on this machine)')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_outputs(out: str, rows: list[Row], *, source: str, lm: bool, command: str) -> str:
  """Writes OUT/table.md, OUT/summary.json and OUT/compression.png; returns the table text."""
  machine, versions = run_card.environment(), run_card.versions()
  text = '\n'.join([
      f'# Compression of {source}', '', table(rows, lm=lm), '',
      '![compression.png](compression.png)', '', '## Methods', '',
      *[f'- **{r.method}**: {r.description}.' for r in rows], '',
      f'Energy: {rows[0].extra.get("energy_assumptions")}', '',
      'FLOPs/example are the analytic dense count (research/cost/analytic.py); pruned weights are stored sparse but '
      'run as dense kernels here, so pruning saves bytes, not FLOPs or time. int8 weights are decoded to float32 '
      'when loaded: storage shrinks, latency does not.', '',
      *(['Every model file, the float32 baseline included, is LZMA-compressed (model.safetensors.xz, `--xz`): '
         'bytes on disk compare compressed files with compressed files.', ''] if rows[0].codec == 'xz' else []),
      f'Command: `{command}`', '', f'Machine: {json.dumps(machine)}', '', f'Versions: {json.dumps(versions)}', ''])
  with open(os.path.join(out, 'table.md'), 'w') as f:
    f.write(text)
  with open(os.path.join(out, 'summary.json'), 'w') as f:
    json.dump(summary(rows, lm=lm, command=command, machine=machine, versions=versions), f, indent=2)
  plot(rows, os.path.join(out, 'compression.png'), lm=lm)
  return text
