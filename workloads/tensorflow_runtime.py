"""What a TensorFlow trial process observes of its runtime: thread pools, oneDNN, OpenMP, versions.

Shared by the workloads that run TensorFlow (unet3d, keras); called after TensorFlow is imported and
configured, so it reports what the process really runs with, not what the knobs asked for.
"""

from __future__ import annotations

import os
from typing import Any

from workloads.harness import observed_environment


def observed_tensorflow(tf: Any, keras: Any) -> dict[str, Any]:
    """The environment this process sees plus TensorFlow's own runtime settings and versions."""
    observed = observed_environment()
    return {
        **observed,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "onednn_enabled": onednn_enabled(),
        "thread_pool": (
            "OpenMP" if observed["loaded_runtimes"]["openmp"] else "TensorFlow (Eigen); KMP_*/OMP_* have no effect"
        ),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def onednn_enabled() -> bool | None:
    """Whether TensorFlow runs oneDNN kernels here (the build supports it and the env allows it)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return None
    built = bool(_pywrap_util_port.IsMklEnabled())
    return built and os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") not in ("0", "false", "False")
