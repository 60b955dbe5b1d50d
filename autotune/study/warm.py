"""Warm start: begin a study from what an earlier study of the same workload, in the same storage, learned.

``autotune run --warm-start STUDY`` (:func:`warm_start`), once per study and source:

- the source's best feasible configurations (:data:`DEFAULT_TOP`, the references excluded: they are
  measured anyway) are enqueued after this study's references and measured first, fresh: the source's
  figures never count here;
- the source's search configurations that ended pruned or failed (crashed, timed out, out of memory) are
  handed to the sampler as *prior* trials: PRUNED trials with role :data:`PRIOR_ROLE`, no measurement and
  no configuration record, so TPE ranks them with the losers and draws their region less. They are never
  answered from, never a pruning yardstick and never counted in this study's figures; a configuration the
  sampler still proposes is measured.

A source from another CPU model (or other software) is allowed and labelled (:attr:`WarmStart.other_cpu`);
the references are measured either way. Without ``--warm-start`` a run lists the studies it could start
from (:func:`earlier_studies`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import optuna

from autotune.errors import UserError
from autotune.feasible import PRIOR_ROLE, WARM_STARTS_ATTR, is_feasible
from autotune.host import HostInfo
from autotune.protocol import Outcome
from autotune.space import SearchSpace, SpaceError

# Trial attribute: the earlier trial a warm-start trial or prior comes from ("STUDY trial N").
WARM_ATTR = "warm_start"
# Study attribute: the warm starts applied (a list of WarmStart.to_dict()).
SOURCES_ATTR = WARM_STARTS_ATTR
# Configurations of the source measured first.
DEFAULT_TOP = 3
# Outcomes that say a configuration is bad (not the run's circumstances: interrupted, bad input, repeats).
BAD_OUTCOMES = frozenset({Outcome.PRUNED.value, Outcome.CRASHED.value, Outcome.TIMED_OUT.value,
                          Outcome.OUT_OF_MEMORY.value})


@dataclass(frozen=True)
class EarlierStudy:
    """A study in the same storage that a run of this workload could start from.

    Attributes:
        name: The study's name.
        cpu_model: The CPU it was recorded on.
        same_cpu: Whether that is this host's CPU model with the same ISA flags.
        software: The TensorFlow (or other framework) version it ran, when recorded.
        completed: Its completed trials.
    """

    name: str
    cpu_model: str
    same_cpu: bool
    software: str
    completed: int

    def describe(self) -> str:
        """One phrase: the name, how many trials, and the CPU when it differs."""
        where = "this CPU" if self.same_cpu else f"another CPU: {self.cpu_model}"
        return f"{self.name} ({self.completed} completed, {where}{', ' + self.software if self.software else ''})"


@dataclass(frozen=True)
class WarmStart:
    """What a warm start took from its source.

    Attributes:
        source: The earlier study.
        first: Source trial numbers whose configurations are measured first here.
        priors: Source trial numbers handed to the sampler as known-bad.
        other_cpu: The source's CPU model when it is not this host's, else None.
    """

    source: str
    first: tuple[int, ...]
    priors: tuple[int, ...]
    other_cpu: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in the study)."""
        return {**asdict(self), "first": list(self.first), "priors": list(self.priors)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WarmStart:
        """Inverse of :meth:`to_dict`."""
        return cls(str(data["source"]), tuple(data.get("first", ())), tuple(data.get("priors", ())),
                   data.get("other_cpu"))

    def describe(self) -> str:
        """One line for the console and the report."""
        line = (f"warm start from study {self.source}: {len(self.first)} of its best configurations measured "
                f"first (fresh), {len(self.priors)} of its pruned or failed ones given to the sampler as known-bad")
        if self.other_cpu:
            line += f"; recorded on another CPU ({self.other_cpu}), so only its choices are used, not its figures"
        return line


def _same_cpu(recorded: Mapping[str, Any] | None, host: HostInfo) -> bool:
    if not recorded:
        return False
    return recorded.get("cpu_model") == host.cpu_model and dict(recorded.get("isa") or {}) == dict(host.isa)


def _software(recorded: Mapping[str, Any] | None) -> str:
    software = dict((recorded or {}).get("software") or {})
    return " ".join(f"{k} {software[k]}" for k in ("tensorflow", "keras") if software.get(k))


def earlier_studies(study: optuna.Study, space: SearchSpace, host: HostInfo) -> list[EarlierStudy]:
    """Other studies of this workload and direction in the study's storage with a completed trial."""
    found = []
    for summary in optuna.get_all_study_summaries(study._storage, include_best_trial=False):
        attrs = summary.user_attrs
        if (summary.study_name == study.study_name or attrs.get("workload") != space.workload
                or summary.direction != study.direction):
            continue
        other = optuna.load_study(study_name=summary.study_name, storage=study._storage)
        completed = len(other.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        if completed:
            recorded = attrs.get("host")
            found.append(EarlierStudy(summary.study_name, str((recorded or {}).get("cpu_model", "unknown")),
                                      _same_cpu(recorded, host), _software(recorded), completed))
    return sorted(found, key=lambda e: (not e.same_cpu, -e.completed, e.name))


def applied(study: optuna.Study) -> list[WarmStart]:
    """The warm starts already applied to ``study``."""
    return [WarmStart.from_dict(d) for d in study.user_attrs.get(SOURCES_ATTR) or []]


def warm_start(
    study: optuna.Study, source: str, space: SearchSpace, pins: Mapping[str, Any], host: HostInfo,
    top: int = DEFAULT_TOP,
) -> WarmStart:
    """Start ``study`` from study ``source`` (see the module docstring); a source already applied is not again.

    Call it after the references are enqueued, under the study's set-up lock.

    Raises:
        UserError: ``source`` is this study, is not in the storage, or tuned another workload or direction.
    """
    for done in applied(study):
        if done.source == source:
            return done
    if source == study.study_name:
        raise UserError(f"--warm-start {source}: that is this study; name an earlier one")
    try:
        earlier = optuna.load_study(study_name=source, storage=study._storage)
    except KeyError:
        names = ", ".join(e.name for e in earlier_studies(study, space, host)) or "none"
        raise UserError(f"--warm-start {source}: no such study in this storage "
                        f"(earlier studies of workload {space.workload}: {names})") from None
    if earlier.user_attrs.get("workload") != space.workload:
        raise UserError(f"--warm-start {source}: that study tuned workload "
                        f"{earlier.user_attrs.get('workload')!r}, not {space.workload!r}")
    if earlier.direction != study.direction:
        raise UserError(f"--warm-start {source}: that study's objective runs the other way")
    recorded = earlier.user_attrs.get("host")
    references = {space.fingerprint_config(space.reference(role, pins)) for role in space.roles()}
    seen = set(references)
    trials = earlier.get_trials(deepcopy=False)
    good = sorted((t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None
                   and is_feasible(t) and "repeat_of" not in t.user_attrs
                   and t.user_attrs.get("role", "search") == "search"),
                  key=lambda t: t.value, reverse=study.direction == optuna.study.StudyDirection.MAXIMIZE)
    first = []
    for trial in good:
        params = _params(space, pins, trial.user_attrs.get("config"))
        if params is None or (key := space.fingerprint_config(space.configure({**pins, **params}))) in seen:
            continue
        seen.add(key)
        study.enqueue_trial(params, user_attrs={"role": "search", WARM_ATTR: f"{source} trial {trial.number}"})
        first.append(trial.number)
        if len(first) >= top:
            break
    priors = []
    for trial in trials:
        if (trial.user_attrs.get("role", "search") != "search" or "repeat_of" in trial.user_attrs
                or trial.user_attrs.get("outcome") not in BAD_OUTCOMES):
            continue
        params = _params(space, pins, trial.user_attrs.get("config"))
        if params is None or (key := space.fingerprint_config(space.configure({**pins, **params}))) in seen:
            continue
        seen.add(key)
        frozen = prior_trial(lambda t: space.suggest(t, pins), params, study.direction, {
            "role": PRIOR_ROLE, WARM_ATTR: f"{source} trial {trial.number}", "outcome": PRIOR_ROLE,
            "reason": f"{trial.user_attrs.get('outcome')} in study {source} (trial {trial.number}); not measured here",
        })
        study.add_trial(frozen)
        priors.append(trial.number)
    result = WarmStart(source, tuple(first), tuple(priors),
                       None if _same_cpu(recorded, host) else str((recorded or {}).get("cpu_model", "unknown")))
    study.set_user_attr(SOURCES_ATTR, [*(w.to_dict() for w in applied(study)), result.to_dict()])
    return result


def _params(space: SearchSpace, pins: Mapping[str, Any], config: Any) -> dict[str, Any] | None:
    """The searched knobs of an earlier trial's configuration that are valid here, or None if none is."""
    if not isinstance(config, Mapping):
        return None
    params: dict[str, Any] = {}
    for name in space.searched(pins):
        knob = space.knobs[name]
        if name not in config or not knob.active({**pins, **config}):
            continue
        try:
            params[name] = knob.validate(config[name])
        except SpaceError:
            continue  # not available here (a choice this host lacks): the sampler picks it
    try:
        space.configure({**pins, **params})
    except (UserError, SpaceError):
        return None
    return params or None


def prior_trial(
    suggest: Callable[[optuna.Trial], Any], params: Mapping[str, Any], direction: optuna.study.StudyDirection,
    user_attrs: Mapping[str, Any],
) -> optuna.trial.FrozenTrial:
    """A PRUNED trial with ``params`` and the very distributions ``suggest`` asks for (so TPE's groups match).

    ``suggest`` runs once in a throw-away in-memory study with ``params`` enqueued; knobs it asks for that
    ``params`` lacks are sampled there at random.
    """
    scratch = optuna.create_study(direction=direction, sampler=optuna.samplers.RandomSampler(seed=0))
    scratch.enqueue_trial(dict(params))
    trial = scratch.ask()
    suggest(trial)
    return optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, params=trial.params,
                                     distributions=trial.distributions, user_attrs=dict(user_attrs))
