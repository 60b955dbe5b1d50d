"""Search spaces: the knobs of a workload, read from a TOML file and bounded by the host.

A :class:`SearchSpace` is loaded once per run with :func:`load_space`; host facts (core counts, CPU
flags, allocators found) resolve symbolic bounds and drop choices the host cannot run. The driver then
asks it for complete configurations: :meth:`SearchSpace.suggest` inside an Optuna trial,
:meth:`SearchSpace.reference` for the baseline and vendor-recommended configs, and
:meth:`SearchSpace.configure` for a hand-written one (``autotune bench --set``). A configuration is a
plain dict holding a value for every knob; nothing in a space file is evaluated as code.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autotune.contract import Contract, ContractError, Objective, argv, parse_contract
from autotune.errors import UserError
from autotune.tolerance import AgreementSpec, ToleranceError, parse_agreement

if TYPE_CHECKING:
    import optuna

# file: a path to a file the user gives (a model, an input array); never searched, "" for none. Its
# content, not its name, identifies a study (see autotune.study.default_study_name).
KNOB_TYPES = ("int", "float", "bool", "categorical", "shape", "file")
# Where a knob acts. param: in-process, in the trial's JSON config; env: an environment variable; arg: a
# {knob} placeholder of a command workload's argv; allocator: the library preloaded (LD_PRELOAD);
# affinity: CPU pinning (none, cores, socket); cores: how many physical cores affinity=cores pins to;
# instances: how many copies of the job a trial runs on disjoint cores (autotune.layout); instance_cores:
# the physical cores of each copy when there are several.
TARGETS = ("param", "env", "arg", "allocator", "affinity", "cores", "instances", "instance_cores")
# Targets that at most one knob of a space may have: the driver applies them itself.
DRIVER_TARGETS = ("allocator", "affinity", "cores", "instances", "instance_cores")
HOST_FACTS = ("physical_cores", "physical_cores_per_socket", "logical_cpus", "sockets")
REFERENCES = ("baseline", "vendor_recommended")
# The launchers' rules, resolved for the host (autotune.layout): the vendor configuration with the rule's
# instance layout, each thread knob at most the cores of one instance. Only in spaces with an instances knob.
RULES = ("throughput_rule", "mlperf_rule")
UNSET = "default"
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


class SpaceError(UserError):
    """A search-space file, knob or value that cannot be used; the message names the key."""


@dataclass(frozen=True)
class HostFacts:
    """What a search space needs to know of the host.

    Attributes:
        counts: Values for the symbolic bounds in :data:`HOST_FACTS`.
        isa: CPU flags, e.g. ``{"avx512_bf16": True}``.
        allocators: Names of the allocators that can be preloaded on this host.
        rules: Each of :data:`RULES` -> its ``(instances, cores_per_instance)`` on this host.
    """

    counts: Mapping[str, int]
    isa: Mapping[str, bool] = field(default_factory=dict)
    allocators: frozenset[str] = frozenset()
    rules: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def of(cls, host: Any) -> HostFacts:
        """Facts of a :class:`autotune.host.HostInfo`, counted over the CPUs this process may use.

        Counting every fact over the usable CPUs keeps them consistent: under a restricted affinity
        (a container's cpuset) the whole machine's cores per socket can exceed the usable CPUs.
        """
        from autotune.layout import mlperf_rule, throughput_rule

        cores = {host.core_of_cpu[cpu] for cpu in host.usable_cpus if cpu in host.core_of_cpu}
        sockets = len({socket for socket, _ in cores})
        rules = {"throughput_rule": throughput_rule(host), "mlperf_rule": mlperf_rule(host)} if cores else {}
        return cls(
            counts={
                "physical_cores": len(cores) or host.physical_cores,
                "physical_cores_per_socket": (
                    len(cores) // sockets if cores else host.physical_cores_per_socket
                ),
                "logical_cpus": len(host.usable_cpus) or host.logical_cpus,
                "sockets": sockets or host.sockets,
            },
            isa=dict(host.isa),
            allocators=frozenset(host.allocators),
            rules=rules,
        )


@dataclass(frozen=True)
class Knob:
    """One knob: its type, where it acts, and what values it may take on this host.

    Attributes:
        name: Canonical name, the same on the command line, in the space and in results.
        type: One of :data:`KNOB_TYPES`.
        target: One of :data:`TARGETS`.
        default: Value used when the knob is not searched, inactive, or not given.
        choices: Allowed values (categorical), or the values searched (shape).
        low: Lower bound (int, float).
        high: Upper bound (int, float).
        log: Search on a log scale (int, float).
        search: Whether the sampler varies it (unless pinned).
        env: Environment variable (target env).
        env_values: Value (as lower-case text) to environment text; ``"default"`` unsets it.
        when: Other knobs' values for which this knob is active.
        dropped: Choices removed because the host lacks what they need, with the reason.
        threads: A thread count (int): with several instances, at most the cores of one instance.
        help: One-line description.
    """

    name: str
    type: str
    target: str
    default: Any
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    search: bool = True
    env: str | None = None
    env_values: Mapping[str, str] = field(default_factory=dict)
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    dropped: Mapping[str, str] = field(default_factory=dict)
    threads: bool = False
    help: str = ""

    def parse(self, text: str) -> Any:
        """Convert command-line text to a valid value of this knob.

        Raises:
            SpaceError: The text is not a value this knob allows.
        """
        if self.type == "bool":
            lowered = text.strip().lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise SpaceError(f"{self.name}: {text!r} is not a boolean (use true or false)")
        if self.type == "int":
            try:
                return self.validate(int(text))
            except ValueError:
                raise SpaceError(f"{self.name}: {text!r} is not an integer") from None
        if self.type == "float":
            try:
                return self.validate(float(text))
            except ValueError:
                raise SpaceError(f"{self.name}: {text!r} is not a number") from None
        if self.type == "file":
            return self.validate(str(Path(text).expanduser().resolve()) if text.strip() else "")
        if self.type == "categorical":
            for choice in (*(self.choices or ()), *self.dropped):
                if str(choice) == text.strip():
                    return self.validate(choice)
            raise SpaceError(f"{self.name}: {text!r} is not one of {_listing(self.choices)}")
        return self.validate(text)

    def validate(self, value: Any) -> Any:
        """Check a value (from a file or :meth:`parse`) and return it in canonical form.

        Raises:
            SpaceError: The value is outside the knob's type, range or choices.
        """
        if self.type == "bool":
            if not isinstance(value, bool):
                raise SpaceError(f"{self.name}: {value!r} is not a boolean")
            return value
        if self.type in ("int", "float"):
            kinds = (int,) if self.type == "int" else (int, float)
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise SpaceError(f"{self.name}: {value!r} is not {'an integer' if self.type == 'int' else 'a number'}")
            if not self.low <= value <= self.high:
                raise SpaceError(f"{self.name}: {value} is outside {_bound(self.low)}..{_bound(self.high)}")
            return value
        if self.type == "shape":
            return canonical_shape(self.name, value)
        if self.type == "file":
            if not isinstance(value, str):
                raise SpaceError(f"{self.name}: {value!r} is not a file path")
            if value and not Path(value).is_file():
                raise SpaceError(f"{self.name}: {value} is not a file" if Path(value).exists()
                                 else f"{self.name}: {value} does not exist")
            return value
        if str(value) in self.dropped:
            raise SpaceError(f"{self.name}: {value!r} is not available here ({self.dropped[str(value)]})")
        if value not in (self.choices or ()):
            raise SpaceError(f"{self.name}: {value!r} is not one of {_listing(self.choices)}")
        return value

    def active(self, config: Mapping[str, Any]) -> bool:
        """Whether this knob matters given the other knobs' values."""
        return all(config.get(name) in values for name, values in self.when.items())

    def searchable(self) -> bool:
        """Whether the sampler has a real choice to make for this knob."""
        if not self.search or self.type == "file":
            return False
        if self.type == "bool":
            return True
        if self.choices is not None:
            return len(self.choices) > 1
        return self.high > self.low

    def suggest(self, trial: optuna.Trial) -> Any:
        """Ask an Optuna trial for this knob's value."""
        if self.type == "bool":
            return trial.suggest_categorical(self.name, [False, True])
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        if self.type == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))

    def env_value(self, value: Any) -> str | None:
        """Environment text for ``value``; None means the variable is left unset."""
        key = str(value).lower() if isinstance(value, bool) else str(value)
        text = self.env_values.get(key.lower(), key)
        return None if text == UNSET else text


