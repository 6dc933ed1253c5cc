"""Side-by-side speed of a JAX train step and its PyTorch twin on the same machine, in one process.

For each case (a config preset) the JAX side is exactly what the training loop runs: `loop.create_model_and_state`
and `loop.make_jit_train_step` (the preset's optimizer with its clipping, the finiteness guard and the step's
metrics), on one fixed device-resident batch so that the input pipeline is not timed (the run card's data wait
covers it). The PyTorch side (research/torch_models.py) has the same shapes, parameter count, init scheme, optimizer
and dtype, written as PyTorch users write it (eager, torch's defaults; the preset's gradient clipping and weight
decay included). Timings interleave: block r of JAX steps, then block r of PyTorch steps, so that noise from other
processes on a shared host hits both alike; the report gives the min (the best estimate of a step's own cost) and
the median of the per-step times, their ratio, and MFU against the measured peak (research/cost/peak.py).

Batch-1 inference: one example per call through the jitted forward pass (result fetched to the host) and through
the PyTorch model in eval mode under torch.inference_mode(), also interleaved.
"""

import collections
import dataclasses
import glob
import platform
import re
import statistics
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import psutil

from research import cost, data, models, sharding
from research.training import loop


@dataclasses.dataclass(frozen=True)
class Case:
  """One benchmarked model: a name for the table, its config and its data's shapes."""
  name: str
  config: ml_collections.ConfigDict
  input_shape: tuple[int, ...]  # One example: (40,), (28, 28, 1), or (context,) token ids.
  num_classes: int  # Logits (the vocabulary of a language model).

  @property
  def language_model(self) -> bool:
    return models.is_language_model(self.config.model.name)


@dataclasses.dataclass
class Timings:
  """Per-step (or per-call) milliseconds of each timed block, per framework."""
  jax_ms: list[float] = dataclasses.field(default_factory=list)
  torch_ms: list[float] = dataclasses.field(default_factory=list)


def synthetic_batch(case: Case, batch_size: int, *, seed: int = 0) -> dict[str, np.ndarray]:
  """A batch of the case's shapes: standard-normal inputs and uniform labels, or uniform token ids (inputs and
  next-token labels) for a language model. Speed does not depend on the values."""
  rng = np.random.default_rng(seed)
  if case.language_model:
    tokens = rng.integers(0, case.num_classes, (batch_size, case.input_shape[0] + 1), dtype=np.int32)
    return {'inputs': tokens[:, :-1], 'labels': tokens[:, 1:]}
  return {'inputs': rng.standard_normal((batch_size, *case.input_shape), dtype=np.float32),
          'labels': rng.integers(0, case.num_classes, (batch_size,), dtype=np.int32)}


def jax_runner(case: Case) -> tuple[Callable[[int], None], Callable[[np.ndarray], Any], int]:
  """The JAX train step and forward pass of `case`, as the training loop builds them.

  Returns:
    (train(n): runs n steps and waits for them, forward(x): logits of x [1, ...] fetched to the host,
     parameter count).
  """
  config = case.config
  mesh = sharding.make_mesh(config.mesh, batch_sizes={'batch_size': config.batch_size})
  built = loop.create_model_and_state(config, num_classes=case.num_classes, input_shape=case.input_shape, mesh=mesh)
  step = loop.make_jit_train_step(config, built.model, built.tx, built.schedule, mesh, built.state)
  batch = jax.device_put(synthetic_batch(case, config.batch_size), sharding.batch_sharding(mesh))
  holder = {'state': built.state}

  def train(n: int) -> None:
    state = holder['state']
    for _ in range(n):
      state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    holder['state'] = state

  apply = jax.jit(lambda params, x: built.model.apply({'params': params}, x, train=False))

  def forward(x: np.ndarray):
    return jax.device_get(apply(holder['state'].params, x))

  return train, forward, cost.param_stats(built.state.params)['count']


