"""What XLA says a compiled program costs: FLOPs corrected for loops, and one AOT compile of the steps for both.

Why a correction: XLA's `HloCostAnalysis` (behind `compiled.cost_analysis()`) visits a `while` body once, whatever
its trip count, so a `lax.scan` over T steps (flax `nn.RNN`) is counted as one step. We read the optimized HLO
text, find every `while` whose trip count XLA itself proved (`backend_config={"known_trip_count":{"n":"40"}}`),
cost its body alone by re-parsing the body (and what it calls) as a module of its own and running the same
cost analysis on it, and add the missing (n - 1) iterations. Nested loops recurse. The figure is XLA's own per-op
count, after XLA's own optimizations (fusion, loop-invariant motion, dead-code elimination, its own unrolling),
which a re-lowering of the jaxpr's scan bodies would not see. docs/flops.md has the details.

The HLO parser and cost analysis of a module are jaxlib internals (`jaxlib._hlo.hlo_module_from_text`,
`_jax.hlo_module_cost_analysis`); setup.cfg pins jax < 0.11, and tests/cost_test.py checks the correction on
scans whose cost is known exactly, so an upgrade that breaks them fails there.
"""

import dataclasses
import re
from typing import Any, Callable

from absl import logging
import jax
from jax._src.lib import _jax  # hlo_module_cost_analysis: not in jax's public API.
from jaxlib import _hlo  # hlo_module_from_text: idem.

from research.cost.memory import predicted_memory_bytes

# A computation header starts at column 0 and ends with '{'; its instructions are indented.
_COMPUTATION = re.compile(r'^(ENTRY )?%?([\w.\-]+) \(.*\{$')
_WHILE = re.compile(r'\bwhile\(.*?condition=%?([\w.\-]+), body=%?([\w.\-]+)')
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_CALLEE = re.compile(r'\b(calls|to_apply|body|condition)=%?([\w.\-]+)')
_CALLEE_LIST = re.compile(r'\b(?:branch_computations|called_computations)=\{([^}]*)\}')
_STACK_FRAME = re.compile(r',? stack_frame_id=\d+')  # Refers to a table the sub-modules do not carry.


def _cost_flops(cost: Any) -> float:
  """The 'flops' entry of a cost analysis (a dict; a list of one dict in older jax)."""
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get('flops', 0.0)) if cost else 0.0


class _Hlo:
  """The computations of an optimized HLO module's text, and the FLOPs of each as an entry of its own."""

  def __init__(self, text: str, client, *, entry_flops: float):
    self.client = client
    self.blocks: dict[str, str] = {}  # Computation name -> its text, in the module's order (callees first).
    self.entry = None
    name, lines = None, []
    for line in text.splitlines():
      if name is None:
        match = _COMPUTATION.match(line)
        if match:
          name, lines = match.group(2), [line]
          self.entry = name if match.group(1) else self.entry
      else:
        lines.append(line)
        if line == '}':
          self.blocks[name] = _STACK_FRAME.sub('', '\n'.join(lines))
          name = None
    self._raw = {self.entry: entry_flops}  # Computation -> its own cost analysis; the entry's is the executable's.
    self.uncounted_loops: list[str] = []  # Bodies of while loops without a known trip count (counted once).

  def callees(self, name: str, *, loops: bool) -> list[str]:
    """Computations `name` calls, once per call site; `loops=False` leaves out while bodies and conditions."""
    block = self.blocks[name]
    out = [callee for kind, callee in _CALLEE.findall(block) if loops or kind not in ('body', 'condition')]
    for group in _CALLEE_LIST.findall(block):
      out += [c.strip().lstrip('%') for c in group.split(',') if c.strip()]
    return [c for c in out if c in self.blocks]

  def raw_flops(self, root: str) -> float:
    """XLA's cost analysis of `root` as the entry computation (loop bodies inside it counted once)."""
    if root not in self._raw:
      keep, stack = set(), [root]
      while stack:
        name = stack.pop()
        if name not in keep:
          keep.add(name)
          stack += self.callees(name, loops=True)
      parts = [self.blocks[n].replace('ENTRY ', '', 1) for n in self.blocks if n in keep and n != root]
      parts.append('ENTRY ' + self.blocks[root].replace('ENTRY ', '', 1))
      module = _hlo.hlo_module_from_text('HloModule cost_submodule\n\n' + '\n\n'.join(parts) + '\n')
      self._raw[root] = _cost_flops(_jax.hlo_module_cost_analysis(self.client, module))
    return self._raw[root]

  def loops(self, name: str) -> list[tuple[str, int | None]]:
    """(body, trip count or None) of the while loops run by one call of `name`, not counting nested ones."""
    found = []
    for line in self.blocks[name].splitlines():
      match = _WHILE.search(line)
      if match:
        trips = _TRIP_COUNT.search(line)
        found.append((match.group(2), int(trips.group(1)) if trips else None))
    for callee in self.callees(name, loops=False):
      found += self.loops(callee)
    return found

  def flops(self, name: str) -> float:
    """FLOPs of one call of `name` with every loop body counted as often as it runs."""
    total = self.raw_flops(name)
    for body, trips in self.loops(name):
      if trips is None:
        self.uncounted_loops.append(body)
        trips = 1
      # The raw count holds the body once, itself with inner loops counted once.
      total += trips * self.flops(body) - self.raw_flops(body)
    return total


