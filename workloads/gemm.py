"""The host's float32 GEMM peak as TensorFlow reaches it: ``python -m workloads.gemm``.

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
    a = tf.random.normal((n, n), dtype=tf.float32, seed=1)
    b = tf.random.normal((n, n), dtype=tf.float32, seed=2)
    matmul = tf.function(tf.linalg.matmul)
    matmul(a, b).numpy()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        matmul(a, b).numpy()
        times.append(time.perf_counter() - start)
    flops = 2 * n**3
    print(encode_message("result", size=n, seconds=times, median_gflops_per_s=flops / statistics.median(times) / 1e9,
                         peak_gflops_per_s=flops / min(times) / 1e9, tensorflow=tf.__version__), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
