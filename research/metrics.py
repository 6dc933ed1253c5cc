"""Metric writers (metrics.jsonl, TensorBoard events) and progress reporting (tqdm on a TTY, log lines otherwise)."""

import json
import os
import sys
import time

import tensorboardX
import tqdm


def _truncate_jsonl(path: str, last_step: int) -> None:
  """Drops records after `last_step`, so a resumed run never duplicates steps in metrics.jsonl."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    kept = [line for line in f if line.strip() and json.loads(line)['step'] <= last_step]
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.writelines(kept)
  os.replace(tmp, path)


class MetricWriter:
  """Writes one JSON object per log point to metrics.jsonl, and the same scalars to TensorBoard.

  Record format: {"step": int, "split": "train" | "eval", "metrics": {name: float}}; eval records also carry
  "train_time_s", the run's train seconds up to that step (every session, eval and checkpoints excluded: curves
  against time). TensorBoard tags are `<split>/<name>` (e.g. `train/loss`, `eval/accuracy`).
  """

  def __init__(self, workdir: str, *, resume_step: int = 0):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    _truncate_jsonl(self.path, resume_step)
    self._file = open(self.path, 'a')
    # purge_step hides events written after the checkpoint we resumed from (TensorBoard shows one curve).
    self._tb = tensorboardX.SummaryWriter(workdir, purge_step=resume_step + 1 if resume_step else None)

  def write(self, step: int, split: str, metrics: dict, *, train_time_s: float | None = None) -> None:
    metrics = {k: float(v) for k, v in metrics.items()}
    record = {'step': int(step), 'split': split, 'metrics': metrics}
    if train_time_s is not None:
      record['train_time_s'] = round(float(train_time_s), 4)
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()
    for name, value in metrics.items():
      self._tb.add_scalar(f'{split}/{name}', value, step)

  def close(self) -> None:
    self._file.close()
    self._tb.close()


class NullWriter:
  """MetricWriter's interface, writing nothing: processes other than 0 of a multi-process run."""

  def write(self, step: int, split: str, metrics: dict, *, train_time_s: float | None = None) -> None:
    del step, split, metrics, train_time_s

  def close(self) -> None:
    pass


def read_metrics(workdir: str) -> list[dict]:
  """Reads metrics.jsonl back as a list of records."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]


class Progress:
  """A tqdm bar with steps/s, loss and ETA on a TTY; a plain log line per report otherwise."""

  def __init__(self, *, total: int, initial: int, enabled: bool = True, stream=None):
    self._stream = stream or sys.stdout
    self._tty = enabled and self._stream.isatty()
    self._enabled = enabled
    self._total, self._start_step, self._t0 = total, initial, time.time()
    self._bar = tqdm.tqdm(total=total, initial=initial, unit='step', dynamic_ncols=True,
                          file=self._stream) if self._tty else None

  def update(self, step: int) -> None:
    if self._bar is not None:
      self._bar.update(step - self._bar.n)

  def report(self, step: int, metrics: dict) -> None:
    """Shows the latest metrics (bar postfix on a TTY, a log line otherwise)."""
    if not self._enabled:
      return
    text = ' '.join(f'{k}={v:.4g}' for k, v in metrics.items())
    if self._bar is not None:
      self._bar.set_postfix_str(text, refresh=False)
      return
    elapsed = time.time() - self._t0
    rate = (step - self._start_step) / elapsed if elapsed > 0 else 0.0
    eta = (self._total - step) / rate if rate > 0 else float('nan')
    print(f'step {step}/{self._total} {text} {rate:.1f} steps/s eta {eta:.0f}s', file=self._stream, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
