"""Training: the loop, the forward pass, the frozen-prefix cache, checkpoints, shared work."""
