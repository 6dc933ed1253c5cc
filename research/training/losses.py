"""Losses and per-example (per-token for language models) metrics, L1/L2 weight penalties, and distillation."""

import math

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy per example.

  Args:
    logits: [..., num_classes] float ([batch] or [batch, time] leading dims).
    labels: [...] int class ids (next tokens for a language model).

  Returns:
    [...] losses in nats.
  """
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """[...] 1.0 where argmax(logits) == label, else 0.0."""
  return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


def distillation_kl(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float) -> jax.Array:
  """T^2 KL(softmax(teacher / T) || softmax(student / T)) per example (Hinton et al. 2015).

  The T^2 keeps the soft term's gradient on the scale of the hard cross-entropy's as T changes.

  Args:
    student_logits: [..., num_classes].
    teacher_logits: [..., num_classes], treated as constants.
    temperature: T > 0.

  Returns:
    [...] in nats.
  """
  targets = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / temperature, axis=-1)
  log_predictions = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
  return temperature ** 2 * optax.kl_divergence(log_predictions, targets)


def language_model_metrics(loss: float) -> dict[str, float]:
  """Perplexity exp(loss) and bits per byte loss / ln 2 of a mean next-token loss in nats per byte token.

  Bits per byte equals bits per token only for byte-level tokens (every language-model dataset here); a tokenizer
  with longer tokens would divide by the mean bytes per token.
  """
  return {'perplexity': math.exp(min(loss, 700.0)), 'bits_per_byte': loss / math.log(2)}


def _weights(params) -> list[jax.Array]:
  # Penalise weight matrices and conv kernels only (ndim >= 2): biases, norm scales and 1-D gains are left
  # alone, as is conventional (Goodfellow et al. 2016, sec. 7.1).
  return [w for w in jax.tree.leaves(params) if w.ndim >= 2]


def weight_penalty(params, *, l1: float, l2: float) -> jax.Array:
  """`l1 * sum|w| + l2 * 0.5 * sum w^2` over the weight matrices and kernels of `params`."""
  total = jnp.zeros((), jnp.float32)
  if l1:
    total += l1 * sum(jnp.sum(jnp.abs(w)) for w in _weights(params))
  if l2:
    total += l2 * 0.5 * sum(jnp.sum(jnp.square(w)) for w in _weights(params))
  return total
