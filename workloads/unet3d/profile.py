"""Op-time breakdown of a trial's timed steps, from the TensorFlow profiler's trace (child side).

Life cycle: ``trial.run`` creates a :class:`StepProfile` when the driver sent a ``profile_dir``; the
harness calls :meth:`StepProfile.start` right before the first timed step, and ``trial.run`` calls
:meth:`StepProfile.finish` after the last one, before the result message. ``finish`` stops the
profiler (which writes ``<dir>/trace/plugins/profile/<run>/<host>.xplane.pb``), reads that XSpace
with the protobuf classes that ship inside TensorFlow, and writes ``<dir>/breakdown.json``: self
time and count per op type and the slowest individual ops, the document that
``autotune.profile.Breakdown`` reads.
The child aggregates, so the driver never reads TensorFlow's protobufs; the driver categorises, so
categories can change without profiling again.

What the trace holds on CPU (TensorFlow 2.21, host plane ``/host:CPU``), and how it is read:

* A TensorFlow op is an event named ``<node name>:<op type>`` on the executor thread that ran it
  (``tf_Compute``): its duration is the op's time. oneDNN kernels keep their own type names
  (``_MklNativeFusedConv3D``, ``_MklTranspose``).
* A function call that completes asynchronously, as the XLA-compiled ``_conv_xla`` function
  Keras 3 uses for every channels_first Conv3D on CPU, is an ``ExecutorState::ProcessAsync::Start``
  event whose stats name the node and its kernel (``StatefulPartitionedCall``). Its completion
  callback (``...::Done``, same flow id) runs inside that event and goes on with later nodes, so
  the call ends where its callback begins.
* The HLO instructions XLA runs inside such a call carry ``hlo_op`` / ``hlo_module`` stats
  (``transpose_copy_fusion``, ``convolution``, ``dot``, ...). XLA's thunk executor runs them
  asynchronously: the event on the calling thread may cover only the launch, and a matching
  ``end: <hlo op>`` event (linked by a flow id, stat ``_p`` -> ``_c``), possibly on an intra-op pool
  thread, marks the completion. An HLO op's interval therefore runs to its end marker.

Nested events are not counted twice: every counted event gets the *self* time of its interval,
that is, minus the union of the intervals of the events inside it. An HLO op belongs to the call
(or TF op) that encloses it on its own thread, or else to the enclosing call on another thread that
ran the same XLA program. So an XLA call's self time is its launch overhead (argument handling,
waiting), and its HLO ops count as what they are: the transposes XLA adds around the channels_first
convolutions Keras 3 sends it show up as ``xla:transpose_copy_fusion``. Self times from concurrent
threads add up, as in TensorFlow's own op statistics; ``busy_seconds`` (the union of all op
intervals) against ``wall_seconds`` (the timed steps) says how much of the step no op covered
(executor and Python overhead).

Importing this module does not import TensorFlow.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune.files import atomic_write

BREAKDOWN_FILE = "breakdown.json"
TRACE_DIR = "trace"
BREAKDOWN_KIND = "autotune-op-breakdown"
SCHEMA_VERSION = 1
# Individual ops kept in the breakdown, slowest first (op types are all kept).
TOP_OPS = 30
HOST_PLANE = "/host:CPU"
ASYNC_START = "ExecutorState::ProcessAsync::Start"
ASYNC_DONE = "ExecutorState::ProcessAsync::Done"
END_PREFIX = "end: "
XLA_TYPE_PREFIX = "xla:"
PS_PER_S = 1e12
# Wait after the last profiled step before stopping the profiler (see StepProfile.finish).
SETTLE_SECONDS = 0.5
_HLO_SUFFIX = re.compile(r"\.\d+$")
_OP_TYPE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class OpEvent:
    """One counted event of the trace, times in picoseconds since the epoch.

    Attributes:
        kind: ``"tf"`` (a TensorFlow op), ``"call"`` (an asynchronous function call) or ``"hlo"``.
        type: The op type (``Conv3D``, ``StatefulPartitionedCall``, ``xla:convolution``).
        name: The node name, or the HLO instruction name for ``hlo``.
        line: The trace line (thread) it ran on.
        start: Start time.
        end: End time (for ``hlo``, the end marker's when there is one).
        program: The XLA program id (``hlo`` only), to match worker-thread ops to their call.
        module: The XLA module name (``hlo`` only).
        parent: The event it is nested in, once :func:`assign_parents` ran.
        children: Events nested in it.
    """

    kind: str
    type: str
    name: str
    line: int
    start: int
    end: int
    program: str | None = None
    module: str | None = None
    parent: OpEvent | None = field(default=None, repr=False)
    children: list[OpEvent] = field(default_factory=list, repr=False)

    @property
    def can_hold(self) -> bool:
        """Whether other events can be nested in it (HLO instructions hold nothing)."""
        return self.kind != "hlo"

    def contains(self, time: int) -> bool:
        """Whether ``time`` falls inside the event."""
        return self.start <= time < self.end


class StepProfile:
    """Records the timed steps of one trial under the TensorFlow profiler.

    Args:
        directory: Folder the driver chose; the trace and ``breakdown.json`` are written into it.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.trace_dir = self.directory / TRACE_DIR

    def start(self) -> None:
        """Start the profiler with its default options: host events at level 2, no Python tracer.

        (TensorFlow 2.21 ignores explicit ``ProfilerOptions`` with a warning per field.)
        """
        import tensorflow as tf

        self.trace_dir.mkdir(parents=True, exist_ok=True)
        tf.profiler.experimental.start(str(self.trace_dir))

    def finish(self, step_seconds: Sequence[float]) -> dict[str, Any]:
        """Stop the profiler, aggregate its trace, write ``breakdown.json`` and return it."""
        import tensorflow as tf

        # The executor threads close their outermost trace events a few milliseconds after the
        # step has returned; events still open when the profiler stops are lost.
        time.sleep(SETTLE_SECONDS)
        tf.profiler.experimental.stop()
        document = breakdown_document(
            op_events(read_host_plane(self.trace_dir)),
            steps=len(step_seconds),
            wall_seconds=float(sum(step_seconds)),
        )
        document["source"] = {"tensorflow": tf.__version__, "trace": str(self.trace_dir)}
        atomic_write(self.directory / BREAKDOWN_FILE, json.dumps(document, sort_keys=True) + "\n")
        return document


def xplane_module() -> Any:
    """The ``xplane_pb2`` module that ships inside TensorFlow (it moved between versions)."""
    import importlib

    for name in (
        "tensorflow.tsl.profiler.protobuf.xplane_pb2",
        "tsl.profiler.protobuf.xplane_pb2",
        "tensorflow.core.profiler.protobuf.xplane_pb2",
    ):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise RuntimeError("this TensorFlow ships no xplane_pb2 protobuf module: cannot read its trace")


def read_host_plane(trace_dir: Path) -> Any:
    """The host CPU plane of the newest ``*.xplane.pb`` under ``trace_dir``.

    Raises:
        RuntimeError: No trace file, or one without a host plane.
    """
    files = sorted(Path(trace_dir).glob("plugins/profile/*/*.xplane.pb"),
                   key=lambda p: p.stat().st_mtime)
    if not files:
        raise RuntimeError(f"the profiler wrote no .xplane.pb trace under {trace_dir}")
    space = xplane_module().XSpace()
    space.ParseFromString(files[-1].read_bytes())
    for plane in space.planes:
        if plane.name == HOST_PLANE:
            return plane
    raise RuntimeError(f"{files[-1]} has no {HOST_PLANE} plane")


def op_events(plane: Any) -> list[OpEvent]:
    """The counted events of an XPlane: HLO ops run to their end markers, parents assigned."""
    stat_names = {key: meta.name for key, meta in plane.stat_metadata.items()}

    def stats(meta: Any, event: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for stat in (*meta.stats, *event.stats):
            which = stat.WhichOneof("value")
            if which is None:
                continue
            value = getattr(stat, which)
            if which == "ref_value":
                value = stat_names.get(value, "")
            elif which == "bytes_value":
                continue
            out[stat_names.get(stat.metadata_id, "")] = value
        return out

    ends: dict[Any, tuple[int, int]] = {}  # flow id -> (line, end) of an HLO op's end marker
    done: dict[Any, int] = {}  # flow id -> start of an asynchronous call's completion callback
    raw: list[tuple[int, str, int, int, dict[str, Any], str]] = []
    for index, line in enumerate(plane.lines):
        base = line.timestamp_ns * 1000
        for event in line.events:
            meta = plane.event_metadata[event.metadata_id]
            start = base + event.offset_ps
            if meta.name.startswith(END_PREFIX) or meta.name == ASYNC_DONE:
                flow = stats(meta, event).get("_c")
                if flow is not None and meta.name == ASYNC_DONE:
                    done[flow] = start
                elif flow is not None:
                    ends[flow] = (index, start + event.duration_ps)
                continue
            raw.append((index, meta.name, start, event.duration_ps, stats(meta, event),
                        meta.display_name))
    events: list[OpEvent] = []
    markers: list[tuple[OpEvent, tuple[int, int]]] = []
    for index, name, start, duration, st, display in raw:
        event = classify_event(name, display, st, line=index, start=start, end=start + duration)
        if event is None:
            continue
        flow = st.get("_p")
        if event.kind == "hlo" and flow in ends:
            markers.append((event, ends[flow]))
        elif event.kind == "call" and event.start <= done.get(flow, event.end) < event.end:
            # The completion callback runs inside the Start event and goes on to schedule (and
            # wait on) the next nodes: the call itself ends where its callback begins.
            event.end = done[flow]
        events.append(event)
    _extend_to_markers(events, markers)
    assign_parents(events)
    return events


def _extend_to_markers(events: list[OpEvent], markers: list[tuple[OpEvent, tuple[int, int]]]) -> None:
    """Run each asynchronous HLO op to its end marker, or to the first op of its program that the
    marker's thread started before the marker: XLA runs the successors an op's completion makes
    ready before it records the end marker, so the op itself was done by then."""
    starts: dict[tuple[int, str | None], list[int]] = defaultdict(list)
    for event in events:
        if event.kind == "hlo":
            starts[(event.line, event.program)].append(event.start)
    for times in starts.values():
        times.sort()
    for event, (line, marker_end) in markers:
        if marker_end <= event.end:
            continue
        times = starts[(line, event.program)]
        after = bisect.bisect_left(times, event.end)
        successor = times[after] if after < len(times) else marker_end
        event.end = max(event.end, min(marker_end, successor))


def classify_event(
    name: str, display_name: str, stats: dict[str, Any], *, line: int, start: int, end: int
) -> OpEvent | None:
    """The counted event for one trace event, or None for bookkeeping events (executor, threads)."""
    if "hlo_op" in stats:
        hlo = str(stats["hlo_op"]) or name
        module = str(stats.get("hlo_module", ""))
        return OpEvent("hlo", XLA_TYPE_PREFIX + _HLO_SUFFIX.sub("", hlo), hlo, line, start, end,
                       program=str(stats.get("program_id", module)), module=module)
    if name == ASYNC_START and stats.get("kernel_type"):
        kernel = str(stats["kernel_type"])
        return OpEvent("call", kernel, str(stats.get("name") or kernel), line, start, end)
    node, sep, op_type = name.rpartition(":")
    if sep and node and not node.endswith(":") and " " not in name and _OP_TYPE.fullmatch(op_type):
        if display_name and display_name != op_type:
            return None
        return OpEvent("tf", op_type, node, line, start, end)
    return None


def assign_parents(events: list[OpEvent]) -> None:
    """Nest every event in the innermost event that encloses it.

    On its own thread an event is nested in the enclosing TF op or call (found with a stack). An HLO
    op on another thread (an intra-op pool worker) is nested in a call that encloses it in time and
    ran the same XLA program on its own thread, or else in the innermost call that encloses it.
    An HLO op then ends at the latest where its call ends.
    """
    by_line: dict[int, list[OpEvent]] = defaultdict(list)
    for event in events:
        by_line[event.line].append(event)
    orphans: list[OpEvent] = []
    for line_events in by_line.values():
        line_events.sort(key=lambda e: (e.start, -e.end))
        stack: list[OpEvent] = []
        for event in line_events:
            while stack and not stack[-1].contains(event.start):
                stack.pop()
            if stack:
                _nest(event, stack[-1])
            elif event.kind == "hlo":
                orphans.append(event)
            if event.can_hold:
                stack.append(event)
    holders = sorted((e for e in events if e.kind == "call" or (e.kind == "tf" and e.children)),
                     key=lambda e: e.start)
    for event in orphans:
        around = [h for h in holders if h.line != event.line and h.contains(event.start)]
        if not around:
            continue
        same_program = [h for h in around if any(c.program == event.program for c in h.children)]
        _nest(event, max(same_program or around, key=lambda h: h.start))
    for event in events:
        # A call waits for its instructions, so none ends after it (a late end marker may say so).
        if event.kind == "hlo" and event.parent is not None and event.parent.end > event.start:
            event.end = min(event.end, event.parent.end)


def _nest(child: OpEvent, parent: OpEvent) -> None:
    child.parent = parent
    parent.children.append(child)


def self_ps(event: OpEvent) -> int:
    """The event's interval minus the union of its children's intervals (clipped to it)."""
    covered = union_length(
        (max(c.start, event.start), min(c.end, event.end)) for c in event.children
    )
    return max(0, event.end - event.start - covered)


def union_length(intervals: Iterable[tuple[int, int]]) -> int:
    """Total length covered by ``intervals`` (overlaps counted once)."""
    total = 0
    current_start = current_end = None
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total


def display_name(event: OpEvent) -> str:
    """An individual op's name: HLO ops are named inside the call that ran them."""
    if event.kind == "hlo":
        owner = event.parent.name if event.parent is not None else event.module or "xla"
        return f"{owner}/{event.name}"
    return event.name


def breakdown_document(
    events: Sequence[OpEvent], *, steps: int, wall_seconds: float, top: int = TOP_OPS
) -> dict[str, Any]:
    """Aggregate counted events into the ``breakdown.json`` document.

    Args:
        events: Counted events with parents assigned (:func:`op_events`).
        steps: Number of profiled steps.
        wall_seconds: Wall time of the profiled steps.
        top: Individual ops to keep.

    Returns:
        ``{"kind", "schema", "steps", "wall_seconds", "busy_seconds", "by_type": [{"type",
        "seconds", "count"}], "top_ops": [{"name", "type", "seconds", "count"}]}``, times summed
        over the steps, slowest first.
    """
    by_type: dict[str, list[float]] = defaultdict(lambda: [0, 0])
    by_op: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0])
    for event in events:
        own = self_ps(event)
        for bucket in (by_type[event.type], by_op[(display_name(event), event.type)]):
            bucket[0] += own
            bucket[1] += 1
    busy = union_length((e.start, e.end) for e in events)
    types = [{"type": t, "seconds": ps / PS_PER_S, "count": int(n)}
             for t, (ps, n) in by_type.items()]
    ops = [{"name": name, "type": t, "seconds": ps / PS_PER_S, "count": int(n)}
           for (name, t), (ps, n) in by_op.items()]
    return {
        "kind": BREAKDOWN_KIND,
        "schema": SCHEMA_VERSION,
        "steps": steps,
        "wall_seconds": wall_seconds,
        "busy_seconds": busy / PS_PER_S,
        "by_type": sorted(types, key=lambda d: (-d["seconds"], d["type"])),
        "top_ops": sorted(ops, key=lambda d: (-d["seconds"], d["name"]))[:top],
    }


