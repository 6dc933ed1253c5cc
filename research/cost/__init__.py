"""What a run costs: parameters, FLOPs (analytic and XLA), peak FLOP/s and MFU, memory, energy and CO2.

The numbers behind each entry of the run card's cost section:

  params        param_stats(params)                         -> {count, bytes, by_dtype}
  flops         analytic_flops / analytic_train_step_flops  (per-layer formulas, docs/flops.md)
                step_costs(...).train_step_flops / .eval_example_flops  (XLA, loop iterations counted)
  mfu           mfu(flops, seconds, peak) with peak_flops_per_s() -> (value, source)
  memory        step_costs(...).train_memory_bytes (XLA's plan); measured_peak_bytes() -> (bytes, source);
                heap_peak(fn, path=...) -> exact heap rise by owner (memray; measurement scripts)
  energy, co2_g EnergyMeter().start() ... .read() -> {joules, source, assumptions}; co2_grams(joules, g_per_kwh)
  checkpoint    dir_bytes(path)
  comm          collective_bytes(compiled) (from the partitioned HLO); analytic_comm_bytes(param_bytes, mesh_shape)

  inference     batch1_latency_ms(forward, params, inputs) -> {p50_ms, p99_ms, timed_examples};
                call_latency_ms(eval_step, params, batch) -> {p50_ms, p99_ms, calls}
"""

from research.cost.analytic import analytic_flops
from research.cost.analytic import analytic_train_step_flops
from research.cost.analytic import model_flops_per_token
from research.cost.analytic import param_count
from research.cost.analytic import Layer
from research.cost.analytic import layer_flops
from research.cost.comm import analytic_comm_bytes
from research.cost.comm import collective_bytes
from research.cost.energy import co2_grams
from research.cost.energy import EnergyMeter
from research.cost.latency import batch1_latency_ms
from research.cost.latency import call_latency_ms
from research.cost.memory import device_peak_bytes
from research.cost.memory import dir_bytes
from research.cost.memory import heap_peak
from research.cost.memory import HeapPeak
from research.cost.memory import measured_peak_bytes
from research.cost.memory import MemoryReading
from research.cost.memory import param_stats
from research.cost.memory import predicted_memory_bytes
from research.cost.memory import reset_peak_rss
from research.cost.memory import transient_memory_bytes
from research.cost.peak import mfu
from research.cost.peak import peak_flops_per_s
from research.cost.xla import compiled_flops
from research.cost.xla import step_costs
from research.cost.xla import StepCosts
from research.cost.xla import xla_flops

__all__ = ['EnergyMeter', 'HeapPeak', 'Layer', 'MemoryReading', 'StepCosts', 'analytic_comm_bytes', 'analytic_flops',
           'analytic_train_step_flops', 'batch1_latency_ms', 'call_latency_ms', 'collective_bytes', 'device_peak_bytes',
           'co2_grams', 'compiled_flops', 'dir_bytes', 'heap_peak', 'layer_flops', 'measured_peak_bytes', 'mfu',
           'model_flops_per_token', 'param_count', 'param_stats', 'peak_flops_per_s', 'predicted_memory_bytes',
           'reset_peak_rss', 'step_costs', 'transient_memory_bytes', 'xla_flops']
