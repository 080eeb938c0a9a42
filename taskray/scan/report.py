"""summary.json and report.html (with PNG plots) from a scan's catalog.

Reads only the handful of small columns it needs, so it stays cheap for millions of rows.
"""

from __future__ import annotations

import html
import io
from collections import Counter

import numpy as np
import pyarrow as pa

from taskray.core.runner import mark_complete
from taskray.core.storage import Store
from taskray.scan.catalog import read_catalog

SUMMARY_COLUMNS = [
    "source",
    "compressed_bytes",
    "raw_bytes",
    "n_files",
    "has_verifier",
    "verifier_kind",
    "format",
    "error",
    "has_oracle",
]


def _stats(t: dict[str, np.ndarray], mask: np.ndarray) -> dict:
    n = int(mask.sum())
    if n == 0:
        return {"n": 0}
    verified = int(t["has_verifier"][mask].sum())
    kinds = Counter(k for k, v in zip(t["verifier_kind"][mask], t["has_verifier"][mask]) if v)
    return {
        "n": n,
        "mean_compressed_kb": round(float(t["compressed_bytes"][mask].mean()) / 1024, 3),
        "mean_raw_kb": round(float(t["raw_bytes"][mask].mean()) / 1024, 3),
        "mean_files": round(float(t["n_files"][mask].mean()), 3),
        "verified": verified,
        "verifier_rate": round(verified / n, 6),
        "with_oracle": int(t["has_oracle"][mask].sum()),
        "errors": int(t["has_error"][mask].sum()),
        "kinds": dict(sorted(kinds.items())),
        "formats": dict(sorted(Counter(t["format"][mask]).items())),
    }


def summarize(table: pa.Table) -> dict:
    t = {
        name: np.asarray(table[name].to_numpy(zero_copy_only=False))
        for name in SUMMARY_COLUMNS
        if name != "error"
    }
    t["has_error"] = np.asarray(table["error"].is_valid().to_numpy(zero_copy_only=False))
    sizes = t["compressed_bytes"]
    summary = {
        "total": _stats(t, np.ones(len(sizes), dtype=bool)),
        "compressed_bytes": {
            "median": float(np.median(sizes)) if len(sizes) else 0.0,
            "p95": float(np.percentile(sizes, 95)) if len(sizes) else 0.0,
        },
        "sources": {},
    }
    for source in sorted(set(t["source"])):
        summary["sources"][source] = _stats(t, t["source"] == source)
    return summary


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plots(table: pa.Table, summary: dict, top: int = 25) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = sorted(summary["sources"], key=lambda s: -summary["sources"][s]["n"])[:top]
    out = {}

    fig, ax = plt.subplots(figsize=(9, max(3, 0.3 * len(sources))))
    ax.barh(sources[::-1], [summary["sources"][s]["n"] for s in sources[::-1]], color="#4477aa")
    ax.set_xlabel("tasks")
    ax.set_title(f"Top {len(sources)} sources by task count")
    out["top_sources.png"] = _png(fig)
    plt.close(fig)

    sizes_kb = table["compressed_bytes"].to_numpy() / 1024
    fig, ax = plt.subplots(figsize=(9, 4))
    if len(sizes_kb):
        bins = np.logspace(np.log10(max(sizes_kb.min(), 0.01)), np.log10(max(sizes_kb.max(), 0.02)), 50)
        ax.hist(sizes_kb, bins=bins, color="#66ccee")
        ax.set_xscale("log")
        med, p95 = summary["compressed_bytes"]["median"] / 1024, summary["compressed_bytes"]["p95"] / 1024
        ax.axvline(med, color="k", linestyle="--", label=f"median {med:.1f} KB")
        ax.axvline(p95, color="#ee6677", linestyle=":", label=f"p95 {p95:.1f} KB")
        ax.legend()
    ax.set_xlabel("compressed blob size (KB)")
    ax.set_ylabel("tasks")
    ax.set_title("Blob size")
    out["size_histogram.png"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, max(3, 0.3 * len(sources))))
    ax.barh(
        sources[::-1], [100 * summary["sources"][s]["verifier_rate"] for s in sources[::-1]], color="#228833"
    )
    ax.set_xlabel("% of tasks with a verifier")
    ax.set_xlim(0, 100)
    ax.set_title("Verifier rate by source")
    out["verifier_rate.png"] = _png(fig)
    plt.close(fig)

    kinds = sorted({k for s in sources for k in summary["sources"][s]["kinds"]})
    fig, ax = plt.subplots(figsize=(9, max(3, 0.3 * len(sources))))
    left = np.zeros(len(sources))
    cmap = plt.get_cmap("tab10")
    for i, kind in enumerate(kinds):
        values = np.array([summary["sources"][s]["kinds"].get(kind, 0) for s in sources[::-1]], dtype=float)
        ax.barh(sources[::-1], values, left=left[: len(values)], label=kind, color=cmap(i % 10))
        left = left + values
    if kinds:
        ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.set_xlabel("verified tasks")
    ax.set_title("Verifier kinds by source")
    out["verifier_kinds.png"] = _png(fig)
    plt.close(fig)
    return out


def _html(summary: dict, images: list[str]) -> str:
    rows = "\n".join(
        f"<tr><td>{html.escape(s)}</td><td>{v['n']:,}</td><td>{v.get('mean_compressed_kb', 0):.1f}</td>"
        f"<td>{v.get('mean_raw_kb', 0):.1f}</td><td>{v.get('mean_files', 0):.1f}</td>"
        f"<td>{100 * v.get('verifier_rate', 0):.1f}%</td><td>{v.get('errors', 0):,}</td>"
        f"<td>{html.escape(', '.join(f'{k}: {c}' for k, c in v.get('kinds', {}).items()))}</td></tr>"
        for s, v in summary["sources"].items()
    )
    total = summary["total"]
    imgs = "\n".join(f'<p><img src="plots/{name}" alt="{name}"></p>' for name in images)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>taskray scan report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child{{text-align:left}}</style>
</head><body><h1>taskray scan report</h1>
<p>{total.get("n", 0):,} tasks, {total.get("verified", 0):,} with a verifier
({100 * total.get("verifier_rate", 0):.1f}%), {total.get("with_oracle", 0):,} with an oracle,
{total.get("errors", 0):,} unreadable.</p>
{imgs}
<h2>Per source</h2><table><tr><th>source</th><th>tasks</th><th>mean KB (gz)</th><th>mean KB (raw)</th>
<th>mean files</th><th>verifier rate</th><th>errors</th><th>kinds</th></tr>
{rows}</table></body></html>
"""


def write_report(store: Store) -> dict:
    """Write plots/, report.html and (last) summary.json; return the summary."""
    table = read_catalog(store.url, SUMMARY_COLUMNS)
    summary = summarize(table)
    images = plots(table, summary)
    for name, data in images.items():
        store.write_bytes(f"plots/{name}", data)
    store.write_bytes("report.html", _html(summary, sorted(images)).encode())
    mark_complete(store, "summary.json", summary)
    return summary
