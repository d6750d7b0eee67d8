"""The operator's match-quality report as files: report.json, PNG charts and a self-contained
report.html (the charts embedded as data URIs, also written alongside).

Input is the report the linkage unit returns (``GetProjectReport``; aggregates only, see
linkage_unit/report.py). matplotlib is the optional ``[report]`` extra: without it the
command says how to install it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from protocol.errors import ConfigurationError

__all__ = ["render_report"]


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigurationError(
            "the report's charts need matplotlib: pip install 'bloomlink[report]'"
        ) from None
    return plt


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _histogram_png(plt: Any, histogram: Mapping[str, Sequence[float]], cut: float | None) -> bytes:
    edges = list(histogram["edges"])
    centres = [(low + high) / 2 for low, high in zip(edges[:-1], edges[1:], strict=True)]
    widths = [high - low for low, high in zip(edges[:-1], edges[1:], strict=True)]
    figure, axes = plt.subplots(figsize=(7, 3.6))
    axes.bar(centres, histogram["counts"], width=widths, color="#c8c8c8", label="candidate pairs")
    axes.plot(centres, histogram["expected_non_matches"], color="#1f77b4", label="model: non-match")
    axes.plot(centres, histogram["expected_matches"], color="#d62728", label="model: match")
    if cut is not None:
        axes.axvline(cut, color="black", linestyle="--", label="cut")
    axes.set_yscale("symlog", linthresh=1.0)
    axes.set_xlabel("match weight (log2 odds)")
    axes.set_ylabel("pairs")
    axes.legend(loc="upper left", fontsize="small")
    axes.set_title("Candidate pairs by match weight, with the model's fit")
    data = _png(figure)
    plt.close(figure)
    return data


def _curve_png(plt: Any, curve: Sequence[Mapping[str, float]], cut: float, *, dice: bool) -> bytes:
    cuts = [point["cut"] for point in curve]
    figure, axes = plt.subplots(figsize=(7, 3.6))
    for name, colour in (("precision", "#1f77b4"), ("recall", "#2ca02c"), ("f1", "#d62728")):
        axes.plot(cuts, [point[name] for point in curve], color=colour, marker=".", label=name)
    axes.axvline(cut, color="black", linestyle="--", label="this run's cut")
    axes.set_xlabel("Dice threshold" if dice else "match probability cut")
    axes.set_ylabel("estimated (null model, no truth)" if dice else "estimated (model, no truth)")
    lowest = min(min(point[name] for name in ("precision", "recall", "f1")) for point in curve)
    axes.set_ylim(max(0.0, lowest - 0.05), 1.005)
    axes.legend(loc="lower left")
    axes.set_title("Estimated precision, recall and F1 against the cut")
    data = _png(figure)
    plt.close(figure)
    return data


def _rates_png(plt: Any, parties: Sequence[Mapping[str, Any]]) -> bytes:
    figure, axes = plt.subplots(figsize=(7, 0.6 + 0.5 * max(len(parties), 1)))
    names = [str(item["party"]) for item in parties]
    rates = [float(item["match_rate"]) for item in parties]
    axes.barh(names, rates, color="#2ca02c")
    axes.set_xlim(0, 1)
    axes.set_xlabel("share of the party's records linked")
    axes.set_title("Match rate per party")
    data = _png(figure)
    plt.close(figure)
    return data


def _figure(value: object) -> str:
    return "unavailable" if value is None else f"{float(str(value)):.4f}"


def render_report(run_id: str, report: Mapping[str, Any], out: Path) -> list[Path]:
    """Write report.json, the PNGs and report.html under ``out``; return the paths written."""
    plt = _pyplot()
    out.mkdir(parents=True, exist_ok=True)
    document = {"run_id": run_id, **report}
    charts: dict[str, bytes] = {}
    histogram = report.get("histogram")
    scoring = str(report.get("scoring", ""))
    threshold = float(report["threshold"])
    if histogram:
        # The cut in weight space: log2(p / (1 - p)) of the probability cut.
        cut_weight = math.log2(threshold / (1 - threshold)) if 0 < threshold < 1 else None
        charts["histogram.png"] = _histogram_png(plt, histogram, cut_weight)
    if report.get("threshold_curve"):
        charts["threshold_curve.png"] = _curve_png(
            plt, report["threshold_curve"], threshold, dice=scoring == "dice"
        )
    if report.get("parties"):
        charts["match_rates.png"] = _rates_png(plt, report["parties"])
    written = []
    for name, data in charts.items():
        path = out / name
        path.write_bytes(data)
        written.append(path)
    json_path = out / "report.json"
    json_path.write_text(json.dumps(document, sort_keys=True, indent=2) + "\n", encoding="utf-8")
    written.append(json_path)
    rows = [
        ("scoring", scoring),
        ("threshold", f"{threshold:.4f} ({report['threshold_method']})"),
        ("estimated precision", _figure(report.get("estimated_precision"))),
        ("estimated recall", _figure(report.get("estimated_recall"))),
        ("estimated F1", _figure(report.get("estimated_f1"))),
        ("candidate pairs", str(report["candidate_pairs"])),
        ("accepted pairs", str(report["accepted_pairs"])),
        ("clusters", str(report["cluster_count"])),
        ("linked records", str(report["linked_record_count"])),
    ]
    party_rows = "".join(
        f"<tr><td>{html.escape(str(item['party']))}</td><td>{int(item['records'])}</td>"
        f"<td>{int(item['linked_records'])}</td><td>{float(item['match_rate']):.4f}</td></tr>"
        for item in report.get("parties", ())
    )
    completeness = report.get("completeness") or ()
    completeness_html = (
        ""
        if not completeness
        else "<h2>Field-group completeness</h2><table id='completeness'><tr><th>party</th>"
        "<th>group</th><th>records</th><th>present</th><th>share</th></tr>"
        + "".join(
            f"<tr><td>{html.escape(str(item['party']))}</td>"
            f"<td>{html.escape(str(item['group']))}</td><td>{int(item['records'])}</td>"
            f"<td>{int(item['present'])}</td>"
            f"<td>{int(item['present']) / max(int(item['records']), 1):.4f}</td></tr>"
            for item in completeness
        )
        + "</table>"
    )
    note = (
        ""
        if report.get("estimated_f1") is not None
        else "<p class='note'>This Dice run (one record-level CLK) has no fitted model and no "
        "null-model threshold (an operator's threshold, or every party deduplicated): its "
        "precision, recall and F1 cannot be estimated without ground truth.</p>"
    )
    untrusted = [str(party) for party in report.get("untrusted_models") or ()]
    if untrusted:
        # First thing the operator reads: these links are missing because the model failed.
        note = (
            "<p class='note' id='untrusted'>Warning: the Fellegi-Sunter model of "
            + html.escape(", ".join(untrusted))
            + " was not trusted (its matches differed from its non-matches on fewer than two "
            "field groups) and linked nothing: their low match rate is the model's failure, "
            "not an absence of matches (docs/quality.md).</p>" + note
        )
    images = "".join(
        f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,"
        f"{base64.b64encode(data).decode('ascii')}'></figure>"
        for name, data in charts.items()
    )
    body = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>bloomlink match-quality report, run {html.escape(run_id)}</title>"
        "<style>body{font-family:sans-serif;margin:2em;max-width:60em}"
        "table{border-collapse:collapse}td,th{border:1px solid #999;padding:0.2em 0.6em}"
        ".note{color:#a00}img{max-width:100%}</style></head><body>"
        f"<h1>Match-quality report</h1><p>Run {html.escape(run_id)}. Aggregates only: "
        "estimates come from the model, not from ground truth.</p>"
        "<table id='summary'>"
        + "".join(
            f"<tr><th>{html.escape(key)}</th><td>{html.escape(value)}</td></tr>"
            for key, value in rows
        )
        + f"</table>{note}<h2>Parties</h2><table id='parties'><tr><th>party</th>"
        "<th>records</th><th>linked</th><th>match rate</th></tr>"
        + party_rows
        + f"</table>{completeness_html}<h2>Charts</h2>{images}</body></html>\n"
    )
    html_path = out / "report.html"
    html_path.write_text(body, encoding="utf-8")
    written.append(html_path)
    return written
