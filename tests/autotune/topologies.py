"""Fake /sys and /proc trees of the hosts the instance layouts are planned for, without the hardware.

* :func:`epyc_2core`: this development host, 1 socket, 2 cores, no hyper-threads, 1 NUMA node;
* :func:`xeon_8180`: the reference study's 2-socket Xeon Platinum 8180, 28 cores per socket with
  hyper-threads (112 CPUs, numbered as Linux does: CPUs 0-27 and 56-83 on socket 0), one node per socket;
* :func:`xeon_snc`: the same CPUs with sub-NUMA clustering, 2 sockets and 4 nodes of 14 cores.
"""

from __future__ import annotations

from pathlib import Path

from autotune.host import HostInfo, build_host_info, format_cpu_list

SOFTWARE = {"python": "3.11.7", "tensorflow": "2.21.0", "keras": "3.15.1"}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _tree(root: Path, model: str, topology: dict[int, tuple[int, int]], nodes: list[list[int]]) -> HostInfo:
    blocks = [f"processor\t: {cpu}\nvendor_id\t: GenuineIntel\nmodel name\t: {model}\nphysical id\t: {s}\n"
              f"core id\t\t: {c}\nflags\t\t: fpu avx2 avx512f\n" for cpu, (s, c) in topology.items()]
    _write(root / "proc/cpuinfo", "\n".join(blocks))
    cpu_dir = root / "sys/devices/system/cpu"
    _write(cpu_dir / "online", format_cpu_list(topology) + "\n")
    for cpu, (socket, core) in topology.items():
        _write(cpu_dir / f"cpu{cpu}/topology/physical_package_id", f"{socket}\n")
        _write(cpu_dir / f"cpu{cpu}/topology/core_id", f"{core}\n")
    for node, cpus in enumerate(nodes):
        _write(root / f"sys/devices/system/node/node{node}/cpulist", format_cpu_list(cpus) + "\n")
    return build_host_info(root, usable_cpus=sorted(topology), memory_bytes=192 << 30, software=SOFTWARE)


def epyc_2core(root: Path) -> HostInfo:
    """1 socket, 2 cores, 1 NUMA node (this host)."""
    return _tree(root, "AMD EPYC", {0: (0, 0), 1: (0, 1)}, [[0, 1]])


def _xeon(root: Path, nodes_per_socket: int) -> HostInfo:
    topology = {cpu: ((cpu % 56) // 28, cpu % 28) for cpu in range(112)}
    per = 28 // nodes_per_socket
    nodes = []
    for socket in range(2):
        for part in range(nodes_per_socket):
            first = socket * 28 + part * per
            nodes.append([*range(first, first + per), *range(first + 56, first + 56 + per)])
    return _tree(root, "Intel(R) Xeon(R) Platinum 8180 CPU @ 2.50GHz", topology, nodes)


def xeon_8180(root: Path) -> HostInfo:
    """2 sockets x 28 cores x 2 threads, one NUMA node per socket."""
    return _xeon(root, 1)


def xeon_snc(root: Path) -> HostInfo:
    """2 sockets x 28 cores x 2 threads, 4 NUMA nodes of 14 cores (sub-NUMA clustering)."""
    return _xeon(root, 2)
