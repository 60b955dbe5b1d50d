"""Turn a complete configuration into how a process is launched: environment, CPU pinning, params.

This is the seam between a search space and everything that starts a process with a configuration:
the trial runner, ``autotune exec`` and the exporters all use :func:`launch_for`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autotune.errors import UserError
from autotune.host import HostInfo, cpus_for_cores, socket_cpus
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
    """

    env: Mapping[str, str | None] = field(default_factory=dict)
    cpus: tuple[int, ...] | None = None
    params: Mapping[str, Any] = field(default_factory=dict)


def launch_for(space: SearchSpace, config: Mapping[str, Any], host: HostInfo) -> Launch:
    """Resolve a configuration of ``space`` on ``host``.

    Raises:
        UserError: The configuration asks for something the host cannot give (an allocator it
            lacks, more cores than it has).
    """
    env: dict[str, str | None] = {}
    params: dict[str, Any] = {}
    for name, knob in space.knobs.items():
        value = config[name]
        if knob.target == "param":
            params[name] = value
        elif knob.target == "env" and knob.env:
            env[knob.env] = knob.env_value(value)
    env["LD_PRELOAD"] = _preload(config.get("allocator", "system"), host)
    return Launch(env=env, cpus=_cpus(config, host), params=params)


def _preload(allocator: str, host: HostInfo) -> str | None:
    if allocator == "system":
        return None
    path = host.allocators.get(allocator)
    if path is None:
        raise UserError(f"allocator {allocator!r} was not found on this host")
    return path


def _cpus(config: Mapping[str, Any], host: HostInfo) -> tuple[int, ...] | None:
    affinity = config.get("affinity", "none")
    try:
        if affinity == "cores":
            return tuple(cpus_for_cores(host, int(config.get("pin_cores", 1))))
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
        timeout_s=timeout_s,
        memory_cap_mb=memory_cap_mb,
    )


def default_memory_cap_mb(host: HostInfo) -> float:
    """The per-trial memory cap when none is given: a share of the host's memory."""
    return host.memory_bytes * MEMORY_CAP_SHARE / 2**20