def torch_runner(case: Case) -> tuple[Callable[[int], None], Callable[[np.ndarray], Any], int]:
  """The PyTorch twin's train step (forward, cross-entropy, backward, the preset's clipping, optimizer step) and
  its eval-mode forward pass; same contract as `jax_runner`."""
  import torch  # pylint: disable=g-import-not-at-top  (the optional [reference] extra)
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  from research import torch_models  # pylint: disable=g-import-not-at-top

  config = case.config
  torch.manual_seed(config.seed)
  # Where JAX runs on a GPU, the twin runs on one too (and its timings wait for the GPU, as JAX's do).
  device = torch.device('cuda' if jax.default_backend() == 'gpu' and torch.cuda.is_available() else 'cpu')
  sync = torch.cuda.synchronize if device.type == 'cuda' else lambda: None
  # compute_dtype bfloat16: JAX casts params and inputs for the forward and backward, keeping f32 params and
  # optimizer state; autocast is PyTorch's way to the same mixed precision.
  autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.compute_dtype == 'bfloat16')
  model = torch_models.build(config.model, input_shape=case.input_shape, num_classes=case.num_classes).to(device)
  opt = torch_optimizer(config.optimizer, model.parameters())
  batch = synthetic_batch(case, config.batch_size)
  to_tensor = lambda x: (torch.from_numpy(x).long() if case.language_model else torch.from_numpy(x)).to(device)
  inputs, labels = to_tensor(batch['inputs']), torch.from_numpy(batch['labels']).long().to(device)
  clip = config.optimizer.grad_clip_norm

  def one_step():
    with autocast:
      logits = model(inputs)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip > 0:
      torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()

  def train(n: int) -> None:
    model.train()
    for _ in range(n):
      one_step()
    sync()

  def forward(x: np.ndarray):
    model.eval()
    with torch.inference_mode(), autocast:
      return model(to_tensor(x)).float().cpu().numpy()

  return train, forward, sum(p.numel() for p in model.parameters())


def torch_optimizer(opt_config, params):
  """torch.optim's twin of research.training.optim's optimizer at the preset's settings (learning rate constant:
  a schedule costs nothing per step in either framework)."""
  import torch  # pylint: disable=g-import-not-at-top

  lr, wd = opt_config.learning_rate, opt_config.weight_decay
  name = opt_config.name
  if name == 'adam':
    return torch.optim.Adam(params, lr=lr, betas=(opt_config.b1, opt_config.b2), eps=opt_config.eps, weight_decay=wd)
  if name == 'adamw':
    return torch.optim.AdamW(params, lr=lr, betas=(opt_config.b1, opt_config.b2), eps=opt_config.eps, weight_decay=wd)
  if name == 'momentum':
    return torch.optim.SGD(params, lr=lr, momentum=opt_config.momentum, weight_decay=wd)
  if name == 'sgd':
    return torch.optim.SGD(params, lr=lr, weight_decay=wd)
  raise ValueError(f'optimizer.name ({name!r}) has no PyTorch twin here; supported: adam, adamw, momentum, sgd')


def _time_block(fn: Callable[[int], None], n: int) -> float:
  start = time.perf_counter()
  fn(n)
  return (time.perf_counter() - start) / n * 1e3


def _time_calls(forward: Callable, inputs: np.ndarray) -> list[float]:
  times = []
  for i in range(len(inputs)):
    start = time.perf_counter()
    forward(inputs[i:i + 1])
    times.append((time.perf_counter() - start) * 1e3)
  return times


def interleaved(jax_fn: Callable, torch_fn: Callable | None, *, repeats: int, timer: Callable) -> Timings:
  """`repeats` rounds of timer(jax_fn) then timer(torch_fn); each call's result is appended to that side's list
  (`timer` returns one figure or a list of them)."""
  timings = Timings()
  for _ in range(repeats):
    for fn, out in ((jax_fn, timings.jax_ms), (torch_fn, timings.torch_ms)):
      if fn is not None:
        value = timer(fn)
        out.extend(value if isinstance(value, list) else [value])
  return timings


