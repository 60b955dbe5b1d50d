"""The winning configuration as files a user deploys: shell, dotenv, JSON, Dockerfile, Kubernetes.

:func:`load_record` reads one configuration of a ``best.json`` (or of an exported JSON record)
into a validated :class:`LaunchRecord`; each format is a small serializer of that one record (as
hyperfine's ``src/export/`` has one per format), chosen through :data:`FORMATS`. ``autotune exec``
launches the same record (:mod:`autotune.launcher`).

Nothing in a record is ever evaluated: variable names must be plain identifiers, every value is
quoted for the format it lands in, and text that ends up in a comment is kept on one line, so a
value such as ``$(rm -rf /)`` stays inert wherever the file is read.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune.errors import UserError
from autotune.files import atomic_write
from autotune.host import format_cpu_list
from autotune.layout import INSTANCE_VARIABLE, INSTANCES_VARIABLE, Layout
from autotune.summary import ROLES, load_best

EXPORT_SCHEMA = 1
EXPORT_KIND = "autotune-export"
PARAMS_VARIABLE = "AUTOTUNE_PARAMS"
LAUNCH_VARIABLE = "AUTOTUNE_LAUNCH"
CPUS_VARIABLE = "AUTOTUNE_INSTANCE_CPUS"
"""With several instances: each instance's CPU list, separated by ``;`` (dotenv, the sh file)."""
RESERVED_NAMES = (PARAMS_VARIABLE, LAUNCH_VARIABLE, INSTANCE_VARIABLE, INSTANCES_VARIABLE, CPUS_VARIABLE)
ROLE_ALIASES = {"vendor": "vendor_recommended", **{role: role for role in ROLES}}
"""Role names accepted on the command line: the ``best.json`` entries, and ``vendor`` for short."""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Dotenv double-quoted escapes as godotenv and docker compose read them; \$ and \` also keep the
# file inert when a shell sources it.
_DOTENV_ESCAPES = {"\\": "\\\\", '"': '\\"', "$": "\\$", "`": "\\`", "\n": "\\n", "\r": "\\r"}
# In a Dockerfile's double-quoted word the backslash escapes only these, and $ substitutes.
_DOCKER_ESCAPES = {"\\": "\\\\", '"': '\\"', "$": "\\$"}
# Characters JSON leaves raw that a YAML stream may not hold, or reads as line breaks (YAML 1.1).
_YAML_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ufeff]")

Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class LaunchRecord:
    """One configuration, as the exporters write it and ``autotune exec`` launches it.

    Attributes:
        study: The study the configuration comes from.
        workload: The workload it was measured with.
        role: Which configuration: ``best``, ``baseline`` or ``vendor_recommended``.
        trial: The trial number that measured it, if known.
        env: Environment changes: a value sets the variable, None means it must be unset.
        cpus: Logical CPUs to pin to, ascending, or None for no pinning.
        params: In-process knobs; the workload applies them itself (they are not variables).
        config: Every knob of the configuration, by name.
        host_fingerprint: Fingerprint of the host it was tuned on.
        layout: Several instances on disjoint cores (then ``cpus`` is None), or None for one process.
    """

    study: str
    workload: str
    role: str
    trial: int | None
    env: Mapping[str, str | None]
    cpus: tuple[int, ...] | None
    params: Mapping[str, Scalar]
    config: Mapping[str, Any] = field(default_factory=dict)
    host_fingerprint: str | None = None
    layout: Layout | None = None

    @property
    def instances(self) -> int:
        """How many copies of the command run."""
        return self.layout.instances if self.layout is not None else 1

    def instance_prefix(self, index: int) -> list[str]:
        """The words that pin instance ``index`` (``taskset``, and ``numactl --membind`` where it binds memory)."""
        if self.layout is None:
            return self.launch_prefix
        slot = self.layout.slots[index]
        bind = ["numactl", f"--membind={format_cpu_list(slot.nodes)}"] if slot.nodes else []
        return [*bind, "taskset", "-c", format_cpu_list(slot.cpus)]

    @property
    def launch_prefix(self) -> list[str]:
        """The words that pin a command to :attr:`cpus` (``taskset`` from util-linux), or none."""
        return [] if self.cpus is None else ["taskset", "-c", format_cpu_list(self.cpus)]

    @property
    def params_json(self) -> str:
        """The in-process knobs as one line of JSON: the value of ``AUTOTUNE_PARAMS``."""
        return json.dumps(dict(self.params), sort_keys=True)

    def workload_arguments(self) -> list[str]:
        """The in-process knobs as ``--name value`` words, for a workload's own command line."""
        words: list[str] = []
        for name, value in sorted(self.params.items()):
            words += [f"--{name}", value if isinstance(value, str) else json.dumps(value)]
        return words


def resolve_role(name: str) -> str:
    """The ``best.json`` entry a role name means (``vendor`` is ``vendor_recommended``).

    Raises:
        UserError: Not a role name.
    """
    try:
        return ROLE_ALIASES[name]
    except KeyError:
        choices = ", ".join(ROLE_ALIASES)
        raise UserError(f"unknown configuration {name!r} (choose from {choices})") from None


def load_record(path: Path, role: str | None = None) -> LaunchRecord:
    """Read one configuration from a ``best.json`` or from an exported JSON record.

    Args:
        path: The file.
        role: Which configuration of a ``best.json`` (default ``best``). An exported record holds
            one configuration; ``role`` must then be None or that one.

    Raises:
        UserError: The file is missing or unreadable, is neither kind of document, lacks the
            configuration, or a field it needs is malformed (the message names the field).
    """
    raw = _peek(path)
    if isinstance(raw, dict) and raw.get("kind") == EXPORT_KIND:
        return _from_export(path, raw, None if role is None else resolve_role(role))
    document = load_best(path)
    return record_from_best(document, resolve_role(role or "best"), source=str(path))


def record_from_best(
    document: Mapping[str, Any], role: str, *, source: str = "best.json"
) -> LaunchRecord:
    """Validate and take the ``role`` configuration of a loaded ``best.json`` document.

    Raises:
        UserError: The configuration is missing (no trial of it succeeded) or malformed.
    """
    entry = document.get(role)
    if entry is None:
        raise UserError(f"{source}: has no {role!r} configuration (no trial of it succeeded)")
    if not isinstance(entry, dict):
        raise UserError(f"{source}: {role}: not an object")
    verdict = entry.get("agreement")
    if isinstance(verdict, dict) and verdict.get("ok") is False:
        why = verdict.get("note") or "; ".join(verdict.get("failed") or []) or "outside the tolerance"
        raise UserError(f"{source}: {role}: its outputs disagree with the reference ({why}); "
                        "autotune does not deploy an inaccurate configuration")
    return _record(f"{source}: {role}", document, entry, role)


def _peek(path: Path) -> Any:
    # Only the kind matters here: load_best reports the errors of anything not an export record.
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _from_export(path: Path, data: dict[str, Any], role: str | None) -> LaunchRecord:
    if data.get("schema") != EXPORT_SCHEMA:
        schema = data.get("schema")
        raise UserError(f"{path}: schema {schema!r}, this autotune reads {EXPORT_SCHEMA}")
    stored = data.get("role")
    if stored not in ROLES:
        raise UserError(f"{path}: role: {stored!r} is not one of {', '.join(ROLES)}")
    if role is not None and role != stored:
        raise UserError(f"{path}: holds the {stored!r} configuration, not {role!r}")
    return _record(f"{path}: {stored}", data, data, stored)


def _record(
    where: str, document: Mapping[str, Any], entry: Mapping[str, Any], role: str
) -> LaunchRecord:
    trial = entry.get("trial")
    if trial is not None and (not isinstance(trial, int) or isinstance(trial, bool)):
        raise UserError(f"{where}.trial: {trial!r} is not a trial number")
    config = entry.get("config") or {}
    if not isinstance(config, dict):
        raise UserError(f"{where}.config: not an object")
    fingerprint = document.get("host_fingerprint")
    if fingerprint is not None:
        fingerprint = _text(fingerprint, f"{where}: host_fingerprint")
    return LaunchRecord(
        study=_text(document.get("study"), f"{where}: study"),
        workload=_text(document.get("workload"), f"{where}: workload"),
        role=role,
        trial=trial,
        env=validate_env(entry.get("env"), f"{where}.env"),
        cpus=validate_cpus(entry.get("cpus"), f"{where}.cpus"),
        params=validate_params(entry.get("params"), f"{where}.params"),
        config=config,
        host_fingerprint=fingerprint,
        layout=_layout(entry.get("instances"), f"{where}.instances"),
    )


def _layout(data: Any, where: str) -> Layout | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise UserError(f"{where}: not an object")
    try:
        layout = Layout.from_dict(data)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    return layout if layout.instances > 1 else None


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{where}: {value!r} is not a string")
    return value


def validate_env(env: Any, where: str = "env") -> dict[str, str | None]:
    """Check environment changes: identifier names, string or null values, no NUL characters.

    Raises:
        UserError: The message names the field and the offending variable.
    """
    if not isinstance(env, dict):
        raise UserError(f"{where}: not an object of variable names to values")
    for name, value in env.items():
        if not _NAME.fullmatch(name):
            raise UserError(f"{where}: {name!r} is not a valid variable name")
        if name in RESERVED_NAMES:
            raise UserError(f"{where}: {name} is reserved for autotune's own use")
        if value is not None and not isinstance(value, str):
            raise UserError(f"{where}.{name}: {value!r} is neither a string nor null")
        if value is not None and "\0" in value:
            raise UserError(f"{where}.{name}: a value cannot hold a NUL character")
    return dict(env)


def validate_cpus(cpus: Any, where: str = "cpus") -> tuple[int, ...] | None:
    """Check a CPU list: null, or a non-empty list of non-negative integers (sorted, unique).

    Raises:
        UserError: The message names the field.
    """
    if cpus is None:
        return None
    if not isinstance(cpus, list) or not cpus:
        raise UserError(f"{where}: {cpus!r} is not a non-empty list of CPU numbers (or null)")
    for cpu in cpus:
        if not isinstance(cpu, int) or isinstance(cpu, bool) or cpu < 0:
            raise UserError(f"{where}: {cpu!r} is not a CPU number")
    return tuple(sorted(set(cpus)))


def validate_params(params: Any, where: str = "params") -> dict[str, Scalar]:
    """Check in-process knobs: identifier names, single values (numbers finite).

    Raises:
        UserError: The message names the field.
    """
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise UserError(f"{where}: not an object of knob names to values")
    for name, value in params.items():
        if not _NAME.fullmatch(name):
            raise UserError(f"{where}: {name!r} is not a valid knob name")
        if value is not None and not isinstance(value, str | int | float | bool):
            raise UserError(f"{where}.{name}: {value!r} is not a single value")
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{where}.{name}: {value!r} is not a finite number")
    return dict(params)


# ---- serializers: one record in, the file's text out ----


def to_sh(record: LaunchRecord) -> str:
    """A file to source in ``sh`` or ``bash``: exports, unsets, the ``autotune_launch`` prefix."""
    lines = _header(record, "sh")
    lines.append("# Use:  . ./THIS_FILE  then  autotune_launch python predict.py ...")
    for name, value in sorted(record.env.items()):
        lines.append(f"unset {name}" if value is None else f"export {name}={shlex.quote(value)}")
    lines += _params_comment(record)
    lines.append(f"export {PARAMS_VARIABLE}={shlex.quote(record.params_json)}")
    if record.layout is not None:
        return "\n".join(lines + _sh_instances(record)) + "\n"
    prefix = shlex.join(record.launch_prefix)
    if record.cpus is None:
        lines.append("# No CPU pinning: autotune_launch runs the command as it is.")
    else:
        lines.append(f"# CPU affinity: autotune_launch pins the command to CPUs {_cpus(record)}.")
    lines.append(f"{LAUNCH_VARIABLE}={shlex.quote(prefix)}")
    lines.append(f'autotune_launch() {{ {prefix + " " if prefix else ""}"$@"; }}')
    return "\n".join(lines) + "\n"


def to_dotenv(record: LaunchRecord) -> str:
    """A dotenv file: ``KEY="value"`` lines, double-quoted with backslash escapes."""
    lines = _header(record, "dotenv")
    lines.append('# Values are double-quoted; \\\\ \\" \\$ \\` \\n \\r are escapes.')
    for name, value in sorted(record.env.items()):
        if value is None:
            lines.append(f"# {name} must be unset: a dotenv file cannot unset it; left out.")
        else:
            lines.append(f"{name}={_dotenv_quote(value)}")
    lines += _params_comment(record)
    lines.append(f"{PARAMS_VARIABLE}={_dotenv_quote(record.params_json)}")
    if record.layout is not None:
        lines += _layout_comment(record, "a dotenv file cannot start them")
        lines.append(f"{INSTANCES_VARIABLE}={_dotenv_quote(str(record.instances))}")
        lines.append(f"{CPUS_VARIABLE}={_dotenv_quote(_instance_cpus(record))}")
    lines += _pinning_comment(record, "a dotenv file cannot pin CPUs")
    return "\n".join(lines) + "\n"


