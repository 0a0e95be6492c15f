"""Shared test helpers: model files, an in-thread daemon, and a daemon started as a process."""
