"""Autoregressive sampling from a GPT (research/models/gpt.py) with its KV cache, timed per token, and tokenizers.

    generator = generation.Generator(model, params)
    out = generator.generate(prompt_tokens, max_new_tokens=200, sampling=generation.Sampling(0.8, top_k=200),
                             seed=0, num_samples=1, callback=lambda i, tokens: ...)
    out.tokens  # [num_samples, max_new_tokens]; out.timing.decode_ms_p50, out.timing.per_position_ms

One prefill call runs the prompt (repeated num_samples times) through the model, filling the cache and sampling the
first new token; then ONE compiled decode step ([batch, 1] token + the cache -> the next token, sampled inside the
step) runs once per further token. Both are compiled ahead of time (`jit(...).lower(...).compile()`) before any
timing, so the reported latencies never include compilation, and a compiled executable cannot silently recompile:
the decode step is traced and compiled once per (batch, sampling) and reused for every token and every later call
(`Generator.traces` counts it). The cache has the model's full context length, so every step attends over the same
[context] keys (masked beyond the current position): the per-token cost is flat in the position by construction,
and `per_position_ms` lets that be checked.

Longer than the context: when the next token would not fit, the cache is rebuilt from the last `context // 2`
tokens with one more (separately compiled) prefill of that fixed length, and decoding goes on from there: a sliding
window, as nanoGPT's `generate` crops its input to the last `block_size` tokens, but re-encoding only once every
`context - context // 2` tokens instead of every token (`refill_ms` times each).

Randomness: the token at sequence position p is drawn with `fold_in(key, p)`, so a seed reproduces a generation
whatever the timing, and the rows of a batch get independent draws from one categorical sample.

Tokenizers map text to ids and each id to its bytes, so streamed output decodes incrementally (a multi-byte UTF-8
character split over tokens prints whole once complete): `ByteTokenizer` (vocab 256, our byte-level runs) and
`BPETokenizer` (GPT-2's byte-level BPE from a local Hugging Face directory, via the `tokenizers` package).
"""

import codecs
import dataclasses
import functools
import os
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

TokenCallback = Callable[[int, np.ndarray], None]  # (index of the new token, tokens [num_samples]) -> None.


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How the next token is drawn from the logits (static in the compiled step: one compilation per setting).

  Attributes:
    temperature: logits are divided by it; 0 means greedy (argmax; top_k and top_p are then ignored).
    top_k: keep only the k most likely tokens (0: all).
    top_p: nucleus sampling (Holtzman et al. 2020): keep the smallest set of most likely tokens whose probability
      reaches top_p (1.0: all).
  """
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if not self.temperature >= 0:  # Also rejects NaN.
      raise ValueError(f'temperature ({self.temperature}) must be >= 0 (0: greedy)')
    if self.top_k < 0:
      raise ValueError(f'top_k ({self.top_k}) must be >= 0 (0: no top-k filtering)')
    if not 0 < self.top_p <= 1:
      raise ValueError(f'top_p ({self.top_p}) must be in (0, 1] (1: no nucleus filtering)')


def filter_logits(logits: jax.Array, sampling: Sampling) -> jax.Array:
  """Logits divided by the temperature, -inf outside the top_k and the top_p nucleus.

  Args:
    logits: [batch, vocab] float.
    sampling: temperature (> 0), top_k, top_p (Python values: the filtering is resolved at trace time).

  Returns:
    [batch, vocab] float32.
  """
  logits = logits.astype(jnp.float32) / sampling.temperature
  vocab = logits.shape[-1]
  k = min(sampling.top_k or vocab, vocab)
  if k == vocab and sampling.top_p == 1:
    return logits
  top = jax.lax.top_k(logits, k)[0]  # [batch, k], descending.
  if sampling.top_p < 1:
    probs = jax.nn.softmax(top, axis=-1)
    # Keep a token if the mass of the more likely ones is below top_p: the first always stays.
    keep = (jnp.cumsum(probs, axis=-1) - probs) < sampling.top_p
    top = jnp.where(keep, top, jnp.inf)
  threshold = jnp.min(top, axis=-1, keepdims=True)  # The least likely kept logit (ties with it are kept too).
  return jnp.where(logits >= threshold, logits, -jnp.inf)


def sample_logits(logits: jax.Array, rng: jax.Array, sampling: Sampling) -> jax.Array:
  """Draws one token per row: argmax when sampling.temperature == 0, else from filter_logits' distribution.

  Args:
    logits: [batch, vocab] float.
    rng: a PRNG key.
    sampling: how to draw.

  Returns:
    [batch] int32 token ids.
  """
  if sampling.temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(rng, filter_logits(logits, sampling), axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class GenerationTiming:
  """Latencies of one generation (compilation excluded and reported apart), wall time on the host.

  Attributes:
    compile_s: ahead-of-time compilation of the prefill and the decode step and one warm-up run of each (~0 when
      reused from an earlier call with the same shapes and sampling).
    prefill_ms: the prompt's forward pass + first token, including the transfer of the token to the host.
    decode_ms_p50, decode_ms_p90, decode_ms_min: one decode step (one new token for every sample), per token.
    tokens_per_s: new tokens of all samples / (prefill + decode time).
    per_position_ms: [(sequence position of the token fed, ms)] for each decode step.
    device: the device kind.
    refill_ms: each rebuild of the cache from the window's last context // 2 tokens (generations longer than the
      context).
  """
  compile_s: float
  prefill_ms: float
  decode_ms_p50: float
  decode_ms_p90: float
  decode_ms_min: float
  tokens_per_s: float
  per_position_ms: list[tuple[int, float]]
  device: str
  refill_ms: list[float] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Generation:
  """Attributes: tokens: [num_samples, new_tokens] int32; prompt_tokens: the prompt's length; timing."""
  tokens: np.ndarray
  prompt_tokens: int
  timing: GenerationTiming


