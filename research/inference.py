"""Using a trained run: restore a workdir's checkpoint, evaluate it on a split, predict classes with their latency.

    run = inference.load_run('runs/cnn')  # The latest checkpoint; step=N for another.
    inference.evaluate(run, 'test')  # {'loss': 0.21, 'accuracy': 0.94, 'num_examples': 1000}
    preds = inference.predict(run, inputs, batch_size=1000)  # inputs [N, 40] (or one example [40])
    preds.labels, preds.probabilities, preds.timing.p50_ms

The model, optimizer and restore template are built by the training loop's own `create_model_and_state`, and
evaluation is the loop's `evaluate` with its eval step, so on the same devices the numbers equal the run card's.
"""

import dataclasses
import json
import os
import time
from typing import Any

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from research import checkpointing, cost, data, sharding
from research import workdir as workdir_lib
from research.config import ConfigError
from research.training import loop

SPLITS = ('test', 'train')
# A compressed model's params in a workdir without checkpoints (research/compression/storage.py, experiments.compress):
# the plain file, or the same LZMA-compressed (experiments.compress --xz).
COMPRESSED_FILE = 'model.safetensors'
COMPRESSED_FILES = (COMPRESSED_FILE, COMPRESSED_FILE + '.xz')


def compressed_file(workdir: str) -> str | None:
  """The path of the compressed model's params file in `workdir` (one of COMPRESSED_FILES), or None."""
  found = [os.path.join(workdir, name) for name in COMPRESSED_FILES if os.path.isfile(os.path.join(workdir, name))]
  if len(found) > 1:
    raise RunNotFoundError(f'{workdir} holds both {" and ".join(COMPRESSED_FILES)}: remove the one that is not the '
                           'model')
  return found[0] if found else None


