"""What the CLI prints for people: rich tables of hosts, trials and results."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

from autotune.calibrate import Calibration
from autotune.host import HostInfo
from autotune.record import figures_of

console = Console(stderr=False, highlight=False)
if not console.is_terminal:
    console.width = max(console.width, 160)  # logs and CI: no terminal to fold tables into 80 columns


def format_figure(value: float | None, unit: str = "") -> str:
    """A figure with its unit, large ones with an SI prefix: ``1.94 M samples/s``, ``41.2 images/s``; or a dash."""
    if value is None:
        return "-"
    for threshold, scale, prefix in ((1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if abs(value) >= threshold:
            return f"{value / scale:,.2f} {prefix} {unit}".rstrip()
    text = f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return f"{text} {unit}".rstrip()


def print_bench(record: Mapping[str, Any], units: Mapping[str, str] | None = None) -> None:
    """Print one bench record: the knobs that matter and the figures (with ``units`` by figure name)."""
    units = units or {}
    table = Table(title=f"autotune bench: {record['workload']} ({record['outcome']})", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for name, value in record["config"].items():
        table.add_row(name, str(value))
    table.add_row("cpus", "all" if record["cpus"] is None else ",".join(map(str, record["cpus"])))
    if record["outcome"] == "ok":
        steps = ", ".join(f"{t:.3f}" for t in record["step_seconds"])
        table.add_row("step times (s)", steps)
        median, mad, cv = record["median_step_s"], record["mad_step_s"], record["cv"]
        table.add_row("median step", f"{median:.4f} s (MAD {mad:.4f}, CV {cv:.1%})")
        for name, value in figures_of(record).items():
            table.add_row(name, format_figure(value, units.get(name, "")))
        if record.get("warning"):
            table.add_row("warning", record["warning"])
        table.add_row("peak RSS", f"{record['peak_rss_mb']:.0f} MiB")
        effective = record.get("effective", {})
        shown = ("layout", "onednn_enabled", "intra_op_threads", "inter_op_threads", "thread_pool", "tensorflow",
                 "keras")
        for key in shown:
            if key in effective:
                table.add_row(f"observed {key}", str(effective[key]))
    else:
        table.add_row("reason", record["reason"])
    console.print(table)


def print_host(host: HostInfo, calibration: Calibration | None = None) -> None:
    """Print the host probe, with the GEMM peak when it was calibrated."""
    table = Table(title=f"host {host.fingerprint}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("CPU", host.cpu_model)
    table.add_row("sockets / cores / logical CPUs", f"{host.sockets} / {host.physical_cores} / {host.logical_cpus}")
    table.add_row("usable CPUs", ",".join(map(str, host.usable_cpus)))
    for node in host.numa_nodes:
        table.add_row(f"NUMA node {node.id}", ",".join(map(str, node.cpus)))
    table.add_row("ISA", " ".join(name for name, present in host.isa.items() if present) or "-")
    table.add_row("memory", f"{host.memory_bytes / 2**30:.1f} GiB")
    table.add_row("allocators", ", ".join(f"{k} ({v})" for k, v in host.allocators.items()) or "system only")
    for name, version in host.software.items():
        table.add_row(name, version)
    if calibration is None:
        table.add_row("float32 GEMM peak", "not calibrated (autotune host --calibrate)")
    else:
        table.add_row("float32 GEMM peak", f"{calibration.peak_gflops_per_s:.0f} GFLOP/s (median "
                      f"{calibration.median_gflops_per_s:.0f}, {calibration.size}^2, {calibration.measured_at})")
        bf16 = calibration.bfloat16_peak_gflops_per_s
        table.add_row("bfloat16 GEMM peak", "does not run here" if bf16 is None else f"{bf16:.0f} GFLOP/s")
    console.print(table)
