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

Plots are plain PIL drawings from preim3d.plots.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

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
    return [
        {**dict(zip(by, group)), "photos": len(members), **{k: mean_of(members, k) for k in keys}}
        for group, members in groups.items()
    ]


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
        add(
            "consistency",
            "identity to input, worst view",
            min((r["identity_to_input"] for r in self.views), default=None),
        )
        add("consistency", "identity between views, mean", mean_of(self.views, "identity_to_views"))
        for kind in ("raw", "final"):
            add(
                "consistency",
                f"reprojection error {kind} (8-bit L1)",
                mean_of(self.views, f"reprojection_{kind}"),
            )
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
        out = [
            "# preim3d evaluation",
            "",
            f"{len(self.photos)} photo(s) evaluated"
            + (f" ({len(self.skipped)} photo(s) or edit(s) skipped)" if self.skipped else "")
            + f" on {env.get('device')} ({env.get('device_name')}), {env.get('date')}. "
            f"Weights: {env.get('weights')}. Identity model: {settings.get('identity_model')}.",
            "",
            "## Summary",
            "",
            markdown_table(self.summary(), {"section": "section", "metric": "metric", "value": "value"}),
            "",
        ]
        out += [
            "## Inversion",
            "",
            "The aligned input crop against the reconstruction rendered from the camera estimated from the "
            "photo (the crop is resized to the render's size). MSE in [0, 1] units, PSNR in dB, SSIM, LPIPS "
            f"(AlexNet; {settings.get('lpips') or 'available'}), identity = cosine similarity of the "
            "identity embeddings.",
            "",
            markdown_table(
                self.inversion
                + [
                    {
                        "photo": "**mean**",
                        **{
                            k: mean_of(self.inversion, k)
                            for k in ("mse", "psnr", "ssim", "lpips", "identity")
                        },
                    }
                ],
                {
                    "photo": "photo",
                    "yaw_deg": "yaw°",
                    "pitch_deg": "pitch°",
                    "mse": "MSE",
                    "psnr": "PSNR",
                    "ssim": "SSIM",
                    "lpips": "LPIPS",
                    "identity": "identity",
                    "face_detected": "face found in render",
                },
            ),
            "",
        ]
        view_keys = (
            "identity_to_input",
            "identity_to_views",
            "reprojection_raw",
            "covisible_raw",
            "reprojection_final",
            "covisible_final",
            "face_detected",
        )
        out += [
            "## 3D consistency",
            "",
            "Novel views of each inverted code on a yaw/pitch grid (degrees; pitch in EG3D's polar-angle "
            "offset, negative = camera above), averaged over photos. Identity: to the input crop, and the "
            "mean to the other views. Reprojection: each view's pixels are lifted to 3-D with its rendered "
            "depth and looked up in the frontal view; the error is the mean absolute RGB difference (8-bit "
            f"levels) on the co-visible pixels (depth test tolerance {settings.get('tolerance')} world "
            "units), on the raw neural-resolution render and on the super-resolved image (depth upsampled "
            "bilinearly).",
            "",
            markdown_table(
                grouped_means(self.views, ("yaw_deg", "pitch_deg"), view_keys),
                {
                    "yaw_deg": "yaw°",
                    "pitch_deg": "pitch°",
                    "identity_to_input": "ID to input",
                    "identity_to_views": "ID to other views",
                    "reprojection_raw": "reproj. raw",
                    "covisible_raw": "co-visible raw",
                    "reprojection_final": "reproj. final",
                    "covisible_final": "co-visible final",
                    "face_detected": "face found (share)",
                },
            ),
            "",
            *self._figure("identity_curve.png", "identity per view"),
            *self._figure("reprojection_curve.png", "reprojection error per view"),
        ]
        out += ["## Editing precision", ""]
        if self.edits:
            edit_keys = ("target_shift", "mean_leak", "max_leak", "identity", "step")
            out += [
                "Each edit alone, plain (w + strength·d) and precise (holding "
                f"{settings.get('hold_description')}). Target shift = score change of the target / strength "
                "(1 = as asked); leakage = |score change| of every other attribute / strength (mean, and the "
                "largest with its attribute); identity = similarity of the edited render to the "
                "reconstruction (same camera); step = |Δw|. A plain edit's latent leakage into b is the "
                "cosine of the two directions, the same for every photo; the identity column is where photos "
                "differ.",
                "",
                markdown_table(
                    self._edit_table(edit_keys),
                    {
                        "edit": "edit",
                        "strength": "strength",
                        "mode": "mode",
                        "target_shift": "target shift",
                        "mean_leak": "mean leakage",
                        "max_leak": "max leakage",
                        "max_leak_attribute": "most leaked into",
                        "identity": "identity",
                        "step": "step",
                    },
                ),
                "",
                *self._figure("leakage.png", "leakage"),
            ]
        else:
            out += ["Nothing measured: the weights hold no editing directions.", ""]
        if self.attributes:
            out += [
                "## Attribute scores of the inverted codes against the labels",
                "",
                "AUC of the attribute's score s_a(w) between the photos labelled with and without it "
                "(0.5 = no separation, 1 = perfect).",
                "",
                markdown_table(
                    self.attributes,
                    {"attribute": "attribute", "positives": "with", "negatives": "without", "auc": "AUC"},
                ),
                "",
            ]
        out += [
            "## Speed",
            "",
            f"Milliseconds per call on {env.get('device')} ({env.get('device_name')}): median of "
            f"{settings.get('repeats')} timed calls after one untimed call (`first call`).",
            "",
            markdown_table(
                self.speed,
                {"stage": "stage", "ms": "median ms", "min_ms": "fastest ms", "cold_ms": "first call ms"},
            ),
            "",
            "## Examples",
            "",
            *self._figure("examples.png", "examples"),
        ]
        if self.skipped:
            out += [
                "## Skipped",
                "",
                markdown_table(
                    [{"what": k, "reason": v} for k, v in self.skipped.items()],
                    {"what": "photo or edit", "reason": "reason"},
                ),
                "",
            ]
        out += [
            "## Environment",
            "",
            markdown_table([{"key": k, "value": v} for k, v in env.items()], {"key": "", "value": ""}),
            "",
        ]
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
        tables = {
            "summary.csv": self.summary(),
            "inversion.csv": self.inversion,
            "views.csv": self.views,
            "editing.csv": self.edits,
            "leakage.csv": self.leakage,
            "attributes.csv": self.attributes,
            "speed.csv": self.speed,
        }
        files = []
        for name, rows in tables.items():
            if rows:
                write_csv(folder / name, rows)
                files.append(folder / name)
        for name, figure in self.figures.items():
            figure.save(folder / name)
            files.append(folder / name)
        (folder / "environment.json").write_text(
            json.dumps(
                {"environment": self.environment, "settings": self.settings, "skipped": self.skipped},
                indent=2,
                default=str,
            )
        )
        (folder / "report.md").write_text(self.to_markdown())
        files += [folder / "environment.json", folder / "report.md"]
        self.files = files
        return files