def compiled_flops(compiled: jax.stages.Compiled) -> float:
  """FLOPs of one execution of a compiled program, loop bodies counted once per iteration.

  Args:
    compiled: from `jax.jit(f).lower(*args).compile()`.

  Returns:
    FLOPs per device: for a program partitioned over n devices, one device's share (XLA's convention); a
    multiply-add counts 2, other elementwise arithmetic 1 per element, transcendentals (exp, log, tanh) 0.
  """
  hlo = _Hlo(compiled.as_text(), compiled.runtime_executable().client,
             entry_flops=_cost_flops(compiled.cost_analysis()))
  flops = hlo.flops(hlo.entry)
  if hlo.uncounted_loops:
    logging.warning('While loops without a known trip count are counted once: %s', sorted(set(hlo.uncounted_loops)))
  return flops


def xla_flops(fn: Callable, *args) -> float:
  """FLOPs XLA counts for `fn(*args)`, corrected so that scans and loops count every iteration.

  Args:
    fn: a function of arrays, or a `jax.jit`-wrapped one (then its shardings and donation are kept).
    *args: example arguments (arrays or `jax.ShapeDtypeStruct`s); only shapes, dtypes and shardings matter.

  Returns:
    FLOPs per device of one call (see `compiled_flops`).
  """
  jitted = fn if hasattr(fn, 'lower') else jax.jit(fn)
  return compiled_flops(jitted.lower(*args).compile())


@dataclasses.dataclass(frozen=True)
class StepCosts:
  """What one AOT compile of the train and eval steps says they cost.

  Attributes:
    train_step: the compiled train step; call it as `train_step(state, batch)` in place of the jitted function.
    eval_step: the compiled eval step, or None.
    train_step_flops: FLOPs of one train step over the global batch (per-device figure x devices).
    eval_example_flops: FLOPs of the eval step per example (global), or None.
    train_memory_bytes: predicted memory of the train step per device (see `predicted_memory_bytes`).
    eval_memory_bytes: idem for the eval step, or None.
    devices: number of devices the train step runs on.
    train_comm: communication of one train step per device, read from its partitioned HLO
      (comm.collective_bytes: {'total', 'estimated_wire_bytes', 'by_op', 'count', 'wire_by_op'}).
  """
  train_step: jax.stages.Compiled
  eval_step: jax.stages.Compiled | None
  train_step_flops: float
  eval_example_flops: float | None
  train_memory_bytes: int
  eval_memory_bytes: int | None
  devices: int
  train_comm: dict


def _num_devices(compiled: jax.stages.Compiled) -> int:
  return len(compiled.runtime_executable().local_devices()) * jax.process_count()


def step_costs(train_step: Callable, state, batch: dict, *, eval_step: Callable | None = None, params=None,
               eval_batch: dict | None = None) -> StepCosts:
  """Compiles the steps ahead of time and reads their FLOPs and memory, for the run card.

  Args:
    train_step: the jitted train step `(state, batch) -> (state, metrics)` as the loop runs it (with its
      shardings and donation); a plain function is jitted without either.
    state: the train state (arrays or `jax.ShapeDtypeStruct`s with shardings).
    batch: a global batch {'inputs': [B, ...], 'labels': [B]} (arrays or shape structs).
    eval_step: optionally the jitted eval step `(params, batch) -> sums`.
    params: the params the eval step takes.
    eval_batch: an eval batch (with its 'mask' [B_eval]).

  Returns:
    StepCosts; its compiled steps can replace the jitted ones, so the loop compiles once.
  """
  from research.cost import comm  # pylint: disable=g-import-not-at-top  (comm imports this module's parser)

  jit = lambda f: f if hasattr(f, 'lower') else jax.jit(f)
  train = jit(train_step).lower(state, batch).compile()
  devices = _num_devices(train)
  evaluate = eval_flops = eval_memory = None
  if eval_step is not None:
    evaluate = jit(eval_step).lower(params, eval_batch).compile()
    eval_examples = jax.tree.leaves(eval_batch)[0].shape[0]
    eval_flops = compiled_flops(evaluate) * _num_devices(evaluate) / eval_examples
    eval_memory = predicted_memory_bytes(evaluate)
  return StepCosts(train_step=train, eval_step=evaluate, train_step_flops=compiled_flops(train) * devices,
                   eval_example_flops=eval_flops, train_memory_bytes=predicted_memory_bytes(train),
                   eval_memory_bytes=eval_memory, devices=devices, train_comm=comm.collective_bytes(train))
