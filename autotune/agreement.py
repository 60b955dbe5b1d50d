"""The output-agreement guard of a study: reference outputs in the study storage, and each trial's verdict.

For a workload whose search space declares an ``[agreement]`` reference (:mod:`autotune.tolerance`), every
search-loop trial (references included) is run with ``TrialConfig.outputs``: after its timed steps it
computes its outputs for fixed check inputs and weights with the graph it was timed with. A pruned trial
never gets there. The driver then needs the reference configuration's outputs at the same shape, inputs
and weights: it reads them from the study's storage, or measures the reference once (one short process,
one step) and stores them there, where every worker of a PostgreSQL study finds them. Then
:meth:`AgreementGuard.judge` compares (:func:`autotune.outputs.compare`) and bounds the figures.

The confirmation stage, ``verify`` and ``profile`` re-measure configurations already judged: they never
ask for outputs.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from autotune.agreement_report import SETUP_ATTR
from autotune.measurer import Measurer
from autotune.outputs import OutputsError, compare
from autotune.protocol import Outcome
from autotune.tolerance import AgreementSpec, Verdict

# Study system attributes (not shown in the dashboard) hold the references, in chunks that fit every
# RDB backend's text column.
ATTR_PREFIX = "autotune:agreement_reference:"
CHUNK_CHARS = 60000
# Constraint name of an inaccurate trial (Optuna's named constraints; positive is violated).
CONSTRAINT = "agreement"
# A violation that cannot be sized (not judged, or an infinite error) counts as this much.
UNSIZED_VIOLATION = 1.0


@dataclass
class GuardStats:
    """What the guard cost in this run: references measured and their wall time, trials judged."""

    references: int = 0
    reference_seconds: float = 0.0
    judged: int = 0
    inaccurate: int = 0


class ReferenceStore:
    """Reference payloads in a study's storage, under a key of what they depend on."""

    def __init__(self, study: optuna.Study) -> None:
        self.study = study

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored reference payload under ``key``, or None."""
        attrs = self.study._storage.get_study_system_attrs(self.study._study_id)
        head = attrs.get(ATTR_PREFIX + key)
        if not isinstance(head, dict):
            return None
        parts = [attrs.get(f"{ATTR_PREFIX}{key}:{head.get('nonce')}:{i}") for i in range(int(head.get("chunks", 0)))]
        if not all(isinstance(p, str) for p in parts):
            return None
        try:
            payload = json.loads("".join(parts))
        except json.JSONDecodeError:
            return None
        return payload if isinstance(payload, dict) else None

    def put(self, key: str, payload: Mapping[str, Any], about: Mapping[str, Any]) -> None:
        """Store ``payload`` under ``key``: its chunks first, then the head that names them.

        Two workers storing the same key write separate chunks; a reader follows whichever head came last.
        """
        text = json.dumps(payload, sort_keys=True)
        nonce = uuid.uuid4().hex[:8]
        storage, study_id = self.study._storage, self.study._study_id
        chunks = [text[i:i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)] or [""]
        for i, chunk in enumerate(chunks):
            storage.set_study_system_attr(study_id, f"{ATTR_PREFIX}{key}:{nonce}:{i}", chunk)
        storage.set_study_system_attr(study_id, ATTR_PREFIX + key, {"nonce": nonce, "chunks": len(chunks), **about})


def reference_key(workload: str, config: Mapping[str, Any], data_dir: str | None, payload: Mapping[str, Any]) -> str:
    """What a reference depends on: the reference configuration, the data, and the check weights and inputs."""
    weights = payload.get("weights") or {}
    identity = {
        "workload": workload,
        "config": {k: str(v) for k, v in sorted(config.items())},
        "data_dir": data_dir or "",
        "weights": [weights.get("kind"), weights.get("digest")],
        "inputs": payload.get("inputs", ""),
        "kind": payload.get("kind"),
        "shape": payload.get("shape"),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


class AgreementGuard:
    """Judges the trials of one run: compares their outputs with the reference's, bounds the figures."""

    def __init__(self, study: optuna.Study, measurer: Measurer, pins: Mapping[str, Any], spec: AgreementSpec) -> None:
        self.study = study
        self.measurer = measurer
        self.pins = dict(pins)
        self.spec = spec
        self.store = ReferenceStore(study)
        self.stats = GuardStats()
        self._failed: dict[str, str] = {}

    @property
    def wants_outputs(self) -> bool:
        """Whether trials must send their outputs (the space declares a reference)."""
        return self.spec.reference is not None

    def judge(self, config: Mapping[str, Any], outputs: Mapping[str, Any], figures: Mapping[str, float]) -> Verdict:
        """The verdict of a completed trial; the caller holds the cores (a reference may be measured).

        Args:
            config: The trial's complete configuration.
            outputs: The outputs payload it sent (empty when it sent none).
            figures: Its own figures (bounded directly when the space has no reference).
        """
        self.stats.judged += 1
        verdict = self._verdict(config, outputs, figures)
        if not verdict.ok:
            self.stats.inaccurate += 1
        return verdict

    def _verdict(self, config: Mapping[str, Any], outputs: Mapping[str, Any], figures: Mapping[str, float]) -> Verdict:
        if self.spec.reference is None:
            return self.spec.judge(config, figures)
        weights = outputs.get("weights") or {}
        if not outputs:
            return self.spec.not_judged(config, "the workload sent no outputs")
        reference = self.reference_for(config, outputs)
        if isinstance(reference, str):
            return self.spec.not_judged(config, reference, weights)
        try:
            found = compare(outputs, reference)
        except OutputsError as exc:
            return self.spec.not_judged(config, str(exc), weights)
        return self.spec.judge(config, found, weights)

    def reference_for(self, config: Mapping[str, Any], outputs: Mapping[str, Any]) -> dict[str, Any] | str:
        """The reference payload for ``config``'s shape, inputs and weights, or why there is none."""
        space = self.measurer.space
        ref_config = space.agreement_reference(config, self.pins)
        key = reference_key(space.workload, ref_config, self.measurer.data_dir, outputs)
        if key in self._failed:
            return self._failed[key]
        stored = self.store.get(key)
        if stored is not None:
            return stored
        start = time.monotonic()
        _, outcome = self.measurer.run(ref_config, timed_steps=1, outputs=True)
        self.stats.references += 1
        self.stats.reference_seconds += time.monotonic() - start
        result = outcome.result
        if outcome.outcome is not Outcome.OK or result is None or not result.outputs:
            why = outcome.reason or "it sent no outputs"
            self._failed[key] = f"the reference configuration failed ({outcome.outcome.value}: {why})"
            return self._failed[key]
        payload = result.outputs
        own_key = reference_key(space.workload, ref_config, self.measurer.data_dir, payload)
        self.store.put(own_key, payload, {"config": {k: str(v) for k, v in ref_config.items()},
                                          "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
                                          "seconds": round(outcome.wall_seconds, 2)})
        if own_key != key:
            self._failed[key] = "the reference ran with other check weights or inputs than the trial"
            return self._failed[key]
        return payload


