"""Defaults shared by every config: one comment per field.

Every key a run may use is declared here (model fields aside, which the model's dataclass declares), so that
`research.config.validate` can reject unknown keys and wrong types before any work starts.
"""

import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
  """Returns the shared defaults; presets override fields, never add top-level keys."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # Seeds parameter init, dropout (fold_in(key, step)) and the data order.
  c.steps = 6000  # Number of optimizer steps (training length).
  c.batch_size = 100  # Global batch size (split over the `data` mesh axis).
  c.eval_batch_size = 1000  # Batch size of evaluation; the last batch is padded and masked.
  c.eval_every = 250  # Evaluate on the test split every this many steps (and at the end).
  c.eval_examples = 0  # Evaluate on this many test examples, evenly spaced (a fixed subset); 0 = the whole split.
  c.log_every = 50  # Write mean train metrics every this many steps.
  c.checkpoint_every = 1000  # Save a checkpoint every this many steps (and at the end).
  c.keep_checkpoints = 3  # Number of most recent checkpoints kept on disk.
  c.progress = True  # Progress bar on a TTY, plain log lines otherwise.
  # Steps with a NaN/Inf loss or gradient are skipped (no update). This many in a row (checked at each log point)
  # stop the run: the last good checkpoint is restored and the run exits 1 naming the step.
  c.max_consecutive_nonfinite = 20

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = 'mnist1d'  # One of research.data.DATASETS.
  c.dataset.data_dir = ''  # TFDS data dir; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets.
  c.dataset.variant = 'standard'  # mnist1d only: 'standard' or 'shuffled' (fixed permutation of positions).
  c.dataset.order = 'epoch'  # Training batches: 'epoch' (fresh shuffle every epoch) or 'stored' (stored order).
  # Classifiers: train on the first N examples of the train split (a fixed subset, for small-data and overfitting
  # studies); 0 = all of them.
  c.dataset.train_examples = 0
  c.dataset.seq_len = 64  # Language-model datasets only: tokens per training/evaluation sequence (<= model.context).

  # Model fields beyond `name` are the model's dataclass fields (research.models); presets set them.
  c.model = ml_collections.ConfigDict()
  c.model.name = 'cnn'  # One of research.models.MODELS.

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'adam'  # sgd | momentum | nesterov | adagrad | rmsprop | adam | adamw.
  c.optimizer.learning_rate = 1e-2  # Peak learning rate.
  c.optimizer.schedule = 'constant'  # constant | warmup_cosine | step.
  c.optimizer.warmup_steps = 0  # Linear warmup length (warmup_cosine).
  c.optimizer.decay_every = 1000  # Step schedule: multiply the rate by decay_factor every this many steps.
  c.optimizer.decay_factor = 0.1  # Step schedule: multiplier applied at each decay.
  c.optimizer.min_learning_rate = 0.0  # Final rate of warmup_cosine.
  c.optimizer.momentum = 0.9  # momentum / nesterov / rmsprop momentum (rmsprop: 0 disables).
  c.optimizer.b1 = 0.9  # Adam/AdamW first-moment decay.
  c.optimizer.b2 = 0.999  # Adam/AdamW second-moment decay.
  c.optimizer.eps = 1e-8  # Adam/AdamW/RMSprop/AdaGrad epsilon.
  c.optimizer.decay = 0.9  # RMSprop squared-gradient decay.
  c.optimizer.weight_decay = 0.0  # adamw: decoupled decay of kernels (ndim >= 2); others: added to the gradient.
  c.optimizer.grad_clip_norm = 0.0  # Clip gradients to this global norm; 0 disables.
  c.optimizer.l1 = 0.0  # L1 penalty coefficient added to the loss (sum |w| over kernels).
  c.optimizer.l2 = 0.0  # L2 penalty coefficient added to the loss (0.5 * sum w^2 over kernels).

  c.accumulate_steps = 1  # Gradient accumulation: microbatches per step (batch_size / this each); 1 = none.
  c.compute_dtype = 'float32'  # float32 | bfloat16: dtype of the forward/backward; params and optimizer stay f32.

  # Device mesh (research/sharding.py, docs/scaling.md): the product of the axes must be the number of devices
  # used (num_devices); one axis may be -1 (the devices left). Batches split over data x fsdp; parameters over the
  # axes their logical names map to by `rules`.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.num_devices = -1  # Use the first N devices (e.g. scaling studies on one host); -1 = all.
  c.mesh.data = -1  # Data parallel: parameters replicated along this axis.
  c.mesh.fsdp = 1  # Fully sharded data parallel: the batch and parameters/optimizer state split along this axis.
  c.mesh.tensor = 1  # Tensor parallel (Megatron): attention heads and MLP hidden units split along this axis.
  # Logical axis name (models' flax partitioning) -> mesh axis, or None (replicated). A dimension that the mesh
  # axis does not divide stays replicated (the run card lists such parameters).
  c.mesh.rules = (('embed', 'fsdp'), ('mlp', 'tensor'), ('heads', 'tensor'), ('kv', None), ('classes', None),
                  ('vocab', 'tensor'), ('conv_window', None))

  # Multi-process runs (one process per host): jax.distributed.initialize before anything touches the devices.
  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator_address = ''  # host:port of process 0; '' = one process (unless auto_detect).
  c.distributed.num_processes = 1  # With coordinator_address: the number of processes.
  c.distributed.process_id = 0  # With coordinator_address: this process's index in [0, num_processes).
  # jax.distributed.initialize() with no arguments: detects Cloud TPU pods, SLURM, Open MPI and GKE clusters
  # (experiments.launch sets it on TPU VMs).
  c.distributed.auto_detect = False

  # The run stops cleanly (checkpoint, card, exit 0) at the first budget reached, counting every session of the run;
  # stop_reason names it. 0 = no limit.
  c.budget = ml_collections.ConfigDict()
  c.budget.max_seconds = 0.0  # Wall-clock seconds.
  c.budget.max_flops = 0.0  # Train FLOPs (steps x XLA's FLOPs per train step).
  c.budget.max_joules = 0.0  # Energy, as the run card's energy source measures or estimates it.

  c.accounting = ml_collections.ConfigDict()
  c.accounting.energy_source = 'auto'  # auto (nvml > rapl > estimate) | nvml | rapl | estimate.
  c.accounting.watts_per_busy_core = 5.0  # The estimate's power per busy CPU core (~ server CPU TDP / cores).
  # Grid carbon intensity for co2_g: 2023 world average, Ember "Global Electricity Review 2024" (480 gCO2/kWh).
  c.accounting.grid_co2_g_per_kwh = 480.0

  # Compression while training (research/compression; python -m experiments.compress sets these for you). All off
  # by default.
  c.compression = ml_collections.ConfigDict()
  # Start from these params instead of a random init (fine-tuning): a trained run's workdir (its latest checkpoint)
  # or a .safetensors file written by research.compression.storage. The optimizer state starts fresh.
  c.compression.init_from = ''
  # Quantization-aware training: weights (ndim >= 2) fake-quantized per output channel to this many bits in every
  # forward pass, train and eval, with a straight-through gradient. 0 = off; 2..8.
  c.compression.qat_bits = 0
  # Magnitude pruning (Zhu & Gupta 2017): this fraction of the weights (ndim >= 2) is zeroed and kept at zero.
  c.compression.sparsity = 0.0
  c.compression.prune_scope = 'global'  # global (one threshold over all weights) | layer (the fraction per weight).
  c.compression.prune_start = 0  # Step of the first mask.
  # Step where the sparsity reaches its target, ramping as s (1 - (1 - t)^3); <= prune_start: one shot.
  c.compression.prune_end = 0
  c.compression.prune_every = 50  # Steps between mask updates on the ramp.
  # Knowledge distillation (Hinton et al. 2015) from a trained classifier or language model's workdir: the objective
  # is distill_weight * T^2 * KL(teacher_T || student_T) + (1 - distill_weight) * cross-entropy. '' = off.
  c.compression.teacher = ''
  c.compression.temperature = 4.0  # T: both logits divided by it in the KL term.
  c.compression.distill_weight = 0.9
  # Evaluation and prediction of an int8 model written by experiments.compress (method w8a8) with integer matmuls:
  # int8 weights x dynamically quantized int8 activations -> int32 (research/compression/int8_exec.py). Not for
  # training.
  c.compression.int8_matmul = False
  return c