def run_case(case: Case, *, steps: int, repeats: int, latency_calls: int, peak: float, with_torch: bool,
             block_s: float = 0.5, progress: Callable[[str], None] = print) -> dict:
  """Times one case and returns its row of benchmarks.json.

  Args:
    case: the model and its preset.
    steps: train steps per timed block; 0: as many as take about `block_s` seconds in JAX (at least 1).
    repeats: timed blocks per framework (and rounds of batch-1 calls).
    latency_calls: batch-1 calls per round.
    peak: peak FLOP/s of one device, for MFU.
    with_torch: time the PyTorch twin too (else its fields are None).
    progress: receives one line per phase.

  Returns:
    {"params", "batch_size", "train_flops", "jax_step_ms", "jax_step_ms_median", "torch_step_ms", ...,
     "train_ratio" (JAX throughput / PyTorch throughput, from the min step times), "train_ratio_median",
     "jax_mfu", "torch_mfu", "jax_batch1_ms", "torch_batch1_ms" (medians), "batch1_ratio"}.
  """
  progress(f'{case.name}: building and compiling')
  jax_train, jax_forward, params = jax_runner(case)
  torch_train = torch_forward = None
  if with_torch:
    torch_train, torch_forward, torch_params = torch_runner(case)
    if torch_params != params:
      raise RuntimeError(f'{case.name}: the PyTorch twin has {torch_params:,} parameters, the JAX model {params:,}')
  for fn in (jax_train, torch_train):  # Warm-up: compilation, first touch of buffers, allocator pools.
    if fn is not None:
      fn(2)
  if not steps:
    steps = max(1, min(200, round(block_s / (_time_block(jax_train, 1) / 1e3))))
  progress(f'{case.name}: {repeats} x {steps} train steps per framework, interleaved')
  train = interleaved(jax_train, torch_train, repeats=repeats, timer=lambda fn: _time_block(fn, steps))

  example = synthetic_batch(case, latency_calls, seed=1)['inputs']
  for fn in (jax_forward, torch_forward):
    if fn is not None:
      fn(example[:1])
  progress(f'{case.name}: {repeats} x {latency_calls} batch-1 forward passes per framework, interleaved')
  batch1 = interleaved(jax_forward, torch_forward, repeats=repeats, timer=lambda fn: _time_calls(fn, example))

  config = case.config
  flops = cost.analytic_train_step_flops(config.model, input_shape=case.input_shape, num_classes=case.num_classes,
                                         batch_size=config.batch_size)
  jax_min, jax_med = min(train.jax_ms), statistics.median(train.jax_ms)
  row = {'params': params, 'batch_size': config.batch_size, 'train_flops': flops, 'steps_per_block': steps,
         'repeats': repeats,
         'jax_step_ms': jax_min, 'jax_step_ms_median': jax_med,
         'jax_mfu': cost.mfu(flops, jax_min / 1e3, peak),
         'jax_batch1_ms': statistics.median(batch1.jax_ms),
         'torch_step_ms': None, 'torch_step_ms_median': None, 'torch_mfu': None, 'torch_batch1_ms': None,
         'train_ratio': None, 'train_ratio_median': None, 'batch1_ratio': None}
  if with_torch:
    torch_min, torch_med = min(train.torch_ms), statistics.median(train.torch_ms)
    row.update(torch_step_ms=torch_min, torch_step_ms_median=torch_med,
               torch_mfu=cost.mfu(flops, torch_min / 1e3, peak),
               torch_batch1_ms=statistics.median(batch1.torch_ms),
               train_ratio=torch_min / jax_min, train_ratio_median=torch_med / jax_med)
    row['batch1_ratio'] = row['torch_batch1_ms'] / row['jax_batch1_ms']
    if row['train_ratio'] < TARGETS['train_ratio_lm' if case.language_model else 'train_ratio'] and \
        jax.default_backend() == 'cpu':
      progress(f'{case.name}: short of its throughput target; profiling the JAX step')
      row['profile'] = op_profile(jax_train, steps=steps)
  return row


# Events that wrap or mark ops rather than being ops (Python frames start with '$').
_PROFILE_WRAPPERS = ('ThunkExecutor', 'SlinkyThreadPool', 'ThreadpoolListener', 'PjitFunction', 'CommonPjRt', 'end: ',
                     '$')


