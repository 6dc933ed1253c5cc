"""Communication bytes per step of a sharded program: read from the compiled HLO, or estimated from textbook formulas.

`collective_bytes(compiled)` reads the optimized, SPMD-partitioned HLO (`compiled.as_text()`, whose shapes are one
device's) and adds up every collective: all-reduce, all-gather, reduce-scatter, all-to-all, collective-permute, their
async `*-start` forms (the start is counted, never the `*-done`), and collectives that XLA wraps in `async-start`
computations, fusions or calls. A collective inside a `while` body counts once per iteration of the loop's trip count
as XLA proved it (`backend_config={"known_trip_count":{"n":"5"}}`, as research/cost/xla.py does for FLOPs; nested
loops multiply); a loop without one is counted once and logged. Each branch of a `conditional` is counted once, as
if all ran.

Two figures per op, both per device and per call of the program:

  bytes            the size of the collective's result: what a device holds when the collective is done. For an
                   all-reduce, the reduced buffer; all-gather, the gathered (full) buffer; reduce-scatter, the
                   device's 1/n shard; all-to-all, the exchanged buffer (same size as its input); collective-permute,
                   the received buffer. Tuple results are summed. For async starts only the result part counts:
                   `all-gather-start` and `collective-permute-start` return (operands, results[, context]), and an
                   old-style `all-reduce-start` returns operands and results, twice the operand count.
  estimated_wire   what a device sends (= receives) with the standard ring algorithms over a replica group of n
                   devices (Patarasuk & Yuan 2009; Thakur et al. 2005), from the result size S:
                     all-reduce          2 (n-1)/n * S   (reduce-scatter, then all-gather, each (n-1)/n of S)
                     all-gather          (n-1)/n * S     (S is the full, gathered buffer)
                     reduce-scatter      (n-1) * S       ((n-1)/n of the full buffer n * S)
                     all-to-all          (n-1)/n * S     (the 1/n kept locally does not move)
                     collective-permute  S               (the busiest device sends its whole buffer; devices
                                                          whose source-target pair is themselves send nothing)
                   n is read from `replica_groups=` in each of the forms XLA prints (see `replica_group_size`).
                   Real links differ: tree and hierarchical all-reduces, NVLink vs the network, in-network
                   reduction; treat the figure as the volume, not the time.

`analytic_comm_bytes` gives the textbook per-device volumes of data parallel and FSDP training for a parameter size,
to set beside the compiled figure; send/recv (pipeline stages) and host transfers are in neither.
"""

import collections
import math
import re

from absl import logging
import jax

from research.cost.xla import _CALLEE, _CALLEE_LIST, _Hlo, _TRIP_COUNT

COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all', 'collective-permute')