def _empty_cache(model: nn.Module, batch: int) -> Any:
  """The zero KV cache for `batch` rows, from the cache's shapes (no params initialised)."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((batch, 1), jnp.int32), train=False,
                                             decode=True))['cache']
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), nn.meta.unbox(shapes))


class Generator:
  """Samples from a GPT with its KV cache; compiled executables are kept per (prompt length, batch, sampling).

  Attributes:
    model: the GPT module (decode=True API).
    params: its params, placed on one device.
    traces: how many times the decode step has been traced (== compiled) so far.
  """

  def __init__(self, model: nn.Module, params: Any, *, device: jax.Device | None = None,
               compiler_options: dict[str, Any] | None = None):
    """Args: model, params; device: where to run (default: the first); compiler_options: XLA options of both
    compilations (tests trade run time for compile time with {'xla_backend_optimization_level': 0})."""
    self.model = model
    self.compiler_options = compiler_options
    self.device = device or jax.devices()[0]
    self.params = jax.device_put(params, self.device)
    self.traces = 0
    self._compiled: dict[tuple, Any] = {}

  def _forward(self, params, cache, tokens, key, sampling: Sampling):
    """tokens [batch, time] at the cache's position -> (cache, next token [batch, 1] drawn at position + time),
    the next token already in the shape the decode step takes."""
    logits, variables = self.model.apply({'params': params, 'cache': cache}, tokens, train=False, decode=True,
                                         mutable=['cache'])
    cache = variables['cache']
    position = cache['position']  # After this call: the sequence position of the token being drawn.
    return cache, sample_logits(logits[:, -1], jax.random.fold_in(key, position), sampling)[:, None]

  def _decode_step(self, params, cache, token, key, sampling: Sampling):
    self.traces += 1  # Runs at trace time only: counts compilations of the step, never per token.
    return self._forward(params, cache, token, key, sampling)

  def _compile(self, name: str, fn, cache, tokens: jax.Array, key: jax.Array, sampling: Sampling):
    """fn compiled for these shapes (cache donated: updated in place), from self._compiled when seen before."""
    signature = (name, tokens.shape, sampling)
    if signature not in self._compiled:
      jitted = jax.jit(functools.partial(fn, sampling=sampling), donate_argnums=1,
                       compiler_options=self.compiler_options)
      self._compiled[signature] = jitted.lower(self.params, cache, tokens, key).compile()
    return self._compiled[signature]

  @property
  def window(self) -> int:
    """Tokens the cache is rebuilt from when a generation outgrows the context."""
    return max(1, self.model.context // 2)

  def check_length(self, prompt_tokens: int, max_new_tokens: int) -> None:
    """Raises ValueError unless 1 <= prompt < the model's context and max_new_tokens >= 1 (a generation longer
    than the context slides its window: see the module docstring)."""
    context = self.model.context
    if prompt_tokens < 1:
      raise ValueError('the prompt is empty: give at least one token')
    if max_new_tokens < 1:
      raise ValueError(f'max_new_tokens ({max_new_tokens}) must be >= 1')
    if prompt_tokens >= context:
      raise ValueError(f'the prompt ({prompt_tokens} tokens) must be shorter than the model\'s context ({context} '
                       f'tokens); shorten it to at most {context - 1}')

  def generate(self, prompt: list[int] | np.ndarray, *, max_new_tokens: int, sampling: Sampling, seed: int = 0,
               num_samples: int = 1, callback: TokenCallback | None = None) -> Generation:
    """Continues `prompt` num_samples times.

    Args:
      prompt: [prompt_tokens] token ids.
      max_new_tokens: tokens to generate (exactly this many: there is no stop token).
      sampling: how to draw each token.
      seed: the PRNG seed; token p is drawn with fold_in(key(seed), p).
      num_samples: independent continuations, generated as one batch.
      callback: called with (i, tokens [num_samples]) as soon as new token i is on the host.

    Returns:
      The Generation: tokens [num_samples, max_new_tokens] and its timing.

    Raises:
      ValueError: an empty prompt, num_samples < 1, or a prompt as long as the model's context.
    """
    prompt = np.asarray(prompt, np.int32).reshape(-1)
    self.check_length(len(prompt), max_new_tokens)
    if num_samples < 1:
      raise ValueError(f'num_samples ({num_samples}) must be >= 1')
    key = jax.device_put(jax.random.key(seed), self.device)
    cache = jax.device_put(_empty_cache(self.model, num_samples), self.device)
    tokens = jax.device_put(np.tile(prompt, (num_samples, 1)), self.device)  # [num_samples, prompt_tokens]
    step_tokens = jax.ShapeDtypeStruct((num_samples, 1), jnp.int32)
    t0 = time.perf_counter()
    fresh = ('prefill', tokens.shape, sampling) not in self._compiled
    prefill = self._compile('prefill', self._forward, cache, tokens, key, sampling)
    step = self._compile('decode', self._decode_step, cache, step_tokens, key, sampling)
    refill = None
    if len(prompt) + max_new_tokens > self.model.context:
      window = jax.ShapeDtypeStruct((num_samples, self.window), jnp.int32)
      fresh = fresh or ('prefill', window.shape, sampling) not in self._compiled
      refill = self._compile('prefill', self._forward, cache, window, key, sampling)
    if fresh:  # An executable's first run pays a one-time setup (~20 ms on CPU): keep it out of the timings.
      warm_cache, warm_token = prefill(self.params, _empty_cache(self.model, num_samples), tokens, key)
      jax.block_until_ready(step(self.params, warm_cache, warm_token, key))
      if refill is not None:
        jax.block_until_ready(refill(self.params, _empty_cache(self.model, num_samples),
                                     jnp.zeros((num_samples, self.window), jnp.int32), key))
    compile_s = time.perf_counter() - t0
    return self._run(prefill, step, refill, cache, tokens, key, max_new_tokens=max_new_tokens, callback=callback,
                     compile_s=compile_s)

  def _run(self, prefill, step, refill, cache, tokens, key, *, max_new_tokens: int, callback: TokenCallback | None,
           compile_s: float) -> Generation:
    """Prefill, then the decode loop (sliding the window with `refill` when the context is full); times each call
    with its token's transfer to the host (callback untimed)."""
    num_samples, prompt_tokens = tokens.shape
    context = self.model.context
    out = np.empty((num_samples, max_new_tokens), np.int32)
    history = np.asarray(jax.device_get(tokens))  # Only read when the window slides.
    # An empty cache to copy at each slide (the refill donates its cache argument): tracing the model for the cache's
    # shapes at every slide cost ~100 ms.
    empty = _empty_cache(self.model, num_samples) if refill is not None else None
    jax.block_until_ready((self.params, cache, tokens, key))  # Pending transfers are not the prefill's time.
    t0 = time.perf_counter()
    cache, token = prefill(self.params, cache, tokens, key)  # token: [num_samples, 1]
    out[:, 0] = jax.device_get(token)[:, 0]
    prefill_s = time.perf_counter() - t0
    if callback:
      callback(0, out[:, 0])
    step_s, positions, refill_s = [], [], []
    position = prompt_tokens  # The cache position the next step's token goes to.
    for i in range(1, max_new_tokens):
      if position == context:  # Full: rebuild the cache from the last `window` tokens (and draw token i).
        window = np.concatenate([history, out[:, :i]], axis=1)[:, -self.window:]
        # A fresh key per window: positions restart at 0 and must not repeat the earlier draws.
        key = jax.random.fold_in(key, len(refill_s) + 1)
        t0 = time.perf_counter()
        cache, token = refill(self.params, jax.tree.map(jnp.zeros_like, empty), jnp.asarray(window), key)
        out[:, i] = jax.device_get(token)[:, 0]
        refill_s.append(time.perf_counter() - t0)
        position = self.window
      else:
        t0 = time.perf_counter()
        cache, token = step(self.params, cache, token, key)
        out[:, i] = jax.device_get(token)[:, 0]
        step_s.append(time.perf_counter() - t0)
        positions.append(position)
        position += 1
      if callback:
        callback(i, out[:, i])
    step_ms = np.asarray(step_s) * 1e3
    timing = GenerationTiming(
        compile_s=compile_s, prefill_ms=prefill_s * 1e3,
        decode_ms_p50=float(np.median(step_ms)) if len(step_ms) else float('nan'),
        decode_ms_p90=float(np.percentile(step_ms, 90)) if len(step_ms) else float('nan'),
        decode_ms_min=float(step_ms.min()) if len(step_ms) else float('nan'),
        tokens_per_s=num_samples * max_new_tokens / (prefill_s + sum(step_s) + sum(refill_s)),
        per_position_ms=[(int(p), float(ms)) for p, ms in zip(positions, step_ms)],
        device=self.device.device_kind, refill_ms=[1e3 * t for t in refill_s])
    return Generation(tokens=out, prompt_tokens=prompt_tokens, timing=timing)


