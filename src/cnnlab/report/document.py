"""A small document model rendered twice: Markdown (with image files) and self-contained HTML."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from typing import Any

FILES_FOLDER = "report_files"  # beside report.md: the images the Markdown links to


@dataclass
class Image:
    """A figure of the report: its file name, PNG bytes and caption."""

    name: str  # file name under report_files/
    png: bytes
    caption: str


@dataclass
class Document:
    """Headings, paragraphs, lists, tables and images, rendered as Markdown and as HTML."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("paragraph", text))

    def bullets(self, items: list[str]) -> None:
        if items:
            self.blocks.append(("bullets", items))

    def table(self, headers: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", (headers, rows)))

    def image(self, image: Image) -> None:
        self.blocks.append(("image", image))

    def images(self) -> list[Image]:
        return [value for kind, value in self.blocks if kind == "image"]

    def markdown(self) -> str:
        """Markdown where text is text: HTML in it is escaped, table cells keep their pipes."""
        text = _markdown_text
        lines = [f"# {text(self.title)}", ""]
        for kind, value in self.blocks:
            if kind == "heading":
                lines += [f"{'#' * value[0]} {text(value[1])}", ""]
            elif kind == "paragraph":
                lines += [text(value), ""]
            elif kind == "bullets":
                lines += [f"- {text(item)}" for item in value] + [""]
            elif kind == "table":
                headers, rows = value
                lines.append("| " + " | ".join(_cell_text(h) for h in headers) + " |")
                lines.append("|" + "|".join("---" for _ in headers) + "|")
                lines += ["| " + " | ".join(_cell_text(c) for c in row) + " |" for row in rows]
                lines.append("")
            elif kind == "image":
                caption = text(value.caption).replace("[", "\\[").replace("]", "\\]")
                lines += [f"![{caption}]({FILES_FOLDER}/{value.name})", ""]
        return "\n".join(lines)

    def html(self) -> str:
        """A whole self-contained page."""
        style = _css("body")
        return _HTML_PAGE.format(title=html.escape(self.title), style=style, body=self.html_body())

    def html_fragment(self) -> str:
        """The body alone in a `div` with its own scoped style: for a notebook's output cell."""
        style = _css(f".{FRAGMENT_CLASS}")
        return (
            f'<div class="{FRAGMENT_CLASS}">\n<style>\n{style}</style>\n{self.html_body()}\n</div>'
        )

    def html_body(self) -> str:
        """The blocks as HTML elements, images embedded as data URIs."""
        body = [f"<h1>{_inline(self.title)}</h1>"]
        for kind, value in self.blocks:
            if kind == "heading":
                level = value[0]
                anchor = re.sub(r"[^a-z0-9]+", "-", value[1].lower()).strip("-")
                body.append(f'<h{level} id="{anchor}">{_inline(value[1])}</h{level}>')
            elif kind == "paragraph":
                body.append(f"<p>{_inline(value)}</p>")
            elif kind == "bullets":
                body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in value) + "</ul>")
            elif kind == "table":
                headers, rows = value
                cells = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
                if any(headers):
                    head = "".join(f"<th>{_inline(h)}</th>" for h in headers)
                    body.append(
                        f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>"
                    )
                else:  # a list of facts: name, value
                    body.append(f'<table class="facts"><tbody>{cells}</tbody></table>')
            elif kind == "image":
                data = base64.b64encode(value.png).decode("ascii")
                alt = html.escape(value.caption)
                body.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
                    f"<figcaption>{_inline(value.caption)}</figcaption></figure>"
                )
        return "\n".join(body)


_NUMBER = re.compile(r"[-+–]?[\d.,]+(e[-+]?\d+)?( ± [\d.,]+)?( \(\d+\))?|–")


def _cell(text: str) -> str:
    """A table cell; numbers (and mean ± std) align right."""
    numeric = ' class="number"' if _NUMBER.fullmatch(text) else ""
    return f"<td{numeric}>{_inline(text)}</td>"