@dataclass(frozen=True)
class SearchSpace:
    """A workload's knobs, resolved for one host.

    Attributes:
        workload: Workload name.
        module: Python module the trial runs with ``-m``.
        knobs: Knobs by name, in file order (conditions refer to earlier knobs).
        references: ``baseline`` and ``vendor_recommended`` partial configs, host facts resolved.
        path: The file it was read from.
        contract: The workload's declared contract (how it starts, its objective, its figures).
        facts: The host facts it was resolved with (instance layouts are bounded by them).
        agreement: Its output-agreement check and tolerances (``[agreement]``), or None.
    """

    workload: str
    module: str
    knobs: Mapping[str, Knob]
    references: Mapping[str, Mapping[str, Any]]
    path: Path | None = None
    contract: Contract | None = None
    facts: HostFacts | None = None
    agreement: AgreementSpec | None = None

    @property
    def objective(self) -> Objective:
        """The figure tuned and its direction."""
        assert self.contract is not None, "a space is built by load_space"
        return self.contract.objective

    @property
    def metric_name(self) -> str:
        """The objective with its unit, e.g. ``samples_per_s (samples/s)``: Optuna's metric name and axis label."""
        return self.objective.label

    @property
    def units(self) -> dict[str, str]:
        """Units of the figures the space declares: its extras and its objective, by name."""
        assert self.contract is not None
        return {**self.contract.figures, self.objective.name: self.objective.unit}

    def target_knob(self, target: str) -> str | None:
        """The knob acting as ``target`` (one of :data:`DRIVER_TARGETS`), or None."""
        return next((name for name, knob in self.knobs.items() if knob.target == target), None)

    def with_command(self, command: Iterable[str]) -> SearchSpace:
        """This command workload's space with the program's argv given (on the command line).

        Raises:
            SpaceError: Not a command workload, or a placeholder names no knob.
        """
        assert self.contract is not None
        if not self.contract.is_command:
            raise SpaceError(f"workload {self.workload!r} is not a command workload: it takes no program after --")
        contract = dataclasses.replace(self.contract, command=argv(list(command), "the command after --"))
        _check_placeholders(contract, self.knobs)
        return dataclasses.replace(self, contract=contract)

    def configure(self, values: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Complete and validate a configuration.

        Args:
            values: Knob values to apply (already typed).
            base: Values underneath ``values``; knob defaults fill the rest.

        Raises:
            SpaceError: An unknown knob or a value the knob does not allow.
        """
        config = {name: knob.default for name, knob in self.knobs.items()}
        for source in (base or {}, values):
            for name, value in source.items():
                config[name] = self.knob(name).validate(value)
        self._check_instances(config)
        return config

    def instances(self, config: Mapping[str, Any]) -> tuple[int, int | None]:
        """``(instances, cores per instance)`` of a configuration: ``(1, None)`` for one instance."""
        count, per = self.target_knob("instances"), self.target_knob("instance_cores")
        n = int(config.get(count, 1)) if count else 1
        if n <= 1:
            return 1, None
        return n, int(config[per]) if per else max(1, self._physical_cores() // n)

    def roles(self) -> tuple[str, ...]:
        """The reference configurations measured in every study: the baseline, the vendor's, and the
        launchers' rules where the space has an instances knob."""
        throughput = self.contract is None or self.contract.objective.maximize
        return REFERENCES + (RULES if self.target_knob("instances") and self.facts and self.facts.rules
                             and throughput else ())

    def _physical_cores(self) -> int:
        return int(self.facts.counts["physical_cores"]) if self.facts else 1

    def _check_instances(self, config: Mapping[str, Any]) -> None:
        """Several instances: they fit in the host's cores, and no thread knob exceeds one instance's cores."""
        n, per = self.instances(config)
        if per is None:
            return
        if self.contract is not None and not self.contract.objective.maximize:
            raise SpaceError(f"instances: {n} instances add up a throughput; the objective "
                             f"{self.contract.objective.name!r} is minimized (a latency): use one instance")
        cores = self._physical_cores()
        if n * per > cores:
            raise SpaceError(f"instances: {n} x {per} cores needs {n * per} physical cores; this host has {cores}")
        for name, knob in self.knobs.items():
            if knob.threads and knob.active(config) and int(config[name]) > per:
                raise SpaceError(f"{name}: {config[name]} threads in an instance of {per} core{'s' * (per != 1)} "
                                 f"({n} instances); at most {per}, or 0 for the default")

    def knob(self, name: str) -> Knob:
        """The knob called ``name``.

        Raises:
            SpaceError: No such knob.
        """
        if name not in self.knobs:
            raise SpaceError(f"unknown knob {name!r}; knobs: {', '.join(self.knobs)}")
        return self.knobs[name]

    def parse_assignments(self, items: Iterable[str]) -> dict[str, Any]:
        """Parse ``KNOB=VALUE`` strings (``--set``) into typed values.

        Raises:
            SpaceError: A malformed item, an unknown knob, a value it does not allow, or one knob
                given two different values (which one was meant is not for autotune to guess).
        """
        values: dict[str, Any] = {}
        for item in items:
            name, sep, text = item.partition("=")
            if not sep or not name.strip():
                raise SpaceError(f"--set {item!r}: expected KNOB=VALUE")
            name = name.strip()
            value = self.knob(name).parse(text)
            if name in values and values[name] != value:
                raise SpaceError(f"{name}: pinned twice, to {values[name]!r} and {value!r} "
                                 "(--set, --mode, --trial-seconds); pin it once")
            values[name] = value
        return values

    def reference(self, name: str, pins: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A reference config (one of :meth:`roles`), with ``pins`` applied on top.

        A rule is the vendor configuration with the rule's layout. Thread knobs that the reference (not a
        pin) sets above the cores of one instance are lowered to them: the rule's "threads = cores per
        instance", and a vendor value meant for one process when several instances are pinned.
        """
        pins = pins or {}
        base = dict(self.references["vendor_recommended" if name in RULES else name])
        if name in RULES:
            assert self.facts is not None
            n, per = self.facts.rules[name]
            base[self.target_knob("instances")] = n
            if n > 1 and self.target_knob("instance_cores"):
                base[self.target_knob("instance_cores")] = per
            elif n == 1 and per < self._physical_cores() and self.target_knob("affinity"):
                base[self.target_knob("affinity")] = "cores"
                if self.target_knob("cores"):
                    base[self.target_knob("cores")] = per
        merged = {name_: knob.default for name_, knob in self.knobs.items()}
        merged.update(base)
        merged.update(pins)
        n, per = self.instances(merged)
        if name in RULES and per is None:
            per = self.facts.rules[name][1] if self.facts else None
        if per is not None:
            for knob_name, knob in self.knobs.items():
                if knob.threads and knob_name not in pins and int(merged[knob_name]) > per:
                    base[knob_name] = per
        return self.configure(pins, base=base)

    def agreement_reference(self, config: Mapping[str, Any], pins: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The exact configuration ``config``'s outputs are compared with (see :mod:`autotune.tolerance`).

        Defaults, then the pins, then ``config``'s values of the agreement's shape knobs, then its
        reference values.
        """
        assert self.agreement is not None and self.agreement.reference is not None
        shape = {name: config[name] for name in self.agreement.shape}
        return self.configure(self.agreement.reference, base={**(pins or {}), **shape})

    def suggest(self, trial: optuna.Trial, pins: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Build a configuration inside an Optuna trial (define-by-run).

        Pinned, unsearched and inactive knobs take their pinned value or default and are not
        suggested, so Optuna only sees the knobs that vary.
        """
        pins = pins or {}
        config: dict[str, Any] = {}
        for name, knob in self.knobs.items():
            if name in pins:
                config[name] = pins[name]
            elif knob.searchable() and knob.active(config):
                config[name] = self._bounded(knob, config).suggest(trial)
            else:
                config[name] = knob.default
        return self.configure(config)

    def _bounded(self, knob: Knob, config: Mapping[str, Any]) -> Knob:
        """``knob`` with its upper bound lowered to what the instances chosen so far leave it."""
        count = self.target_knob("instances")
        n = int(config.get(count, 1)) if count else 1
        if n <= 1 or knob.type != "int":
            return knob
        if knob.target == "instance_cores":
            high = min(knob.high, max(knob.low, self._physical_cores() // n))
        elif knob.threads:
            cores_knob = self.target_knob("instance_cores")
            if cores_knob is not None and cores_knob not in config:
                return knob
            high = min(knob.high, max(knob.low, self.instances(config)[1] or knob.high))
        else:
            return knob
        return dataclasses.replace(knob, high=high)

    def searched(self, pins: Mapping[str, Any] | None = None) -> list[str]:
        """Names of the knobs the sampler varies.

        A knob whose condition names a fixed knob (pinned or not searched) with a value outside the
        condition can never be active, so it is not searched either.
        """
        pins = pins or {}
        varied: list[str] = []
        for name, knob in self.knobs.items():
            if not knob.searchable() or name in pins:
                continue
            fixed = {
                other: pins.get(other, self.knobs[other].default)
                for other in knob.when
                if other not in varied
            }
            if all(value in knob.when[other] for other, value in fixed.items()):
                varied.append(name)
        return varied

    def fingerprint_config(self, config: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
        """A hashable identity of what a config runs: inactive knobs collapse to their default."""
        effective: dict[str, Any] = {}
        for name, knob in self.knobs.items():
            effective[name] = config[name] if knob.active(effective) else knob.default
        return tuple(effective.items())


def canonical_shape(name: str, value: Any) -> str:
    """Canonical text of a patch shape: ``"64"`` for a cube, else ``"D,H,W"``.

    Raises:
        SpaceError: Not one or three positive integers.
    """
    parts = [value] if isinstance(value, int) and not isinstance(value, bool) else str(value).split(",")
    try:
        sides = [int(str(p).strip()) for p in parts]
    except ValueError:
        raise SpaceError(f"{name}: {value!r} is not a shape (D or D,H,W)") from None
    if len(sides) not in (1, 3) or min(sides) < 1:
        raise SpaceError(f"{name}: {value!r} is not a shape of 1 or 3 positive integers")
    if len(set(sides)) == 1:
        return str(sides[0])
    return ",".join(map(str, sides))


def shape_tuple(text: str) -> tuple[int, int, int]:
    """``"64"`` -> (64, 64, 64); ``"64,64,32"`` -> (64, 64, 32)."""
    sides = [int(p) for p in str(text).split(",")]
    return (sides[0],) * 3 if len(sides) == 1 else (sides[0], sides[1], sides[2])


def bundled_space(workload: str) -> Path:
    """The search-space file shipped for ``workload``: ``search_spaces/<workload>.toml``.

    The files are package data of the ``search_spaces`` package, found through
    :mod:`importlib.resources`, so an installed wheel finds them as a checkout does.

    Raises:
        SpaceError: ``workload`` is not a plain name, or no file ships for it.
    """
    if not workload.replace("_", "").isalnum():
        raise SpaceError(f"workload {workload!r} is not a plain name")
    folder = resources.files("search_spaces")
    path = folder / f"{workload}.toml"
    if not path.is_file():
        shipped = sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))
        raise SpaceError(f"no search space for workload {workload!r} (bundled: {', '.join(shipped) or 'none'}; "
                         "give --space PATH for your own)")
    return Path(str(path))


def load_space(path: Path, facts: HostFacts) -> SearchSpace:
    """Read and validate a search-space file, resolved for a host.

    Raises:
        SpaceError: The file is missing, not TOML, or has a bad key; the message names it.
    """
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SpaceError(f"{path}: search-space file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpaceError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpaceError(f"{path}: not valid TOML: {exc}") from None
    try:
        return _build_space(data, facts, Path(path))
    except (SpaceError, ContractError, ToleranceError) as exc:
        raise SpaceError(f"{path}: {exc}") from None


def _build_space(data: dict[str, Any], facts: HostFacts, path: Path) -> SearchSpace:
    _only_keys(data, {"workload", "knobs", "agreement", *REFERENCES}, "top level")
    workload = _table(data, "workload")
    contract = parse_contract(workload)
    name, module = contract.name, contract.module
    knobs: dict[str, Knob] = {}
    for knob_name, table in _table(data, "knobs").items():
        if not isinstance(table, dict):
            raise SpaceError(f"knobs.{knob_name}: must be a table")
        knobs[knob_name] = _build_knob(knob_name, table, facts, knobs)
    if not knobs:
        raise SpaceError("knobs: no knobs defined")
    for label in contract.label:
        if label not in knobs:
            raise SpaceError(f"workload.label: {label!r} is not a knob")
    if contract.command is not None:
        _check_placeholders(contract, knobs)
    for target in DRIVER_TARGETS:
        named = [n for n, k in knobs.items() if k.target == target]
        if len(named) > 1:
            raise SpaceError(f"knobs.{named[1]}.target: {target!r} is already the target of {named[0]!r}")
    space = SearchSpace(workload=name, module=module, knobs=knobs, references={}, path=path, contract=contract,
                        facts=facts)
    references = {}
    for ref in REFERENCES:
        table = _table(data, ref)
        resolved = {}
        for knob_name, value in table.items():
            knob = space.knobs.get(knob_name)
            if knob is None:
                raise SpaceError(f"{ref}.{knob_name}: unknown knob")
            if isinstance(value, str) and value in HOST_FACTS and knob.type in ("int", "float"):
                value = facts.counts[value]
            try:
                resolved[knob_name] = knob.validate(value)
            except SpaceError as exc:
                raise SpaceError(f"{ref}.{exc}") from None
        references[ref] = resolved
    agreement = parse_agreement(data["agreement"], knobs) if "agreement" in data else None
    return SearchSpace(workload=name, module=module, knobs=knobs, references=references, path=path,
                       contract=contract, facts=facts, agreement=agreement)


def _check_placeholders(contract: Contract, knobs: Mapping[str, Knob]) -> None:
    """Every ``{knob}`` of the argv names a knob, and every ``arg`` knob appears in it."""
    used = contract.placeholders()
    for name in sorted(used):
        if name not in knobs:
            raise SpaceError(f"workload.command: placeholder {{{name}}} names no knob")
    for name, knob in knobs.items():
        if knob.target == "arg" and name not in used:
            raise SpaceError(f"knobs.{name}: target arg, but no {{{name}}} placeholder in workload.command")


def _build_knob(name: str, table: dict[str, Any], facts: HostFacts, earlier: Mapping[str, Knob]) -> Knob:
    where = f"knobs.{name}"
    allowed = {"type", "target", "default", "choices", "low", "high", "log", "search", "env",
               "env_values", "when", "requires", "threads", "help"}
    _only_keys(table, allowed, where)
    kind = table.get("type")
    if kind not in KNOB_TYPES:
        raise SpaceError(f"{where}.type: {kind!r} is not one of {', '.join(KNOB_TYPES)}")
    target = table.get("target")
    if target not in TARGETS:
        raise SpaceError(f"{where}.target: {target!r} is not one of {', '.join(TARGETS)}")
    if target == "env" and not (isinstance(table.get("env"), str) and table["env"].isidentifier()):
        raise SpaceError(f"{where}.env: an env knob needs a variable name")
    if "default" not in table:
        raise SpaceError(f"{where}.default: missing")
    fields_: dict[str, Any] = {
        "name": name, "type": kind, "target": target, "default": table["default"],
        "search": _typed(table, "search", bool, True, where), "log": _typed(table, "log", bool, False, where),
        "env": table.get("env"), "help": _typed(table, "help", str, "", where),
        "env_values": _env_values(table.get("env_values", {}), where),
        "when": _when(table.get("when", {}), earlier, where),
        "threads": _typed(table, "threads", bool, False, where),
    }
    if fields_["threads"] and kind != "int":
        raise SpaceError(f"{where}.threads: only an int knob counts threads")
    if target in ("instances", "instance_cores") and kind != "int":
        raise SpaceError(f"{where}.target: {target} needs an int knob")
    if kind in ("int", "float"):
        fields_["low"] = _host_bound(table, "low", facts, where)
        fields_["high"] = _host_bound(table, "high", facts, where)
        if kind == "int" and not all(isinstance(fields_[k], int) for k in ("low", "high")):
            raise SpaceError(f"{where}: an int knob needs integer low and high")
        if fields_["log"] and fields_["low"] <= 0:
            raise SpaceError(f"{where}.log: a log scale needs low above 0")
        if fields_["low"] > fields_["high"]:
            raise SpaceError(f"{where}: low {fields_['low']} is above high {fields_['high']} on this host")
    elif kind in ("categorical", "shape"):
        choices = table.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{where}.choices: needs a non-empty list")
        if not all(isinstance(c, str | int | float) for c in choices):
            raise SpaceError(f"{where}.choices: each must be a string, number or boolean")
        fields_["choices"], fields_["dropped"] = _host_choices(name, choices, table, facts, target, where)
        if kind == "shape":
            fields_["choices"] = tuple(canonical_shape(where, c) for c in fields_["choices"])
    knob = Knob(**fields_)
    try:
        default = knob.validate(knob.default)
    except SpaceError as exc:
        raise SpaceError(f"{where}.default: {exc}") from None
    return Knob(**{**fields_, "default": default})


def _host_choices(
    name: str, choices: list[Any], table: dict[str, Any], facts: HostFacts, target: str, where: str
) -> tuple[tuple[Any, ...], dict[str, str]]:
    requires = table.get("requires", {})
    if not isinstance(requires, dict) or not all(isinstance(f, str) for f in requires.values()):
        raise SpaceError(f"{where}.requires: must map a choice to a CPU flag")
    kept, dropped = [], {}
    for choice in choices:
        flag = requires.get(str(choice))
        if flag is not None and not facts.isa.get(flag, False):
            dropped[str(choice)] = f"the CPU lacks {flag}"
        elif target == "allocator" and choice != "system" and choice not in facts.allocators:
            dropped[str(choice)] = f"{choice} was not found on this host"
        else:
            kept.append(choice)
    unknown = set(requires) - {str(c) for c in choices}
    if unknown:
        raise SpaceError(f"{where}.requires: {sorted(unknown)[0]!r} is not a choice")
    if not kept:
        raise SpaceError(f"{where}.choices: none is available on this host")
    return tuple(kept), dropped


def _host_bound(table: dict[str, Any], key: str, facts: HostFacts, where: str) -> float:
    value = table.get(key)
    if isinstance(value, str):
        if value not in HOST_FACTS:
            raise SpaceError(f"{where}.{key}: {value!r} is not a number or one of {', '.join(HOST_FACTS)}")
        return facts.counts[value]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpaceError(f"{where}.{key}: missing or not a number")
    return value


def _env_values(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise SpaceError(f"{where}.env_values: must map values to strings")
    return {str(k).lower(): v for k, v in value.items()}


def _when(value: Any, earlier: Mapping[str, Knob], where: str) -> dict[str, tuple[Any, ...]]:
    if not isinstance(value, dict):
        raise SpaceError(f"{where}.when: must map earlier knobs to lists of values")
    conditions = {}
    for other, values in value.items():
        if other not in earlier:
            raise SpaceError(f"{where}.when: {other!r} is not a knob defined above")
        knob = earlier[other]
        if isinstance(values, dict) and knob.type == "int":
            # May be empty on a small host: the knob is then never active.
            conditions[other] = tuple(_int_range(knob, values, f"{where}.when.{other}"))
            continue
        if not isinstance(values, list) or not values:
            raise SpaceError(f"{where}.when.{other}: must be a non-empty list (or {{ low = N }} for an int knob)")
        conditions[other] = tuple(_condition_value(knob, v, f"{where}.when") for v in values)
    return conditions


def _int_range(knob: Knob, bounds: dict[str, Any], where: str) -> list[int]:
    """``{ low = 2 }`` (and/or ``high``) of an int knob: its values in that range, as the host bounds them."""
    _only_keys(bounds, {"low", "high"}, where)
    low, high = bounds.get("low", knob.low), bounds.get("high", knob.high)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)):
        raise SpaceError(f"{where}: low and high must be integers")
    return list(range(max(int(low), int(knob.low)), min(int(high), int(knob.high)) + 1))


def _condition_value(knob: Knob, value: Any, where: str) -> Any:
    if str(value) in knob.dropped:
        return value
    try:
        return knob.validate(value)
    except SpaceError as exc:
        raise SpaceError(f"{where}.{exc}") from None


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise SpaceError(f"[{key}]: missing table")
    return value


def _only_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise SpaceError(f"{where}: unknown key {key!r}")


def _typed(table: dict[str, Any], key: str, kind: type, default: Any, where: str) -> Any:
    value = table.get(key, default)
    if not isinstance(value, kind):
        raise SpaceError(f"{where}.{key}: must be {kind.__name__}")
    return value


def _listing(choices: Iterable[Any] | None) -> str:
    return ", ".join(str(c) for c in choices or ())


def _bound(value: float | None) -> str:
    return f"{value:g}" if value is not None else "?"