def op_profile(train: Callable[[int], None], *, steps: int, top: int = 8) -> dict:
  """Where a train step's time goes: a jax.profiler trace of `steps` steps, summed per XLA op.

  Each op counts once, with the duration the thread that ran it saw: an op that YNNPACK splits over all cores
  counts its wall time once, while independent ops running side by side on two threads both count, so the total
  can exceed the wall time. The trace is read with jax.profiler.ProfileData (no TensorBoard needed).

  Args:
    train: a runner's train(n) (already compiled and warmed up).
    steps: steps traced.
    top: rows kept per table.

  Returns:
    {"steps", "wall_ms" (per step, the traced steps), "ops_ms" (per step, all leaf ops summed), "kinds": [[kind,
     ms per step, ops per step], ...] (kind: an op name without its number, e.g. ynn_fusion for YNNPACK's matmul
     fusions), "ops": [[op, ms per step], ...]}, the largest first.
  """
  kinds, counts, ops = collections.Counter(), collections.Counter(), collections.Counter()
  with tempfile.TemporaryDirectory() as trace_dir:
    start = time.perf_counter()
    with jax.profiler.trace(trace_dir):
      train(steps)
    wall = time.perf_counter() - start
    path = glob.glob(f'{trace_dir}/**/*.xplane.pb', recursive=True)[-1]
    for plane in jax.profiler.ProfileData.from_file(path).planes:
      for line in plane.lines:
        if not line.name.startswith('tf_XLA'):  # XLA:CPU's threads: its pool, and its client's (small programs).
          continue
        for event in line.events:
          if event.name.startswith(_PROFILE_WRAPPERS):
            continue
          kind = re.sub(r'[._]\d+$', '', event.name)
          kinds[kind] += event.duration_ns
          counts[kind] += 1
          ops[event.name] += event.duration_ns
  per_step = lambda ns: ns / 1e6 / steps
  return {'steps': steps, 'wall_ms': wall / steps * 1e3, 'ops_ms': per_step(sum(kinds.values())),
          'kinds': [[k, per_step(ns), counts[k] / steps] for k, ns in kinds.most_common(top)],
          'ops': [[k, per_step(ns)] for k, ns in ops.most_common(top)]}


def torch_matmul_flops_per_s(size: int = 2048, *, repeats: int = 5, dtype: str = 'float32') -> float:
  """Best FLOP/s of a `size`-square matmul in PyTorch on the CPU (its BLAS), over `repeats` after a warm-up."""
  import torch  # pylint: disable=g-import-not-at-top

  a, b = (torch.randn(size, size).to(getattr(torch, dtype)) for _ in range(2))
  a @ b
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    a @ b
    best = min(best, time.perf_counter() - start)
  return 2.0 * size ** 3 / best


def machine_peak(*, with_torch: bool, dtype: str = 'float32', size: int = 2048) -> tuple[float, str]:
  """The peak FLOP/s that both frameworks' MFU is measured against, and its source.

  On an accelerator, the datasheet for `dtype` (cost.peak_flops_per_s). On a CPU, measured now (not the run card's
  cached figure, which a busy moment can leave low): the best of XLA's and, with torch, PyTorch's `size`-square
  matmul in `dtype`, so that neither framework's MFU exceeds 100% merely because the other's BLAS is faster.
  """
  if jax.devices()[0].platform != 'cpu':
    return cost.peak_flops_per_s(dtype)
  xla = cost.peak.measure_matmul_flops_per_s(size, repeats=5, dtype=jnp.dtype(dtype))
  if not with_torch:
    return xla, f'measured now: {size}² {dtype} matmul in XLA, best of 5'
  torch_peak = torch_matmul_flops_per_s(size, dtype=dtype)
  return max(xla, torch_peak), (f'measured now: the faster of XLA ({xla / 1e9:.0f} GFLOP/s) and PyTorch '
                                f'({torch_peak / 1e9:.0f} GFLOP/s) on a {size}² {dtype} matmul, best of 5')


