"""Sweeps: the one-pass featurize plan (a Hydra callback), the sweep report, and the cache admin."""