def _inline(text: str) -> str:
    """Escape, then render the Markdown the report uses: `code`, **bold** and *emphasis*.

    A backslash-escaped character (`literal` text) is that character, never markup.
    """
    protected = _ESCAPED.sub(lambda match: f"\x00{ord(match.group(1))}\x00", text)
    escaped = html.escape(protected)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    escaped = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)
    escaped = re.sub(r"(?<![*\w])\*([^*\s][^*]*)\*(?![*\w])", r"<em>\1</em>", escaped)
    return re.sub("\x00(\\d+)\x00", lambda match: html.escape(chr(int(match.group(1)))), escaped)


# Markdown's inline punctuation; `literal` escapes it, `_inline` honours the escapes.
_MARKUP = "\\`*_[]<>#|~!"
_ESCAPED = re.compile(r"\\([" + re.escape(_MARKUP) + "])")


def literal(text: object) -> str:
    """Text from data (a class name, a file name) as plain text on one line in Markdown and
    HTML alike: its Markdown punctuation escaped, line breaks as spaces."""
    plain = " ".join(str(text).split("\n"))
    return "".join("\\" + character if character in _MARKUP else character for character in plain)


FRAGMENT_CLASS = "cnnlab-report"  # the wrapper of `Document.html_fragment`

# (selector, declarations); "ROOT" is `body` in a page and the wrapper's class in a fragment.
_STYLE = (
    (
        "ROOT",
        'font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f;'
        " max-width: 980px; margin: 2rem auto; padding: 0 1.25rem; line-height: 1.5;",
    ),
    ("h1", "font-size: 1.9rem; margin-bottom: .25rem;"),
    ("h2", "border-bottom: 2px solid #e5e5ea; padding-bottom: .25rem; margin-top: 2.5rem;"),
    ("h3", "margin-top: 1.75rem;"),
    (
        "table",
        "border-collapse: collapse; margin: 1rem 0; font-size: .92rem;"
        " font-variant-numeric: tabular-nums; display: block; max-width: 100%; overflow-x: auto;",
    ),
    ("th, td", "border: 1px solid #d2d2d7; padding: .3rem .6rem; text-align: left;"),
    ("th", "text-align: center; background: #f5f5f7;"),
    ("td.number", "text-align: right;"),
    ("td", "white-space: nowrap;"),
    ("td:last-child", "white-space: normal;"),
    ("tbody tr:nth-child(even)", "background: #fafafa;"),
    ("table.facts td", "text-align: left; white-space: normal;"),
    (
        "table.facts td:first-child",
        "font-weight: 600; background: #f5f5f7; white-space: nowrap;",
    ),
    ("figure", "margin: 1.25rem 0; text-align: center;"),
    ("img", "max-width: 100%; height: auto;"),
    ("figcaption", "color: #6e6e73; font-size: .9rem;"),
    ("code", "background: #f5f5f7; padding: 0 .25rem; border-radius: 3px; font-size: .9em;"),
)


def _css(root: str) -> str:
    """The style sheet with every selector under `root` (a page's body or a fragment's div)."""
    rules = []
    for selectors, declarations in _STYLE:
        scoped = ", ".join(
            root if selector == "ROOT" else f"{root} {selector}"
            for selector in (part.strip() for part in selectors.split(","))
        )
        rules.append(f"{scoped} {{ {declarations} }}")
    return "\n".join(rules) + "\n"


_HTML_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
{style}</style>
</head>
<body>
{body}
</body>
</html>
"""


def _markdown_text(text: str) -> str:
    """Text for Markdown: raw HTML (from a study's name or description) shows as text.

    Only what Markdown would take for HTML is escaped: a '<' that opens a tag, comment or
    declaration, and a '&' that starts an entity; "p < 0.05" stays as it is.
    """
    text = re.sub(r"&(?=#?\w+;)", "&amp;", str(text))
    return re.sub(r"(?<!\\)<(?=[A-Za-z/!?])", "&lt;", text).replace("\n", " ")


def _cell_text(text: str) -> str:
    return re.sub(r"(?<!\\)\|", r"\|", _markdown_text(text))  # `literal` escaped its own
