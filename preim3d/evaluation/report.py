"""The evaluation report: tables as CSV and Markdown, plots as PNG drawn with PIL, the run's environment.

`EvaluationReport.save(folder)` writes

    report.md            every table, the figures, the environment and what each number means
    summary.csv          the headline numbers (section, metric, value)
    inversion.csv        per photo: MSE, PSNR, SSIM, LPIPS, identity of the reconstruction
    views.csv            per photo and novel view: identity to the input and to the other views,
                         reprojection error and co-visible fraction (raw and super-resolved)
    editing.csv          per photo, edit and mode (plain / precise): target shift, leakage, identity
    leakage.csv          per edit, mode and other attribute: the score change per unit of edit
    attributes.csv       with labels: how well each attribute's score separates the labelled photos
    speed.csv            per stage: median, fastest and first-call milliseconds
    environment.json     device, versions, weights provenance, settings
    identity_curve.png, reprojection_curve.png, leakage.png, examples.png

Plots are plain PIL drawings (no plotting library): a line chart with axes, ticks and a legend, a
diverging heat map with the values printed, and a labelled image grid.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# --------------------------------------------------------------------------- drawing

_PALETTE = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127))
# Diverging colour map anchors (value in [-1, 1], RGB): blue, white, red.
_DIVERGING = ((-1.0, (33, 102, 172)), (-0.5, (146, 197, 222)), (0.0, (247, 247, 247)),
              (0.5, (244, 165, 130)), (1.0, (178, 24, 43)))


def _font(size: int):
    return ImageFont.load_default(size=size)


def _text_width(text: str, font) -> float:
    box = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    return box[2] - box[0]


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values (steps of 1, 2 or 5 times a power of ten), the first <= low, the last >= high."""
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


def line_chart(series: dict[str, Sequence[tuple[float, float]]], title: str, x_label: str, y_label: str,
               size: tuple[int, int] = (720, 440), y_range: tuple[float, float] | None = None) -> Image.Image:
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
        return (left + (x - x0) / (x1 - x0) * (width - left - right),
                height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom))

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


def _diverging(value: float) -> tuple[int, int, int]:
    value = min(max(value, -1.0), 1.0)
    for (v0, c0), (v1, c1) in zip(_DIVERGING, _DIVERGING[1:]):
        if value <= v1:
            t = (value - v0) / (v1 - v0)
            return tuple(round(a + t * (b - a)) for a, b in zip(c0, c1))
    return _DIVERGING[-1][1]


def heatmap(values: Sequence[Sequence[float]], rows: Sequence[str], columns: Sequence[str], title: str,
            limit: float | None = None, cell: int = 40) -> Image.Image:
    """A labelled matrix: blue for -limit, white for 0, red for +limit (default the largest |value|), values printed."""
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
            rgb = _diverging(value / limit)
            draw.rectangle(box, fill=rgb)
            dark = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] < 128
            shown = round(value, 2) or 0.0  # no "-0.00"
            draw.text((box[0] + cell / 2, box[1] + cell / 2), f"{shown:+.2f}", font=font, anchor="mm",
                      fill="white" if dark else "black")
    draw.text((10, y0 + cell * len(rows) + 8), f"colour scale: blue -{limit:.2g} .. white 0 .. red +{limit:.2g}",
              fill="black", font=font)
    return image


def image_grid(rows: Sequence[Sequence[Image.Image | None]], row_labels: Sequence[str],
               column_labels: Sequence[str], cell: int = 128) -> Image.Image:
    """Images in a grid of cell x cell tiles, labelled above each column and left of each row (None = empty)."""
    font = _font(12)
    label_w = int(max((_text_width(r, font) for r in row_labels), default=0)) + 12
    columns = max((len(r) for r in rows), default=0)
    image = Image.new("RGB", (label_w + columns * cell, 24 + len(rows) * cell), "white")
    draw = ImageDraw.Draw(image)
    for j, text in enumerate(column_labels):
        draw.text((label_w + j * cell + cell / 2, 12), text, fill="black", font=font, anchor="mm")
    for i, row in enumerate(rows):
        draw.text((label_w - 6, 24 + i * cell + cell / 2), row_labels[i], fill="black", font=font, anchor="rm")
        for j, tile in enumerate(row):
            if tile is not None:
                image.paste(tile.convert("RGB").resize((cell, cell), Image.Resampling.LANCZOS),
                            (label_w + j * cell, 24 + i * cell))
    return image


# --------------------------------------------------------------------------- tables


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        magnitude = abs(value)
        return f"{value:.2e}" if 0 < magnitude < 1e-3 or magnitude >= 1e5 else f"{value:.4g}"
    return str(value)


def markdown_table(rows: Sequence[dict], columns: dict[str, str]) -> str:
    """A Markdown table of `rows` (dicts) with the given {key: header} columns; missing cells show '–'."""
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(row.get(key)) for key in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: Path, rows: Sequence[dict]) -> None:
    """Rows (dicts) as a CSV with the union of their keys as the header, in first-seen order."""
    header = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)


