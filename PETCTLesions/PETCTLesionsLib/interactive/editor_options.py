"""The "PET lesion" Segment Editor effect's options and click sequences, without Qt or Slicer.

The effect (PETCTLesions/SegmentEditorPETLesionLib/SegmentEditorEffect.py) keeps its options as
the Segment Editor keeps every effect's: named string parameters saved in the segment editor node.
This module says which parameters there are, their defaults, how they become the prompt engine's
:class:`~.prompts.PromptOptions`, what the rule chooser offers, and what a mode does with the
reader's clicks (split takes two; a box is pressed at one corner and released at the other), so
that the effect itself only draws widgets and forwards events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .prompts import (
    FIXED_SUV,
    PERCENT_OF_MAX,
    PERCIST,
    PROBABILITY,
    GrowthRule,
    LiverReference,
    PromptError,
    PromptOptions,
)

EFFECT_NAME = "PET lesion"  # how the module finds the effect (setActiveEffectByName): never translated

# What a left click in a slice view does.
ADD, REMOVE, BOX, SPLIT, LIVER = "add", "remove", "box", "split", "liver"
MODES = (ADD, REMOVE, BOX, SPLIT, LIVER)
MODE_LABELS = {
    ADD: "Add lesion (click)",
    REMOVE: "Remove lesion (click)",
    BOX: "Lesion in a box (drag on an axial view)",
    SPLIT: "Split lesion (two clicks)",
    LIVER: "Liver reference (click the normal liver)",
}
MODE_HINTS = {
    ADD: "Click a hot spot the lesions miss: the lesion around it is added (or the lesion it touches grows).",
    REMOVE: "Click a lesion to remove it with its VOC boxes.",
    BOX: "On an axial view, press at one corner of the lesion and release at the other.",
    SPLIT: "Click inside a lesion where the first part is, then where the second part is.",
    LIVER: "Click the middle of the normal liver: a 3 cm sphere there is PERCIST's reference.",
}

# The effect's parameters (names as stored in the segment editor node).
MODE = "Mode"
RULE = "Rule"  # one of RULE_KINDS
RULE_VALUE = "RuleValue"
SNAP_RADIUS = "SnapRadiusMm"
MAX_RADIUS = "MaxRadiusMm"
PROTECT = "ProtectOtherLesions"  # "1" / "0"
LIVER_MEAN = "LiverMeanSUV"  # "" until the reader places the liver reference
LIVER_SD = "LiverSDSUV"

_DEFAULT_OPTIONS = PromptOptions()
DEFAULTS: Dict[str, str] = {
    MODE: ADD,
    RULE: _DEFAULT_OPTIONS.rule.kind,
    RULE_VALUE: f"{_DEFAULT_OPTIONS.rule.value:g}",
    SNAP_RADIUS: f"{_DEFAULT_OPTIONS.snap_radius_mm:g}",
    MAX_RADIUS: f"{_DEFAULT_OPTIONS.max_radius_mm:g}",
    PROTECT: "1" if _DEFAULT_OPTIONS.protect_other_lesions else "0",
    LIVER_MEAN: "",
    LIVER_SD: "",
}


@dataclass(frozen=True)
class RulePreset:
    """One entry of the rule chooser: its label, and the rule it sets."""

    label: str
    kind: str
    value: float


# The rules clinical PET tools offer (Slicer's PET Tumor Segmentation, MUST-segmenter), in the chooser's order.
RULE_PRESETS: Tuple[RulePreset, ...] = (
    RulePreset("41% of SUVmax", PERCENT_OF_MAX, 0.41),
    RulePreset("50% of SUVmax", PERCENT_OF_MAX, 0.50),
    RulePreset("SUV 2.5", FIXED_SUV, 2.5),
    RulePreset("SUV 4.0", FIXED_SUV, 4.0),
    RulePreset("PERCIST (1.5 x liver mean + 2 SD)", PERCIST, 0.0),
    RulePreset("Model probability 0.2", PROBABILITY, 0.2),
)


@dataclass(frozen=True)
class ValueRange:
    """What the rule's value box accepts for a rule kind (None: the kind has no value)."""

    minimum: float
    maximum: float
    step: float
    decimals: int
    suffix: str


VALUE_RANGES: Dict[str, Optional[ValueRange]] = {
    PERCENT_OF_MAX: ValueRange(0.05, 0.95, 0.01, 2, " x SUVmax"),
    FIXED_SUV: ValueRange(0.1, 100.0, 0.1, 1, " SUV"),
    PERCIST: None,
    PROBABILITY: ValueRange(0.01, 0.99, 0.01, 2, ""),
}


