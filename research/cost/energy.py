"""Energy of a run, measured where the hardware reports it and estimated (and labelled so) where it does not.

One interface, three sources, best first:
  nvml      GPU board energy counters (NVIDIA's nvidia-ml-py, imported only if installed and a GPU is in use);
  rapl      CPU package energy counters, /sys/class/powercap/<zone>/energy_uj (Intel RAPL; AMD exposes the same
            files) where readable: since CVE-2020-8694 most kernels make them root-only;
  estimate  the process's CPU time x an assumed power per busy core (+ optional idle power x wall time).

Why no library: CodeCarbon and Zeus read the same counters but bring heavy dependencies (pandas, a tracker
process) or need root to fall back on; the counters themselves are a file read or one NVML call.
"""

import os
import re
import time

import jax
import psutil

# Assumed power of one busy core: the TDP per core of current server CPUs, e.g. AMD EPYC 7763 280 W / 64 cores =
# 4.4 W and Intel Xeon Platinum 8380 270 W / 40 cores = 6.8 W (vendor datasheets); laptops are similar (Core
# i7-1185G7 28 W / 4 = 7 W). TDP is a sustained-load design figure, not a measurement of this machine.
WATTS_PER_BUSY_CORE = 5.0
SOURCES = ('nvml', 'rapl', 'estimate')
_ZONE = re.compile(r'^[\w-]+:\d+$')  # A top-level zone (a CPU package), e.g. intel-rapl:0; not intel-rapl:0:1.


def co2_grams(joules: float, grid_g_per_kwh: float) -> float:
  """Grams of CO2(-equivalent) for `joules` at a grid carbon intensity in g/kWh (1 kWh = 3.6e6 J).

  Raises:
    ValueError: negative inputs.
  """
  if joules < 0 or grid_g_per_kwh < 0:
    raise ValueError(f'co2_grams needs non-negative joules ({joules}) and intensity ({grid_g_per_kwh})')
  return joules / 3.6e6 * grid_g_per_kwh


class _Nvml:
  """Sum of nvmlDeviceGetTotalEnergyConsumption (mJ since the driver loaded) over the visible GPUs."""

  def __init__(self):
    import pynvml  # nvidia-ml-py; optional, only on GPU machines.
    pynvml.nvmlInit()
    self._nvml = pynvml
    self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    self.assumptions = (f'NVML board energy of {len(self._handles)} GPU(s) (all processes on them); '
                        'excludes the CPUs, host memory and the rest of the machine')

  def joules(self) -> float:
    return sum(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles) / 1e3


class _Rapl:
  """Sum over top-level powercap zones of energy_uj, unwrapped with max_energy_range_uj."""

  def __init__(self, root: str):
    zones = sorted(z for z in os.listdir(root) if _ZONE.match(z)) if os.path.isdir(root) else []
    self._zones = []
    for zone in zones:
      path = os.path.join(root, zone)
      with open(os.path.join(path, 'max_energy_range_uj')) as f:
        wrap = int(f.read())
      self._zones.append((path, wrap, self._read(path)))  # Raises PermissionError if not readable.
    if not self._zones:
      raise FileNotFoundError(f'no powercap zones under {root}')
    self._last = [uj for _, _, uj in self._zones]
    self._total_uj = 0
    self.assumptions = (f'RAPL package energy of {len(self._zones)} CPU package(s) under {root} (the whole '
                        'package, all processes; excludes GPUs and the rest of the machine)')

  @staticmethod
  def _read(path: str) -> int:
    with open(os.path.join(path, 'energy_uj')) as f:
      return int(f.read())

  def joules(self) -> float:
    # Counters wrap at max_energy_range_uj (~262 kJ, minutes at full load): read more often than one wrap.
    for i, (path, wrap, _) in enumerate(self._zones):
      now = self._read(path)
      self._total_uj += now - self._last[i] if now >= self._last[i] else now + wrap - self._last[i]
      self._last[i] = now
    return self._total_uj / 1e6


class _Estimate:
  """CPU seconds of this process (all threads) x watts per busy core, + idle watts x wall seconds."""

  def __init__(self, watts_per_core: float, idle_watts: float):
    self._process = psutil.Process()
    self._watts, self._idle = watts_per_core, idle_watts
    self._t0 = time.monotonic()
    self.assumptions = (f'estimate, not a measurement: process CPU time x {watts_per_core:g} W per busy core '
                        '(~ server CPU TDP / cores)' + (f' + {idle_watts:g} W idle x wall time' if idle_watts else ''))

  def joules(self) -> float:
    cpu = self._process.cpu_times()
    return (cpu.user + cpu.system) * self._watts + (time.monotonic() - self._t0) * self._idle


class EnergyMeter:
  """Cumulative energy since `start()`: `read() -> {'joules', 'source', 'assumptions'}`.

    meter = EnergyMeter(); meter.start()
    ...  # train
    meter.read()  # {'joules': 812.4, 'source': 'estimate', 'assumptions': 'estimate, not a measurement: ...'}

  Attributes:
    source: 'nvml', 'rapl' or 'estimate' (chosen at start()).
  """

  def __init__(self, source: str = 'auto', *, powercap_root: str = '/sys/class/powercap',
               watts_per_core: float = WATTS_PER_BUSY_CORE, idle_watts: float = 0.0):
    """Args:
      source: 'auto' (the best available of SOURCES), or one of SOURCES to insist on.
      powercap_root: where the RAPL zones live (a parameter so tests can fake it).
      watts_per_core: the estimate's power per busy core.
      idle_watts: the estimate's power drawn regardless of load (0: count only this process's work).

    Raises:
      ValueError: an unknown source.
    """
    if source not in ('auto', *SOURCES):
      raise ValueError(f"energy source {source!r} must be 'auto' or one of {SOURCES}")
    self._wanted, self._root = source, powercap_root
    self._watts, self._idle = watts_per_core, idle_watts
    self._meter, self._j0, self.source, self._skipped = None, 0.0, None, []

  def _open(self, source: str):
    if source == 'nvml':
      if jax.default_backend() != 'gpu':
        raise RuntimeError('no GPU in use')
      return _Nvml()
    if source == 'rapl':
      return _Rapl(self._root)
    return _Estimate(self._watts, self._idle)

  def start(self) -> None:
    """Picks the source and takes the starting reading.

    Raises:
      RuntimeError: the source asked for by name is not available here (with the reason).
    """
    for source in (SOURCES if self._wanted == 'auto' else (self._wanted,)):
      try:
        self._meter = self._open(source)
      except Exception as e:  # ImportError, OSError (missing or root-only files), RuntimeError, pynvml.NVMLError.
        if self._wanted != 'auto':
          raise RuntimeError(f'energy source {source!r} is not available: {e}') from e
        self._skipped.append(f'{source}: {e}')
        continue
      self.source = source
      self._j0 = self._meter.joules()
      return

  def read(self) -> dict:
    """Energy since start(): {'joules': float, 'source': str, 'assumptions': str}.

    Raises:
      RuntimeError: start() was not called.
    """
    if self._meter is None:
      raise RuntimeError('EnergyMeter.read() before start()')
    assumptions = self._meter.assumptions
    if self._skipped:
      assumptions += f' [unavailable: {"; ".join(self._skipped)}]'
    return {'joules': self._meter.joules() - self._j0, 'source': self.source, 'assumptions': assumptions}
