"""Benchmarks and experiments that print figures (not tests); run them as ``python -m experiments.<name>``."""