class StreamDecoder:
  """Turns token ids into text as they arrive: bytes through an incremental UTF-8 decoder (invalid -> U+FFFD)."""

  def __init__(self, tokenizer: 'ByteTokenizer | BPETokenizer'):
    self._tokenizer = tokenizer
    self._decoder = codecs.getincrementaldecoder('utf-8')(errors='replace')

  def __call__(self, token: int) -> str:
    """The text completed by `token` (empty while a multi-byte character is incomplete)."""
    return self._decoder.decode(self._tokenizer.token_bytes(int(token)))

  def flush(self) -> str:
    """What is left at the end (a replacement character for a truncated multi-byte sequence)."""
    return self._decoder.decode(b'', final=True)


class ByteTokenizer:
  """UTF-8 bytes as tokens (vocab 256): the tokenizer of research/data/text.py's byte-level datasets."""

  vocab_size = 256

  def encode(self, text: str) -> list[int]:
    return list(text.encode('utf-8'))

  def token_bytes(self, token: int) -> bytes:
    return bytes([token])

  def decode(self, tokens) -> str:
    return b''.join(self.token_bytes(int(t)) for t in tokens).decode('utf-8', errors='replace')


def _gpt2_byte_alphabet() -> dict[str, int]:
  """GPT-2's byte-level BPE alphabet inverted: the printable character standing for each byte -> the byte.

  Printable bytes stand for themselves; the 68 others (controls, space, ...) map to chr(256 + n) in byte order
  (Radford et al. 2019's `bytes_to_unicode`).
  """
  printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1), *range(ord('®'), ord('ÿ') + 1)]
  chars = {b: chr(b) for b in printable}
  others = [b for b in range(256) if b not in chars]
  chars.update({b: chr(256 + n) for n, b in enumerate(others)})
  return {c: b for b, c in chars.items()}