# `[ROOT] %name = <shape> <opcode>(<operands>), <attributes>`; the shape holds no ' word(' (layouts are '{1,0}',
# tiles ':T(8,128)'), so the first one ends it.
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%?[\w.\-]+ = (.*?) ([a-z][a-z0-9\-]*)\((.*)$')
_ARRAY = re.compile(r'\b([a-z][a-z0-9]*)\[([^\]]*)\]')  # 'f32[8,<=16]' -> ('f32', '8,<=16').
_BITS = re.compile(r'^[a-z]+(\d+)')  # 'bf16' -> 16, 'f8e4m3fn' -> 8, 's4' -> 4, 'c64' -> 64.
_NUM_DEVICES = re.compile(r'\b(num_partitions|replica_count)=(\d+)')

# The forms of `replica_groups=` (xla/hlo/ir/replica_group.cc); `{}` means one group of every device.
_EXPLICIT_GROUPS = re.compile(r'replica_groups=\{((?:\{[\d,\s]*\}[,\s]*)*)\}')  # {{0,1},{2,3}}
_IOTA_GROUPS = re.compile(r'replica_groups=\[(\d+),(\d+)\]<=\[')  # [groups,size]<=[8] or <=[2,4]T(1,0)
_MESH_GROUPS = re.compile(r"replica_groups=mesh\[([^\]]*)\]")  # mesh['axis_0'=2,'axis_1'=4] {'axis_1'}
_MESH_AXIS = re.compile(r"'?([^',=\s]+)'?=(\d+)")  # 'axis_0'=2 in the mesh's list.
_MESH_GROUP_AXES = re.compile(r" \{((?:'[^']*'|[\w.\-]+)(?::\(\d+\)\d+)?(?:,(?:'[^']*'|[\w.\-]+)(?::\(\d+\)\d+)?)*)\}")
_GROUP_AXIS = re.compile(r"'?([^',:\s]+)'?(?::\((\d+)\)(\d+))?")  # 'axis_1' or the sub-axis 'axis_1':(2)2.

# Bytes a device sends with the ring algorithm, per byte of result, over a group of n devices (module docstring).
_WIRE_PER_RESULT_BYTE = {
    'all-reduce': lambda n: 2 * (n - 1) / n,
    'all-gather': lambda n: (n - 1) / n,
    'reduce-scatter': lambda n: n - 1,
    'all-to-all': lambda n: (n - 1) / n,
    'collective-permute': lambda n: 1,
}


def _split_top_level(text: str) -> list[str]:
  """`text` split at the commas outside any (), [], {}: the elements of a tuple shape or an operand list."""
  parts, depth, start = [], 0, 0
  for i, char in enumerate(text):
    if char in '([{':
      depth += 1
    elif char in ')]}':
      depth -= 1
    elif char == ',' and depth == 0:
      parts.append(text[start:i].strip())
      start = i + 1
  last = text[start:].strip()
  return parts + [last] if last or parts else parts


def _elements(shape: str) -> list[str]:
  """The top-level elements of a tuple shape '(a, (b, c))' -> ['a', '(b, c)']; an array shape is its own one."""
  return _split_top_level(shape[1:-1]) if shape.startswith('(') else [shape]


def shape_bytes(shape: str) -> int:
  """Bytes of an HLO shape: 'f32[8,16]{1,0}' -> 512; tuples summed; 'pred' is a byte, 'token[]' none."""
  total = 0
  for dtype, dims in _ARRAY.findall(shape):
    if dtype == 'token':
      continue
    width = _BITS.match(dtype)
    if dtype != 'pred' and not width:
      raise ValueError(f'Unknown element type {dtype!r} in the shape {shape}')
    bits = int(width.group(1)) if width else 8  # pred: one byte.
    elements = math.prod(int(d.replace('<=', '')) for d in dims.split(',') if d.strip())  # '<=N': bounded.
    total += math.ceil(elements * bits / 8)
  return total


def _operand_count(rest: str) -> int:
  """Operands of an instruction, from the text after its 'opcode(' up to the matching ')'."""
  depth = 1
  for i, char in enumerate(rest):
    depth += char in '([{'
    depth -= char in ')]}'
    if depth == 0:
      return len(_split_top_level(rest[:i]))
  raise ValueError(f'Unbalanced operand list: {rest[:200]}')


def _result_bytes(op: str, shape: str, operands: int, *, start: bool) -> int:
  """Bytes of what collective `op` produces; for an async start, of the result part of the start's tuple only."""
  if not start:
    return shape_bytes(shape)
  parts = _elements(shape)
  if op in ('all-gather', 'collective-permute'):
    # (operand, result[, u32[], u32[]]); with several operands ((operands...), (results...)[, context]).
    return shape_bytes(parts[1])
  # all-reduce-start returns its results (one per operand); older XLA returned (operands..., results...).
  return sum(shape_bytes(p) for p in (parts[operands:] if len(parts) == 2 * operands else parts))


def replica_group_size(instruction: str, *, num_devices: int) -> int:
  """Devices per replica group of a collective, from its `replica_groups=` in any of the forms XLA prints.

  Args:
    instruction: the instruction's HLO text (or just its 'replica_groups=...' attribute). Forms:
      'replica_groups={{0,1,2,3},{4,5,6,7}}' (explicit; the largest group), 'replica_groups={}' or none (all
      devices), 'replica_groups=[2,4]<=[8]' and '[4,2]<=[2,4]T(1,0)' (iota: [groups, size] of a reshaped and
      transposed iota), "replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_1'}" (the product of the named axes'
      sizes; a sub-axis "'axis_1':(2)2" counts its own size; 'device_ids=(...)' only reorders devices).
    num_devices: devices in the program (num_partitions x replica_count), for the all-devices form.

  Returns:
    The number of devices n that each collective group spans.
  """
  if 'replica_groups=maximal_mesh' in instruction:
    return 1
  mesh = _MESH_GROUPS.search(instruction)
  if mesh:
    sizes = {name: int(size) for name, size in _MESH_AXIS.findall(mesh.group(1))}
    axes = _MESH_GROUP_AXES.search(instruction, mesh.end())
    if not axes:
      raise ValueError(f'No group axes after the mesh in: {instruction[:300]}')
    size = 1
    for name, _, sub_size in _GROUP_AXIS.findall(axes.group(1)):
      if name not in sizes:
        raise ValueError(f"Group axis '{name}' is not in the mesh {sizes} of: {instruction[:300]}")
      size *= int(sub_size) if sub_size else sizes[name]
    return size
  iota = _IOTA_GROUPS.search(instruction)
  if iota:
    return int(iota.group(2))
  explicit = _EXPLICIT_GROUPS.search(instruction)
  if explicit:
    groups = re.findall(r'\{([\d,\s]*)\}', explicit.group(1))
    return max((len([d for d in g.split(',') if d.strip()]) for g in groups), default=num_devices) or num_devices
  if 'replica_groups=' in instruction:
    raise ValueError(f'Unknown replica_groups form in: {instruction[:300]}')
  return num_devices


def _walk(hlo: _Hlo, name: str, times: int, *, num_devices: int, found: list, uncounted: list) -> None:
  """Appends (op, result bytes, group size, times run) to `found` for each collective of `name`, run `times`."""
  for line in hlo.blocks[name].splitlines()[1:]:
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    shape, opcode, rest = match.groups()
    if opcode.endswith('-done') or opcode == 'async-update':
      continue  # Their `calls=` names the computation its start already ran.
    op, start = (opcode[:-len('-start')], True) if opcode.endswith('-start') else (opcode, False)
    if op in COLLECTIVES:
      found.append((op, _result_bytes(op, shape, _operand_count(rest), start=start),
                    replica_group_size(line, num_devices=num_devices), times))
    trips = 1
    if opcode == 'while':
      known = _TRIP_COUNT.search(line)
      trips = int(known.group(1)) if known else 1
      if not known:
        uncounted.append(name)
    for kind, callee in _CALLEE.findall(line):
      if callee in hlo.blocks:
        _walk(hlo, callee, times * (trips + (kind == 'condition')), num_devices=num_devices, found=found,
              uncounted=uncounted)
    for group in _CALLEE_LIST.findall(line):  # Conditional branches: each counted once, as if all ran.
      for callee in (c.strip().lstrip('%') for c in group.split(',')):
        if callee in hlo.blocks:
          _walk(hlo, callee, times, num_devices=num_devices, found=found, uncounted=uncounted)


def hlo_collective_bytes(text: str) -> dict:
  """`collective_bytes` of an optimized HLO module's text (`compiled.as_text()`)."""
  hlo = _Hlo(text, None, entry_flops=0.0)  # Only its parse into computations is used here: no cost analysis.
  header = dict(_NUM_DEVICES.findall(text.split('\n', 1)[0]))
  num_devices = int(header.get('num_partitions', 1)) * int(header.get('replica_count', 1))
  found, uncounted = [], []
  _walk(hlo, hlo.entry, 1, num_devices=num_devices, found=found, uncounted=uncounted)
  if uncounted:
    logging.warning('Collectives in while loops without a known trip count are counted once: %s', sorted(uncounted))
  by_op, count, wire = collections.Counter(), collections.Counter(), collections.Counter()
  for op, size, group, times in found:
    by_op[op] += size * times
    count[op] += times
    wire[op] += size * times * _WIRE_PER_RESULT_BYTE[op](group)
  return {'total': sum(by_op.values()), 'by_op': dict(by_op), 'count': dict(count),
          'estimated_wire_bytes': round(sum(wire.values())), 'wire_by_op': {op: round(b) for op, b in wire.items()}}


def collective_bytes(compiled: jax.stages.Compiled) -> dict:
  """Bytes that one call of a compiled SPMD program moves through collectives, per device (module docstring).

  Args:
    compiled: from `jax.jit(f, in_shardings=..., out_shardings=...).lower(*args).compile()`.

  Returns:
    {'total': result bytes of all collectives, 'by_op': {op: result bytes}, 'count': {op: calls},
     'estimated_wire_bytes': bytes sent by the ring algorithms, 'wire_by_op': {op: those bytes}}, all per device
    and per call, loop iterations included; ops are those of COLLECTIVES that occur.
  """
  return hlo_collective_bytes(compiled.as_text())


def analytic_comm_bytes(*, param_bytes: int, mesh_shape: dict[str, int]) -> dict:
  """Textbook estimate of the bytes a device sends per training step, for data parallel and FSDP (ZeRO-3).

  Ring collectives over the mesh axes (research/sharding.py: 'data', 'fsdp', 'tensor'); parameters are assumed
  split `tensor` ways (Megatron splits the large matrices; replicated norms and biases make this a slight
  underestimate), so a device's gradient collectives handle p = param_bytes / tensor:
    fsdp_all_gather:            2 (f-1)/f p  (parameters gathered in the forward pass and again in the backward)
    fsdp_reduce_scatter:        (f-1)/f p    (each device keeps the gradient of its 1/f shard)
    data_parallel_all_reduce:   2 (d-1)/d p/f  (what is left of the gradient, averaged over the d data replicas)
  With f = 1 this is the plain data-parallel 2 (d-1)/d p; with d = 1, ZeRO-3's 3 (f-1)/f p (Rajbhandari et al.
  2020). Tensor-parallel activation all-reduces depend on the model (2 per transformer block forward, 2 backward,
  each batch x length x width; Shoeybi et al. 2019), so 'tensor_parallel' is None and not in 'total'.

  Args:
    param_bytes: bytes of all parameters (in the dtype the collectives carry, usually the gradient dtype).
    mesh_shape: axis sizes, e.g. {'data': 2, 'fsdp': 4, 'tensor': 1}; a missing axis counts as 1.

  Returns:
    {'data_parallel_all_reduce', 'fsdp_all_gather', 'fsdp_reduce_scatter', 'total': int bytes per device per step,
     'tensor_parallel': None, 'source': a note that these are estimates}.
  """
  d, f, t = (mesh_shape.get(axis, 1) for axis in ('data', 'fsdp', 'tensor'))
  if min(d, f, t) < 1:
    raise ValueError(f'mesh_shape ({mesh_shape}) must have positive axis sizes')
  p = param_bytes / t
  parts = {'data_parallel_all_reduce': round(2 * (d - 1) / d * p / f), 'fsdp_all_gather': round(2 * (f - 1) / f * p),
           'fsdp_reduce_scatter': round((f - 1) / f * p)}
  return {**parts, 'total': sum(parts.values()), 'tensor_parallel': None,
          'source': 'analytic estimate: ring collectives, parameters split over tensor; no activation traffic'}
