"""Instance layouts: N copies of a job on disjoint core sets, chosen from the host's topology.

On a many-core server the largest throughput lever is often not a thread count but several copies of
the job on disjoint cores (what ``ipexrun --ninstances``, OpenVINO's throughput streams and Intel's
MLPerf CPU submissions do by rule). :func:`plan_layout` places ``instances`` copies of
``cores_per_instance`` whole physical cores each: one NUMA node filled before the next, an instance
never split across nodes when it fits in one, the lowest-numbered cores first, one logical CPU per core
unless hyper-threads are asked for. On a host with several NUMA nodes each instance's memory is bound to
the nodes of its cores (:func:`membind_prefix`, with ``numactl`` when it is installed).

The two launcher rules the study measures as references are here too: :func:`throughput_rule` (one
instance per NUMA node, all its cores) and :func:`mlperf_rule` (4 cores per instance).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass

from autotune.errors import UserError
from autotune.host import HostInfo, format_cpu_list

# Intel's MLPerf Inference CPU submissions for 3d-unet run cores / 4 instances of 4 cores each.
MLPERF_CORES_PER_INSTANCE = 4
INSTANCE_VARIABLE = "AUTOTUNE_INSTANCE"
INSTANCES_VARIABLE = "AUTOTUNE_INSTANCES"


class LayoutError(UserError):
    """An instance layout this host cannot hold; the message says why in one line."""


@dataclass(frozen=True)
class Slot:
    """Where one instance runs.

    Attributes:
        cpus: Its logical CPUs, ascending.
        nodes: The NUMA nodes its memory is bound to; empty on a host with one node.
    """

    cpus: tuple[int, ...]
    nodes: tuple[int, ...] = ()


@dataclass(frozen=True)
class Layout:
    """N instances of a job on disjoint cores.

    Attributes:
        slots: One per instance, in index order.
        cores_per_instance: Physical cores of each instance.
        hyperthreads: Whether each core's sibling CPUs are included.
    """

    slots: tuple[Slot, ...]
    cores_per_instance: int
    hyperthreads: bool = False

    @property
    def instances(self) -> int:
        """How many instances."""
        return len(self.slots)

    def describe(self) -> str:
        """``2 x 1 cores (CPUs 0 | 1)``: the layout in words."""
        cpus = " | ".join(format_cpu_list(s.cpus) for s in self.slots)
        return f"{self.instances} x {self.cores_per_instance} cores (CPUs {cpus})"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready data (records, best.json, exports)."""
        return {"instances": self.instances, "cores_per_instance": self.cores_per_instance,
                "hyperthreads": self.hyperthreads,
                "cpus": [list(s.cpus) for s in self.slots], "membind": [list(s.nodes) for s in self.slots]}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Layout:
        """Inverse of :meth:`to_dict`.

        Raises:
            UserError: A malformed layout (the message names the field).
        """
        if not isinstance(data.get("cpus"), list) or not all(isinstance(s, list) for s in data["cpus"]):
            raise UserError("instances.cpus: not a list of CPU lists, one per instance")
        try:
            cpus = [tuple(int(c) for c in s) for s in data["cpus"]]  # type: ignore[union-attr]
            membind = data.get("membind") or [[] for _ in cpus]
            nodes = [tuple(int(n) for n in s) for s in membind]  # type: ignore[union-attr]
            per = int(data["cores_per_instance"])  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError):
            raise UserError("instances: not a layout (cpus, membind, cores_per_instance)") from None
        if not cpus or len(nodes) != len(cpus) or any(not c or min(c) < 0 for c in cpus):
            raise UserError("instances: each instance needs a non-empty list of CPU numbers")
        flat = [c for s in cpus for c in s]
        if len(flat) != len(set(flat)):
            raise UserError("instances: two instances share a CPU")
        return cls(tuple(Slot(tuple(sorted(c)), n) for c, n in zip(cpus, nodes, strict=True)), per,
                   bool(data.get("hyperthreads", False)))


