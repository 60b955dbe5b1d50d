"""A report as a list of sections, and its two serializers: Markdown and a self-contained HTML page.

The report's content is built once (:class:`Section` records); :func:`to_markdown` and :func:`to_html`
only render it, so the two files always say the same thing. The HTML page inlines plotly.js once and
needs no network to open.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
.note { color: #555; }
.figure { overflow-x: auto; }
"""


@dataclass(frozen=True)
class Section:
    """One part of a report.

    Attributes:
        title: Heading; empty for the opening part.
        text: Paragraphs or list items (Markdown-style ``**bold**`` and backticks are kept as is).
        headers: Table headers (no table when empty).
        rows: Table rows, cells as text.
        figures: Figure titles shown in this section (PNG in Markdown, interactive in HTML).
        bullets: Render ``text`` as a list.
    """

    title: str
    text: Sequence[str] = ()
    headers: Sequence[str] = ()
    rows: Sequence[Sequence[str]] = ()
    figures: Sequence[str] = field(default_factory=tuple)
    bullets: bool = False


def to_markdown(title: str, sections: Sequence[Section], png: Mapping[str, str]) -> str:
    """Render the report as Markdown; figures link the PNG files named in ``png``."""
    lines = [f"# {title}", ""]
    for section in sections:
        if section.title:
            lines += [f"## {section.title}", ""]
        for paragraph in section.text:
            lines.append(f"- {paragraph}" if section.bullets else paragraph)
            if not section.bullets:
                lines.append("")
        if section.bullets and section.text:
            lines.append("")
        if section.headers:
            lines.append("| " + " | ".join(section.headers) + " |")
            lines.append("|" + "---|" * len(section.headers))
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in section.rows]
            lines.append("")
        for name in section.figures:
            if name in png:
                lines += [f"![{name}]({png[name]})", ""]
    return "\n".join(lines).rstrip() + "\n"


def to_html(title: str, sections: Sequence[Section], figures: Mapping[str, str], plotly_js: str) -> str:
    """Render the report as one HTML page; ``figures`` maps titles to plotly HTML fragments."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        if section.title:
            body.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.bullets and section.text:
            body.append("<ul>" + "".join(f"<li>{_inline(p)}</li>" for p in section.text) + "</ul>")
        else:
            body += [f"<p>{_inline(p)}</p>" for p in section.text]
        if section.headers:
            head = "".join(f"<th>{html.escape(h)}</th>" for h in section.headers)
            rows = "".join(
                "<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in section.rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        for name in section.figures:
            if name in figures:
                body.append(f"<div class=\"figure\">{figures[name]}</div>")
    script = f"<script type=\"text/javascript\">{plotly_js}</script>" if plotly_js else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style>{script}</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _md_cell(cell: str) -> str:
    # One table row per line: a cell's own pipes and line breaks would split it.
    return " ".join(str(cell).replace("|", "\\|").split())


def _html_cell(cell: str) -> str:
    text = str(cell)
    numeric = text[:1].isdigit() or (text[:1] == "-" and text[1:2].isdigit())
    return f"<td class=\"num\">{html.escape(text)}</td>" if numeric else f"<td>{_inline(text)}</td>"


def _inline(text: str) -> str:
    """Escape text, then turn Markdown's ``**bold**`` and backticks into tags."""
    escaped = html.escape(str(text))
    parts = escaped.split("**")
    escaped = "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))
    parts = escaped.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
