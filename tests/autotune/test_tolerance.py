"""Tolerances in the search space: parsing, which bounds apply, the user's overrides, verdicts."""

from __future__ import annotations

import math

import pytest

from autotune.space import SpaceError
from autotune.tolerance import AgreementSpec, ToleranceError, parse_overrides
from tests.conftest import FAKE_SPACE

TEXT = FAKE_SPACE.read_text()


def test_the_fake_space_declares_a_reference_and_rules(fake_space) -> None:
    spec = fake_space.agreement
    assert spec is not None
    assert spec.reference["answer"] == "exact"
    assert spec.shape == ("mode", "batch", "patch")
    assert spec.figures() == ["rel_l2_error", "dice", "loss_rel_error"]


def test_later_rules_replace_the_bounds_they_name(fake_space) -> None:
    spec = fake_space.agreement
    exact = spec.bounds_for({"answer": "exact"})
    rounded = spec.bounds_for({"answer": "rounded"})
    assert exact["dice"].describe() == "dice >= 0.9999"
    assert rounded["dice"].describe() == "dice >= 0.99"
    assert rounded["rel_l2_error"].describe() == "rel_l2_error <= 0.01"


def test_a_verdict_lists_each_failed_bound(fake_space) -> None:
    spec = fake_space.agreement
    verdict = spec.judge({"answer": "rounded"}, {"rel_l2_error": 0.02, "dice": 0.995, "max_abs_error": 0.1})
    assert not verdict.ok
    assert verdict.failed == ("rel_l2_error 0.02 > 0.01",)
    assert verdict.unjudged == ("loss_rel_error",)
    assert "rel_l2_error 0.02 > 0.01" in verdict.reason
    ok = spec.judge({"answer": "exact"}, {"rel_l2_error": 0.0, "dice": 1.0})
    assert ok.ok and ok.reason == ""
    assert not spec.judge({"answer": "exact"}, {"rel_l2_error": math.nan}).ok


def test_not_judged_is_never_ok(fake_space) -> None:
    verdict = fake_space.agreement.not_judged({"answer": "exact"}, "the reference configuration failed")
    assert not verdict.ok
    assert verdict.reason == "outputs not judged: the reference configuration failed"


def test_overrides_keep_the_direction_and_can_be_limited_to_a_value(fake_space) -> None:
    spec = fake_space.agreement.with_overrides(["answer=rounded:dice=0.5", "rel_l2_error=0.2"], fake_space.knobs)
    assert spec.overrides == ("answer=rounded:dice=0.5", "rel_l2_error=0.2")
    assert spec.bounds_for({"answer": "rounded"})["dice"].describe() == "dice >= 0.5"
    assert spec.bounds_for({"answer": "exact"})["dice"].describe() == "dice >= 0.9999"
    assert spec.bounds_for({"answer": "exact"})["rel_l2_error"].describe() == "rel_l2_error <= 0.2"


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("dice", "expected FIGURE=BOUND"),
        ("accuracy=0.9", "no bound on 'accuracy'"),
        ("dice=high", "is not a number"),
        ("dice=inf", "finite"),
        ("nosuchknob=1:dice=0.9", "is not KNOB=VALUE of a knob"),
        ("answer=maybe:dice=0.9", "answer"),
    ],
)
def test_bad_overrides_are_one_line_errors(fake_space, item, message) -> None:
    with pytest.raises((ToleranceError, SpaceError), match=message) as caught:
        parse_overrides([item], fake_space.agreement, fake_space.knobs)
    assert "\n" not in str(caught.value)


def test_overrides_need_an_agreement_check(fake_space) -> None:
    with pytest.raises(ToleranceError, match="declares no agreement check"):
        parse_overrides(["dice=0.9"], None, fake_space.knobs)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('dice = { min = 0.9999 }', 'dice = { least = 0.9999 }', "give { max = X } or { min = X }"),
        ('dice = { min = 0.9999 }', 'dice = { min = "high" }', "not a finite number"),
        ('shape = ["mode", "batch", "patch"]', 'shape = ["mode", "size"]', "'size' is not a knob"),
        ('reference = { answer = "exact"', 'reference = { answer = "perfect"', "answer"),
        ('when = { answer = ["rounded"] }', 'when = { colour = ["red"] }', "'colour' is not a knob"),
        ("[agreement]\n", "[agreement]\nexact = true\n", "unknown key 'exact'"),
    ],
)
def test_bad_agreement_tables_name_the_key(space_from_toml, old, new, message) -> None:
    assert old in TEXT
    with pytest.raises(SpaceError, match=message) as caught:
        space_from_toml(TEXT.replace(old, new, 1))
    assert "\n" not in str(caught.value)


def test_a_space_without_agreement_has_none(space_from_toml) -> None:
    head, _, _ = TEXT.partition("# Output agreement")
    assert space_from_toml(head).agreement is None


def test_agreement_reference_takes_shape_from_the_trial_and_wins_over_pins(fake_space) -> None:
    config = fake_space.configure({"batch": 2, "answer": "wrong", "data_format": "channels_first"})
    reference = fake_space.agreement_reference(config, {"answer": "rounded", "step_seconds": 0.003})
    assert reference["batch"] == 2
    assert reference["answer"] == "exact"
    assert reference["data_format"] == "channels_last"
    assert reference["step_seconds"] == 0.003


def test_bounds_only_spec_judges_own_figures() -> None:
    from autotune.tolerance import Bound, ToleranceRule

    spec = AgreementSpec(None, (), (ToleranceRule({"accuracy": Bound("accuracy", "min", 0.9)}),))
    assert spec.judge({}, {"accuracy": 0.95, "samples_per_s": 10.0}).figures == {"accuracy": 0.95}
    assert not spec.judge({}, {"accuracy": 0.85}).ok


def test_a_programs_own_figure_is_judged_on_its_worst_run() -> None:
    from autotune.tolerance import Bound, ToleranceRule

    spec = AgreementSpec(None, (), (ToleranceRule({"top1": Bound("top1", "min", 0.99)}),))
    # the median run meets the bound, the worst one does not
    verdict = spec.judge({}, {"top1": 0.995, "top1_min": 0.97, "top1_max": 1.0})
    assert verdict.failed == ("top1 0.97 < 0.99",)