class BPETokenizer:
  """GPT-2's byte-level BPE read from a local Hugging Face directory (tokenizer.json, or vocab.json + merges.txt).

  Attributes:
    vocab_size: the tokenizer's vocabulary size (50257 for GPT-2).
  """

  def __init__(self, directory: str):
    import tokenizers  # pylint: disable=g-import-not-at-top  (only for GPT-2 checkpoints)

    tokenizer_json = os.path.join(directory, 'tokenizer.json')
    vocab, merges = os.path.join(directory, 'vocab.json'), os.path.join(directory, 'merges.txt')
    if os.path.isfile(tokenizer_json):
      self._tokenizer = tokenizers.Tokenizer.from_file(tokenizer_json)
    elif os.path.isfile(vocab) and os.path.isfile(merges):
      self._tokenizer = tokenizers.ByteLevelBPETokenizer(vocab, merges)  # GPT-2's: no prefix space.
    else:
      raise FileNotFoundError(f'{directory} has no tokenizer: expected tokenizer.json or vocab.json + merges.txt '
                              '(the files of `huggingface-cli download gpt2`)')
    self.vocab_size = self._tokenizer.get_vocab_size()
    alphabet = _gpt2_byte_alphabet()
    self._bytes = {}
    for piece, token in self._tokenizer.get_vocab().items():
      self._bytes[token] = (bytes(alphabet[c] for c in piece) if all(c in alphabet for c in piece)
                            else piece.encode('utf-8'))  # Added special tokens such as <|endoftext|>.

  def encode(self, text: str) -> list[int]:
    return self._tokenizer.encode(text).ids

  def token_bytes(self, token: int) -> bytes:
    return self._bytes[token]

  def decode(self, tokens) -> str:
    return b''.join(self.token_bytes(int(t)) for t in tokens).decode('utf-8', errors='replace')

