from __future__ import annotations

import json
from typing import Any

import pytest

from autotune.protocol import (
    LINE_PREFIX,
    SCHEMA_VERSION,
    Outcome,
    ProtocolError,
    TrialConfig,
    TrialResult,
    decode_line,
    encode_message,
)


def make_result(**changes: Any) -> TrialResult:
    fields = {
        "workload": "fake",
        "params": {"batch": 2, "patch": "16", "data_format": "channels_last"},
        "warmup_seconds": [0.2],
        "step_seconds": [0.1, 0.12, 0.11],
        "median_step_s": 0.11,
        "mad_step_s": 0.01,
        "cv": 0.09,
        "work_per_step": 8192,
        "figures": {"voxels_per_s": 8192 / 0.11, "samples_per_s": 2 / 0.11, "latency_per_sample_s": 0.055,
                    "gflops_per_s": 2 / 0.11},
        "peak_rss_mb": 512.5,
        "setup_seconds": 3.25,
        "effective": {"cpu_affinity": [0, 1], "env": {"TF_ENABLE_ONEDNN_OPTS": "1"}},
    }
    fields.update(changes)
    return TrialResult(**fields)


def result_dict(**changes: Any) -> dict[str, Any]:
    data = make_result().to_dict()
    data.update(changes)
    return data


def test_trial_config_round_trip() -> None:
    config = TrialConfig(workload="unet3d", params={"batch": 1, "patch": "64,64,32", "xla": False})
    text = config.to_json()
    assert json.loads(text)["schema"] == SCHEMA_VERSION
    assert TrialConfig.from_json(text) == config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"workload": "fake", "params": {}}', "schema"),
        ('{"workload": "fake", "params": {}, "schema": 99}', "schema 99"),
        (json.dumps({"params": {}, "schema": SCHEMA_VERSION}), "workload"),
        (json.dumps({"workload": "fake", "params": [], "schema": SCHEMA_VERSION}), "params"),
    ],
)
def test_trial_config_rejects(text: str, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        TrialConfig.from_json(text)


def test_trial_result_round_trips_through_json() -> None:
    result = make_result()
    data = json.loads(json.dumps(result.to_dict()))
    assert data["schema"] == SCHEMA_VERSION
    assert TrialResult.from_dict(data) == result


def test_trial_result_round_trips_through_a_protocol_line() -> None:
    result = make_result()
    message = decode_line(encode_message("result", **result.to_dict()))
    assert message is not None
    assert message["kind"] == "result"
    assert TrialResult.from_dict({k: v for k, v in message.items() if k != "kind"}) == result


def test_trial_result_defaults_effective_and_ignores_unknown_fields() -> None:
    data = result_dict(future_figure=1.0)
    del data["effective"]
    result = TrialResult.from_dict(data)
    assert result.effective == {}
    assert not hasattr(result, "future_figure")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (result_dict(schema=SCHEMA_VERSION + 1), "schema"),
        ({k: v for k, v in result_dict().items() if k != "schema"}, "schema"),
        ({k: v for k, v in result_dict().items() if k != "step_seconds"}, "missing step_seconds"),
        ({"schema": SCHEMA_VERSION, "workload": "fake"}, "missing .*median_step_s"),
        (result_dict(step_seconds=[]), "no positive step times"),
        (result_dict(step_seconds=[0.1, 0.0]), "no positive step times"),
        (result_dict(step_seconds=[-0.1]), "no positive step times"),
        (result_dict(step_seconds=["0.1"]), "no positive step times"),
        (result_dict(step_seconds=[True]), "no positive step times"),
        (result_dict(step_seconds=0.1), "no positive step times"),
        (result_dict(step_seconds=None), "no positive step times"),
        (result_dict(figures={"voxels_per_s": "fast"}), "wrong type: figures"),
        (result_dict(figures=[1.0]), "wrong type: figures"),
        (result_dict(work_per_step="1"), "wrong type: work_per_step"),
        (result_dict(median_step_s=None), "wrong type: median_step_s"),
        (result_dict(params=[]), "wrong type: params"),
        (result_dict(warmup_seconds=None), "wrong type: warmup_seconds"),
        (result_dict(workload=3), "wrong type: workload"),
        ([1, 2], "not a JSON object"),
    ],
)
def test_trial_result_rejects(data: Any, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        TrialResult.from_dict(data)


def test_protocol_error_is_a_value_error() -> None:
    assert issubclass(ProtocolError, ValueError)


def test_encode_then_decode() -> None:
    line = encode_message("step", index=3, seconds=0.25, warmup=False)
    assert line.startswith(LINE_PREFIX)
    assert "\n" not in line
    assert decode_line(line) == {"kind": "step", "index": 3, "seconds": 0.25, "warmup": False}
    assert decode_line(line + "\n") == decode_line(line)


@pytest.mark.parametrize(
    "line",
    [
        "",
        "Epoch 1/1",
        '{"kind": "result"}',
        " " + LINE_PREFIX + '{"kind": "step"}',
        LINE_PREFIX.strip() + '{"kind": "step"}',
        "2025-01-01 I tensorflow/core: oneDNN custom operations are on",
    ],
)
def test_decode_ignores_other_lines(line: str) -> None:
    assert decode_line(line) is None


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        ('["step"]', "not a JSON object"),
        ('"step"', "not a JSON object"),
        ('{"index": 1}', "no 'kind'"),
        ('{"kind": 7}', "no 'kind'"),
    ],
)
def test_decode_rejects_bad_protocol_lines(payload: str, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode_line(LINE_PREFIX + payload)


@pytest.mark.parametrize(
    ("outcome", "failed"),
    [
        (Outcome.OK, False),
        (Outcome.PRUNED, False),
        (Outcome.CRASHED, True),
        (Outcome.TIMED_OUT, True),
        (Outcome.OUT_OF_MEMORY, True),
        (Outcome.BAD_OUTPUT, True),
        (Outcome.BAD_INPUT, True),
        (Outcome.INTERRUPTED, True),
    ],
)
def test_outcome_is_failure(outcome: Outcome, failed: bool) -> None:
    assert outcome.is_failure is failed


def test_outcome_values_are_stable_text() -> None:
    assert Outcome("timed_out") is Outcome.TIMED_OUT
    assert json.dumps(Outcome.OK) == '"ok"'
    assert {o.value for o in Outcome} == {
        "ok", "pruned", "crashed", "timed_out", "out_of_memory", "bad_output", "bad_input",
        "interrupted", "inaccurate",
    }