def plan_layout(host: HostInfo, instances: int, cores_per_instance: int, *, hyperthreads: bool = False) -> Layout:
    """Place ``instances`` x ``cores_per_instance`` whole physical cores on ``host`` (see the module docstring).

    Raises:
        LayoutError: Fewer usable cores than asked, or no placement that keeps each instance on one NUMA
            node when it fits in one.
    """
    if instances < 1 or cores_per_instance < 1:
        raise LayoutError(f"instances: {instances} x {cores_per_instance} cores is not a layout (both at least 1)")
    groups = _node_cores(host)
    usable = sum(len(cores) for _, cores in groups)
    wanted = instances * cores_per_instance
    if wanted > usable:
        raise LayoutError(f"instances: {instances} x {cores_per_instance} cores needs {wanted} physical cores; "
                          f"{usable} are usable here (CPUs {format_cpu_list(host.usable_cpus)})")
    largest = max(len(cores) for _, cores in groups)
    if cores_per_instance <= largest:
        chosen = [cores[start:start + cores_per_instance]
                  for _, cores in groups for start in range(0, len(cores) - cores_per_instance + 1, cores_per_instance)]
        if len(chosen) < instances:
            raise LayoutError(f"instances: {instances} x {cores_per_instance} cores does not fit without splitting an "
                              f"instance across NUMA nodes (nodes of {'/'.join(str(len(c)) for _, c in groups)} "
                              f"usable cores hold {len(chosen)})")
        chosen = chosen[:instances]
    else:  # an instance bigger than a node takes whole nodes, in order
        ordered = [core for _, cores in groups for core in cores]
        chosen = [ordered[i * cores_per_instance:(i + 1) * cores_per_instance] for i in range(instances)]
    node_of = {cpu: node.id for node in host.numa_nodes for cpu in node.cpus}
    siblings = _siblings(host)
    slots = []
    for cores in chosen:
        cpus = tuple(sorted(cpu for core in cores for cpu in siblings[core][:None if hyperthreads else 1]))
        nodes = tuple(sorted({node_of.get(cpu, 0) for cpu in cpus})) if len(host.numa_nodes) > 1 else ()
        slots.append(Slot(cpus, nodes))
    return Layout(tuple(slots), cores_per_instance, hyperthreads)


def throughput_rule(host: HostInfo) -> tuple[int, int]:
    """``(instances, cores_per_instance)`` of the launchers' throughput rule: one instance per NUMA node,
    all its cores (nodes of unequal usable cores: the smallest count, so every instance is alike)."""
    groups = _node_cores(host)
    return len(groups), min(len(cores) for _, cores in groups)


def mlperf_rule(host: HostInfo) -> tuple[int, int]:
    """``(instances, cores_per_instance)`` of the MLPerf-style rule: 4 cores per instance, as many as fit
    without splitting one across NUMA nodes, at least one instance (of all the cores, on a host with fewer
    than 4 in its largest node)."""
    groups = _node_cores(host)
    per = min(MLPERF_CORES_PER_INSTANCE, max(len(c) for _, c in groups))
    return max(1, sum(len(c) // per for _, c in groups)), per


def membind_prefix(slot: Slot) -> list[str]:
    """The words that bind an instance's memory to its NUMA nodes (``numactl --membind``), or none.

    None on a one-node host (``slot.nodes`` is empty), and none when numactl is not installed: the
    kernel's first-touch policy then keeps most pages on the node of the pinned CPUs anyway
    (:func:`membind_note` says so).
    """
    numactl = shutil.which("numactl")
    if not slot.nodes or numactl is None:
        return []
    return [numactl, f"--membind={format_cpu_list(slot.nodes)}"]


def membind_note(layout: Layout) -> str | None:
    """A note when memory binding was wanted (several NUMA nodes) but numactl is not installed."""
    if any(s.nodes for s in layout.slots) and shutil.which("numactl") is None:
        return ("numactl is not installed: memory is not bound to each instance's NUMA node (first touch "
                "from the pinned CPUs keeps most of it there); install numactl to bind it")
    return None


def instance_env(index: int, count: int) -> dict[str, str]:
    """The variables that tell an instance its index (from 0) and the count, as launchers do."""
    return {INSTANCE_VARIABLE: str(index), INSTANCES_VARIABLE: str(count)}


def _siblings(host: HostInfo) -> dict[tuple[int, int], list[int]]:
    siblings: dict[tuple[int, int], list[int]] = {}
    for cpu in sorted(host.usable_cpus):
        if cpu in host.core_of_cpu:
            siblings.setdefault(host.core_of_cpu[cpu], []).append(cpu)
    return siblings


def _node_cores(host: HostInfo) -> list[tuple[int, list[tuple[int, int]]]]:
    """Usable physical cores by NUMA node (socket, node order), each ordered by its first CPU."""
    siblings = _siblings(host)
    node_of = {cpu: node.id for node in host.numa_nodes for cpu in node.cpus}
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for core, cpus in sorted(siblings.items(), key=lambda item: item[1][0]):
        groups.setdefault((core[0], node_of.get(cpus[0], 0)), []).append(core)
    if not groups:
        raise LayoutError("instances: no usable CPU with a known core on this host")
    return [(node, cores) for (_, node), cores in sorted(groups.items())]


def rates_of(units: Mapping[str, str]) -> tuple[str, ...]:
    """The figures among ``units`` (name -> unit) that are rates, per second, which instances add up."""
    return tuple(sorted(name for name, unit in units.items() if unit.strip().endswith("/s")))
