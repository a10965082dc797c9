from __future__ import annotations

import pytest
from pydantic import ValidationError

from qalign_core.params import TransferParams


def test_defaults_are_the_spec_defaults():
    p = TransferParams()
    assert (p.method, p.steps, p.skip_steps, p.seed, p.domain) == ("qalign", 100, 32, 0, "object")
    assert (p.swap_guidance_scale, p.contrast_strength, p.adain, p.output_format) == (
        3.5,
        1.67,
        "masked",
        "png",
    )
    assert (p.align_steps_fine, p.align_steps_coarse, p.adain_steps) == ((10, 90), (10, 70), (20, 100))
    assert p.size is None and p.effective_prompt == "A photo of a object"
    assert TransferParams(prompt="a cat").effective_prompt == "a cat"


@pytest.mark.parametrize(
    "field,value,fragment",
    [
        ("steps", 1, "steps"),
        ("steps", 1000, "less than or equal to 999"),
        ("skip_steps", 100, "less than or equal to 99"),
        ("swap_guidance_scale", 0.5, "greater than or equal to 1"),
        ("adain", "sometimes", "masked"),
        ("adain_steps", (20, 101), "0 <= start <= end <= 100"),
        ("seed", -1, "seed"),
        ("contrast_strength", 0, "greater than 0"),
        ("contrast_strength", float("nan"), "finite"),
        ("swap_guidance_scale", float("inf"), "finite"),
        ("size", 100, "multiple of 32"),
        ("size", 2048, "less than or equal to 1536"),
        ("method", "magic", "qalign"),
        ("output_format", "gif", "png"),
        ("domain", "", "at least 1"),
        ("align_steps_fine", (50, 10), "align_steps_fine"),
        ("unknown_knob", 1, "Extra inputs are not permitted"),
    ],
)
def test_out_of_range_is_a_clear_error_naming_the_field(field, value, fragment):
    with pytest.raises(ValidationError) as info:
        TransferParams(**{field: value})
    text = str(info.value)
    assert field in text and fragment in text


@pytest.mark.parametrize("value", [True, False, "true", "false"])
def test_adain_takes_its_three_modes_only_not_booleans(value):
    """The first API version's boolean form is not accepted: the error names the three modes."""
    assert TransferParams(adain="plain").adain == "plain"
    with pytest.raises(ValidationError) as info:
        TransferParams(adain=value)
    text = str(info.value)
    assert "adain" in text and all(mode in text for mode in ("'masked'", "'plain'", "'none'")), text
