"""autotune: tune deep-learning workloads on Xeon CPUs, one subprocess per Optuna trial."""

__version__ = "0.1.0"
