"""Compact on-disk formats for a model's params: one safetensors file per model, dense or sparse, float32 or int8.

A compressed model is only smaller if the bytes on disk are: a pruned float32 model in an ordinary checkpoint takes
as much space as the dense one, and an Orbax checkpoint is a directory whose per-array files and metadata dwarf a
small model. One flat safetensors file (a JSON header of a few hundred bytes, then the raw tensors) makes the file
size the payload, so the ratios between formats are the compression ratios. The formats:

  float32      every leaf as float32: the baseline the others are compared to.
  int8         weights as int8 + one float32 scale per output channel (research/compression/quantize.py).
  sparse       weights as a bitmask of the nonzeros (np.packbits over the flattened weight, 1 bit per entry) + the
               nonzero values in float32, in flattened (C) order.
  sparse_int8  bitmask + the nonzero entries' int8 values, quantized with the dense weight's per-channel scale.

"Weights" are the leaves with ndim >= 2 (kernels, embeddings); the other leaves (biases, norm scales) are float32 in
every format. Tensor names are the '/'-joined key path ('Dense_0/kernel'), with a suffix for the parts of an encoded
weight ('.int8', '.scale', '.mask', '.values'). The file's string metadata holds the format, the caller's metadata
(JSON under 'user') and, for the sparse formats, each weight's shape (JSON under 'weights': their tensors are flat).

`load` always decodes to float32 numpy arrays in the original nested-dict structure (empty sub-dicts are not
stored), ready to be used as flax params.

Entropy coding: a path ending in '.xz' (`XZ_SUFFIX`) holds the same safetensors bytes compressed with LZMA
(Python's lzma, xz's format: `xz -d` gives the plain file back). It is Deep Compression's last stage (Han et al.
2016 code the pruned, quantized weights with Huffman codes) with a stock codec: int8 values, sparse bitmasks and
the JSON header have far fewer than 8 bits of entropy per byte, float32 mantissas hardly any less than 32. Measured
on the MNIST-1D CNN's files: float32 -8%, int8 -15%, bitmask + int8 -40% (docs/compression.md). The price is the
zero-copy load: the file is decompressed into memory first.
"""

import json
import lzma
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors import numpy as safetensors_numpy

from research.compression import quantize

FORMATS = ('float32', 'int8', 'sparse', 'sparse_int8')
XZ_SUFFIX = '.xz'  # A path with it is written and read LZMA-compressed (module docstring).

# Marks a file as written by this module, so that `load` can refuse other safetensors files (a Hugging Face
# checkpoint, say) with a clear error instead of decoding them as something they are not.
_SCHEMA = 'research.compression.storage/2'
_READS = ('research.compression.storage/1', _SCHEMA)  # Schema 1 also listed float32 and int8 weights' shapes.
_SEP = '/'
_SUFFIXES = {'float32': ('',), 'int8': ('.int8', '.scale'), 'sparse': ('.mask', '.values'),
             'sparse_int8': ('.mask', '.values', '.scale')}


def _flatten(params: Any, prefix: str = '') -> dict[str, np.ndarray]:
  """{'a/b': array} for a nested dict of arrays.

  Raises:
    ValueError: a key is not a non-empty string without '/' (the name would not decode to the same path).
  """
  if not isinstance(params, Mapping):
    return {prefix: np.asarray(params)}
  flat = {}
  for key, value in params.items():
    if not isinstance(key, str) or not key or _SEP in key:
      raise ValueError(f'param key {key!r} under {prefix or "the root"}: expected a non-empty str without {_SEP!r}')
    flat.update(_flatten(value, f'{prefix}{_SEP}{key}' if prefix else key))
  return flat


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
  tree: dict = {}
  for name, value in flat.items():
    *parents, last = name.split(_SEP)
    node = tree
    for key in parents:
      node = node.setdefault(key, {})
      if not isinstance(node, dict):
        raise ValueError(f'tensor {name!r}: {key!r} is both a leaf and a sub-tree')
    if last in node:
      raise ValueError(f'tensor {name!r}: {last!r} is both a leaf and a sub-tree')
    node[last] = value
  return tree


