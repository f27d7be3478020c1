"""The study's verdicts: each claim of `configs/study.py` judged from the arms' figure files by the
rule written there, then the table (`docs/paper_claims.md`) and the guidance plot.

A comparison names a figure and two arm references: "A" (the arm at the reference guidance),
"A@max" / "A@min" / "A@4" (at its largest / smallest / a named guidance scale), "E#16" (DALL·E's
best of 16) or a constant ("chance": the keep-rate of a random colour–shape pair; "one_layout":
entropy 0); with `versus` (two more references) it compares the two differences (first − second)
− (third − fourth), caption by caption; with `matched` (a figure) the first arm is taken at its
lowest guidance scale at least as good as the second on that figure (equal fidelity). The
difference gets a 95% bootstrap interval (seeds, then captions; a Fréchet distance over seeds
and image resamples) and a verdict (`evals.bootstrap.verdict`); a claim is reproduced when all
its comparisons are, not reproduced when any is reversed, inconclusive otherwise, and pending
while an arm it needs has no figures yet.
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from unclip_jax.demo import study_arms
from unclip_jax.evals import bootstrap

CONSTANTS = {"chance": study_arms.chance_of_reading(), "one_layout": 0.0}
PENDING = "pending"
PER_SOURCE = ("variation_kept", "variation_layouts")  # figures of the variations' sources


def guidance_key(arm: dict, reference: str, default: float) -> str:
    """The arm's guidance key named by a reference's suffix ("", "@max", "@min", "@4")."""
    scales = sorted(arm["guidance"], key=float)
    suffix = reference.partition("@")[2]
    if suffix == "max":
        return scales[-1]
    if suffix == "min":
        return scales[0]
    return suffix or f"{default:g}"


def arm_name(reference: str) -> str:
    """ "A@max" → "A", "A@4" → "A", "E#16" → "E"."""
    return reference.partition("@")[0].partition("#")[0]


def figure_table(arms: dict, reference: str, figure: str, default: float) -> np.ndarray:
    """[S, C] per seed and caption (or source); [S, R] image resamples for "fd"."""
    arm = arms[arm_name(reference)]
    if figure in PER_SOURCE:
        return np.asarray(arm["variations"][figure], np.float64)
    if "#" in reference:
        values = arm["rerank"][reference.partition("#")[2]][figure]
    else:
        values = arm["guidance"][guidance_key(arm, reference, default)][figure]
    table = np.asarray(values, np.float64)
    return table[:, 1:] if figure == "fd" else table  # fd's first value is the whole set's


def matched_reference(arms: dict, comparison: dict, default: float) -> str | None:
    """The first arm at its lowest guidance scale whose mean of the `matched` figure is at least
    the second reference's ("A@4"); None where no scale reaches it."""
    figure, name = comparison["matched"], arm_name(comparison["first"])
    target = figure_table(arms, comparison["second"], figure, default).mean()
    for key in sorted(arms[name]["guidance"], key=float):
        if np.mean(arms[name]["guidance"][key][figure]) >= target:
            return f"{name}@{key}"
    return None


def compare(arms: dict, comparison: dict, default: float, replicates: int) -> dict:
    """The difference's point estimate, 95% interval and verdict of one comparison."""
    rng = np.random.default_rng(0)
    figure = comparison["figure"]
    if comparison.get("matched"):
        first = matched_reference(arms, comparison, default)
        if first is None:
            none = dict(difference=None, interval=None, verdict=bootstrap.VERDICTS[2])
            return {**comparison, **none}
        comparison = {**comparison, "first": first}
    a = figure_table(arms, comparison["first"], figure, default)
    if comparison["second"] in CONSTANTS:
        constant = CONSTANTS[comparison["second"]]
        draws = bootstrap.bootstrap_means(a, replicates, rng) - constant
        point = a.mean() - constant
    elif comparison.get("versus"):
        third, fourth = (figure_table(arms, r, figure, default) for r in comparison["versus"])
        a = a - figure_table(arms, comparison["second"], figure, default)
        b = third - fourth
        draws = bootstrap.bootstrap_difference(a, b, replicates, rng)
        point = a.mean() - b.mean()
    else:
        b = figure_table(arms, comparison["second"], figure, default)
        if figure == "fd":
            draws = bootstrap.resampled_difference(a, b, rng)
        else:
            draws = bootstrap.bootstrap_difference(a, b, replicates, rng)
        point = a.mean() - b.mean()
    low, high = bootstrap.interval(draws)
    verdict = bootstrap.verdict((low, high), comparison["direction"], comparison["margin"])
    return {**comparison, "difference": float(point), "interval": [low, high], "verdict": verdict}


