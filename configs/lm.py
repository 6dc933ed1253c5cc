r"""Language-model presets: GPT-2-architecture decoders (research/models/gpt.py) on byte-level text.

  python -m experiments.train --config=configs/lm.py:tiny --workdir=runs/lm_tiny
  python -m experiments.generate --workdir=runs/lm_tiny --prompt="ROMEO." --max_new_tokens=200

Presets:
  tiny    nanoGPT's CPU "baby GPT" (4 layers, 4 heads, width 128, context 64, batch 12, 2000 steps, AdamW 1e-3 with
          100 warmup steps and cosine decay to 1e-4, beta2 0.99, weight decay 0.1, clip 1.0, no dropout): nanoGPT
          reports a validation loss of ~1.88 for it on shakespeare_char.
  small   nanoGPT's GPU shakespeare_char model (6 layers, 6 heads, width 384, context 256, batch 64, dropout 0.2,
          5000 steps): ~10.7M params, ~1 TFLOP per step; for a GPU.
  gpt2, gpt2-medium, gpt2-large, gpt2-xl
          the GPT-2 architectures (124M / 355M / 774M / 1.56B with GPT-2's 50257-token vocabulary; here the vocabulary
          is the dataset's: 256 bytes) at context 1024 with nanoGPT's GPT-2 recipe (AdamW 6e-4, beta2 0.95, warmup,
          cosine to 1/10). The 5 MB offline corpus is far too small for them: train on lm1b
          (--config.dataset.name=lm1b, needs internet to prepare) on an accelerator.

Every preset trains on the offline Shakespeare corpus (research/data/text.py) unless dataset.name is overridden
(tiny_shakespeare and lm1b are TFDS catalog datasets).
"""

import ml_collections

from configs import base

# (num_layers, num_heads, d_model, context, dropout_rate)
ARCHITECTURES = {
    'tiny': (4, 4, 128, 64, 0.0),
    'small': (6, 6, 384, 256, 0.2),
    'gpt2': (12, 12, 768, 1024, 0.0),
    'gpt2-medium': (24, 16, 1024, 1024, 0.0),
    'gpt2-large': (36, 20, 1280, 1024, 0.0),
    'gpt2-xl': (48, 25, 1600, 1024, 0.0),
}


def get_config(arg: str = 'tiny') -> ml_collections.ConfigDict:
  """Returns the language-model preset `arg`, one of ARCHITECTURES."""
  if arg not in ARCHITECTURES:
    raise ValueError(f'configs/lm.py preset {arg!r}: expected one of {sorted(ARCHITECTURES)}')
  layers, heads, width, context, dropout = ARCHITECTURES[arg]
  config = base.get_base_config()
  config.dataset.name = 'shakespeare'
  config.dataset.seq_len = context
  config.model.name = 'gpt'
  config.model.update(dict(num_layers=layers, num_heads=heads, d_model=width, context=context,
                           dropout_rate=dropout, attention='auto', remat=False))
  opt = config.optimizer
  opt.name, opt.schedule, opt.grad_clip_norm, opt.weight_decay, opt.b1 = 'adamw', 'warmup_cosine', 1.0, 0.1, 0.9
  if arg == 'tiny':
    config.steps, config.batch_size, config.eval_batch_size = 2000, 12, 500
    opt.learning_rate, opt.min_learning_rate, opt.warmup_steps, opt.b2 = 1e-3, 1e-4, 100, 0.99
    # A full pass over the validation split (505k tokens) takes seconds: twice in the run and at the end.
    config.eval_every, config.log_every, config.checkpoint_every = 1000, 50, 1000
  elif arg == 'small':
    config.steps, config.batch_size, config.eval_batch_size = 5000, 64, 250
    opt.learning_rate, opt.min_learning_rate, opt.warmup_steps, opt.b2 = 1e-3, 1e-4, 100, 0.99
    config.eval_every, config.log_every, config.checkpoint_every = 500, 50, 1000
  else:
    config.steps, config.batch_size, config.eval_batch_size = 5000, 64, 64
    opt.learning_rate, opt.min_learning_rate, opt.warmup_steps, opt.b2 = 6e-4, 6e-5, 500, 0.95
    config.eval_every, config.log_every, config.checkpoint_every = 500, 50, 1000
  return config
