"""Synthetic data: the alphabet, the frozen shape generator and the cached datamodule."""
