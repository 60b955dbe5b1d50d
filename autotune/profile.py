"""Op-time breakdown of one configuration: where a step's time goes, by op type and category.

Life cycle: :func:`profile_config` runs a configuration once, as a trial does (fresh subprocess, the
configuration's environment and pinning), with a ``profile_dir`` added to its in-process config. The
workload then records its timed steps under the TensorFlow profiler and writes ``breakdown.json``
into that folder before its result (``workloads/unet3d/profile.py`` reads the trace: self time and
count per op type, the slowest individual ops). This module reads that document into a
:class:`Breakdown`, puts every op type in a category (:func:`categorize`), and renders breakdowns:
:func:`markdown_table` shows several side by side, :func:`compare` names the biggest difference
between the baseline and the best in one sentence. ``autotune profile`` (with
:func:`autotune.report.load_study_config` and :func:`profile_document`) profiles a stored study's
baseline, best or vendor-recommended configuration.

The driver never imports TensorFlow: the child aggregates the trace, this module only categorises.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autotune.errors import UserError
from autotune.files import atomic_write
from autotune.protocol import Outcome, ProtocolError

if TYPE_CHECKING:
    from autotune.host import HostInfo
    from autotune.measurer import Measurer
    from autotune.runner import TrialOutcome

# The document the workload writes into its profile_dir (workloads/unet3d/profile.py writes it).
BREAKDOWN_FILE = "breakdown.json"
BREAKDOWN_KIND = "autotune-op-breakdown"
PROFILE_KIND = "autotune-profile"
# Version of the profile-<config>.json document (its own: the trial protocol has its own number).
PROFILE_SCHEMA = 1
# Version of the breakdown.json a profiling child writes (workloads/unet3d/profile.py writes the same).
BREAKDOWN_SCHEMA = 1
# Timed steps recorded under the profiler: enough to smooth one slow step, few enough to stay quick.
PROFILE_STEPS = 3
# What `autotune profile --config` accepts, and the study role each one names.
CONFIG_ROLES = {"baseline": "baseline", "best": "best", "vendor": "vendor_recommended"}

CONV = "Conv3D"
TRANSPOSE = "Transpose"
NORMALIZATION = "normalization"
ELEMENTWISE = "element-wise"
MOVEMENT = "data movement"
XLA = "XLA clusters"
OTHER = "other"
CATEGORIES = (CONV, TRANSPOSE, NORMALIZATION, ELEMENTWISE, MOVEMENT, XLA, OTHER)
"""Categories in display order."""
CATEGORY_PHRASES = {
    CONV: "Conv3D ops",
    TRANSPOSE: "Transpose ops",
    NORMALIZATION: "Normalization ops",
    ELEMENTWISE: "Element-wise ops",
    MOVEMENT: "Data-movement ops",
    XLA: "XLA cluster launches and unclassified XLA fusions",
    OTHER: "Other ops",
}

XLA_PREFIX = "xla:"
_CONV = re.compile(r"Conv[123]D|DepthwiseConv|Convolution")
_NORM = re.compile(r"BatchNorm|InstanceNorm|LayerNorm|GroupNorm|Moments")
_TYPES = {
    TRANSPOSE: {"Transpose", "ConjugateTranspose"},
    NORMALIZATION: {"Mean", "SquaredDifference", "Rsqrt", "RsqrtGrad", "Variance"},
    ELEMENTWISE: {
        "Abs", "Add", "AddN", "AddV2", "BiasAdd", "BiasAddV1", "Cast", "ClipByValue", "Div",
        "DivNoNan", "Elu", "EluGrad", "Equal", "Erf", "Exp", "Fill", "FloorDiv", "Gelu", "Greater",
        "GreaterEqual", "LeakyRelu", "LeakyReluGrad", "Less", "LessEqual", "Log", "Log1p",
        "LogicalAnd", "LogicalNot", "LogicalOr", "Maximum", "Minimum", "Mul", "MulNoNan", "Neg",
        "NotEqual", "OnesLike", "Pow", "RealDiv", "Reciprocal", "ReciprocalGrad", "Relu", "Relu6",
        "ReluGrad", "Select", "SelectV2", "Selu", "Sigmoid", "SigmoidGrad", "Sign", "Softmax",
        "Sqrt", "SqrtGrad", "Square", "Sub", "Swish", "Tanh", "TanhGrad", "ZerosLike",
    },
    MOVEMENT: {
        "BroadcastTo", "Concat", "ConcatV2", "Copy", "ExpandDims", "Gather", "GatherV2",
        "Identity", "IdentityN", "MirrorPad", "MirrorPadGrad", "MklToTf", "Pack", "Pad", "PadV2",
        "Reshape", "ResizeBilinear", "ResizeNearestNeighbor", "ResizeNearestNeighborGrad", "Slice",
        "Split", "SplitV", "Squeeze", "StridedSlice", "StridedSliceGrad", "Tile", "ToTf", "Unpack",
    },
    XLA: {"_XlaCompile", "_XlaMerge", "_XlaRun", "PartitionedCall", "StatefulPartitionedCall",
          "XlaLaunch", "XlaLaunchV2"},
}
# Words of XLA instruction and fusion names (``transpose_copy_fusion``, ``add_rsqrt_fusion``),
# checked in this order: a fusion holding a convolution is a convolution, one that transposes is a
# transpose.
_HLO_WORDS = (
    (CONV, {"convolution", "dot"}),
    (TRANSPOSE, {"transpose"}),
    (NORMALIZATION, {"reduce", "rsqrt"}),
    (MOVEMENT, {"concatenate", "pad", "slice", "gather", "scatter"}),
    (ELEMENTWISE, {"abs", "add", "clamp", "compare", "convert", "divide", "exponential", "log",
                   "logistic", "maximum", "minimum", "multiply", "negate", "power", "select",
                   "sqrt", "subtract", "tanh"}),
    (MOVEMENT, {"bitcast", "broadcast", "copy", "reshape"}),
)
_ONEDNN_PREFIXES = ("_MklNative", "_Mkl", "_")


def categorize(op_type: str) -> str:
    """The category of an op type as the profile names it.

    TensorFlow op types (``Conv3DBackpropInputV2``, ``_MklNativeFusedConv3D``, ``AddV2``) are looked
    up by name, oneDNN's ``_Mkl`` prefixes removed; XLA instructions (``xla:transpose_copy_fusion``)
    by the words of their names. The 1x1x1 convolutions XLA lowers to ``dot`` count as Conv3D.
    Function calls and XLA launches (``StatefulPartitionedCall``, ``_XlaRun``, ``cluster_*``) are
    XLA clusters: their self time is the launch, their instructions are counted by kind.
    """
    if op_type.startswith(XLA_PREFIX):
        words = set(re.split(r"[_\-.]", op_type[len(XLA_PREFIX):]))
        for category, names in _HLO_WORDS:
            if words & names:
                return category
        return XLA
    if op_type in _TYPES[XLA] or op_type.startswith("cluster_"):
        return XLA
    base = op_type
    for prefix in _ONEDNN_PREFIXES:
        if base.startswith(prefix):
            base = base[len(prefix):]
            break
    if _CONV.search(base):
        return CONV
    if _NORM.search(base):
        return NORMALIZATION
    for category in (TRANSPOSE, NORMALIZATION, ELEMENTWISE, MOVEMENT):
        if base in _TYPES[category]:
            return category
    return OTHER


@dataclass(frozen=True)
class OpTime:
    """Self time of an op type (``name`` empty) or of one individual op, summed over the steps.

    Attributes:
        type: Op type (``Conv3D``, ``xla:convolution``, ``StatefulPartitionedCall``).
        seconds: Self time over all profiled steps.
        count: Executions over all profiled steps.
        name: The op's node name (individual ops only); XLA instructions are named inside their
            call.
    """

    type: str
    seconds: float
    count: int
    name: str = ""

    @property
    def category(self) -> str:
        """Its category (:func:`categorize`)."""
        return categorize(self.type)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (the category included for readers; it is derived on reading)."""
        data: dict[str, Any] = {
            "type": self.type, "category": self.category, "seconds": self.seconds, "count": self.count
        }
        if self.name:
            data["name"] = self.name
        return data

    @classmethod
    def from_dict(cls, data: Any) -> OpTime:
        """Read :meth:`to_dict` output (or the workload's entry).

        Raises:
            ProtocolError: Not an op time.
        """
        if not isinstance(data, Mapping):
            raise ProtocolError("op time is not a JSON object")
        kind, seconds, count = data.get("type"), data.get("seconds"), data.get("count")
        name = data.get("name", "")
        if not isinstance(kind, str) or not isinstance(name, str):
            raise ProtocolError("op time needs a 'type' string")
        if not (_number(seconds) and seconds >= 0 and _integer(count) and count >= 0):
            raise ProtocolError(f"op time {kind!r} needs non-negative 'seconds' and 'count'")
        return cls(type=kind, seconds=float(seconds), count=count, name=name)