def mean_of(rows: Sequence[dict], key: str) -> float | None:
    """Mean of the finite numbers under `key` (None when there are none)."""
    values = [row[key] for row in rows if isinstance(row.get(key), (int, float)) and math.isfinite(row[key])]
    return sum(values) / len(values) if values else None


def grouped_means(rows: Sequence[dict], by: Sequence[str], keys: Sequence[str]) -> list[dict]:
    """One row per distinct value of the `by` keys (first-seen order) with the mean of each of `keys`."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in by), []).append(row)
    return [{**dict(zip(by, group)), "photos": len(members), **{k: mean_of(members, k) for k in keys}}
            for group, members in groups.items()]


# --------------------------------------------------------------------------- the report


@dataclass
class EvaluationReport:
    """Everything one evaluation measured (see `preim3d.evaluation.run.evaluate`), ready to save.

    Row lists hold one dict per photo (and view, edit, ...), keys as in the CSV files; `leakage`
    rows are per edit, mode and other attribute, averaged over photos; `figures` maps PNG names
    to PIL images; `files` lists what `save` wrote.
    """

    environment: dict
    settings: dict
    photos: list[str]
    skipped: dict[str, str]  # photo (or "photo: edit") -> why it was not measured
    inversion: list[dict]
    views: list[dict]
    edits: list[dict]
    leakage: list[dict]
    attributes: list[dict]
    speed: list[dict]
    figures: dict[str, Image.Image] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    # headline numbers, also in summary.csv
    def summary(self) -> list[dict]:
        """[{'section', 'metric', 'value'}]: means over photos (and views / edits) of each metric."""
        rows = []

        def add(section, metric, value):
            rows.append({"section": section, "metric": metric, "value": value})

        for key in ("mse", "psnr", "ssim", "lpips", "identity"):
            add("inversion", key, mean_of(self.inversion, key))
        add("consistency", "identity to input, mean over views", mean_of(self.views, "identity_to_input"))
        add("consistency", "identity to input, worst view",
            min((r["identity_to_input"] for r in self.views), default=None))
        add("consistency", "identity between views, mean", mean_of(self.views, "identity_to_views"))
        for kind in ("raw", "final"):
            add("consistency", f"reprojection error {kind} (8-bit L1)", mean_of(self.views, f"reprojection_{kind}"))
            add("consistency", f"co-visible fraction {kind}", mean_of(self.views, f"covisible_{kind}"))
        for mode in ("plain", "precise"):
            chosen = [r for r in self.edits if r["mode"] == mode]
            add("editing", f"{mode}: target shift", mean_of(chosen, "target_shift"))
            add("editing", f"{mode}: mean leakage", mean_of(chosen, "mean_leak"))
            add("editing", f"{mode}: identity to reconstruction", mean_of(chosen, "identity"))
        for row in self.speed:
            add("speed", f"{row['stage']} (ms)", row["ms"])
        return rows

    def to_markdown(self) -> str:
        """The whole report as Markdown (figures linked by their PNG names)."""
        env, settings = self.environment, self.settings
        out = ["# preim3d evaluation", "",
               f"{len(self.photos)} photo(s) evaluated" + (f" ({len(self.skipped)} photo(s) or edit(s) skipped)" if self.skipped else "")
               + f" on {env.get('device')} ({env.get('device_name')}), {env.get('date')}. "
               f"Weights: {env.get('weights')}. Identity model: {settings.get('identity_model')}.", "",
               "## Summary", "", markdown_table(self.summary(), {"section": "section", "metric": "metric",
                                                                  "value": "value"}), ""]
        out += ["## Inversion", "",
                "The aligned input crop against the reconstruction rendered from the camera estimated from the "
                "photo (the crop is resized to the render's size). MSE in [0, 1] units, PSNR in dB, SSIM, LPIPS "
                f"(AlexNet; {settings.get('lpips') or 'available'}), identity = cosine similarity of the "
                "identity embeddings.", "",
                markdown_table(self.inversion + [{"photo": "**mean**", **{k: mean_of(self.inversion, k) for k in
                                                  ("mse", "psnr", "ssim", "lpips", "identity")}}],
                               {"photo": "photo", "yaw_deg": "yaw°", "pitch_deg": "pitch°", "mse": "MSE",
                                "psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "identity": "identity",
                                "face_detected": "face found in render"}), ""]
        view_keys = ("identity_to_input", "identity_to_views", "reprojection_raw", "covisible_raw",
                     "reprojection_final", "covisible_final", "face_detected")
        out += ["## 3D consistency", "",
                "Novel views of each inverted code on a yaw/pitch grid (degrees; pitch in EG3D's polar-angle "
                "offset, negative = camera above), averaged over photos. Identity: to the input crop, and the mean "
                "to the other views. Reprojection: each view's pixels are lifted to 3-D with its rendered depth and "
                "looked up in the frontal view; the error is the mean absolute RGB difference (8-bit levels) on the "
                f"co-visible pixels (depth test tolerance {settings.get('tolerance')} world units), on the raw "
                "neural-resolution render and on the super-resolved image (depth upsampled bilinearly).", "",
                markdown_table(grouped_means(self.views, ("yaw_deg", "pitch_deg"), view_keys),
                               {"yaw_deg": "yaw°", "pitch_deg": "pitch°", "identity_to_input": "ID to input",
                                "identity_to_views": "ID to other views", "reprojection_raw": "reproj. raw",
                                "covisible_raw": "co-visible raw", "reprojection_final": "reproj. final",
                                "covisible_final": "co-visible final", "face_detected": "face found (share)"}),
                "", *self._figure("identity_curve.png", "identity per view"),
                *self._figure("reprojection_curve.png", "reprojection error per view")]
        out += ["## Editing precision", ""]
        if self.edits:
            edit_keys = ("target_shift", "mean_leak", "max_leak", "identity", "step")
            out += ["Each edit alone, plain (w + strength·d) and precise (holding "
                    f"{settings.get('hold_description')}). Target shift = score change of the target / strength "
                    "(1 = as asked); leakage = |score change| of every other attribute / strength (mean, and the "
                    "largest with its attribute); identity = similarity of the edited render to the reconstruction "
                    "(same camera); step = |Δw|. A plain edit's latent leakage into b is the cosine of the two "
                    "directions, the same for every photo; the identity column is where photos differ.", "",
                    markdown_table(self._edit_table(edit_keys),
                                   {"edit": "edit", "strength": "strength", "mode": "mode",
                                    "target_shift": "target shift", "mean_leak": "mean leakage",
                                    "max_leak": "max leakage", "max_leak_attribute": "most leaked into",
                                    "identity": "identity", "step": "step"}),
                    "", *self._figure("leakage.png", "leakage")]
        else:
            out += ["Nothing measured: the weights hold no editing directions.", ""]
        if self.attributes:
            out += ["## Attribute scores of the inverted codes against the labels", "",
                    "AUC of the attribute's score s_a(w) between the photos labelled with and without it "
                    "(0.5 = no separation, 1 = perfect).", "",
                    markdown_table(self.attributes, {"attribute": "attribute", "positives": "with",
                                                     "negatives": "without", "auc": "AUC"}), ""]
        out += ["## Speed", "",
                f"Milliseconds per call on {env.get('device')} ({env.get('device_name')}): median of "
                f"{settings.get('repeats')} timed calls after one untimed call (`first call`).", "",
                markdown_table(self.speed, {"stage": "stage", "ms": "median ms", "min_ms": "fastest ms",
                                            "cold_ms": "first call ms"}), "",
                "## Examples", "", *self._figure("examples.png", "examples")]
        if self.skipped:
            out += ["## Skipped", "", markdown_table([{"what": k, "reason": v} for k, v in self.skipped.items()],
                                                   {"what": "photo or edit", "reason": "reason"}), ""]
        out += ["## Environment", "", markdown_table([{"key": k, "value": v} for k, v in env.items()],
                                                     {"key": "", "value": ""}), ""]
        return "\n".join(out)

    def _figure(self, name: str, text: str) -> list[str]:
        return [f"![{text}]({name})", ""] if name in self.figures else []

    def _edit_table(self, keys) -> list[dict]:
        """Means per edit and mode over photos, with the strengths used (labels may flip a photo's sign)."""
        rows = grouped_means(self.edits, ("edit", "mode"), keys)
        for row in rows:
            members = [r for r in self.edits if (r["edit"], r["mode"]) == (row["edit"], row["mode"])]
            row["strength"] = ", ".join(dict.fromkeys(f"{r['strength']:+g}" for r in members))
            row["max_leak_attribute"] = max(members, key=lambda r: r["max_leak"])["max_leak_attribute"]
        return rows

    def save(self, folder) -> list[Path]:
        """Write the report's files (module docstring) into `folder`; returns their paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tables = {"summary.csv": self.summary(), "inversion.csv": self.inversion, "views.csv": self.views,
                  "editing.csv": self.edits, "leakage.csv": self.leakage, "attributes.csv": self.attributes,
                  "speed.csv": self.speed}
        files = []
        for name, rows in tables.items():
            if rows:
                write_csv(folder / name, rows)
                files.append(folder / name)
        for name, figure in self.figures.items():
            figure.save(folder / name)
            files.append(folder / name)
        (folder / "environment.json").write_text(
            json.dumps({"environment": self.environment, "settings": self.settings, "skipped": self.skipped},
                       indent=2, default=str))
        (folder / "report.md").write_text(self.to_markdown())
        files += [folder / "environment.json", folder / "report.md"]
        self.files = files
        return files