def needed_arms(claim: dict) -> set[str]:
    refs = [c[k] for c in claim["comparisons"] for k in ("first", "second")]
    refs += [r for c in claim["comparisons"] for r in (c.get("versus") or ())]
    return {arm_name(r) for r in refs if r not in CONSTANTS}


def judge(claims: list, arms: dict, default: float, replicates: int) -> list[dict]:
    """Every claim with its comparisons and verdict."""
    out = []
    for claim in claims:
        missing = sorted(needed_arms(claim) - set(arms))
        if missing:
            out.append({**claim, "verdict": PENDING, "missing_arms": missing})
            continue
        rows = [compare(arms, c, default, replicates) for c in claim["comparisons"]]
        verdicts = {row["verdict"] for row in rows}
        verdict = bootstrap.VERDICTS[2]
        if verdicts == {bootstrap.VERDICTS[0]}:
            verdict = bootstrap.VERDICTS[0]
        elif bootstrap.VERDICTS[1] in verdicts:
            verdict = bootstrap.VERDICTS[1]
        judged = {**claim, "comparisons": rows, "verdict": verdict}
        if claim.get("compute"):
            judged["compute_check"] = compute_check(arms, **claim["compute"])
            if not judged["compute_check"]["comparable"]:
                judged["verdict"] = bootstrap.VERDICTS[2]
        out.append(judged)
    return out


def training_flops(arm: dict) -> float | None:
    """The arm's training FLOPs (its stages' summed), mean over replicates; None if uncounted."""
    counted = arm.get("training_flops")
    return float(np.mean([sum(r.values()) for r in counted])) if counted else None


def compute_check(arms: dict, first: str, second: str, within: float) -> dict:
    """Whether two arms were trained at comparable compute: FLOPs ratio first / second within
    1 ± `within` (not comparable where either is uncounted)."""
    a, b = training_flops(arms[first]), training_flops(arms[second])
    ratio = a / b if a and b else None
    comparable = ratio is not None and abs(ratio - 1.0) <= within
    return dict(first=first, second=second, within=within, ratio=ratio, comparable=comparable)


def _interval_text(values: np.ndarray, figure: str, replicates: int) -> str:
    rng = np.random.default_rng(0)
    if figure == "fd":
        draws = bootstrap.resampled_means(values, rng)
    else:
        draws = bootstrap.bootstrap_means(values, replicates, rng)
    low, high = bootstrap.interval(draws)
    return f"{values.mean():.3g} [{low:.3g}, {high:.3g}]"


ARM_FIGURES = ("colour", "colour_shape", "binding", "clip_score", "diversity", "fd")


def arms_table(arms: dict, replicates: int) -> list[str]:
    """Markdown rows: each arm at each of its guidance scales, each figure with its interval,
    the sampling FLOPs per image, and the training seconds and FLOPs of its stages."""
    lines = [
        "| arm | guidance | "
        + " | ".join(ARM_FIGURES)
        + " | sampling FLOPs / image | training s | training FLOPs |",
        "|---|---|" + "---|" * (len(ARM_FIGURES) + 3),
    ]
    for name, arm in arms.items():
        # wall-clock seconds of the stages the arm's samples come from, mean over replicates
        seconds = [sum(r.values()) for r in arm.get("training_seconds", [])]
        trained = f"{np.mean(seconds):.0f}" if seconds else "–"
        flops = training_flops(arm)
        trained += f" | {flops:.3g}" if flops else " | –"
        for key in sorted(arm["guidance"], key=float):
            cells = []
            for figure in ARM_FIGURES:
                table = np.asarray(arm["guidance"][key][figure], np.float64)
                cells.append(
                    _interval_text(table[:, 1:] if figure == "fd" else table, figure, replicates)
                )
            sampled = arm.get("sampling_flops_per_image", {}).get(key)
            cells.append(f"{np.mean(sampled):.3g}" if sampled else "–")
            lines.append(f"| {name} | {key} | " + " | ".join(cells) + f" | {trained} |")
    return lines


