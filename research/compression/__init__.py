"""Model compression: quantization, pruning, distillation, compact storage."""