def preset_index(parameters: Mapping[str, str]) -> Optional[int]:
    """The chooser entry that matches the parameters' rule (None: a value of the reader's own)."""
    kind, value = parameters.get(RULE, DEFAULTS[RULE]), _number(parameters, RULE_VALUE)
    for index, preset in enumerate(RULE_PRESETS):
        if preset.kind == kind and (kind == PERCIST or math.isclose(preset.value, value, abs_tol=1e-9)):
            return index
    return None


def preset_parameters(index: int) -> Dict[str, str]:
    """The parameters a chooser entry sets."""
    preset = RULE_PRESETS[index]
    return {RULE: preset.kind, RULE_VALUE: f"{preset.value:g}"}


def prompt_options(parameters: Mapping[str, str]) -> PromptOptions:
    """The prompt engine's options from the effect's parameters (defaults where one is missing).

    Refused with a message for the reader (:class:`~.prompts.PromptError`, an ``InputError``): a
    value out of range, or PERCIST before the liver reference is placed.
    """
    kind = parameters.get(RULE, DEFAULTS[RULE]) or DEFAULTS[RULE]
    liver = liver_from(parameters)
    if kind == PERCIST and liver is None:
        raise PromptError("PERCIST needs the liver reference: choose 'Liver reference' and click the normal liver")
    return PromptOptions(
        rule=GrowthRule(kind, _number(parameters, RULE_VALUE)),
        snap_radius_mm=_number(parameters, SNAP_RADIUS),
        max_radius_mm=_number(parameters, MAX_RADIUS),
        protect_other_lesions=parameters.get(PROTECT, DEFAULTS[PROTECT]) != "0",
        liver=liver,
    )


def liver_from(parameters: Mapping[str, str]) -> Optional[LiverReference]:
    """The liver reference the reader placed (None: not yet)."""
    if not parameters.get(LIVER_MEAN):
        return None
    return LiverReference(_number(parameters, LIVER_MEAN), _number(parameters, LIVER_SD))


def liver_parameters(liver: Optional[LiverReference]) -> Dict[str, str]:
    """The parameters that keep ``liver`` (None: forget it)."""
    if liver is None:
        return {LIVER_MEAN: "", LIVER_SD: ""}
    return {LIVER_MEAN: repr(float(liver.mean_suv)), LIVER_SD: repr(float(liver.sd_suv))}


def describe_liver(parameters: Mapping[str, str]) -> str:
    """The liver reference in words, for the effect's panel."""
    liver = liver_from(parameters)
    if liver is None:
        return "Liver reference: not placed (needed by PERCIST)."
    return (
        f"Liver reference: mean SUV {liver.mean_suv:.2f}, SD {liver.sd_suv:.2f}; "
        f"PERCIST threshold SUV {liver.percist_threshold:.2f}."
    )


def _number(parameters: Mapping[str, str], name: str) -> float:
    text = parameters.get(name) or DEFAULTS[name]
    try:
        return float(text)
    except ValueError:
        raise PromptError(f"effect parameter {name} must be a number, got {text!r}") from None


def mode_of(parameters: Mapping[str, str]) -> str:
    """The effect's mode (the default for a value this version does not know)."""
    mode = parameters.get(MODE, DEFAULTS[MODE])
    return mode if mode in MODES else DEFAULTS[MODE]


class ClickSequence:
    """The points a mode needs before it acts: one click (add, remove, liver), two clicks (split),
    or a press and a release (box). Feed it each point; it answers the points once complete."""

    def __init__(self) -> None:
        self._pending: List[Tuple[float, float, float]] = []
        self._mode: Optional[str] = None

    @property
    def waiting(self) -> bool:
        """A first point is held (the effect tells the reader what to click next)."""
        return bool(self._pending)

    def reset(self) -> None:
        self._pending = []

    def press(self, mode: str, point: Sequence[float]) -> Optional[List[Tuple[float, float, float]]]:
        """A left button press at ``point``: the points to act on, or None while more are needed."""
        if mode != self._mode:
            self._mode, self._pending = mode, []
        self._pending.append((float(point[0]), float(point[1]), float(point[2])))
        needed = 2 if mode in (SPLIT, BOX) else 1
        if mode == BOX or len(self._pending) < needed:
            return None  # a box completes on release
        points, self._pending = self._pending, []
        return points

    def release(self, mode: str, point: Sequence[float]) -> Optional[List[Tuple[float, float, float]]]:
        """A left button release: completes a box pressed in the same mode."""
        if mode != BOX or self._mode != BOX or len(self._pending) != 1:
            return None
        points = [self._pending[0], (float(point[0]), float(point[1]), float(point[2]))]
        self._pending = []
        return points
