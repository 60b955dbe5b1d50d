"""Workloads that a trial runs in a child process; only this package imports TensorFlow."""
