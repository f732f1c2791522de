"""Plots drawn with PIL alone (no plotting library): a line chart with axes, ticks and a legend, a
diverging heat map with the values printed, and a labelled image grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

_PALETTE = (
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (255, 127, 14),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
)
# Diverging colour map anchors (value in [-1, 1], RGB): blue, white, red.
_DIVERGING = (
    (-1.0, (33, 102, 172)),
    (-0.5, (146, 197, 222)),
    (0.0, (247, 247, 247)),
    (0.5, (244, 165, 130)),
    (1.0, (178, 24, 43)),
)


def _font(size: int):
    return ImageFont.load_default(size=size)


def _text_width(text: str, font) -> float:
    box = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    return box[2] - box[0]


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values (steps of 1, 2 or 5 times a power of ten),
    the first <= low, the last >= high."""
    if not high > low:
        low, high = low - 0.5, high + 0.5
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(k * step, 10) for k in range(first, last + 1)]


def _tick_label(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step < 1 else 0
    return f"{value:.{decimals}f}"


def line_chart(
    series: dict[str, Sequence[tuple[float, float]]],
    title: str,
    x_label: str,
    y_label: str,
    size: tuple[int, int] = (720, 440),
    y_range: tuple[float, float] | None = None,
) -> Image.Image:
    """A line chart of named series of (x, y) points (NaN y left out), with axes, grid, ticks and a legend."""
    width, height = size
    font, title_font = _font(13), _font(16)
    points = [(x, y) for values in series.values() for x, y in values if math.isfinite(y)]
    xs = [p[0] for p in points] or [0.0, 1.0]
    ys = [p[1] for p in points] or [0.0, 1.0]
    x_ticks = nice_ticks(min(xs), max(xs))
    y_ticks = nice_ticks(*(y_range or (min(ys), max(ys))))
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]
    left, right, top, bottom = 70, 170, 40, 50  # margins: tick labels, legend, title, x label
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)

    def to_pixel(x, y):
        return (
            left + (x - x0) / (x1 - x0) * (width - left - right),
            height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom),
        )

    x_step = x_ticks[1] - x_ticks[0]
    y_step = y_ticks[1] - y_ticks[0]
    for x in x_ticks:
        px, _ = to_pixel(x, y0)
        draw.line((px, top, px, height - bottom), fill=(225, 225, 225))
        draw.text((px, height - bottom + 6), _tick_label(x, x_step), fill="black", font=font, anchor="mt")
    for y in y_ticks:
        _, py = to_pixel(x0, y)
        draw.line((left, py, width - right, py), fill=(225, 225, 225))
        draw.text((left - 6, py), _tick_label(y, y_step), fill="black", font=font, anchor="rm")
    draw.rectangle((left, top, width - right, height - bottom), outline="black")
    draw.text((width / 2, 10), title, fill="black", font=title_font, anchor="mt")
    draw.text(((left + width - right) / 2, height - 8), x_label, fill="black", font=font, anchor="mb")
    label = Image.new("RGB", (int(_text_width(y_label, font)) + 4, 18), "white")
    ImageDraw.Draw(label).text((2, 9), y_label, fill="black", font=font, anchor="lm")
    image.paste(label.rotate(90, expand=True), (4, int((top + height - bottom) / 2 - label.width / 2)))
    for index, (name, values) in enumerate(series.items()):
        colour = _PALETTE[index % len(_PALETTE)]
        run: list[tuple[float, float]] = []  # a NaN breaks the line
        for x, y in [*sorted(values), (math.nan, math.nan)]:
            if math.isfinite(y):
                run.append(to_pixel(x, y))
                continue
            if len(run) > 1:
                draw.line(run, fill=colour, width=2)
            for px, py in run:
                draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=colour)
            run = []
        ly = top + 10 + 20 * index
        draw.line((width - right + 12, ly, width - right + 36, ly), fill=colour, width=3)
        draw.text((width - right + 42, ly), name, fill="black", font=font, anchor="lm")
    return image