def to_json(record: LaunchRecord) -> str:
    """The versioned export record (``autotune exec --config`` reads it too)."""
    document = {
        "schema": EXPORT_SCHEMA,
        "kind": EXPORT_KIND,
        "study": record.study,
        "workload": record.workload,
        "role": record.role,
        "trial": record.trial,
        "host_fingerprint": record.host_fingerprint,
        "env": dict(record.env),
        "cpus": None if record.cpus is None else list(record.cpus),
        "instances": None if record.layout is None else record.layout.to_dict(),
        "params": dict(record.params),
        "config": dict(record.config),
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def to_docker(record: LaunchRecord) -> str:
    """Dockerfile ``ENV KEY="value"`` lines (for a Dockerfile with the default escape character).

    Raises:
        UserError: A value holds a line break, which a Dockerfile instruction cannot.
    """
    lines = _header(record, "docker")
    for name, value in sorted(record.env.items()):
        if value is None:
            lines.append(f"# {name} must be unset: ENV cannot unset it; keep it out of the image.")
        else:
            lines.append(f"ENV {name}={_docker_quote(value, f'{record.role}.env.{name}')}")
    lines += _preload_comment(record)
    lines += _params_comment(record)
    params = _docker_quote(record.params_json, PARAMS_VARIABLE)
    lines.append(f"ENV {PARAMS_VARIABLE}={params}")
    why = f"ENV cannot pin CPUs (docker run --cpuset-cpus={_cpus(record)} confines the container)"
    lines += _pinning_comment(record, why)
    lines += _layout_comment(record, "ENV cannot start them: use `autotune exec` or the sh export as the CMD")
    return "\n".join(lines) + "\n"


def to_k8s(record: LaunchRecord) -> str:
    """A Kubernetes container ``env:`` list (indent it under the container's spec)."""
    lines = _header(record, "k8s")
    for name, value in sorted(record.env.items()):
        if value is None:
            lines.append(f"# {name} must be unset: left out (only the image can set it).")
    lines += _preload_comment(record)
    lines += _params_comment(record)
    lines += _layout_comment(record, "env cannot start them: run `autotune exec` or the sh export's "
                                     "autotune_launch as the container's command, on a pod with all these CPUs")
    if record.cpus is not None:
        lines += [
            f"# CPU affinity (CPUs {_cpus(record)}) cannot be set through env: give the container",
            f"# {len(record.cpus)} whole CPUs (integer CPU requests equal to limits) where the",
            "# kubelet uses the static CPU manager policy, or start the command under:",
            _comment("  " + shlex.join([*record.launch_prefix, "CMD"])),
        ]
    lines.append("env:")
    variables = [(name, value) for name, value in sorted(record.env.items()) if value is not None]
    for name, value in [*variables, (PARAMS_VARIABLE, record.params_json)]:
        lines += [f"  - name: {_yaml_quote(name)}", f"    value: {_yaml_quote(value)}"]
    return "\n".join(lines) + "\n"


Serializer = Callable[[LaunchRecord], str]
FORMATS: dict[str, Serializer] = {
    "sh": to_sh,
    "dotenv": to_dotenv,
    "json": to_json,
    "docker": to_docker,
    "k8s": to_k8s,
}
"""Every export format by its ``--format`` name."""


def render(record: LaunchRecord, fmt: str) -> str:
    """The text of ``record`` in format ``fmt``.

    Raises:
        UserError: Unknown format, or a value the format cannot hold.
    """
    try:
        serializer = FORMATS[fmt]
    except KeyError:
        raise UserError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})") from None
    return serializer(record)


