"""The host probe: what machine a study runs on, and which CPUs a trial may be pinned to.

:func:`probe_host` reads the CPU model, ISA flags and topology from ``/proc/cpuinfo`` and
``/sys/devices/system``, memory and the affinity mask from the kernel, looks for the allocators a
trial may preload, and asks a subprocess for the TensorFlow, Keras and oneDNN versions, so the
driver never imports TensorFlow itself. The search space takes its bounds from the resulting
:class:`HostInfo`, the study records its :attr:`HostInfo.fingerprint`, and the trial runner pins
with :func:`cpus_for_cores`.

The readers take a ``root`` path (default ``/``) so tests can describe any host as a fake tree.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterable

ISA_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "amx_bf16",
    "amx_tile",
    "amx_int8",
    "avx512_fp16",
)
SOFTWARE_KEYS = ("python", "numpy", "optuna", "tensorflow", "keras", "onednn")
FINGERPRINT_SOFTWARE = ("python", "tensorflow", "keras")
TF_DISTRIBUTIONS = {
    "numpy": ("numpy",),
    "optuna": ("optuna",),
    "tensorflow": ("tensorflow", "tensorflow-cpu", "intel-tensorflow", "tensorflow-intel"),
    "keras": ("keras",),
}

UNKNOWN = "unknown"  # asked, but the software does not say
UNAVAILABLE = "unavailable"  # the version subprocess failed
NOT_INSTALLED = "not installed"
NOT_PROBED = "not probed"  # probe_host(software=False)

# Preferred file name prefixes, best first: gperftools' full tcmalloc before its minimal build.
ALLOCATOR_LIBS = {
    "jemalloc": ("libjemalloc.so",),
    "tcmalloc": ("libtcmalloc.so", "libtcmalloc_minimal.so"),
    "mimalloc": ("libmimalloc.so",),
}
LIB_DIRS = ("usr/lib/x86_64-linux-gnu", "usr/lib64", "usr/lib", "usr/local/lib")
# Allocators shipped inside Python packages: name -> (distribution, library file). mimalloc comes with
# autotune through the cmeel-mimalloc wheel (about 2 MB installed), so a fresh machine has a choice
# besides the system allocator; a system copy (Debian's libmimalloc2.0) is preferred when present.
PACKAGED_ALLOCATORS = {"mimalloc": ("cmeel-mimalloc", "libmimalloc.so")}

_GIB = 1 << 30
_CPU_DIR = "sys/devices/system/cpu"
_NODE_DIR = "sys/devices/system/node"
_VERSIONS_MARK = "@autotune-host "

# Runs in the child: oneDNN reports its version on stdout once ONEDNN_VERBOSE is set and a oneDNN
# primitive runs, which a small matmul does while TF_ENABLE_ONEDNN_OPTS=1.
_VERSIONS_SCRIPT = f"""
import importlib, json, platform
out = {{"python": platform.python_version()}}
for name in ("numpy", "optuna", "tensorflow", "keras"):
    try:
        out[name] = str(getattr(importlib.import_module(name), "__version__", {UNKNOWN!r}))
    except ModuleNotFoundError as error:
        out[name] = {NOT_INSTALLED!r} if error.name == name else {UNAVAILABLE!r}
    except Exception:
        out[name] = {UNAVAILABLE!r}
try:
    import tensorflow as tf
    tf.linalg.matmul(tf.ones((8, 8)), tf.ones((8, 8))).numpy()
except Exception:
    pass
