"""The user's own Keras 3 model file as a workload: ``autotune run --workload keras --set model=PATH``."""
