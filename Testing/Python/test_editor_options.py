"""The "PET lesion" effect's options and click sequences (interactive/editor_options.py), without Slicer."""

from __future__ import annotations

import pytest

from PETCTLesionsLib.errors import InputError
from PETCTLesionsLib.interactive import editor_options as eo
from PETCTLesionsLib.interactive.prompts import FIXED_SUV, PERCENT_OF_MAX, PERCIST, LiverReference, PromptOptions


def test_the_defaults_are_the_prompt_engines_and_every_preset_gives_its_rule():
    assert eo.prompt_options(eo.DEFAULTS) == PromptOptions()
    assert eo.prompt_options({}) == PromptOptions()  # a parameter not saved yet: its default
    assert eo.mode_of({}) == eo.ADD and eo.mode_of({eo.MODE: "unknown"}) == eo.ADD
    liver = eo.liver_parameters(LiverReference(2.0, 0.25))
    for index, preset in enumerate(eo.RULE_PRESETS):
        parameters = {**eo.DEFAULTS, **liver, **eo.preset_parameters(index)}
        assert eo.preset_index(parameters) == index
        options = eo.prompt_options(parameters)
        assert options.rule.kind == preset.kind
        if preset.kind != PERCIST:
            assert options.rule.value == pytest.approx(preset.value)
            assert eo.VALUE_RANGES[preset.kind].minimum <= preset.value <= eo.VALUE_RANGES[preset.kind].maximum
    assert eo.preset_index({eo.RULE: FIXED_SUV, eo.RULE_VALUE: "3.1"}) is None  # the reader's own value


def test_options_from_parameters_and_what_is_refused():
    options = eo.prompt_options(
        {eo.RULE: PERCENT_OF_MAX, eo.RULE_VALUE: "0.5", eo.SNAP_RADIUS: "6", eo.MAX_RADIUS: "25", eo.PROTECT: "0"}
    )
    assert options.rule.value == 0.5 and options.snap_radius_mm == 6.0 and options.max_radius_mm == 25.0
    assert options.protect_other_lesions is False
    with pytest.raises(InputError, match="liver reference"):
        eo.prompt_options({eo.RULE: PERCIST})
    with pytest.raises(InputError):
        eo.prompt_options({eo.RULE: PERCENT_OF_MAX, eo.RULE_VALUE: "1.5"})  # not a fraction of SUVmax
    with pytest.raises(InputError, match="must be a number"):
        eo.prompt_options({eo.SNAP_RADIUS: "ten"})


def test_the_liver_reference_is_kept_exactly_and_described():
    liver = LiverReference(1.8312345678, 0.2712345)
    parameters = eo.liver_parameters(liver)
    assert eo.liver_from(parameters) == liver
    assert eo.prompt_options({eo.RULE: PERCIST, **parameters}).liver == liver
    assert "PERCIST threshold SUV 3.29" in eo.describe_liver(parameters)
    assert eo.liver_from(eo.liver_parameters(None)) is None
    assert "not placed" in eo.describe_liver({})


def test_click_sequences_of_each_mode():
    clicks = eo.ClickSequence()
    assert clicks.press(eo.ADD, (1, 2, 3)) == [(1.0, 2.0, 3.0)]
    assert clicks.release(eo.ADD, (1, 2, 3)) is None
    # Split: the first click is held, the second completes it.
    assert clicks.press(eo.SPLIT, (0, 0, 0)) is None and clicks.waiting
    assert clicks.press(eo.SPLIT, (5, 0, 0)) == [(0.0, 0.0, 0.0), (5.0, 0.0, 0.0)] and not clicks.waiting
    # Box: press at one corner, release at the other.
    assert clicks.press(eo.BOX, (0, 0, 9)) is None
    assert clicks.release(eo.BOX, (4, 4, 9)) == [(0.0, 0.0, 9.0), (4.0, 4.0, 9.0)]
    assert clicks.release(eo.BOX, (4, 4, 9)) is None  # a release without its press
    # Changing mode forgets a held click.
    assert clicks.press(eo.SPLIT, (0, 0, 0)) is None
    assert clicks.press(eo.REMOVE, (7, 7, 7)) == [(7.0, 7.0, 7.0)]
    assert clicks.press(eo.SPLIT, (1, 1, 1)) is None and clicks.waiting
    clicks.reset()
    assert not clicks.waiting
    assert set(eo.MODE_LABELS) == set(eo.MODES) == set(eo.MODE_HINTS)
