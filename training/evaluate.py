"""The evaluation report of a trained model: JSON and a self-contained HTML page with SVG plots.

Metrics on the held-out test rows (the latest by time): AUC, log loss, Brier score, a calibration
curve (10 quantile bins: mean predicted vs observed rate), lift at the top k% (the conversion rate
among the k% highest scores over the overall rate). The same metrics for the previous model on the
same rows, and for the simulator's true propensity when it is known (the ceiling no model can beat).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score, roc_curve

TOP_K = (0.01, 0.05, 0.10, 0.20)
BINS = 10


def metrics(y: np.ndarray, p: np.ndarray) -> dict:
    y = np.asarray(y, dtype=np.int8)
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    both = 0 < y.sum() < len(y)
    order = np.argsort(-p, kind="stable")
    rate = y.mean() if len(y) else float("nan")
    lift = {}
    for k in TOP_K:
        n = max(1, int(round(k * len(y))))
        lift[f"{int(k * 100)}%"] = round(float(y[order[:n]].mean() / rate), 3) if rate > 0 else None
    edges = np.quantile(p, np.linspace(0, 1, BINS + 1)) if len(p) else np.zeros(BINS + 1)
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, BINS - 1)
    curve = [{"predicted": round(float(p[which == b].mean()), 5), "observed": round(float(y[which == b].mean()), 5),
              "n": int((which == b).sum())} for b in range(BINS) if (which == b).any()]
    return {
        "n": int(len(y)), "positives": int(y.sum()), "base_rate": round(float(rate), 5),
        "auc": round(float(roc_auc_score(y, p)), 4) if both else None,
        "logloss": round(float(log_loss(y, p, labels=[0, 1])), 5) if len(y) else None,
        "brier": round(float(np.mean((p - y) ** 2)), 6) if len(y) else None,
        "mean_predicted": round(float(p.mean()), 5) if len(y) else None,
        "lift": lift, "calibration": curve,
    }


def report(y: np.ndarray, scores: dict[str, np.ndarray | None], info: dict) -> dict:
    """{'info': ..., 'metrics': {name: metrics}} for every named score that is given (model, previous, truth)."""
    return {"info": info, "metrics": {name: metrics(y, p) for name, p in scores.items() if p is not None},
            "_roc": {name: _roc(y, p) for name, p in scores.items() if p is not None}}


def _roc(y, p, points: int = 60) -> list[tuple[float, float]]:
    if not 0 < np.sum(y) < len(y):
        return []
    fpr, tpr, _ = roc_curve(y, p)
    idx = np.unique(np.linspace(0, len(fpr) - 1, points).astype(int))
    return [(round(float(fpr[i]), 4), round(float(tpr[i]), 4)) for i in idx]


COLORS = {"model": "#1f77b4", "previous": "#ff7f0e", "truth": "#2ca02c"}


def _svg(title: str, series: dict[str, list[tuple[float, float]]], xmax: float, ymax: float, xlabel: str,
         ylabel: str) -> str:
    w, h, m = 360, 300, 40
    sx = lambda x: m + (w - 2 * m) * x / xmax  # noqa: E731
    sy = lambda y: h - m - (h - 2 * m) * y / ymax  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-size="11">',
             f'<text x="{w / 2}" y="16" text-anchor="middle" font-weight="bold">{html.escape(title)}</text>',
             f'<rect x="{m}" y="{m}" width="{w - 2 * m}" height="{h - 2 * m}" fill="none" stroke="#999"/>',
             f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(min(xmax, ymax))}" y2="{sy(min(xmax, ymax))}" '
             'stroke="#ccc" stroke-dasharray="4"/>',
             f'<text x="{w / 2}" y="{h - 8}" text-anchor="middle">{html.escape(xlabel)}</text>',
             f'<text x="12" y="{h / 2}" transform="rotate(-90 12 {h / 2})" text-anchor="middle">'
             f'{html.escape(ylabel)}</text>',
             f'<text x="{m}" y="{h - m + 14}">0</text><text x="{w - m}" y="{h - m + 14}" text-anchor="end">'
             f'{xmax:.3g}</text><text x="{m - 4}" y="{m + 4}" text-anchor="end">{ymax:.3g}</text>']
    for i, (name, pts) in enumerate(series.items()):
        color = COLORS.get(name, "#333")
        if pts:
            path = " ".join(f"{sx(x):.1f},{sy(min(y, ymax)):.1f}" for x, y in pts)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
            parts += [f'<circle cx="{sx(x):.1f}" cy="{sy(min(y, ymax)):.1f}" r="2.5" fill="{color}"/>'
                      for x, y in pts] if len(pts) <= 20 else []
        parts.append(f'<text x="{m + 8}" y="{m + 14 + 13 * i}" fill="{color}">{html.escape(name)}</text>')
    return "\n".join(parts + ["</svg>"])


def write(rep: dict, out_dir: Path) -> tuple[Path, Path]:
    """report.json and report.html in out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    roc = rep.get("_roc", {})
    public = {k: v for k, v in rep.items() if not k.startswith("_")}
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(public, indent=2) + "\n")
    ms = rep["metrics"]
    cal = {n: [(c["predicted"], c["observed"]) for c in m["calibration"]] for n, m in ms.items()}
    top = max([max(x, y) for pts in cal.values() for x, y in pts] + [1e-3]) * 1.1
    rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{m['auc']}</td><td>{m['logloss']}</td><td>{m['brier']}</td>"
        f"<td>{m['mean_predicted']}</td><td>{m['base_rate']}</td>"
        + "".join(f"<td>{v}</td>" for v in m["lift"].values()) + "</tr>" for n, m in ms.items())
    heads = "".join(f"<th>lift top {k}</th>" for k in next(iter(ms.values()))["lift"]) if ms else ""
    info = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(json.dumps(v))}</td></tr>"
                   for k, v in rep["info"].items())
    truth_note = ('<p>"truth" is the simulator\'s hidden propensity: the ceiling no model can beat.</p>'
                  if "truth" in ms else "<p>No true propensity is known for these rows (only a simulated world "
                  "has one: <code>rta simulate loop</code>), so there is no ceiling row.</p>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Model report</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 8px;border-bottom:1px solid #ddd}}</style></head>
<body><h1>Model report: {html.escape(str(rep['info'].get('model_version', '')))}</h1>
<h2>Test rows (latest by time)</h2><table><tr><th>scores</th><th>AUC</th><th>log loss</th><th>Brier</th>
<th>mean predicted</th><th>observed rate</th>{heads}</tr>{rows}</table>
{truth_note}
{_svg("Calibration (<= 10 quantile bins; tied scores share one)", cal, top, top, "mean predicted", "observed rate")}
{_svg("ROC", roc, 1.0, 1.0, "false positive rate", "true positive rate")}
<h2>Training</h2><table>{info}</table></body></html>
"""
    html_path = out_dir / "report.html"
    html_path.write_text(page)
    return json_path, html_path
