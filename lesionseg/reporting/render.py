"""Rendering of the sweep report's tables: Markdown, and one self-contained HTML page.

The page has no external resource: figures are embedded as base64 PNG (`data:` URIs), styles inline, so it
can be mailed or archived as one file and opened in any browser.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field


@dataclass
class Table:
    """A titled table whose cells are `(text, bold)`: rendered the same in Markdown and HTML."""

    title: str
    note: str
    columns: list[str]
    rows: list[list[tuple[str, bool]]] = field(default_factory=list)


def render_markdown_table(table: Table) -> str:
    def cell(text: str, bold: bool) -> str:
        text = text.replace("|", "\\|")
        return f"**{text}**" if bold else text

    lines = ["| " + " | ".join(table.columns) + " |", "| " + " | ".join("---" for _ in table.columns) + " |"]
    lines += ["| " + " | ".join(cell(t, b) for t, b in row) + " |" for row in table.rows]
    return "\n".join(lines)


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 78em;
       padding: 0 1em; color: #222; }
div.scroll { overflow-x: auto; max-width: 100%; margin: 0.5em 0 1.5em; }
table { border-collapse: collapse; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; white-space: nowrap; }
th { background: #f2f2f2; }
td:first-child, th:first-child { text-align: left; }
p.note { color: #555; max-width: 60em; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
section.answer { background: #f5f8fc; border: 1px solid #cfdcec; border-radius: 6px; padding: 0.2em 1.2em; }
section.answer li { margin: 0.3em 0; max-width: 70em; }
section.answer figure { margin: 0.5em 0 1em; }
section.answer figure img, section.answer + figure img { width: 50em; }  /* a laptop's first screen */
figcaption { color: #444; margin-top: 0.3em; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.85em; }
"""


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "\n".join(
        "<tr>" + "".join(f"<td><strong>{html.escape(t)}</strong></td>" if b else f"<td>{html.escape(t)}</td>"
                         for t, b in row) + "</tr>"
        for row in table.rows
    )
    return (f"<h2>{html.escape(table.title)}</h2>\n<p class=\"note\">{html.escape(table.note)}</p>\n"
            f"<div class=\"scroll\"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table></div>")


def _figure(name: str, png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure id="{html.escape(name)}"><img alt="{html.escape(name)}: {html.escape(caption)}" '
            f'src="data:image/png;base64,{data}">'
            f"<figcaption><code>{html.escape(name)}</code> — {html.escape(caption)}</figcaption></figure>")


def render_html(
    title: str,
    tables: list[Table],
    best: dict[str, str],
    figures: dict[str, tuple[bytes, str]],
    config_yaml: str,
    missing: list[str],
    notes: list[str],
    labels: dict[str, str],
    verdict: tuple[str, list[str]] | None = None,
    opening: tuple[str, list[str], str] | None = None,
    after_opening: str | None = None,
) -> str:
    """The whole report page. `figures`: file name → (PNG bytes, caption); `best`: metric → configuration;
    `opening`: (title, sentences, figure name) shown first, the figure with them rather than with the rest;
    `after_opening`: a figure shown right after them (the pictures of the cases).
    Wide tables scroll inside their own box, so the page itself never runs wider than the window."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if missing:
        parts.append(f"<p><strong>Missing runs (not finished, not counted):</strong> "
                     f"{html.escape(', '.join(missing))}</p>")
    shown_first, early = None, []
    if opening is not None:
        heading, lines, shown_first = opening
        parts.append(f'<section class="answer"><h2>{html.escape(heading)}</h2>\n<ul>'
                     + "".join(f"<li>{html.escape(v)}</li>" for v in lines) + "</ul>"
                     + (_figure(shown_first, *figures[shown_first]) if shown_first in figures else "")
                     + "</section>")
    early = [name for name in (shown_first, after_opening) if name in figures]
    if after_opening in figures:
        parts.append(_figure(after_opening, *figures[after_opening]))
    if verdict is not None:
        title, lines = verdict
        parts.append(f"<h2>{html.escape(title)}</h2>\n<ul>" + "".join(f"<li>{html.escape(v)}</li>" for v in lines)
                     + "</ul>")
    parts += [_html_table(t) for t in tables]
    if notes:
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    if best:
        items = "".join(f"<li>{html.escape(labels.get(m, m))}: {html.escape(b)}</li>" for m, b in best.items())
        parts.append(f"<h2>Best per-case mean per metric</h2>\n<ul>{items}</ul>")
    parts.append("<h2>Figures</h2>")
    for name, (png, caption) in figures.items():
        if name in early:
            parts.append(f'<p><a href="#{html.escape(name)}"><code>{html.escape(name)}</code></a>: at the top, '
                         "with the answer.</p>")
        else:
            parts.append(_figure(name, png, caption))
    parts += ["<h2>Sweep configuration (sweep.yaml)</h2>", f"<pre>{html.escape(config_yaml)}</pre>",
              "</body></html>"]
    return "\n".join(parts) + "\n"