def data_wait(case: Case, *, steps: int, workdir: str) -> dict:
  """Trains `case` for `steps` steps through the real training loop and input pipeline (grain), and returns the
  run card's data wait as a share of the training time.

  The loop's own accounting measures the wait (accounting.Timers.add_fetch): time spent fetching a batch while
  no step was in flight, i.e. with the devices idle on the pipeline. Evaluation is limited to a small fixed subset and checkpoints to the end, which the share does
  not count anyway. A dataset that is not prepared on this machine (MNIST offline) is replaced by
  tfds.testing.mock_data of the same shapes (the same pipeline code runs on it), and the row says so.

  Returns:
    {"data_wait_share", "data_wait_s", "train_s", "steps", "data"}: data is 'real' or 'mock (REASON)'.
  """

  config = ml_collections.ConfigDict(case.config.to_dict())
  config.steps, config.eval_every, config.checkpoint_every, config.log_every = steps, steps, steps, steps
  config.eval_examples, config.eval_batch_size, config.progress = 100, 100, False
  source = 'real'
  try:
    card = loop.train_and_evaluate(config, workdir)
  except data.DataUnavailableError as e:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    del e  # The usual case offline; the row says so.
    source = f'mock ({config.dataset.name} is not prepared here)'
    with tfds.testing.mock_data(num_examples=max(2000, 2 * config.batch_size),
                                policy=tfds.testing.MockPolicy.USE_CODE):
      card = loop.train_and_evaluate(config, workdir + '_mock')
  wait, train = card['time']['data_wait_s'], card['time']['train_s']
  return {'data_wait_share': wait / train, 'data_wait_s': wait, 'train_s': train, 'steps': steps, 'data': source}


def machine() -> dict:
  """What the figures were measured on."""
  device = jax.devices()[0]
  info = {'cpu': cost.peak._cpu_model(), 'cores': cost.peak._usable_cores(),  # pylint: disable=protected-access
          'memory_gib': round(psutil.virtual_memory().total / 2**30, 1), 'platform': platform.platform(),
          'jax_backend': device.platform, 'jax_device': device.device_kind, 'jax': jax.__version__}
  try:
    import torch  # pylint: disable=g-import-not-at-top
    info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
  except ImportError:
    info['torch'] = None
  return info


TARGETS = {'train_ratio': 1.0, 'train_ratio_lm': 1.2, 'lm_mfu': 0.5, 'data_wait': 0.05}


