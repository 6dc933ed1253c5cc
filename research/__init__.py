"""costlab research library: data, models, training, checkpointing and cost accounting.

Never imports `configs/` or `experiments/`; receives a resolved config as an argument.
"""
