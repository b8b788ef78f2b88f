"""Training a network: the losses, the iteration loop with its checkpoints and signals, TensorBoard logging."""
