"""``make report``: ``results/index.html``, a static page (no server; opens from disk) with every
table (ours beside the paper's, large differences highlighted), its plots and provenance footer,
the benchmark figures and the reliability figures."""

from __future__ import annotations

import html
import re
from pathlib import Path

import markdown

from runners.records import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
th { background: #f2f2f2; } td:first-child, td:nth-child(2) { text-align: left; }
td.far { background: #fdd; } td.near { background: #dfd; }
img { max-width: 100%; border: 1px solid #eee; } nav a { margin-right: 1em; }
section { border-top: 2px solid #888; margin-top: 2em; }
"""


def highlight(body: str) -> str:
    """Colour the 'diff' cells: within 5% of the paper green, beyond 25% red."""

    def mark(match: re.Match) -> str:
        value = abs(float(match.group(1)))
        css = "near" if value <= 5 else "far" if value > 25 else ""
        return f'<td class="{css}">{match.group(0)[4:]}' if css else match.group(0)

    return re.sub(r"<td>([+-]\d+(?:\.\d+)?)%</td>", mark, body)


def section(path: Path, anchor: str) -> str:
    body = markdown.markdown(path.read_text(), extensions=["tables"])
    return f'<section id="{anchor}">{highlight(body)}</section>'


def build(results: Path = RESULTS) -> Path:
    tables = sorted(results.glob("table_*.md"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
    extras = [p for p in (results / "bench" / "summary.md", results / "reliability.md") if p.exists()]
    nav = " ".join(f'<a href="#{p.stem}">{html.escape(p.stem.replace("_", " "))}</a>' for p in tables + extras)
    parts = [section(p, p.stem) for p in tables + extras]
    missing = "" if tables else "<p>No tables yet: run <code>make reproduce-table-N</code>.</p>"
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>optbench results</title><style>{STYLE}"
            f"</style></head><body><h1>optbench results</h1><nav>{nav}</nav>{missing}{''.join(parts)}</body></html>")
    out = results / "index.html"
    atomic_write_text(out, page)
    return out


if __name__ == "__main__":
    print("wrote", build().relative_to(ROOT))
