"""Markdown pages and their self-contained HTML twins, shared by run reports and sweep summaries.

A page is markdown (tables, pictures by file name); its report.html renders it with
every picture embedded as base64, so it opens offline in any browser. A metric's
direction (`minifold.metrics.direction`) is written here as "↑ higher" / "↓ lower".
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from minifold.atomic import write_text
from minifold.metrics import direction

MIME_TYPES = {
    ".png": "image/png",
    ".gif": "image/gif",
    ".jpg": "image/jpeg",
    ".svg": "image/svg+xml",
}
HTML_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f2f2f2; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; border: 1px solid #eee; }
code { background: #f4f4f4; padding: 0 0.2em; }
pre { background: #f4f4f4; padding: 0.6em; overflow-x: auto; }
"""


def better(key: str) -> str:
    """ "↑ higher" or "↓ lower" (is better) for a metric key; "" if its direction is unknown."""
    return {"higher": "↑ higher", "lower": "↓ lower"}.get(direction(key) or "", "")


def metric_title(key: str) -> str:
    """A plot title for a metric key: `test/lddt (higher is better)`."""
    way = direction(key)
    return f"{key}" + (f" ({way} is better)" if way else "")


def _inline_image(folder: Path, match: re.Match[str]) -> str:
    """An `src="..."` attribute with the picture it names as base64, if it is a local picture."""
    source = html.unescape(match.group(1))
    path = folder / source
    mime = MIME_TYPES.get(path.suffix.lower())
    if mime is None or "://" in source or not path.is_file():
        return match.group(0)
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'src="data:{mime};base64,{data}"'


def markdown_to_html(markdown: str, folder: Path, title: str) -> str:
    """A self-contained page: the markdown rendered, its pictures embedded as base64, no network."""
    from markdown_it import MarkdownIt  # rich's own dependency

    body = MarkdownIt("commonmark").enable("table").render(markdown)
    body = re.sub(r'src="([^"]+)"', lambda m: _inline_image(folder, m), body)
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{HTML_STYLE}</style></head>\n"
        f"<body>\n{body}</body></html>\n"
    )


def write_markdown_and_html(folder: Path, name: str, markdown: str, title: str) -> None:
    """`name`.md and, beside it, report.html (the same page, pictures embedded), both atomically."""
    write_text(folder / f"{name}.md", markdown)
    write_text(folder / "report.html", markdown_to_html(markdown, folder, title))


def markdown_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table's lines: a header row, then one row per list of cells."""

    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