def _encode_weight(w: np.ndarray, fmt: str) -> dict[str, np.ndarray]:
  """The tensors (by name suffix) that store weight `w` in `fmt`."""
  if fmt == 'float32':
    return {'': w.astype(np.float32)}
  if fmt == 'int8':
    q, scale = quantize.quantize_array(w)
    return {'.int8': np.asarray(q), '.scale': np.asarray(scale)}
  flat = w.reshape(-1)
  # The mask comes from the original weight, not from q: a small nonzero weight may round to q = 0, and a mask
  # from q would then disagree with the sparsity the model was pruned to.
  nonzero = flat != 0
  mask = np.packbits(nonzero)
  if fmt == 'sparse':
    return {'.mask': mask, '.values': flat[nonzero].astype(np.float32)}
  q, scale = quantize.quantize_array(w)
  return {'.mask': mask, '.values': np.asarray(q).reshape(-1)[nonzero], '.scale': np.asarray(scale)}


def _decode_weight(name: str, parts: dict[str, np.ndarray], shape: tuple[int, ...], fmt: str) -> np.ndarray:
  """The float32 weight of `shape` stored as `parts` (by name suffix) in `fmt`.

  Raises:
    ValueError: the parts do not fit the shape (a corrupted or hand-edited file).
  """
  size = int(np.prod(shape))
  if fmt == 'float32':
    w = parts['']
  elif fmt == 'int8':
    w = parts['.int8'].astype(np.float32) * parts['.scale'].astype(np.float32)
  else:
    nonzero = np.unpackbits(parts['.mask'], count=size).astype(bool)
    values = parts['.values']
    if values.shape != (int(nonzero.sum()),):
      raise ValueError(f'{name}: {values.shape} values for {int(nonzero.sum())} set bits of the mask')
    if fmt == 'sparse':
      w = np.zeros(size, np.float32)
      w[nonzero] = values
      w = w.reshape(shape)
    else:
      # Entries off the mask are q = 0, hence exactly 0.0 after scaling (every scale is finite).
      q = np.zeros(size, np.int8)
      q[nonzero] = values
      w = q.reshape(shape).astype(np.float32) * parts['.scale'].astype(np.float32)
  if w.shape != shape:
    raise ValueError(f'{name}: decoded shape {w.shape}, expected {shape}')
  return w.astype(np.float32, copy=False)


def save(path: str, params: Any, *, fmt: str, metadata: dict | None = None) -> int:
  """Writes `params` to one safetensors file in format `fmt`, atomically.

  The file is written to `path + '.tmp'` and renamed over `path`, so an interrupted save leaves either the previous
  file or none, never half of one; the temporary file is removed if the write fails.

  Args:
    path: the file to write (conventionally *.safetensors; *.safetensors.xz: LZMA-compressed, module docstring).
    params: nested dicts of arrays (flax params; jax or numpy arrays).
    fmt: one of FORMATS.
    metadata: JSON-serialisable dict stored with the file and returned by `load` (a run's config, accuracy, ...).

  Returns:
    The file's size in bytes.

  Raises:
    ValueError: unknown `fmt`, or a param key that cannot be a tensor name, or two leaves with the same name.
    TypeError: `metadata` is not JSON-serialisable.
  """
  if fmt not in FORMATS:
    raise ValueError(f'fmt={fmt!r}: expected one of {FORMATS}')
  # Everything is encoded before the file is opened, so bad input fails without touching the disk.
  user = json.dumps(metadata or {}, sort_keys=True, separators=(',', ':'))
  tensors: dict[str, np.ndarray] = {}
  weights: dict[str, dict] = {}
  for name, leaf in _flatten(params).items():
    if quantize.is_weight(leaf):
      weights[name] = list(leaf.shape)
      parts = {name + suffix: value for suffix, value in _encode_weight(leaf, fmt).items()}
    else:
      parts = {name: leaf.astype(np.float32)}
    for tensor_name, value in parts.items():
      # 'a.mask' as a param name next to a weight 'a' stored sparse would otherwise overwrite one of them silently.
      if tensor_name in tensors:
        raise ValueError(f'two tensors named {tensor_name!r}: rename the param key')
      # safetensors reads the raw buffer; np.ascontiguousarray would turn a 0-d array into 1-d.
      tensors[tensor_name] = np.require(value, requirements='C')
  # Only the sparse formats need each weight's shape (their tensors are flat); the names of int8 weights are
  # those of their '.int8' tensors, and float32 weights are plain tensors. Compact JSON: on a 5,000-parameter
  # model every byte of header is 0.02% of the float32 file.
  header = {'schema': _SCHEMA, 'format': fmt, 'user': user}
  if fmt.startswith('sparse'):
    header['weights'] = json.dumps(weights, sort_keys=True, separators=(',', ':'))

  data = safetensors_numpy.save(tensors, metadata=header)
  path = os.fspath(path)
  if path.endswith(XZ_SUFFIX):
    data = lzma.compress(data)  # xz container, preset 6: -9 saved no bytes on our files and took 1.1-1.6x longer.
  tmp = path + '.tmp'
  try:
    with open(tmp, 'wb') as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return os.path.getsize(path)


