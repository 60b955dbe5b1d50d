"""The host's GEMM peaks as TensorFlow reaches them (float32, and bfloat16 where it runs).

Run as ``python -m workloads.gemm``.

A large square matmul (the kernel class that dominates convolutions under oneDNN) is timed after a
warm-up; the fastest repeat gives the peak, the median the typical rate. Prints one protocol
``result`` line.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from autotune.protocol import encode_message

DEFAULT_SIZE = 4096


def main() -> int:
    """Measure and print the GEMM rate."""
    parser = argparse.ArgumentParser(prog="python -m workloads.gemm")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    n = args.size
    flops = 2 * n**3
    rates = {}
    for dtype in (tf.float32, tf.bfloat16):
        times = _time_matmul(tf, n, dtype, args.repeats)
        if times:
            rates[dtype.name] = {"peak": flops / min(times) / 1e9, "median": flops / statistics.median(times) / 1e9,
                                 "seconds": times}
    float32, bfloat16 = rates["float32"], rates.get("bfloat16", {})
    print(encode_message("result", size=n, seconds=float32["seconds"], median_gflops_per_s=float32["median"],
                         peak_gflops_per_s=float32["peak"], bfloat16_peak_gflops_per_s=bfloat16.get("peak"),
                         tensorflow=tf.__version__), flush=True)
    return 0


def _time_matmul(tf, n: int, dtype, repeats: int) -> list[float]:
    """Timed repeats of an n x n matmul in ``dtype`` after one warm-up; empty where the dtype cannot run."""
    a = tf.cast(tf.random.normal((n, n), seed=1), dtype)
    b = tf.cast(tf.random.normal((n, n), seed=2), dtype)
    matmul = tf.function(tf.linalg.matmul)
    try:
        matmul(a, b).numpy()
    except (tf.errors.OpError, TypeError, ValueError):
        return []
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).numpy()
        times.append(time.perf_counter() - start)
    return times


if __name__ == "__main__":
    raise SystemExit(main())