def table(report: dict) -> str:
  """benchmarks.md's table: one row per model, step times min / median, ratios and MFU, batch-1 latency."""
  lines = ['| model | params | batch | JAX step ms (min / med) | PyTorch step ms (min / med) | JAX/PyTorch '
           'throughput | JAX MFU | PyTorch MFU | JAX batch-1 ms | PyTorch batch-1 ms | data wait |',
           '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
  fmt = lambda v, f: '—' if v is None else format(v, f)
  for name, r in report['models'].items():
    lines.append(
        f"| {name} | {r['params']:,} | {r['batch_size']} | {r['jax_step_ms']:.2f} / {r['jax_step_ms_median']:.2f} | "
        f"{fmt(r['torch_step_ms'], '.2f')} / {fmt(r['torch_step_ms_median'], '.2f')} | "
        f"{fmt(r['train_ratio'], '.2f')}x | {r['jax_mfu']:.1%} | {fmt(r['torch_mfu'], '.1%')} | "
        f"{r['jax_batch1_ms']:.3f} | {fmt(r['torch_batch1_ms'], '.3f')} | {_wait_cell(r.get('data_wait'))} |")
  return '\n'.join(lines)


def _wait_cell(wait: dict | None) -> str:
  if wait is None:
    return '—'
  return f"{wait['data_wait_share']:.1%}" + ('' if wait['data'] == 'real' else ' (mock data)')


def profile_tables(prof: dict, *, ops: bool = False) -> list[str]:
  """Markdown lines of an op_profile: time per op kind, and with `ops` the single largest ops."""
  out = ['| op kind | ms per step | ops per step |', '|---|---:|---:|',
         *[f'| {kind} | {ms:.2f} | {n:.1f} |' for kind, ms, n in prof['kinds']]]
  if ops:
    out += ['', '| op | ms per step |', '|---|---:|', *[f'| {name} | {ms:.2f} |' for name, ms in prof['ops']]]
  return out


def profiles(report: dict) -> list[str]:
  """Markdown: for each model short of its throughput target, where its JAX step's time goes (op_profile)."""
  out = []
  for name, r in report['models'].items():
    prof = r.get('profile')
    if not prof:
      continue
    out += [f"**{name}** ({prof['wall_ms']:.2f} ms per step while traced; leaf ops sum to {prof['ops_ms']:.2f} ms "
            f"per step over {prof['steps']} steps):", '', *profile_tables(prof), '']
  if out:
    out = ['## Where the JAX step\'s time goes (models short of their throughput target)', '',
           'A jax.profiler trace of the train step summed per XLA op (`research.benchmark.op_profile`; '
           '`python benchmarks/profile_step.py --model=NAME` for one model, with the single largest ops). ynn_fusion: '
           'a matmul run by YNNPACK with its fused elementwise work; transpose_copy, concatenate and the other '
           'fusions: memory-bound work around them. Each op counts once with its thread\'s duration, so the sum '
           'exceeds the wall time when independent ops run side by side. docs/performance.md interprets these.',
           '', *out]
  return out


def verdicts(report: dict) -> list[str]:
  """One line per target of the performance issue: met or not, with the measured figure."""
  out = []
  for name, r in report['models'].items():
    wait = r.get('data_wait')
    if wait is not None:
      out.append(f"{'met' if wait['data_wait_share'] <= TARGETS['data_wait'] else 'NOT met'}: {name} data wait "
                 f"{wait['data_wait_share']:.1%} of train time over {wait['steps']} steps of real training "
                 f"({wait['data']} data; target <= {TARGETS['data_wait']:.0%})")
    if r['train_ratio'] is None:
      continue
    lm = name.startswith('lm_')
    target = TARGETS['train_ratio_lm' if lm else 'train_ratio']
    out.append(f"{'met' if r['train_ratio'] >= target else 'NOT met'}: {name} train throughput "
               f"{r['train_ratio']:.2f}x PyTorch's (target >= {target}x)")
    out.append(f"{'met' if r['jax_batch1_ms'] <= r['torch_batch1_ms'] else 'NOT met'}: {name} batch-1 latency "
               f"{r['jax_batch1_ms']:.3f} ms vs PyTorch {r['torch_batch1_ms']:.3f} ms")
    if lm:
      out.append(f"{'met' if r['jax_mfu'] >= TARGETS['lm_mfu'] else 'NOT met'}: {name} MFU {r['jax_mfu']:.1%} "
                 f"(target >= {TARGETS['lm_mfu']:.0%})")
  return out


def markdown(report: dict) -> str:
  """benchmarks.md: the machine, the command, the table and the verdicts."""
  m = report['machine']
  timed = any(r['torch_step_ms'] is not None for r in report['models'].values())
  torch_line = (f"PyTorch {m['torch']} ({m.get('torch_threads')} intra-op threads, eager)" if timed else
                'PyTorch not timed (JAX figures only)')
  return '\n'.join([
      '# JAX vs PyTorch: train step and batch-1 inference, side by side', '',
      f"Machine: {m['cpu']}, {m['cores']} usable cores, {m['memory_gib']} GiB; JAX {m['jax']} on "
      f"{m['jax_backend']} ({m['jax_device']}); {torch_line}; compute dtype {report.get('compute_dtype', 'float32')}. "
      f"Peak for MFU: {report['peak_flops_per_s'] / 1e9:.0f} "
      f"GFLOP/s ({report['peak_source']}).", '',
      f"Command: `{report['command']}`", '',
      'Step times are per train step (forward, loss, backward, optimizer update) on one fixed batch, min / median '
      'over interleaved blocks; throughput ratio = PyTorch min step time / JAX min step time (> 1: JAX faster); '
      'MFU = analytic train-step FLOPs / min step time / peak; batch-1 = median per-call latency of the forward '
      'pass on one example, result on the host.', '',
      table(report), '',
      'Targets (the performance issue): JAX/PyTorch train throughput >= 1.0 for every family and >= 1.2 for the '
      'Transformer LM; LM MFU >= 50%; batch-1 latency <= PyTorch\'s; data wait <= 5% of train time (real training '
      'through the loop and its input pipeline: the run card\'s figure).', '',
      *[f'- {line}' for line in verdicts(report)], '', *profiles(report)])