@dataclass(frozen=True)
class Breakdown:
    """Where the profiled steps of one configuration spent their time.

    Self times of concurrent threads add up (as in TensorFlow's own op statistics), so
    :attr:`op_seconds` can exceed :attr:`wall_seconds`; shares are over :attr:`op_seconds`.

    Attributes:
        steps: Profiled (timed) steps.
        wall_seconds: Wall time of those steps.
        busy_seconds: Time in which at least one op ran (the rest: executor and Python overhead).
        by_type: Every op type seen, slowest first.
        top_ops: The slowest individual ops, slowest first.
        schema: Schema version of the document.
    """

    steps: int
    wall_seconds: float
    busy_seconds: float
    by_type: tuple[OpTime, ...]
    top_ops: tuple[OpTime, ...] = ()
    schema: int = BREAKDOWN_SCHEMA

    @property
    def op_seconds(self) -> float:
        """Total self time of all ops."""
        return math.fsum(op.seconds for op in self.by_type)

    def categories(self) -> dict[str, float]:
        """Seconds per category, every category present, in :data:`CATEGORIES` order."""
        totals = dict.fromkeys(CATEGORIES, 0.0)
        for op in self.by_type:
            totals[op.category] += op.seconds
        return totals

    def share(self, category: str) -> float:
        """A category's share of the op time, 0..1 (0 when nothing was recorded)."""
        total = self.op_seconds
        return self.categories()[category] / total if total > 0 else 0.0

    def per_step(self, seconds: float) -> float:
        """Seconds over all steps -> seconds per step."""
        return seconds / max(self.steps, 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data; :meth:`from_dict` reads it back to an equal breakdown."""
        return {
            "kind": BREAKDOWN_KIND,
            "schema": self.schema,
            "steps": self.steps,
            "wall_seconds": self.wall_seconds,
            "busy_seconds": self.busy_seconds,
            "op_seconds": self.op_seconds,
            "categories": self.categories(),
            "by_type": [op.to_dict() for op in self.by_type],
            "top_ops": [op.to_dict() for op in self.top_ops],
        }

    @classmethod
    def from_dict(cls, data: Any) -> Breakdown:
        """Read :meth:`to_dict` output or the workload's ``breakdown.json``.

        Derived fields (``op_seconds``, ``categories``, ``category``) and unknown ones are ignored.

        Raises:
            ProtocolError: Not a breakdown of this schema.
        """
        if not isinstance(data, Mapping) or data.get("kind") != BREAKDOWN_KIND:
            raise ProtocolError("not an autotune op-time breakdown")
        if data.get("schema") != BREAKDOWN_SCHEMA:
            raise ProtocolError(
                f"breakdown has schema {data.get('schema')!r}, this autotune reads {BREAKDOWN_SCHEMA}"
            )
        steps, wall, busy = data.get("steps"), data.get("wall_seconds"), data.get("busy_seconds")
        if not _integer(steps) or steps < 1:
            raise ProtocolError("breakdown needs a positive integer 'steps'")
        if not (_number(wall) and _number(busy) and wall >= 0 and busy >= 0):
            raise ProtocolError("breakdown needs non-negative 'wall_seconds' and 'busy_seconds'")
        lists = {key: data.get(key, []) for key in ("by_type", "top_ops")}
        if not all(isinstance(value, list) for value in lists.values()):
            raise ProtocolError("breakdown 'by_type' and 'top_ops' must be lists")
        return cls(
            steps=steps,
            wall_seconds=float(wall),
            busy_seconds=float(busy),
            by_type=tuple(OpTime.from_dict(item) for item in lists["by_type"]),
            top_ops=tuple(OpTime.from_dict(item) for item in lists["top_ops"]),
        )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class ProfileFailed(Exception):
    """The profiling run produced no breakdown; ``outcome`` says how it ended (None: no run).

    Not a :class:`~autotune.errors.UserError`: a caller such as the end of ``autotune run`` reports
    it and goes on.
    """

    def __init__(self, reason: str, outcome: TrialOutcome | None = None) -> None:
        super().__init__(reason)
        self.outcome = outcome


def profile_config(measurer: Measurer, config: Mapping[str, Any], *, steps: int = PROFILE_STEPS) -> Breakdown:
    """Run ``config`` once under the TensorFlow profiler and return its op-time breakdown.

    The run is a trial in every respect (fresh subprocess, the config's environment and CPU pinning,
    timeout and memory cap, all from ``measurer``) except: ``steps`` timed steps exactly, at least one
    warm-up step (XLA compiles there), and the profiler on during the timed steps, so its step times are
    not figures of record; a configuration of several instances is profiled as one of them, alone on its
    cores. The caller holds the cores (:meth:`Measurer.holding`).

    Raises:
        ProfileFailed: The run failed, or left no readable breakdown.
        UserError: The configuration cannot be launched on this host.
    """
    with tempfile.TemporaryDirectory(prefix="autotune-profile-") as folder:
        spec = measurer.spec(config, timed_steps=steps, profile_dir=folder)
        params = dict(spec.config.params)
        if "warmup" in params:  # XLA compiles in the first step: keep it out of the profile
            params["warmup"] = max(1, int(params["warmup"]))
        trial_config = dataclasses.replace(spec.config, params=params)
        if spec.layout is not None:  # several instances: the breakdown of one, alone on its cores
            spec = dataclasses.replace(spec, layout=None, cpus=spec.layout.slots[0].cpus)
        outcome = measurer.runner.run(dataclasses.replace(spec, config=trial_config))
        if outcome.outcome is not Outcome.OK:
            reason = f"the profiling run {outcome.outcome.value}: {outcome.reason}"
            raise ProfileFailed(reason, outcome)
        path = Path(folder) / BREAKDOWN_FILE
        try:
            return Breakdown.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            reason = f"the workload wrote no {BREAKDOWN_FILE} (does it support profiling?)"
            raise ProfileFailed(reason, outcome) from None
        except (OSError, json.JSONDecodeError, ProtocolError) as exc:
            raise ProfileFailed(f"unreadable {BREAKDOWN_FILE}: {exc}", outcome) from None


def compare(baseline: Breakdown, best: Breakdown) -> str:
    """One sentence naming the category whose share differs most between the two breakdowns.

    E.g. ``"Transpose ops: 31% of baseline time (120.0 ms/step), 0% in best (0.0 ms/step)."``
    """
    if baseline.op_seconds <= 0 or best.op_seconds <= 0:
        return "No op time was recorded in one of the profiles, so they cannot be compared."
    base, other = baseline.categories(), best.categories()

    def gap(category: str) -> tuple[float, float]:
        return (abs(baseline.share(category) - best.share(category)),
                abs(baseline.per_step(base[category]) - best.per_step(other[category])))

    category = max(CATEGORIES, key=gap)
    return (
        f"{CATEGORY_PHRASES[category]}: {baseline.share(category):.0%} of baseline time "
        f"({_ms(baseline.per_step(base[category]))} ms/step), {best.share(category):.0%} in best "
        f"({_ms(best.per_step(other[category]))} ms/step)."
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f}"


def category_rows(breakdowns: Mapping[str, Breakdown]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the side-by-side category table: ms/step and share per breakdown."""
    header = ["category"]
    for label in breakdowns:
        header += [f"{label} ms/step", f"{label} share"]
    totals = {label: b.categories() for label, b in breakdowns.items()}
    rows = []
    for category in CATEGORIES:
        if all(t[category] == 0 for t in totals.values()):
            continue
        row = [category]
        for label, b in breakdowns.items():
            row += [_ms(b.per_step(totals[label][category])), f"{b.share(category):.1%}"]
        rows.append(row)
    total = ["all ops"]
    for b in breakdowns.values():
        total += [_ms(b.per_step(b.op_seconds)), "100%" if b.op_seconds > 0 else "-"]
    wall = ["step wall time (ops busy)"]
    for b in breakdowns.values():
        busy = b.busy_seconds / b.wall_seconds if b.wall_seconds > 0 else 0.0
        wall += [_ms(b.per_step(b.wall_seconds)), f"({busy:.0%} busy)"]
    return header, [*rows, total, wall]


TYPE_HEADER = ("op type", "category", "ms/step", "share", "per step")
OP_HEADER = ("op", "type", "ms/step", "share")


def type_rows(breakdown: Breakdown, top: int = 12) -> list[list[str]]:
    """Rows of the op-type table: type, category, ms/step, share, executions per step."""
    total = breakdown.op_seconds
    return [
        [op.type, op.category, _ms(breakdown.per_step(op.seconds)),
         f"{op.seconds / total:.1%}" if total > 0 else "-", f"{breakdown.per_step(op.count):g}"]
        for op in breakdown.by_type[:top]
    ]


def op_rows(breakdown: Breakdown, top: int = 10) -> list[list[str]]:
    """Rows of the individual-op table: name, type, ms/step, share."""
    total = breakdown.op_seconds
    return [
        [op.name, op.type, _ms(breakdown.per_step(op.seconds)),
         f"{op.seconds / total:.1%}" if total > 0 else "-"]
        for op in breakdown.top_ops[:top]
    ]


def markdown_table(breakdowns: Mapping[str, Breakdown]) -> str:
    """The side-by-side category table in Markdown, e.g. ``{"baseline": a, "best": b}``."""
    header, rows = category_rows(breakdowns)
    return _markdown(header, rows)


def markdown_top_ops(breakdown: Breakdown, top: int = 10) -> str:
    """The slowest individual ops of one breakdown in Markdown."""
    return _markdown(OP_HEADER, op_rows(breakdown, top))


def markdown_types(breakdown: Breakdown, top: int = 12) -> str:
    """The slowest op types of one breakdown in Markdown."""
    return _markdown(TYPE_HEADER, type_rows(breakdown, top))


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cells(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    return "\n".join([cells(header), "|" + "---|" * len(header), *(cells(r) for r in rows)]) + "\n"


def print_breakdowns(breakdowns: Mapping[str, Breakdown], *, top: int = 10) -> None:
    """Print ``breakdowns``: categories side by side, then each one's slowest types and ops."""
    from rich.table import Table

    from autotune.console import console

    def table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
        out = Table(title=title)
        for index, name in enumerate(header):
            left = index == 0 or name in ("type", "category")
            out.add_column(name, justify="left" if left else "right", overflow="fold")
        for row in rows:
            out.add_row(*row)
        return out

    header, rows = category_rows(breakdowns)
    console.print(table("op time by category", header, rows))
    for label, breakdown in breakdowns.items():
        console.print(table(f"{label}: slowest op types", TYPE_HEADER, type_rows(breakdown, top)))
        console.print(table(f"{label}: slowest ops", OP_HEADER, op_rows(breakdown, top)))


@dataclass(frozen=True)
class StudyConfig:
    """A configuration stored in a study, as ``autotune profile`` profiles it.

    Attributes:
        study: Study name.
        workload: The study's workload.
        which: ``baseline``, ``best`` or ``vendor``.
        trial: Number of the trial that holds it.
        config: Every knob.
        host_fingerprint: The host the study was recorded on.
    """

    study: str
    workload: str
    which: str
    trial: int
    config: dict[str, Any]
    host_fingerprint: str | None


def profile_document(stored: StudyConfig, breakdown: Breakdown, host: HostInfo) -> dict[str, Any]:
    """The versioned ``profile-<config>.json`` document."""
    return {
        "schema": PROFILE_SCHEMA,
        "kind": PROFILE_KIND,
        "study": stored.study,
        "workload": stored.workload,
        "config_role": stored.which,
        "trial": stored.trial,
        "config": stored.config,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host_fingerprint": host.fingerprint,
        "study_host_fingerprint": stored.host_fingerprint,
        "breakdown": breakdown.to_dict(),
    }


def load_profile(path: Path) -> Breakdown:
    """The breakdown of a ``profile-<config>.json`` document.

    Raises:
        UserError: Missing, unreadable or not a profile of this schema.
    """
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read: {exc}") from None
    if not isinstance(data, dict) or (data.get("kind"), data.get("schema")) != (PROFILE_KIND, PROFILE_SCHEMA):
        raise UserError(f"{path}: not an autotune profile of schema {PROFILE_SCHEMA}")
    try:
        return Breakdown.from_dict(data.get("breakdown"))
    except ProtocolError as exc:
        raise UserError(f"{path}: {exc}") from None


def write_profile(path: Path, document: Mapping[str, Any]) -> None:
    """Write a profile document atomically.

    Raises:
        UserError: The folder cannot be written.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(document, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