class RunNotFoundError(ValueError):
  """A workdir that is missing, or lacks the config.json or checkpoint a trained run has."""


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained model restored from a workdir.

  Attributes:
    workdir: the run directory.
    config: the run's config as written to config.json (tuples come back as lists).
    model: the flax module; model.apply({'params': params}, x, train=False) -> logits [batch, num_classes].
    params: the restored parameters, replicated over `mesh`.
    step: the checkpoint's step.
    num_classes: number of output classes.
    input_shape: one example's shape, e.g. (40,).
    mesh: the mesh the params live on (config.mesh, or one device when that does not fit these devices).
  """
  workdir: str
  config: ml_collections.ConfigDict
  model: nn.Module
  params: Any
  step: int
  num_classes: int
  input_shape: tuple[int, ...]
  mesh: Mesh


@dataclasses.dataclass(frozen=True)
class Timing:
  """Prediction speed, measured after a warm-up (compile) call; each call includes the host<->device transfers.

  Attributes:
    p50_ms: median latency of one example predicted alone (batch of 1), in milliseconds.
    p99_ms: 99th percentile of the same.
    timed_examples: number of batch-1 calls timed.
    batch_size: the batch size of the throughput measurement.
    throughput_per_s: examples per second at `batch_size` (batch_size / median time of a full batch).
    device: the device kind the predictions ran on.
  """
  p50_ms: float
  p99_ms: float
  timed_examples: int
  batch_size: int
  throughput_per_s: float
  device: str


@dataclasses.dataclass(frozen=True)
class Predictions:
  """Predictions for N inputs.

  Attributes:
    logits: float32 [N, num_classes].
    probabilities: float32 [N, num_classes], softmax of the logits.
    labels: int32 [N], argmax of the logits.
    timing: latency and throughput, or None when not measured.
  """
  logits: np.ndarray
  probabilities: np.ndarray
  labels: np.ndarray
  timing: Timing | None


def _read_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise RunNotFoundError(f'{path} does not exist: {workdir} is not a training run directory '
                           '(train first: python -m experiments.train --config=... --workdir=...)')
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(workdir_lib.with_defaults(json.load(f)))
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} is not valid JSON ({e}); expected the config.json written by experiments.train') from e


def _checkpoint_steps(directory: str) -> list[int]:
  """Steps of the committed checkpoints (Orbax names a step's directory by its number only once complete)."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def _make_mesh(config: ml_collections.ConfigDict) -> Mesh:
  """The run's mesh (same device count, same numbers as training), else one device if it does not fit here."""
  try:
    return sharding.make_mesh(config.mesh, batch_sizes={'eval_batch_size': config.eval_batch_size})
  except ConfigError as e:
    # Only the eval loss's last bits can differ (sums in another order); accuracy counts are exact.
    logging.info('The run\'s mesh does not fit this machine (%s); using one device.', e)
    return sharding.make_mesh(ml_collections.ConfigDict({'data': 1, 'fsdp': 1, 'tensor': 1}), batch_sizes={},
                              devices=jax.devices()[:1])


def load_run(workdir: str, *, step: int | None = None) -> Run:
  """Restores the model of a training run from its checkpoint.

  Args:
    workdir: a directory written by experiments.train (config.json, checkpoints/), or by experiments.compress
      (config.json, model.safetensors[.xz]: int8, sparse or smaller dense params, decoded to float32 here).
    step: the checkpoint to restore; None: the latest.

  Returns:
    The Run, with params restored onto the run's mesh.

  Raises:
    RunNotFoundError: no such workdir, no config.json in it, no checkpoint, or no checkpoint at `step`.
    ValueError: a config.json that is not JSON or names an unknown dataset.
  """
  if not os.path.isdir(workdir):
    raise RunNotFoundError(f'workdir {workdir} does not exist '
                           '(train first: python -m experiments.train --config=... --workdir=...)')
  config = _read_config(workdir)
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  available = _checkpoint_steps(ckpt_dir)
  compressed = None if available else compressed_file(workdir)
  if not available and compressed is None:
    raise RunNotFoundError(f'no checkpoint in {ckpt_dir}: the run saved none yet (rerun its experiments.train '
                           'command to finish it; checkpoints are written every config.checkpoint_every steps)')
  if compressed is None and step is None:
    step = available[-1]
  elif compressed is None and step not in available:
    raise RunNotFoundError(f'no checkpoint at step {step} in {ckpt_dir}; available steps: {available}')
  if config.dataset.name not in data.DATASETS:
    raise ValueError(f'dataset.name {config.dataset.name!r} in {workdir}/config.json must be one of '
                     f'{sorted(data.DATASETS)}')
  spec = data.DATASETS[config.dataset.name]

  mesh = _make_mesh(config)
  # The template is the abstract state training starts from: the checkpoint's exact tree, on this mesh.
  input_shape = data.example_shape(config.dataset)
  model, _, _, template = loop.create_model_and_state(
      config, num_classes=spec.num_classes, input_shape=input_shape, mesh=mesh, abstract=True)
  if compressed is not None:
    model, params, step = _load_compressed(workdir, config, compressed, model, template.params, mesh)
    return Run(workdir=workdir, config=config, model=model, params=params, step=step,
               num_classes=spec.num_classes, input_shape=input_shape, mesh=mesh)
  ckpt = checkpointing.Checkpointer(ckpt_dir, keep=config.keep_checkpoints, async_save=False)
  try:
    state = ckpt.restore(template, step=step).state
  finally:
    ckpt.close()
  return Run(workdir=workdir, config=config, model=model, params=state.params, step=int(state.step),
             num_classes=spec.num_classes, input_shape=input_shape, mesh=mesh)


def place_params(loaded, template):
  """Host params (nested dicts of arrays) placed like `template`: the abstract state's params, whose shapes must
  match and whose dtypes and shardings they take.

  Raises:
    ValueError: other names or shapes than the template's.
  """
  want = jax.tree.map(lambda x: tuple(x.shape), template)
  got = jax.tree.map(lambda x: tuple(np.shape(x)), loaded)
  if jax.tree.structure(want) != jax.tree.structure(got) or jax.tree.leaves(want) != jax.tree.leaves(got):
    raise ValueError('params with other names or shapes than the model\'s')
  return jax.tree.map(lambda x, t: jax.device_put(np.asarray(x, t.dtype), t.sharding), loaded, template)


def _load_compressed(workdir: str, config: ml_collections.ConfigDict, path: str, model: nn.Module, template,
                     mesh: Mesh) -> tuple[Any, Any, int]:
  """The model, params and step of a directory written by experiments.compress (config.json + one compact params
  file): params decoded to float32, or kept int8 for integer execution (compression.int8_matmul)."""
  from research.compression import storage  # pylint: disable=g-import-not-at-top
  params, fmt, metadata = storage.load(path)
  try:
    params = place_params(params, template)  # Checks the file against config.json's model as well.
  except ValueError as e:
    raise RunNotFoundError(f'{path} does not hold params of the model in {workdir}/config.json ({e})') from e
  if config.compression.int8_matmul:
    from research.compression import int8_exec  # pylint: disable=g-import-not-at-top
    if fmt != 'int8' or config.model.name not in int8_exec.SUPPORTED:
      raise ValueError(f'{workdir}/config.json sets compression.int8_matmul, which needs an int8 model of one of '
                       f'{int8_exec.SUPPORTED}; this is a {fmt} {config.model.name!r} model')
    # Integer execution keeps the weights int8 ({'int8', 'scale'} per weight), replicated on the run's mesh.
    quantized, _, _ = storage.load(path, quantized=True)
    params = jax.device_put(quantized, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    model = int8_exec.Int8Model(model)
  return model, params, int(metadata.get('step', 0))


def evaluate(run: Run, split: str = 'test', *, data_dir: str | None = None) -> dict:
  """Mean loss and accuracy of the run's model over one full pass of `split`, as the training loop computes them.

  Args:
    run: from `load_run`.
    split: 'test' or 'train'.
    data_dir: overrides the run's dataset.data_dir (both empty: $TFDS_DATA_DIR or ~/tensorflow_datasets).

  Returns:
    {'loss': mean cross-entropy in nats, 'accuracy': in [0, 1], 'num_examples': examples in the split}.

  Raises:
    ValueError: an unknown split.
  """
  if split not in SPLITS:
    raise ValueError(f'split {split!r} must be one of {list(SPLITS)}')
  dataset = data.load_dataset(run.config.dataset, data_dir=data_dir)
  eval_step = loop.make_jit_eval_step(run.model, run.mesh, run.params, compute_dtype=run.config.compute_dtype,
                                      qat_bits=run.config.compression.qat_bits)
  metrics = loop.evaluate(eval_step, run.params, dataset, split, batch_size=run.config.eval_batch_size,
                          mesh=run.mesh)
  return {**metrics, 'num_examples': dataset.num_test if split == 'test' else dataset.num_train}


def prepare_inputs(run: Run, inputs: np.ndarray) -> np.ndarray:
  """Checks raw inputs against the run's dataset and preprocesses them as training did.

  Args:
    run: from `load_run`.
    inputs: [N, *input_shape] or one example [*input_shape], raw as the dataset stores them (float signals for
      MNIST-1D, 0-255 pixels for images); any integer, float or bool dtype.

  Returns:
    float32 [N, *input_shape], model-ready.

  Raises:
    ValueError: a non-numeric dtype, a wrong shape, no examples, or a NaN/inf value.
  """
  inputs = np.asarray(inputs)
  if inputs.dtype.kind not in 'biuf':  # bool, signed and unsigned int, float.
    raise ValueError(f'inputs have dtype {inputs.dtype}; expected an integer or float array (converted to float32)')
  shape = tuple(run.input_shape)
  if inputs.shape == shape:
    inputs = inputs[None]  # One example -> a batch of one.
  elif inputs.ndim != len(shape) + 1 or inputs.shape[1:] != shape:
    raise ValueError(f'inputs have shape {inputs.shape}; expected [N, {", ".join(map(str, shape))}] or one example '
                     f'{shape} ({run.config.dataset.name} inputs)')
  if not len(inputs):
    raise ValueError(f'inputs have shape {inputs.shape}: no examples')
  bad = np.flatnonzero(~np.isfinite(inputs.reshape(len(inputs), -1)).all(axis=1))
  if bad.size:
    raise ValueError(f'inputs contain NaN or inf in {bad.size} example(s), the first at index {bad[0]}')
  spec = data.DATASETS[run.config.dataset.name]
  return spec.preprocess(inputs, np.zeros(len(inputs), np.int32))['inputs']


def _make_forward(model: nn.Module):
  """forward(params, x [B, ...]) -> (logits [B, C], probabilities [B, C]), jit-compiled (once per batch shape)."""

  def forward(params, x):
    logits = model.apply({'params': params}, x, train=False).astype(jnp.float32)
    return logits, jax.nn.softmax(logits, axis=-1)

  return jax.jit(forward)


def _measure(forward, params, x: np.ndarray, *, batch_size: int, latency_examples: int, repeats: int,
             device: jax.Device) -> Timing:
  """Batch-1 latency over the first `latency_examples` of x, and throughput from `repeats` full batches."""
  latency = cost.batch1_latency_ms(forward, params, x, examples=latency_examples)
  batch = data.pad_rows(x[:batch_size], batch_size)  # Compiled already by the prediction pass.
  batch_times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.device_get(forward(params, batch))
    batch_times.append(time.perf_counter() - t0)
  return Timing(p50_ms=latency['p50_ms'], p99_ms=latency['p99_ms'], timed_examples=latency['timed_examples'],
                batch_size=batch_size, throughput_per_s=float(batch_size / np.median(batch_times)),
                device=device.device_kind)


def predict(run: Run, inputs: np.ndarray, *, batch_size: int, measure: bool = True,
            latency_examples: int = 100, repeats: int = 5) -> Predictions:
  """Predicts the class of every input on one device, in fixed-shape batches (the last one padded).

  Args:
    run: from `load_run`.
    inputs: [N, *input_shape] or one example [*input_shape], raw (see `prepare_inputs`).
    batch_size: examples per compiled call.
    measure: also time the model: batch-1 latency (p50/p99) and throughput at `batch_size`.
    latency_examples: batch-1 calls timed, on the first min(N, latency_examples) inputs.
    repeats: full batches timed for the throughput.

  Returns:
    Predictions with logits and probabilities [N, num_classes], labels [N], and the timing when `measure`.

  Raises:
    ValueError: bad inputs (see `prepare_inputs`) or a batch_size < 1.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size ({batch_size}) must be >= 1')
  x = prepare_inputs(run, inputs)
  # One device: batch-1 latency cannot be split over a mesh, and the throughput then means one accelerator's.
  device = run.mesh.devices.flat[0]
  params = jax.device_put(run.params, device)
  forward = _make_forward(run.model)
  logits = np.empty((len(x), run.num_classes), np.float32)
  probabilities = np.empty_like(logits)
  for start in range(0, len(x), batch_size):
    n = min(batch_size, len(x) - start)
    batch_logits, batch_probabilities = jax.device_get(forward(params, data.pad_rows(x[start:start + n], batch_size)))
    logits[start:start + n] = batch_logits[:n]
    probabilities[start:start + n] = batch_probabilities[:n]
  timing = None
  if measure:
    timing = _measure(forward, params, x, batch_size=batch_size, latency_examples=latency_examples, repeats=repeats,
                     device=device)
  return Predictions(logits=logits, probabilities=probabilities, labels=logits.argmax(axis=-1).astype(np.int32),
                     timing=timing)