def write_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically; an existing file keeps its permissions.

    Raises:
        UserError: The file cannot be written.
    """
    try:
        atomic_write(Path(path), text)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


# ---- pieces the serializers share ----


def _header(record: LaunchRecord, fmt: str) -> list[str]:
    trial = "" if record.trial is None else f" (trial {record.trial})"
    return [
        _comment(f"autotune export ({fmt}): the {record.role} configuration{trial}"),
        _comment(f"of study {record.study}, workload {record.workload},"),
        _comment(f"tuned on host {record.host_fingerprint or 'unknown'}."),
    ]


def _params_comment(record: LaunchRecord) -> list[str]:
    sorted_params = sorted(record.params.items())
    lines = [
        "# In-process knobs are not environment variables: the workload must apply them itself.",
        f"# They are in {PARAMS_VARIABLE} as JSON:",
    ]
    lines += [_comment(f"  {name} = {json.dumps(value)}") for name, value in sorted_params]
    lines.append("# and as arguments, for a workload whose own command line takes them:")
    lines.append(_comment(f"workload arguments: {shlex.join(record.workload_arguments())}"))
    return lines


def _preload_comment(record: LaunchRecord) -> list[str]:
    preload = record.env.get("LD_PRELOAD")
    if not preload:
        return []
    return [_comment(f"LD_PRELOAD is the allocator on the tuned host; the image needs {preload}")]


def _pinning_comment(record: LaunchRecord, why: str) -> list[str]:
    if record.cpus is None:
        return []
    command = shlex.join([*record.launch_prefix, "CMD"])
    return [
        _comment(f"CPU affinity: {why}; start the command as:"),
        _comment(f"  {command}    (taskset is in util-linux)"),
    ]


def _instance_cpus(record: LaunchRecord) -> str:
    assert record.layout is not None
    return ";".join(format_cpu_list(slot.cpus) for slot in record.layout.slots)


def _layout_comment(record: LaunchRecord, why: str) -> list[str]:
    if record.layout is None:
        return []
    layout = record.layout
    lines = [_comment(f"Instances: {layout.instances} copies of the command, {layout.cores_per_instance} physical "
                      f"core(s) each, told {INSTANCE_VARIABLE}=0..{layout.instances - 1} and "
                      f"{INSTANCES_VARIABLE}={layout.instances};"),
             _comment(f"{why}. Each copy is started as:")]
    for index in range(layout.instances):
        words = [f"{INSTANCE_VARIABLE}={index}", f"{INSTANCES_VARIABLE}={layout.instances}",
                 *record.instance_prefix(index), "CMD"]
        lines.append(_comment(f"  {shlex.join(words)}"))
    return lines


def _sh_instances(record: LaunchRecord) -> list[str]:
    """``autotune_launch``: start the copies, forward INT/TERM/HUP to all, wait all, return the first failure."""
    assert record.layout is not None
    n = record.instances
    lines = [f"# {n} instances: autotune_launch starts {n} pinned copies of the command, each told its index",
             f"# ({INSTANCE_VARIABLE}) and the count ({INSTANCES_VARIABLE}), waits for all, and returns the first",
             "# non-zero status (or 0); INT, TERM and HUP are forwarded to every copy.",
             f"{CPUS_VARIABLE}={shlex.quote(_instance_cpus(record))}",
             "autotune_launch() {",
             "  _autotune_pids=''",
             "  trap 'kill -s TERM $_autotune_pids 2>/dev/null' TERM HUP",
             "  trap 'kill -s INT $_autotune_pids 2>/dev/null' INT"]
    for index in range(n):
        prefix = shlex.join(record.instance_prefix(index))
        lines.append(f"  {INSTANCE_VARIABLE}={index} {INSTANCES_VARIABLE}={n} {prefix} \"$@\" &")
        lines.append('  _autotune_pids="$_autotune_pids $!"')
    lines += ["  _autotune_status=0",
              "  for _autotune_pid in $_autotune_pids; do",
              '    wait "$_autotune_pid"; _autotune_code=$?',
              '    if [ "$_autotune_status" -eq 0 ]; then _autotune_status=$_autotune_code; fi',
              "  done",
              "  trap - INT TERM HUP",
              '  return "$_autotune_status"',
              "}"]
    return lines


def _cpus(record: LaunchRecord) -> str:
    return format_cpu_list(record.cpus or ())


def _comment(text: str) -> str:
    """One comment line: characters that are not printable (line breaks above all) are escaped."""
    return "# " + "".join(ch if ch.isprintable() else _escaped(ch) for ch in text)


def _escaped(ch: str) -> str:
    return ch.encode("unicode_escape").decode("ascii")


def _dotenv_quote(value: str) -> str:
    return '"' + "".join(_DOTENV_ESCAPES.get(ch, ch) for ch in value) + '"'


def _docker_quote(value: str, where: str) -> str:
    if "\n" in value or "\r" in value:
        raise UserError(f"{where}: a Dockerfile ENV value cannot hold a line break; use sh")
    return '"' + "".join(_DOCKER_ESCAPES.get(ch, ch) for ch in value) + '"'


def _yaml_quote(value: str) -> str:
    """A YAML double-quoted scalar that is also a JSON string (JSON's escapes are YAML escapes)."""
    text = json.dumps(value, ensure_ascii=False)
    return _YAML_UNSAFE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)
