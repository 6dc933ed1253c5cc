r"""PyTorch reference for benchmarks/gpt_step.py: milliseconds per training step of the same GPT-2 model (nanoGPT's
CPU "baby GPT" by default) with the same work per step: forward, next-token cross-entropy, backward, AdamW update.

Needs the [reference] extra (torch; `make compare` installs it). Run both back to back on a quiet machine:

    JAX_PLATFORMS=cpu python benchmarks/gpt_step.py --keep_freed_memory
    python benchmarks/gpt_step_torch.py

The model is written out as nanoGPT's model.py is (learned positions, pre-LN, tanh-GELU MLP, tied embeddings, causal
`F.scaled_dot_product_attention`, biases, LayerNorm eps 1e-5), eager mode (nanoGPT's `--compile=False` CPU recipe),
torch's default intra-op threads (one per core). Prints the min and median over `--repeats` timings of `--steps`
steps each.
"""

import argparse
import statistics
import time

import torch
from torch import nn
import torch.nn.functional as F


class Block(nn.Module):

  def __init__(self, d: int, heads: int):
    super().__init__()
    self.heads = heads
    self.ln_1, self.ln_2 = nn.LayerNorm(d, eps=1e-5), nn.LayerNorm(d, eps=1e-5)
    self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
    self.mlp_in, self.mlp_out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

  def forward(self, x):
    b, t, d = x.shape
    q, k, v = self.qkv(self.ln_1(x)).split(d, dim=2)
    q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
    x = x + self.out(y)
    return x + self.mlp_out(F.gelu(self.mlp_in(self.ln_2(x)), approximate='tanh'))


class GPT(nn.Module):

  def __init__(self, vocab: int, context: int, d: int, heads: int, layers: int):
    super().__init__()
    self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(context, d)
    self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
    self.ln_f = nn.LayerNorm(d, eps=1e-5)
    for name, p in self.named_parameters():  # GPT-2's (nanoGPT's) init: N(0, 0.02), zero biases.
      if p.dim() > 1:
        nn.init.normal_(p, std=0.02 / ((2 * layers) ** 0.5 if name.endswith(('out.weight', 'mlp_out.weight')) else 1))
      elif name.endswith('bias'):
        nn.init.zeros_(p)

  def forward(self, tokens):
    x = self.wte(tokens) + self.wpe(torch.arange(tokens.shape[1]))
    for block in self.blocks:
      x = block(x)
    return self.ln_f(x) @ self.wte.weight.T  # Tied head.


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch_size', type=int, default=12)
  parser.add_argument('--context', type=int, default=64)
  parser.add_argument('--d_model', type=int, default=128)
  parser.add_argument('--num_layers', type=int, default=4)
  parser.add_argument('--num_heads', type=int, default=4)
  parser.add_argument('--vocab', type=int, default=256)
  parser.add_argument('--learning_rate', type=float, default=1e-3)
  parser.add_argument('--steps', type=int, default=10, help='steps per timing')
  parser.add_argument('--repeats', type=int, default=10, help='timings')
  args = parser.parse_args()

  torch.manual_seed(0)
  model = GPT(args.vocab, args.context, args.d_model, args.num_heads, args.num_layers)
  opt = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, betas=(0.9, 0.99), weight_decay=0.1)
  tokens = torch.randint(0, args.vocab, (args.batch_size, args.context + 1))

  def step():
    logits = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, args.vocab), tokens[:, 1:].reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss

  step()  # Warm-up.
  times_ms = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    for _ in range(args.steps):
      loss = step()
    times_ms.append((time.perf_counter() - start) / args.steps * 1e3)
  n_params = sum(p.numel() for p in model.parameters())
  print(f'PyTorch {torch.__version__} GPT {n_params:,} params, batch {args.batch_size} x context {args.context}, '
        f'{torch.get_num_threads()} threads: {min(times_ms):.1f} ms/step min, {statistics.median(times_ms):.1f} '
        f'median over {args.repeats} x {args.steps} steps (final loss {float(loss):.3f})')


if __name__ == '__main__':
  main()
