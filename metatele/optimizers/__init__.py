"""Optimizers: the LSTM meta-optimizers, the learned optimizer built from them, hand-designed baselines and the torch.optim drop-in."""
