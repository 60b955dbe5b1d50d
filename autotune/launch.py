"""Turn a complete configuration into how a process is launched: environment, CPU pinning, params.

This is the seam between a search space and everything that starts a process with a configuration:
the trial runner, ``autotune exec`` and the exporters all use :func:`launch_for`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autotune.contract import COMMAND_MODULE
from autotune.errors import UserError
from autotune.host import HostInfo, cpus_for_cores, socket_cpus
from autotune.layout import Layout, plan_layout, rates_of
from autotune.protocol import TrialConfig
from autotune.runner import TrialSpec
from autotune.space import SearchSpace

# A trial may use this share of the host's memory before it is stopped as out of memory.
MEMORY_CAP_SHARE = 0.75


@dataclass(frozen=True)
class Launch:
    """How to start a process for one configuration.

    Attributes:
        env: Environment changes: a value sets the variable, None removes it.
        cpus: Logical CPUs to pin to, or None for no pinning.
        params: In-process knobs for the workload's config.
        layout: Several instances on disjoint cores (then ``cpus`` is None), or None for one process.
    """

    env: Mapping[str, str | None] = field(default_factory=dict)
    cpus: tuple[int, ...] | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    layout: Layout | None = None


def launch_for(space: SearchSpace, config: Mapping[str, Any], host: HostInfo) -> Launch:
    """Resolve a configuration of ``space`` on ``host``: every knob by its target.

    Raises:
        UserError: The configuration asks for something the host cannot give (an allocator it
            lacks, more cores than it has), or a command workload has no program.
    """
    env: dict[str, str | None] = {}
    params: dict[str, Any] = {}
    args: dict[str, str] = {}
    for name, knob in space.knobs.items():
        value = config[name]
        if knob.target == "param":
            params[name] = value
        elif knob.target == "env" and knob.env:
            env[knob.env] = knob.env_value(value)
        elif knob.target == "arg":
            args[name] = _arg_text(value)
    allocator, affinity, cores = (space.target_knob(t) for t in ("allocator", "affinity", "cores"))
    env["LD_PRELOAD"] = _preload(config[allocator], host) if allocator else None
    instances, per = space.instances(config)
    layout = plan_layout(host, instances, per) if per is not None else None
    cpus = None
    if affinity and layout is None:
        cpus = _cpus(config[affinity], int(config[cores]) if cores else 1, host)
    if space.contract is not None and space.contract.is_command:
        params = _command_params(space, params, args)
    return Launch(env=env, cpus=cpus, params=params, layout=layout)


def _arg_text(value: Any) -> str:
    """A knob value as command-line text (booleans as true/false, as in the space file)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


# What the command wrapper's config holds besides the knobs (see _command_params): not knobs, so not part
# of a configuration's in-process params in records, exports or AUTOTUNE_PARAMS.
WRAPPER_KEYS = ("command", "check_command", "args", "figure_key", "figure_pattern", "quality_key", "quality_pattern",
                "objective", "direction", "cwd")


def knob_params(spec: TrialSpec) -> dict[str, Any]:
    """The in-process knobs a trial was launched with: its config's params without the driver's additions."""
    added = {"data_dir", *(WRAPPER_KEYS if spec.module == COMMAND_MODULE else ())}
    return {k: v for k, v in spec.config.params.items() if k not in added}


def _command_params(space: SearchSpace, params: dict[str, Any], args: dict[str, str]) -> dict[str, Any]:
    """The wrapper's config for a command workload: the program, its placeholders' values, how to read it.

    Raises:
        UserError: No program was given.
    """
    contract = space.contract
    assert contract is not None
    if contract.command is None:
        raise UserError(f"workload {space.workload!r} runs a program: give it after --, e.g. "
                        f"autotune run --workload {space.workload} -- python predict.py")
    return {
        **params,
        "command": list(contract.command),
        "check_command": list(contract.check) if contract.check else None,
        "args": args,
        "figure_key": contract.figure_key,
        "figure_pattern": contract.figure_pattern,
        "quality_key": contract.quality_key,
        "quality_pattern": contract.quality_pattern,
        "objective": contract.objective.name,
        "direction": contract.objective.direction,
        # Trials run in a temporary folder: the program's relative paths (predict.py, scan.nii.gz) are
        # the user's, read from where autotune was started.
        "cwd": os.getcwd(),
    }


def _preload(allocator: str, host: HostInfo) -> str | None:
    if allocator == "system":
        return None
    path = host.allocators.get(allocator)
    if path is None:
        raise UserError(f"allocator {allocator!r} was not found on this host")
    return path


def _cpus(affinity: str, cores: int, host: HostInfo) -> tuple[int, ...] | None:
    try:
        if affinity == "cores":
            return tuple(cpus_for_cores(host, cores))
        if affinity == "socket":
            # The first socket with CPUs this process may use: under a cpuset it need not be 0.
            sockets = [host.core_of_cpu[c][0] for c in host.usable_cpus if c in host.core_of_cpu]
            return tuple(socket_cpus(host, min(sockets, default=0)))
    except ValueError as exc:
        raise UserError(f"affinity: {exc}") from None
    return None


def trial_spec(
    space: SearchSpace,
    config: Mapping[str, Any],
    host: HostInfo,
    *,
    data_dir: str | None = None,
    timeout_s: float = 600.0,
    memory_cap_mb: float | None = None,
) -> TrialSpec:
    """The runner's spec for one trial of ``config``: how :func:`launch_for` says to start it."""
    launch = launch_for(space, config, host)
    params = dict(launch.params)
    if data_dir is not None:
        params["data_dir"] = data_dir
    return TrialSpec(
        module=space.module,
        config=TrialConfig(workload=space.workload, params=params),
        env=launch.env,
        cpus=launch.cpus,
        layout=launch.layout,
        objective=space.objective.name if space.contract is not None else None,
        rates=rates_of(space.units) if space.contract is not None else (),
        timeout_s=timeout_s,
        memory_cap_mb=memory_cap_mb,
    )


def default_memory_cap_mb(host: HostInfo) -> float:
    """The per-trial memory cap when none is given: a share of the host's memory."""
    return host.memory_bytes * MEMORY_CAP_SHARE / 2**20