def diverging_colour(value: float) -> tuple[int, int, int]:
    """RGB of value in [-1, 1] (clamped): blue, white at 0, red; linear between the anchors."""
    value = min(max(value, -1.0), 1.0)
    for (v0, c0), (v1, c1) in zip(_DIVERGING, _DIVERGING[1:]):
        if value <= v1:
            t = (value - v0) / (v1 - v0)
            return tuple(round(a + t * (b - a)) for a, b in zip(c0, c1))
    return _DIVERGING[-1][1]


def heatmap(
    values: Sequence[Sequence[float]],
    rows: Sequence[str],
    columns: Sequence[str],
    title: str,
    limit: float | None = None,
    cell: int = 40,
) -> Image.Image:
    """A labelled matrix: blue for -limit, white for 0,
    red for +limit (default the largest |value|), values printed."""
    finite = [abs(v) for row in values for v in row if math.isfinite(v)]
    limit = limit or max(finite, default=1.0) or 1.0
    font, title_font = _font(11), _font(15)
    row_w = int(max((_text_width(r, font) for r in rows), default=0)) + 12
    col_h = int(max((_text_width(c, font) for c in columns), default=0)) + 12
    x0, y0 = 10 + row_w, 34 + col_h
    width = max(x0 + cell * len(columns) + 10, int(_text_width(title, title_font)) + 20)
    image = Image.new("RGB", (width, y0 + cell * len(rows) + 30), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 8), title, fill="black", font=title_font)
    for j, text in enumerate(columns):  # column labels read bottom-up
        strip = Image.new("RGB", (col_h, cell), "white")
        ImageDraw.Draw(strip).text((4, cell / 2), text, fill="black", font=font, anchor="lm")
        image.paste(strip.rotate(90, expand=True), (x0 + j * cell, y0 - col_h - 2))
    for i, text in enumerate(rows):
        draw.text((x0 - 6, y0 + i * cell + cell / 2), text, fill="black", font=font, anchor="rm")
        for j, value in enumerate(values[i]):
            box = (x0 + j * cell, y0 + i * cell, x0 + (j + 1) * cell - 1, y0 + (i + 1) * cell - 1)
            if not math.isfinite(value):
                draw.rectangle(box, fill=(200, 200, 200))
                continue
            rgb = diverging_colour(value / limit)
            draw.rectangle(box, fill=rgb)
            dark = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] < 128
            shown = round(value, 2) or 0.0  # no "-0.00"
            draw.text(
                (box[0] + cell / 2, box[1] + cell / 2),
                f"{shown:+.2f}",
                font=font,
                anchor="mm",
                fill="white" if dark else "black",
            )
    draw.text(
        (10, y0 + cell * len(rows) + 8),
        f"colour scale: blue -{limit:.2g} .. white 0 .. red +{limit:.2g}",
        fill="black",
        font=font,
    )
    return image


def image_grid(
    rows: Sequence[Sequence[Image.Image | None]],
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    cell: int = 128,
) -> Image.Image:
    """Images in a grid of cell x cell tiles,
    labelled above each column and left of each row (None = empty)."""
    font = _font(12)
    label_w = int(max((_text_width(r, font) for r in row_labels), default=0)) + 12
    columns = max((len(r) for r in rows), default=0)
    image = Image.new("RGB", (label_w + columns * cell, 24 + len(rows) * cell), "white")
    draw = ImageDraw.Draw(image)
    for j, text in enumerate(column_labels):
        draw.text((label_w + j * cell + cell / 2, 12), text, fill="black", font=font, anchor="mm")
    for i, row in enumerate(rows):
        draw.text(
            (label_w - 6, 24 + i * cell + cell / 2), row_labels[i], fill="black", font=font, anchor="rm"
        )
        for j, tile in enumerate(row):
            if tile is not None:
                image.paste(
                    tile.convert("RGB").resize((cell, cell), Image.Resampling.LANCZOS),
                    (label_w + j * cell, 24 + i * cell),
                )
    return image
