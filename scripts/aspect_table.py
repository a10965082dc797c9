"""Print docs/algorithm.md's table of what aspect=structure keeps: area lost and aspect error.

    python scripts/aspect_table.py

For structure images of 1:2 .. 2:1 at 512 px (SD 1.5, unit 64), 1024 px (SDXL, unit 32) and the
tiny model's 128 px (unit 64): before issue 26 (the shorter side rounded to the unit, the structure
cover-cropped to that grid, the result at the grid's size) and now (``qalign_core.images.output_shape``:
a grid within one unit, the whole structure resized to it, the result resized back to the
structure's exact aspect). "stretch" is how far the grid's aspect is from the structure's: the model
sees the structure stretched by it, and the result is resized back.
"""

from __future__ import annotations

from qalign_core.images import output_shape

RATIOS = [(1, 2), (9, 16), (2, 3), (3, 4), (4, 5), (1, 1), (5, 4), (4, 3), (3, 2), (16, 9), (2, 1)]
SIZES = [(512, 64, "SD 1.5"), (1024, 32, "SDXL"), (128, 64, "tiny")]
#: A structure of ``ratio`` is ``ratio`` times this many pixels (odd: no ratio divides it evenly).
SCALE = 397


def _before(width: int, height: int, longer: int, unit: int) -> tuple[int, int]:
    """The grid (and result) size of the rule before issue 26: shorter side rounded half up to the unit."""
    ratio = max(width, height) / min(width, height)
    shorter = max(unit, int(longer / ratio / unit + 0.5) * unit)
    return (longer, shorter) if width > height else (shorter, longer)


def _percent(value: float, signed: bool = True) -> str:
    text = f"{100 * value:+.2f} %" if signed else f"{100 * value:.2f} %"
    return "0" if text.strip("+-") == "0.00 %" else text


def rows() -> list[str]:
    lines = [
        "| size (unit) | structure | before: result | area lost | aspect error | now: grid | result "
        "| area lost | aspect error | stretch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for longer, unit, model in SIZES:
        for w, h in RATIOS:
            width, height = w * SCALE, h * SCALE
            aspect = width / height
            old_w, old_h = _before(width, height, longer, unit)
            old_error = (old_w / old_h) / aspect - 1
            old_lost = 1 - min(old_w / old_h / aspect, aspect / (old_w / old_h))
            shape = output_shape((width, height), longer, unit, "structure")
            crop = shape.crop or (0, 0, width, height)
            lost = 1 - (crop[2] - crop[0]) * (crop[3] - crop[1]) / (width * height)
            error = (shape.result_width / shape.result_height) / aspect - 1
            stretch = (shape.width / shape.height) / aspect - 1
            lines.append(
                f"| {longer} ({unit}, {model}) | {w}:{h} | {old_w}x{old_h} | {_percent(old_lost, False)} "
                f"| {_percent(old_error)} | {shape.width}x{shape.height} "
                f"| {shape.result_width}x{shape.result_height} | {_percent(lost, False)} | {_percent(error)} "
                f"| {_percent(stretch)} |"
            )
    return lines


if __name__ == "__main__":
    print("\n".join(rows()))