print("\\n" + {_VERSIONS_MARK!r} + json.dumps(out), flush=True)
"""
_VERSIONS_ENV = {"ONEDNN_VERBOSE": "1", "TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
_ONEDNN_VERSION = re.compile(r"oneDNN v(\d[\w.+-]*)")


@dataclass(frozen=True)
class NumaNode:
    """One NUMA node.

    Attributes:
        id: Node number, as in ``/sys/devices/system/node/node<id>``.
        cpus: Its logical CPUs, ascending.
    """

    id: int
    cpus: tuple[int, ...]


@dataclass(frozen=True)
class HostInfo:
    """What the probe found on one machine.

    Counts describe the whole machine (every online CPU); ``usable_cpus`` is what this process may
    run on, which is where :func:`cpus_for_cores` and :func:`socket_cpus` choose from.

    Attributes:
        cpu_model: The CPU's model name, e.g. ``"Intel(R) Xeon(R) Platinum 8480+"``.
        vendor: The CPU vendor id, e.g. ``"GenuineIntel"``.
        sockets: Number of CPU packages.
        physical_cores: Number of physical cores over all sockets.
        logical_cpus: Number of online logical CPUs.
        numa_nodes: NUMA nodes with CPUs, by id.
        core_of_cpu: Logical CPU -> (socket id, core id); core ids repeat across sockets.
        usable_cpus: The process's CPU affinity, ascending.
        isa: Each of :data:`ISA_FLAGS` -> whether the CPU has it.
        memory_bytes: Total physical memory.
        allocators: ``"jemalloc"``/``"tcmalloc"`` -> absolute path of a shared library that can be
            preloaded; absent when not installed.
        software: Each of :data:`SOFTWARE_KEYS` -> version string, or :data:`UNKNOWN`,
            :data:`UNAVAILABLE`, :data:`NOT_INSTALLED` or :data:`NOT_PROBED`.
    """

    cpu_model: str
    vendor: str
    sockets: int
    physical_cores: int
    logical_cpus: int
    numa_nodes: tuple[NumaNode, ...]
    core_of_cpu: dict[int, tuple[int, int]]
    usable_cpus: tuple[int, ...]
    isa: dict[str, bool]
    memory_bytes: int
    allocators: dict[str, str]
    software: dict[str, str]

    @property
    def physical_cores_per_socket(self) -> int:
        """Physical cores of one socket (sockets are assumed alike)."""
        return self.physical_cores // max(self.sockets, 1)

    @property
    def fingerprint(self) -> str:
        """A short stable id of the hardware and the software stack that performance depends on.

        It covers the CPU model, socket/core/CPU counts, NUMA CPU sets, ISA flags, memory in whole
        GiB and the Python, TensorFlow and Keras versions; not the affinity mask, allocators or
        other versions. Probes with and without ``software`` have different fingerprints.
        """
        canonical = {
            "cpu_model": self.cpu_model,
            "sockets": self.sockets,
            "physical_cores": self.physical_cores,
            "logical_cpus": self.logical_cpus,
            "numa": [[node.id, list(node.cpus)] for node in self.numa_nodes],
            "isa": self.isa,
            "memory_gib": round(self.memory_bytes / _GIB),
            "software": {key: self.software.get(key, UNKNOWN) for key in FINGERPRINT_SOFTWARE},
        }
        text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """Return the record as JSON-ready data, with its ``fingerprint`` added."""
        return {
            "cpu_model": self.cpu_model,
            "vendor": self.vendor,
            "sockets": self.sockets,
            "physical_cores": self.physical_cores,
            "logical_cpus": self.logical_cpus,
            "numa_nodes": [{"id": node.id, "cpus": list(node.cpus)} for node in self.numa_nodes],
            "core_of_cpu": {str(cpu): list(ids) for cpu, ids in sorted(self.core_of_cpu.items())},
            "usable_cpus": list(self.usable_cpus),
            "isa": dict(self.isa),
            "memory_bytes": self.memory_bytes,
            "allocators": dict(self.allocators),
            "software": dict(self.software),
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HostInfo:
        """Build a record from :meth:`to_dict` output, also after a JSON round trip.

        The ``fingerprint`` entry is ignored: it is recomputed from the fields.
        """
        return cls(
            cpu_model=data["cpu_model"],
            vendor=data["vendor"],
            sockets=int(data["sockets"]),
            physical_cores=int(data["physical_cores"]),
            logical_cpus=int(data["logical_cpus"]),
            numa_nodes=tuple(
                NumaNode(int(node["id"]), tuple(int(c) for c in node["cpus"]))
                for node in data["numa_nodes"]
            ),
            core_of_cpu={
                int(cpu): (int(ids[0]), int(ids[1])) for cpu, ids in data["core_of_cpu"].items()
            },
            usable_cpus=tuple(int(c) for c in data["usable_cpus"]),
            isa={str(k): bool(v) for k, v in data["isa"].items()},
            memory_bytes=int(data["memory_bytes"]),
            allocators={str(k): str(v) for k, v in data["allocators"].items()},
            software={str(k): str(v) for k, v in data["software"].items()},
        )


def probe_host(
    *, software: bool = True, python: str = sys.executable, timeout: float = 120
) -> HostInfo:
    """Probe this machine.

    Args:
        software: Ask a subprocess of ``python`` for the TensorFlow/Keras/oneDNN versions (seconds).
            When False, the versions of this interpreter's Python, NumPy and Optuna are read from
            package metadata and the others are :data:`NOT_PROBED`.
        python: Interpreter that runs the workloads.
        timeout: Seconds the version subprocess may take.

    Returns:
        The host record. Nothing here raises for a missing file or a failed subprocess.
    """
    versions = software_versions(python, timeout) if software else local_versions()
    return build_host_info(
        "/",
        usable_cpus=_affinity(),
        memory_bytes=psutil.virtual_memory().total,
        software=versions,
    )


def build_host_info(
    root: str | os.PathLike[str],
    *,
    usable_cpus: Iterable[int],
    memory_bytes: int,
    software: dict[str, str],
) -> HostInfo:
    """Build a host record from the ``/proc`` and ``/sys`` tree under ``root`` and the given values.

    Args:
        root: Where ``proc/`` and ``sys/`` are found: ``/`` for this machine, a fake tree in tests.
        usable_cpus: The affinity mask to record.
        memory_bytes: Total memory to record.
        software: Versions to record.

    Returns:
        The host record.
    """
    cpuinfo = read_cpuinfo(root)
    core_of_cpu = read_topology(root, cpuinfo)
    first = cpuinfo[0] if cpuinfo else {}
    return HostInfo(
        cpu_model=first.get("model name") or platform.processor() or UNKNOWN,
        vendor=first.get("vendor_id", UNKNOWN),
        sockets=len({socket for socket, _ in core_of_cpu.values()}),
        physical_cores=len(set(core_of_cpu.values())),
        logical_cpus=len(core_of_cpu),
        numa_nodes=read_numa_nodes(root, sorted(core_of_cpu)),
        core_of_cpu=core_of_cpu,
        usable_cpus=tuple(sorted(usable_cpus)),
        isa=isa_flags(cpuinfo),
        memory_bytes=int(memory_bytes),
        allocators=find_allocators(root),
        software={key: software.get(key, UNKNOWN) for key in SOFTWARE_KEYS},
    )


def read_cpuinfo(root: str | os.PathLike[str] = "/") -> list[dict[str, str]]:
    """Read ``proc/cpuinfo`` under ``root``: one ``{field: value}`` dict per processor, or []."""
    try:
        text = Path(root, "proc/cpuinfo").read_text()
    except OSError:
        return []
    blocks = []
    for chunk in text.split("\n\n"):
        block = {}
        for line in chunk.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                block[key.strip()] = value.strip()
        if block:
            blocks.append(block)
    return blocks


def isa_flags(cpuinfo: list[dict[str, str]]) -> dict[str, bool]:
    """Return which of :data:`ISA_FLAGS` the first processor in ``cpuinfo`` lists."""
    flags = set(cpuinfo[0].get("flags", "").split()) if cpuinfo else set()
    return {name: name in flags for name in ISA_FLAGS}


def read_topology(
    root: str | os.PathLike[str] = "/", cpuinfo: list[dict[str, str]] | None = None
) -> dict[int, tuple[int, int]]:
    """Map each online logical CPU to its (socket id, core id).

    Reads ``sys/devices/system/cpu/cpu*/topology`` under ``root``; without it, the ``physical id``
    and ``core id`` fields of ``cpuinfo``; without those, psutil's counts with Linux's usual
    numbering (the second hyperthread of core ``i`` is CPU ``i + physical cores``) on one socket.
    """
    return (
        _sysfs_topology(Path(root, _CPU_DIR))
        or _cpuinfo_topology(cpuinfo or [])
        or _counted_topology()
    )


def read_numa_nodes(
    root: str | os.PathLike[str] = "/", cpus: list[int] | None = None
) -> tuple[NumaNode, ...]:
    """Read the NUMA nodes that have CPUs from ``sys/devices/system/node`` under ``root``.

    Without that directory, all of ``cpus`` form node 0.
    """
    nodes = []
    for path in Path(root, _NODE_DIR).glob("node[0-9]*"):
        node_cpus = parse_cpu_list(_read(path / "cpulist"))
        if node_cpus and path.name[4:].isdigit():
            nodes.append(NumaNode(int(path.name[4:]), node_cpus))
    if not nodes and cpus:
        nodes.append(NumaNode(0, tuple(sorted(cpus))))
    return tuple(sorted(nodes, key=lambda node: node.id))


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """Parse a kernel CPU list such as ``"0-3,8-11"`` (empty text gives ``()``).

    Raises:
        ValueError: If the text is not a CPU list.
    """
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return tuple(sorted(cpus))


def format_cpu_list(cpus: Iterable[int]) -> str:
    """Format CPUs as a kernel CPU list such as ``"0-3,8-11"``, as taskset and numactl take it."""
    ranges: list[list[int]] = []
    for cpu in sorted(set(cpus)):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def find_allocators(root: str | os.PathLike[str] = "/") -> dict[str, str]:
    """Find a 64-bit jemalloc, tcmalloc and mimalloc shared library to preload.

    Looks at ``ldconfig -p`` (only when ``root`` is ``/``), then :data:`LIB_DIRS` under ``root``, then
    (only when ``root`` is ``/``) the installed packages of :data:`PACKAGED_ALLOCATORS`.

    Returns:
        ``{"jemalloc": path, "tcmalloc": path, "mimalloc": path}``, each present only when found.
    """
    candidates = _ldconfig_libraries() if Path(root) == Path("/") else []
    for lib_dir in LIB_DIRS:
        candidates.extend(sorted(Path(root, lib_dir).glob("lib*malloc*.so*")))
    found = {}
    for name, prefixes in ALLOCATOR_LIBS.items():
        for path in _preferred(candidates, prefixes):
            if _is_elf64(path):
                found[name] = os.path.abspath(path)
                break
    if Path(root) == Path("/"):
        for name, path in packaged_allocators().items():
            found.setdefault(name, path)
    return found


def packaged_allocators() -> dict[str, str]:
    """Allocator libraries that installed Python packages ship (:data:`PACKAGED_ALLOCATORS`), by name."""
    found = {}
    for name, (distribution, library) in PACKAGED_ALLOCATORS.items():
        try:
            installed = metadata.distribution(distribution)
        except metadata.PackageNotFoundError:
            continue
        for file in installed.files or ():
            path = Path(str(installed.locate_file(file))).resolve()
            if file.name == library and _is_elf64(path):
                found[name] = str(path)
                break
    return found


def software_versions(python: str = sys.executable, timeout: float = 120) -> dict[str, str]:
    """Ask ``python`` in a subprocess for its Python, NumPy, Optuna, TensorFlow, Keras and oneDNN.

    Importing TensorFlow takes seconds, so only do this once per probe.

    Args:
        python: Interpreter to ask.
        timeout: Seconds before the subprocess is killed.

    Returns:
        Each of :data:`SOFTWARE_KEYS` -> version string. Packages the interpreter lacks are
        :data:`NOT_INSTALLED`, a oneDNN that does not report is :data:`UNKNOWN`, and if the
        subprocess cannot start, fails, times out or prints no record, every value is
        :data:`UNAVAILABLE`.
    """
    env = {**os.environ, **_VERSIONS_ENV}
    try:
        done = subprocess.run(
            [python, "-c", _VERSIONS_SCRIPT],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return dict.fromkeys(SOFTWARE_KEYS, UNAVAILABLE)
    versions = _parse_versions(done.stdout) if done.returncode == 0 else None
    if versions is None:
        return dict.fromkeys(SOFTWARE_KEYS, UNAVAILABLE)
    onednn = _ONEDNN_VERSION.search(done.stdout)
    versions["onednn"] = onednn.group(1) if onednn else UNKNOWN
    return {key: versions.get(key, UNKNOWN) for key in SOFTWARE_KEYS}


def local_versions() -> dict[str, str]:
    """Versions from this interpreter's package metadata, without importing anything.

    TensorFlow's version comes from whichever of its distributions is installed, so the fingerprint
    of a quick probe matches a full one; oneDNN is :data:`NOT_PROBED` (only an import can tell).
    """
    versions = dict.fromkeys(SOFTWARE_KEYS, NOT_PROBED)
    versions["python"] = platform.python_version()
    for name, distributions in TF_DISTRIBUTIONS.items():
        versions[name] = NOT_INSTALLED
        for distribution in distributions:
            try:
                versions[name] = metadata.version(distribution)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def cpus_for_cores(host: HostInfo, n_cores: int, *, hyperthreads: bool = False) -> list[int]:
    """Choose the logical CPUs to pin a trial to ``n_cores`` physical cores.

    Only usable CPUs count. The cores come from the first NUMA node that has ``n_cores`` of them,
    else from the first socket that has, else socket by socket from socket 0; within that, the
    lowest-numbered cores first.

    Args:
        host: The host record.
        n_cores: Physical cores wanted.
        hyperthreads: Take every usable sibling of the chosen cores instead of only the
            lowest-numbered one.

    Returns:
        Logical CPU numbers, ascending.

    Raises:
        ValueError: If ``n_cores`` is below 1 or above the usable physical cores.
    """
    siblings = _usable_siblings(host)
    if n_cores < 1:
        raise ValueError(f"n_cores must be at least 1, got {n_cores}")
    if n_cores > len(siblings):
        raise ValueError(
            f"cannot pin to {n_cores} physical cores: only {len(siblings)} are usable "
            f"(usable CPUs {format_cpu_list(host.usable_cpus)})"
        )
    node_of_cpu = {cpu: node.id for node in host.numa_nodes for cpu in node.cpus}

    def place(core: tuple[int, int]) -> tuple[int, int, int]:
        first_cpu = siblings[core][0]
        return core[0], node_of_cpu.get(first_cpu, 0), first_cpu

    ordered = sorted(siblings, key=place)
    chosen = (
        _first_group_with(ordered, n_cores, key=lambda core: place(core)[:2])
        or _first_group_with(ordered, n_cores, key=lambda core: place(core)[0])
        or ordered
    )
    width = None if hyperthreads else 1
    return sorted(cpu for core in chosen[:n_cores] for cpu in siblings[core][:width])


def socket_cpus(host: HostInfo, socket: int = 0) -> list[int]:
    """Return the usable logical CPUs of ``socket``, ascending.

    Raises:
        ValueError: If the host has no such socket.
    """
    sockets = sorted({s for s, _ in host.core_of_cpu.values()})
    if socket not in sockets:
        raise ValueError(f"no socket {socket} on this host (sockets: {sockets})")
    return [cpu for cpu in host.usable_cpus if host.core_of_cpu.get(cpu, (-1, -1))[0] == socket]


def _usable_siblings(host: HostInfo) -> dict[tuple[int, int], list[int]]:
    siblings: dict[tuple[int, int], list[int]] = {}
    for cpu in sorted(host.usable_cpus):
        if cpu in host.core_of_cpu:
            siblings.setdefault(host.core_of_cpu[cpu], []).append(cpu)
    return siblings


def _first_group_with(
    cores: list[tuple[int, int]], n_cores: int, key: Callable[[tuple[int, int]], Hashable]
) -> list[tuple[int, int]]:
    groups: dict[Hashable, list[tuple[int, int]]] = {}
    for core in cores:
        groups.setdefault(key(core), []).append(core)
    return next((group for group in groups.values() if len(group) >= n_cores), [])


def _sysfs_topology(cpu_dir: Path) -> dict[int, tuple[int, int]]:
    online = _read(cpu_dir / "online")
    cpus = (
        parse_cpu_list(online)
        if online
        else sorted(int(p.name[3:]) for p in cpu_dir.glob("cpu[0-9]*") if p.name[3:].isdigit())
    )
    topology = {}
    for cpu in cpus:
        socket = _read(cpu_dir / f"cpu{cpu}/topology/physical_package_id")
        core = _read(cpu_dir / f"cpu{cpu}/topology/core_id")
        try:
            topology[cpu] = (int(socket), int(core))
        except ValueError:
            return {}
    return topology


def _cpuinfo_topology(cpuinfo: list[dict[str, str]]) -> dict[int, tuple[int, int]]:
    topology = {}
    for block in cpuinfo:
        try:
            cpu = int(block["processor"])
            topology[cpu] = (int(block["physical id"]), int(block["core id"]))
        except (KeyError, ValueError):
            return {}
    return topology


def _counted_topology() -> dict[int, tuple[int, int]]:
    logical = psutil.cpu_count() or os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False) or logical
    return {cpu: (0, cpu % physical) for cpu in range(logical)}


def _affinity() -> tuple[int, ...]:
    if hasattr(os, "sched_getaffinity"):
        return tuple(sorted(os.sched_getaffinity(0)))
    return tuple(range(psutil.cpu_count() or 1))


def _ldconfig_libraries() -> list[Path]:
    ldconfig = shutil.which("ldconfig") or next(
        (p for p in ("/sbin/ldconfig", "/usr/sbin/ldconfig") if Path(p).exists()), None
    )
    if ldconfig is None:
        return []
    try:
        listing = subprocess.run(
            [ldconfig, "-p"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [Path(line.rpartition("=>")[2].strip()) for line in listing.splitlines() if "=>" in line]


def _preferred(candidates: list[Path], prefixes: tuple[str, ...]) -> list[Path]:
    return [path for prefix in prefixes for path in candidates if path.name.startswith(prefix)]


def _is_elf64(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(5) == b"\x7fELF\x02"
    except OSError:
        return False


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _parse_versions(stdout: str) -> dict[str, str] | None:
    for line in reversed(stdout.splitlines()):
        start = line.find(_VERSIONS_MARK)
        if start < 0:
            continue
        try:
            data = json.loads(line[start + len(_VERSIONS_MARK) :])
        except ValueError:
            return None
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else None
    return None