def violation(verdict: Verdict) -> float:
    """How far outside its bounds a verdict is, as Optuna's constraint value (positive: infeasible)."""
    if verdict.ok:
        return 0.0
    if verdict.note:
        return UNSIZED_VIOLATION
    total = 0.0
    for name, bound in verdict.bounds.items():
        value = verdict.figures.get(name)
        if value is None or bound.holds(value):
            continue
        if not math.isfinite(value):
            return UNSIZED_VIOLATION * 1e3
        excess = value - bound.value if bound.op == "max" else bound.value - value
        total += excess / abs(bound.value) if bound.value else excess
    return max(total, 1e-9)


def record_agreement_setup(study: optuna.Study, space: Any, prepared: Mapping[str, Any]) -> None:
    """Store what the study's output checks are: the reference, the tolerance rules and the check weights.

    Written on every run (a later run may have trained the weights anew on another host); the report
    reads it to say which weights were used and which bounds were in force.
    """
    spec = space.agreement
    if spec is None:
        study.set_user_attr(SETUP_ATTR, None)
        return
    rules = [{"when": {k: [str(v) for v in vs] for k, vs in rule.when.items()},
              "bounds": [b.describe() for b in rule.bounds.values()]} for rule in spec.rules]
    earlier = study.user_attrs.get(SETUP_ATTR) or {}
    study.set_user_attr(SETUP_ATTR, {
        "reference": {k: str(v) for k, v in (spec.reference or {}).items()},
        "shape": list(spec.shape),
        "rules": rules,
        "overrides": list(spec.overrides),
        "weights": prepared.get("weights") or earlier.get("weights"),
        "weights_training_s": prepared.get("seconds") if prepared.get("trained") else earlier.get("weights_training_s"),
    })
