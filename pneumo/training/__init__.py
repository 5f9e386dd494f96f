"""Fitting the networks: the training loop, its state, optimiser, distributed runs and the baselines."""