def comparison_text(c: dict) -> str:
    """'figure first − second: difference [interval] (verdict)' of a judged comparison."""
    names = f"{c['figure']} {c['first']} − {c['second']}"
    if c.get("versus"):
        names += f" vs {c['versus'][0]} − {c['versus'][1]}"
    if c["interval"] is None:  # a matched comparison with no scale at the second's figure
        return f"{names}: no scale of {c['first']} reaches its {c['matched']} ({c['verdict']})"
    if c.get("matched"):
        names += f" (at {c['second']}'s {c['matched']} or more)"
    low, high = c["interval"]
    return f"{names}: {c['difference']:+.3g} [{low:+.3g}, {high:+.3g}] ({c['verdict']})"


def claims_table(judged: list[dict]) -> list[str]:
    """Markdown rows: one per claim, its comparisons' differences with intervals, its verdict."""
    lines = ["| claim | the paper | our figures: first − second [95% interval] | verdict |"]
    lines.append("|---|---|---|---|")
    for claim in judged:
        if claim["verdict"] == PENDING:
            figures = f"arms {', '.join(claim['missing_arms'])} not run yet"
        else:
            figures = "; ".join(comparison_text(c) for c in claim["comparisons"])
        compute = claim.get("compute_check")
        if compute:
            ratio = f"{compute['ratio']:.2f}" if compute["ratio"] else "not counted"
            figures += (
                f"; training FLOPs {compute['first']} / {compute['second']}: {ratio} "
                f"({'within' if compute['comparable'] else 'not within'} ±{compute['within']:.0%})"
            )
        lines.append(f"| {claim['name']} | {claim['paper']} | {figures} | {claim['verdict']} |")
    return lines


def guidance_plot(arms: dict, path: Path, names: tuple[str, ...] = ("A", "D")) -> None:
    """Fidelity (colour + shape) against diversity for each guidance scale of `names`: one
    line per arm, points labelled with their scale; a PNG at `path`."""
    series = {}
    for name in names:
        if name in arms:
            points = arms[name]["guidance"]
            series[name] = [
                (
                    float(np.mean(points[k]["diversity"])),
                    float(np.mean(points[k]["colour_shape"])),
                    f"{k}",
                )
                for k in sorted(points, key=float)
            ]
    line_plot(series, "diversity (1 - cos), labels: guidance", "colour + shape", path)


def rerank_plot(arms: dict, path: Path, name: str = "E") -> None:
    """DALL·E's reranking curve: colour and colour + shape of the best of N against log2 N."""
    if name not in arms:
        return
    curve = arms[name]["rerank"]
    ns = sorted(curve, key=int)
    series = {
        figure: [(float(np.log2(int(n))), float(np.mean(curve[n][figure])), f"N={n}") for n in ns]
        for figure in ("colour", "colour_shape")
    }
    line_plot(series, "log2 N (the best of N by CLIP)", "oracle accuracy", path)


def line_plot(
    series: dict[str, list[tuple[float, float, str]]], x_label: str, y_label: str, path: Path
) -> None:
    """One line per series of (x, y in [0, 1], label) points, each point labelled; a PNG."""
    size, margin = 480, 60
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    xs = [x for pts in series.values() for x, _, _ in pts] or [0.0, 1.0]
    x_low, x_high = min(xs), max(xs) + 1e-9

    def at(x: float, y: float) -> tuple[float, float]:
        u = margin + (x - x_low) / (x_high - x_low) * (size - 2 * margin)
        return u, size - margin - y * (size - 2 * margin)

    draw.rectangle([margin, margin, size - margin, size - margin], outline="black")
    draw.text((size // 2 - 60, size - margin + 20), x_label, fill="black")
    draw.text((5, margin - 30), y_label, fill="black")
    for tick in (0.0, 0.5, 1.0):
        draw.text((margin - 28, at(x_low, tick)[1] - 6), f"{tick:.1f}", fill="black")
    for x in (x_low, x_high):
        draw.text((at(x, 0.0)[0] - 12, size - margin + 4), f"{x:.3g}", fill="black")
    colours = ("#1f77b4", "#d62728", "#2ca02c")
    for k, ((name, pts), colour) in enumerate(zip(series.items(), colours, strict=False)):
        row = margin + 14 + 14 * k
        draw.line([(margin + 8, row), (margin + 24, row)], fill=colour, width=2)
        draw.text((margin + 30, row - 6), name, fill=colour)
        draw.line([at(x, y) for x, y, _ in pts], fill=colour, width=2)
        for x, y, label in pts:
            u, v = at(x, y)
            draw.ellipse([u - 4, v - 4, u + 4, v + 4], fill=colour)
            draw.text((u + 6, v + (4 if k % 2 else -16)), label, fill=colour)
    image.save(path)
