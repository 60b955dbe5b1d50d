"""The one object that measures configurations on this host: space, host, inputs, limits and the core lock.

Every command that measures (``run``'s search, its confirmation stage and profiles, ``verify``,
``profile``, ``bench``) holds a :class:`Measurer` and measures through it, as asv hands one spawner to
everything that runs a benchmark. So each measurement gets the same launch (environment, pinning,
allocator), the same data folder, timeout and memory cap, and the same promise: only one measurement
at a time on this host's cores (:class:`autotune.lock.CoreLock`), whichever command asks.

Life cycle: build it once per command; wrap each measurement, or a stage of several (the confirmation
rounds), in :meth:`Measurer.holding`, which waits for the cores (or raises
:class:`autotune.lock.CoresBusy` when told not to wait); call :meth:`Measurer.run` inside it.
:meth:`Measurer.measure` does both for a single configuration.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from autotune.host import HostInfo
from autotune.launch import default_memory_cap_mb, trial_spec
from autotune.lock import CoreLock, CoresBusy
from autotune.runner import RunningCallback, StepCallback, TrialOutcome, TrialRunner, TrialSpec, WaitCallback
from autotune.space import SearchSpace


@dataclass
class Held:
    """One hold of the core lock: seconds waited for it, then held from ``start`` to ``end`` (Unix time)."""

    waited_s: float
    start: float
    end: float = 0.0


@dataclass
class Measurer:
    """Measures configurations of ``space`` on ``host`` (see the module docstring).

    Attributes:
        space: The search space the configurations belong to.
        host: This host.
        data_dir: Data folder passed to the workload, or None for its default.
        timeout_s: Wall-clock limit of one measurement.
        memory_cap_mb: Resident-memory cap of one measurement; None means a share of the host's memory.
        wait: Wait while another autotune worker measures here; False raises CoresBusy instead.
        runner: Starts and supervises the trial processes.
        cores: This host's core lock.
    """

    space: SearchSpace
    host: HostInfo
    data_dir: str | None = None
    timeout_s: float = 600.0
    memory_cap_mb: float | None = None
    wait: bool = True
    runner: TrialRunner = field(default_factory=TrialRunner)
    cores: CoreLock | None = None

    def __post_init__(self) -> None:
        if self.memory_cap_mb is None:
            self.memory_cap_mb = default_memory_cap_mb(self.host)
        if self.cores is None:
            self.cores = CoreLock.for_host(self.host)

    def spec(
        self, config: Mapping[str, Any], timed_steps: int | None = None, outputs: bool = False, **params: Any
    ) -> TrialSpec:
        """How a configuration is launched.

        Args:
            config: The complete configuration.
            timed_steps: Exactly this many timed steps (:attr:`autotune.protocol.TrialConfig.timed_steps`).
            outputs: Ask for the check outputs after the timed steps (:attr:`autotune.protocol.TrialConfig.outputs`).
            params: Added to its in-process config (a profile folder).
        """
        spec = trial_spec(self.space, config, self.host, data_dir=self.data_dir, timeout_s=self.timeout_s,
                          memory_cap_mb=self.memory_cap_mb)
        if params or timed_steps is not None or outputs:
            spec = dataclasses.replace(spec, config=dataclasses.replace(
                spec.config, params={**spec.config.params, **params}, timed_steps=timed_steps, outputs=outputs))
        return spec

    def run(
        self, config: Mapping[str, Any], *, on_step: StepCallback | None = None,
        on_wait: WaitCallback | None = None, on_running: RunningCallback | None = None,
        timed_steps: int | None = None, outputs: bool = False, **params: Any,
    ) -> tuple[TrialSpec, TrialOutcome]:
        """Measure one configuration; the caller holds the cores (:meth:`holding`)."""
        spec = self.spec(config, timed_steps, outputs, **params)
        return spec, self.runner.run(spec, on_step=on_step, on_wait=on_wait, on_running=on_running)

    @contextlib.contextmanager
    def holding(self, note: str, on_busy: Callable[[str], None] | None = None) -> Iterator[Held]:
        """Hold this host's cores for what the block measures; yield the wait and the held span.

        Args:
            note: What is measured, written into the lock for other workers to read.
            on_busy: Called with the holder's description when the cores are taken and this waits.

        Raises:
            CoresBusy: The cores are taken and this measurer does not wait.
        """
        assert self.cores is not None
        waited = 0.0
        if not self.cores.try_acquire(note):
            holder = self.cores.holder()
            if not self.wait:
                raise CoresBusy(f"another autotune worker is measuring on this host's cores ({holder}); "
                                "run without --no-wait to take turns with it")
            if on_busy is not None:
                on_busy(holder)
            waited = self.cores.acquire(note)
        held = Held(waited_s=waited, start=time.time())
        try:
            yield held
        finally:
            held.end = time.time()
            self.cores.release()

    def measure(
        self, config: Mapping[str, Any], note: str, on_busy: Callable[[str], None] | None = None, **params: Any
    ) -> tuple[TrialSpec, TrialOutcome]:
        """Hold the cores and measure one configuration."""
        with self.holding(note, on_busy):
            return self.run(config, **params)
