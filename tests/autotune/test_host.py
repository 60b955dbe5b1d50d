from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import psutil
import pytest

from autotune.host import (
    ISA_FLAGS,
    NOT_PROBED,
    SOFTWARE_KEYS,
    UNAVAILABLE,
    HostInfo,
    build_host_info,
    cpus_for_cores,
    find_allocators,
    format_cpu_list,
    packaged_allocators,
    parse_cpu_list,
    probe_host,
    read_cpuinfo,
    read_topology,
    socket_cpus,
    software_versions,
)

REPO = Path(__file__).resolve().parents[2]
SOFTWARE = {"python": "3.11.7", "tensorflow": "2.21.0", "keras": "3.15.1"}
FLAGS = "fpu sse2 avx avx2 avx512f avx512_vnni amx_tile"


def write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)


def cpuinfo_block(cpu: int, socket: int, core: int) -> str:
    return (
        f"processor\t: {cpu}\nvendor_id\t: GenuineIntel\n"
        f"model name\t: Intel(R) Xeon(R) Gold 6338\nphysical id\t: {socket}\n"
        f"core id\t\t: {core}\nflags\t\t: {FLAGS}\n"
    )


def two_socket_tree(root: Path, *, sysfs: bool = True) -> Path:
    """2 sockets x 4 cores x 2 threads, numbered as Linux does: CPU 0-3 and 8-11 on socket 0."""
    layout = {cpu: ((cpu // 4) % 2, cpu % 4) for cpu in range(16)}
    blocks = [cpuinfo_block(cpu, socket, core) for cpu, (socket, core) in layout.items()]
    write(root / "proc/cpuinfo", "\n".join(blocks))
    if sysfs:
        cpu_dir = root / "sys/devices/system/cpu"
        write(cpu_dir / "online", "0-15\n")
        for cpu, (socket, core) in layout.items():
            write(cpu_dir / f"cpu{cpu}/topology/physical_package_id", f"{socket}\n")
            write(cpu_dir / f"cpu{cpu}/topology/core_id", f"{core}\n")
        write(root / "sys/devices/system/node/node0/cpulist", "0-3,8-11\n")
        write(root / "sys/devices/system/node/node1/cpulist", "4-7,12-15\n")
    return root


def fake_host(root: Path, usable: range | list[int] = range(16)) -> HostInfo:
    return build_host_info(
        root, usable_cpus=list(usable), memory_bytes=256 << 30, software=SOFTWARE
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return two_socket_tree(tmp_path)


def test_cpu_lists() -> None:
    assert parse_cpu_list("0-3,8-11\n") == (0, 1, 2, 3, 8, 9, 10, 11)
    assert parse_cpu_list("5") == (5,)
    assert parse_cpu_list("") == ()
    with pytest.raises(ValueError):
        parse_cpu_list("a-b")
    assert format_cpu_list([9, 0, 1, 2, 3, 8, 5]) == "0-3,5,8-9"
    assert format_cpu_list([]) == ""


def test_fake_two_socket_host(tree: Path) -> None:
    host = fake_host(tree)
    assert host.cpu_model == "Intel(R) Xeon(R) Gold 6338"
    assert host.vendor == "GenuineIntel"
    assert (host.sockets, host.physical_cores, host.logical_cpus) == (2, 8, 16)
    assert host.physical_cores_per_socket == 4
    assert [(n.id, n.cpus) for n in host.numa_nodes] == [
        (0, (0, 1, 2, 3, 8, 9, 10, 11)),
        (1, (4, 5, 6, 7, 12, 13, 14, 15)),
    ]
    assert host.core_of_cpu[5] == host.core_of_cpu[13] == (1, 1)
    assert host.isa == {flag: flag in FLAGS.split() for flag in ISA_FLAGS}
    assert host.allocators == {}
    assert set(host.software) == set(SOFTWARE_KEYS)
    assert host.software["tensorflow"] == "2.21.0"
    assert socket_cpus(host, 0) == [0, 1, 2, 3, 8, 9, 10, 11]
    assert socket_cpus(host, 1) == [4, 5, 6, 7, 12, 13, 14, 15]


def test_cpuinfo_fallback_without_sysfs(tmp_path: Path) -> None:
    root = two_socket_tree(tmp_path, sysfs=False)
    host = fake_host(root)
    assert host.core_of_cpu == read_topology(root, read_cpuinfo(root))
    assert host.core_of_cpu[13] == (1, 1)
    assert (host.sockets, host.physical_cores, host.logical_cpus) == (2, 8, 16)
    assert [(n.id, n.cpus) for n in host.numa_nodes] == [(0, tuple(range(16)))]


def test_cpus_for_cores_order(tree: Path) -> None:
    host = fake_host(tree)
    assert cpus_for_cores(host, 1) == [0]
    assert cpus_for_cores(host, 2) == [0, 1]
    assert cpus_for_cores(host, 2, hyperthreads=True) == [0, 1, 8, 9]
    assert cpus_for_cores(host, 4) == [0, 1, 2, 3]
    assert cpus_for_cores(host, 6) == [0, 1, 2, 3, 4, 5]
    assert cpus_for_cores(host, 8, hyperthreads=True) == list(range(16))


def test_cpus_for_cores_stays_on_one_socket(tree: Path) -> None:
    # Socket 0 keeps two usable cores, so three cores fit only on socket 1.
    host = fake_host(tree, usable=[2, 3, 10, 11, *range(4, 8), *range(12, 16)])
    assert cpus_for_cores(host, 2) == [2, 3]
    assert cpus_for_cores(host, 3) == [4, 5, 6]
    assert cpus_for_cores(host, 3, hyperthreads=True) == [4, 5, 6, 12, 13, 14]
    assert cpus_for_cores(host, 6) == [2, 3, 4, 5, 6, 7]
    assert socket_cpus(host, 0) == [2, 3, 10, 11]


def test_cpus_for_cores_takes_usable_siblings_only(tree: Path) -> None:
    host = fake_host(tree, usable=[0, 1, 9])
    assert cpus_for_cores(host, 2) == [0, 1]
    assert cpus_for_cores(host, 2, hyperthreads=True) == [0, 1, 9]


@pytest.mark.parametrize(
    ("n_cores", "usable", "message"),
    [
        (0, range(16), "at least 1"),
        (-1, range(16), "at least 1"),
        (9, range(16), "only 8 are usable"),
        (3, [0, 1, 8, 9], r"only 2 are usable \(usable CPUs 0-1,8-9\)"),
    ],
)
def test_cpus_for_cores_errors(tree: Path, n_cores: int, usable: range, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cpus_for_cores(fake_host(tree, usable), n_cores)


def test_socket_cpus_unknown_socket(tree: Path) -> None:
    with pytest.raises(ValueError, match="no socket 2"):
        socket_cpus(fake_host(tree), 2)


def test_find_allocators_in_lib_dirs(tmp_path: Path) -> None:
    lib = tmp_path / "usr/lib/x86_64-linux-gnu"
    write(lib / "libtcmalloc_minimal.so.4", b"\x7fELF\x02rest")
    write(lib / "libtcmalloc.so.4", b"\x7fELF\x02rest")
    write(tmp_path / "usr/lib/libjemalloc.so.2", b"\x7fELF\x01rest")  # 32-bit: not preloadable
    assert find_allocators(tmp_path) == {"tcmalloc": str(lib / "libtcmalloc.so.4")}


def test_dict_round_trip_keeps_fingerprint(tree: Path) -> None:
    host = fake_host(tree)
    data = json.loads(json.dumps(host.to_dict()))
    again = HostInfo.from_dict(data)
    assert again == host
    assert again.fingerprint == host.fingerprint == data["fingerprint"]
    assert len(host.fingerprint) == 16
    int(host.fingerprint, 16)


def test_fingerprint_ignores_affinity_but_not_versions(tree: Path) -> None:
    host = fake_host(tree)
    assert fake_host(tree, usable=[0, 1]).fingerprint == host.fingerprint
    newer = build_host_info(
        tree,
        usable_cpus=range(16),
        memory_bytes=256 << 30,
        software={**SOFTWARE, "tensorflow": "2.22.0"},
    )
    assert newer.fingerprint != host.fingerprint


def test_probe_this_machine() -> None:
    host = probe_host(software=False)
    assert host.logical_cpus == os.cpu_count() == psutil.cpu_count()
    assert host.physical_cores == (psutil.cpu_count(logical=False) or host.logical_cpus)
    assert 1 <= host.sockets <= host.physical_cores <= host.logical_cpus
    assert host.usable_cpus == tuple(sorted(os.sched_getaffinity(0)))
    assert host.memory_bytes == psutil.virtual_memory().total
    assert sorted(c for node in host.numa_nodes for c in node.cpus) == sorted(host.core_of_cpu)
    assert set(host.isa) == set(ISA_FLAGS)
    if platform.machine() == "x86_64":
        assert host.isa["avx2"]
    assert host.software["onednn"] == NOT_PROBED
    assert host.software["keras"] == metadata.version("keras")
    assert host.software["numpy"] == metadata.version("numpy")
    assert all(Path(path).is_absolute() for path in host.allocators.values())
    assert cpus_for_cores(host, host.physical_cores)
    again = probe_host(software=False)
    assert again.fingerprint == host.fingerprint
    assert probe_host().fingerprint == host.fingerprint, "a quick probe must match a full one"
    assert HostInfo.from_dict(json.loads(json.dumps(host.to_dict()))) == host


def test_probe_does_not_import_tensorflow() -> None:
    code = (
        "import sys, autotune.host as h; h.probe_host(software=False); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.tf
def test_software_versions_from_tensorflow() -> None:
    versions = software_versions()
    assert set(versions) == set(SOFTWARE_KEYS)
    assert versions["tensorflow"] == metadata.version("tensorflow-cpu")
    assert versions["keras"] == metadata.version("keras")
    assert versions["python"] == platform.python_version()
    assert versions["onednn"] not in (UNAVAILABLE, NOT_PROBED)


def test_software_versions_failure_is_a_value(tmp_path: Path) -> None:
    assert software_versions(str(tmp_path / "no-such-python")) == dict.fromkeys(
        SOFTWARE_KEYS, UNAVAILABLE
    )
    silent = tmp_path / "silent-python"
    write(silent, "#!/bin/sh\necho not json\n")
    silent.chmod(0o755)
    assert set(software_versions(str(silent)).values()) == {UNAVAILABLE}
    slow = tmp_path / "slow-python"
    write(slow, "#!/bin/sh\nexec sleep 10\n")
    slow.chmod(0o755)
    assert set(software_versions(str(slow), timeout=0.5).values()) == {UNAVAILABLE}


def test_probe_with_broken_python_does_not_raise(tmp_path: Path) -> None:
    host = probe_host(python=str(tmp_path / "no-such-python"))
    assert set(host.software.values()) == {UNAVAILABLE}
    assert host.logical_cpus >= 1


def test_cpus_for_cores_prefers_one_numa_node(tree: Path) -> None:
    # Sub-NUMA clustering: two nodes per socket.
    node_dir = tree / "sys/devices/system/node"
    for node, cpus in enumerate(["0-1,8-9", "2-3,10-11", "4-5,12-13", "6-7,14-15"]):
        write(node_dir / f"node{node}/cpulist", cpus)
    host = fake_host(tree, usable=[c for c in range(16) if c not in (1, 9)])
    assert len(host.numa_nodes) == 4
    assert cpus_for_cores(host, 2) == [2, 3]
    assert cpus_for_cores(host, 3) == [0, 2, 3]
    assert cpus_for_cores(host, 5) == [0, 2, 3, 4, 5]


def test_mimalloc_is_found_from_its_installed_package() -> None:
    found = packaged_allocators()

    assert set(found) == {"mimalloc"}, "cmeel-mimalloc is a dependency: a fresh install has mimalloc"
    assert Path(found["mimalloc"]).name == "libmimalloc.so" and Path(found["mimalloc"]).is_file()
    assert find_allocators()["mimalloc"] in (found["mimalloc"], *(p for p in _system_mimalloc()))


def test_packaged_allocators_are_not_looked_for_under_another_root(tmp_path: Path) -> None:
    assert "mimalloc" not in find_allocators(tmp_path)


def _system_mimalloc() -> list[str]:
    return [str(p) for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")
            for p in Path(d).glob("libmimalloc.so*")]
