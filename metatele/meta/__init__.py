"""Meta-training: the configuration, the unroll engine, the training loop, training states and data parallelism."""