def _read(path: str) -> tuple[dict[str, str], dict[str, np.ndarray]]:
  """(string metadata, tensors by name) of a safetensors file, LZMA-compressed where the path ends in '.xz'."""
  if not path.endswith(XZ_SUFFIX):
    with safe_open(path, framework='np') as f:
      return f.metadata() or {}, {name: f.get_tensor(name) for name in f.keys()}
  try:
    with open(path, 'rb') as f:
      data = lzma.decompress(f.read())
  except lzma.LZMAError as e:
    raise ValueError(f'{path} is not an xz file: {e}') from e
  # safetensors' bytes API returns the tensors but not the metadata: the header is 8 bytes of little-endian length,
  # then JSON whose '__metadata__' holds it (the format's specification).
  n = int.from_bytes(data[:8], 'little')
  try:
    header = json.loads(data[8:8 + n]).get('__metadata__') or {}
  except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
    raise ValueError(f'{path} does not hold a safetensors file: {e!r}') from e
  return header, safetensors_numpy.load(data)


def load(path: str, *, quantized: bool = False) -> tuple[dict, str, dict]:
  """Reads a file written by `save` and decodes it to float32 params.

  Args:
    path: the file (LZMA-compressed if it ends in '.xz').
    quantized: for the 'int8' format, keep each weight as quantize.quantize_params does, {'int8': q, 'scale': s}
      (for integer execution, research/compression/int8_exec.py) instead of decoding it.

  Returns:
    (params, fmt, metadata): params as nested dicts of float32 numpy arrays with the original structure and
    shapes (weights dequantized for the int8 formats); fmt one of FORMATS; metadata the dict given to `save`.

  Raises:
    FileNotFoundError: `path` is not a file.
    ValueError: the file is not a safetensors file written by `save`, or is inconsistent.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such file (expected a .safetensors file written by '
                            'research.compression.storage.save)')
  try:
    header, tensors = _read(path)
  except SafetensorError as e:
    raise ValueError(f'{path} is not a safetensors file: {e}') from e
  if header.get('schema') not in _READS or header.get('format') not in FORMATS:
    raise ValueError(f'{path} was not written by research.compression.storage.save (metadata {sorted(header)}, '
                     f'schema {header.get("schema")!r}, format {header.get("format")!r})')
  fmt = header['format']
  try:
    user = json.loads(header['user'])
    if 'weights' in header:  # The sparse formats: {name: shape}; schema 1 wrote {name: {'shape', 'dtype'}}.
      weights = {name: tuple(info['shape'] if isinstance(info, dict) else info)
                 for name, info in json.loads(header['weights']).items()}
    else:  # float32 and int8 name their weights by their tensors; the shape is the stored one.
      suffix = _SUFFIXES[fmt][0]
      weights = {name[:len(name) - len(suffix)]: tensors[name].shape for name in tensors
                 if name.endswith(suffix) and (suffix or quantize.is_weight(tensors[name]))}
  except (KeyError, TypeError, json.JSONDecodeError) as e:
    raise ValueError(f'{path}: bad metadata ({e!r})') from e

  flat = {}
  for name, shape in weights.items():
    try:
      parts = {suffix: tensors.pop(name + suffix) for suffix in _SUFFIXES[fmt]}
    except KeyError as e:
      raise ValueError(f'{path}: weight {name!r} lacks tensor {e.args[0]!r} of format {fmt}') from None
    if quantized and fmt == 'int8':
      flat[name + _SEP + 'int8'], flat[name + _SEP + 'scale'] = parts['.int8'], parts['.scale']
    else:
      flat[name] = _decode_weight(name, parts, shape, fmt)
  # What is left are the leaves stored as plain float32 (biases, norm scales).
  flat.update({name: value.astype(np.float32, copy=False) for name, value in tensors.items()})
  return _unflatten(flat), fmt, user


def sparsity(params: Any) -> float:
  """Fraction of exactly-zero entries over all weights (leaves with ndim >= 2); 0.0 for a tree without weights."""
  zeros = total = 0
  for leaf in jax.tree.leaves(params):
    if quantize.is_weight(leaf):
      total += int(np.size(leaf))
      zeros += int(np.size(leaf)) - int(np.count_nonzero(np.asarray(leaf)))
  return zeros / total if total else 0.0
