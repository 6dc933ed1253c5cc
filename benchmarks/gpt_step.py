r"""Milliseconds per jitted training step of research.models.gpt.GPT (forward, next-token cross-entropy, backward,
AdamW update), default sizes nanoGPT's CPU "baby GPT" (vocab 256, context 64, width 128, 4 heads, 4 layers,
batch 12).

    JAX_PLATFORMS=cpu python benchmarks/gpt_step.py
    JAX_PLATFORMS=cpu python benchmarks/gpt_step.py --attention=xla --repeats=15
    JAX_PLATFORMS=cpu python benchmarks/gpt_step.py --keep_freed_memory   # glibc keeps XLA's temp buffer mapped

Prints the min and median over `--repeats` timings of `--steps` steps each (the host is often shared: the min is
the best estimate of the step's own cost), the temp buffer size and the page faults per step.

Why --keep_freed_memory: XLA:CPU allocates each step's intermediates as one buffer (45 MiB for the baby GPT); glibc
serves allocations above 32 MiB by mmap and unmaps them on free, so every step faults ~11,500 fresh pages in
(~35 ms of system time on this 2-core VM). mallopt(M_MMAP_THRESHOLD, M_TRIM_THRESHOLD) keeps the memory in the heap.
"""

import argparse
import resource
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research import host
from research.models.gpt import ATTENTIONS, GPT

def make_train_step(model: GPT, tx: optax.GradientTransformation):
  """(params, opt_state, tokens [batch, context + 1]) -> (params, opt_state, loss)."""

  def loss_fn(params, tokens):
    logits = model.apply({'params': params}, tokens[:, :-1], train=True)  # [batch, context, vocab]
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  def train_step(params, opt_state, tokens):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(train_step, donate_argnums=(0, 1))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch_size', type=int, default=12)
  parser.add_argument('--context', type=int, default=64)
  parser.add_argument('--d_model', type=int, default=128)
  parser.add_argument('--num_layers', type=int, default=4)
  parser.add_argument('--num_heads', type=int, default=4)
  parser.add_argument('--vocab', type=int, default=256)
  parser.add_argument('--attention', default='auto', choices=ATTENTIONS)
  parser.add_argument('--learning_rate', type=float, default=1e-3)
  parser.add_argument('--steps', type=int, default=10, help='steps per timing')
  parser.add_argument('--repeats', type=int, default=10, help='timings')
  parser.add_argument('--keep_freed_memory', action='store_true', help='mallopt: no per-step page faults')
  args = parser.parse_args()
  if args.keep_freed_memory:
    host.keep_freed_memory()

  model = GPT(num_classes=args.vocab, context=args.context, d_model=args.d_model, num_heads=args.num_heads,
              num_layers=args.num_layers, attention=args.attention)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, args.vocab, (args.batch_size, args.context + 1)),
                       jnp.int32)
  params = nn.unbox(model.init(jax.random.key(0), tokens[:1, :-1], train=False))['params']
  tx = optax.adamw(args.learning_rate, b2=0.99, weight_decay=0.1)
  opt_state = tx.init(params)
  step = make_train_step(model, tx)
  compiled = step.lower(params, opt_state, tokens).compile()
  temp_mib = compiled.memory_analysis().temp_size_in_bytes / 2**20
  params, opt_state, loss = compiled(params, opt_state, tokens)  # Warm-up (first-touch of buffers).
  jax.block_until_ready(loss)

  times_ms, faults = [], []
  for _ in range(args.repeats):
    faults_before, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    for _ in range(args.steps):
      params, opt_state, loss = compiled(params, opt_state, tokens)
    jax.block_until_ready(loss)
    times_ms.append((time.perf_counter() - start) / args.steps * 1e3)
    faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before) / args.steps)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  print(f'GPT {n_params:,} params, batch {args.batch_size} x context {args.context}, attention {args.attention}, '
        f'{jax.devices()[0].platform}: {min(times_ms):.1f} ms/step min, {statistics.median(times_ms):.1f} median '
        f'over {args.repeats} x {args.steps} steps (temp buffer {temp_mib:.0f} MiB, '
        f'{statistics.median(faults):,.0f} page faults/step; final loss {float(loss):.3f})')


if __name__ == '__main__':
  main()
