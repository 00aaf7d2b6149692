"""A tiny document model rendered twice: to Markdown (report.md, figures linked) and to one
self-contained HTML file (report.html, figures embedded as base64 data URIs, simple CSS)."""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.5}
h1{border-bottom:2px solid #0072B2;padding-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.8em 0;font-size:.88em}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f2f5f8}td:first-child,th:first-child{text-align:left}
tr:nth-child(even) td{background:#fafafa}figure{margin:1em 0}img{max-width:100%;height:auto}
figcaption{color:#555;font-size:.9em}code,pre{background:#f5f5f5;border-radius:3px}pre{padding:.6em;overflow-x:auto;
font-size:.85em}.caption{color:#555;font-size:.9em}.wide{overflow-x:auto;max-width:100%}
"""


class Doc:
    """Blocks: heading, paragraph, bullet list, table, figure, code."""

    def __init__(self, title: str):
        self.title = title
        self.blocks: list[tuple] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", level, text))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def bullets(self, items: list[str]) -> None:
        if items:
            self.blocks.append(("ul", list(items)))

    def table(self, headers: list[str], rows: list[list], caption: str | None = None) -> None:
        self.blocks.append(("table", list(headers), [[_cell(v) for v in r] for r in rows], caption))

    def figure(self, path: str, caption: str) -> None:
        self.blocks.append(("fig", path, caption))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    # ---- rendering ----
    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                out += ["#" * block[1] + " " + block[2], ""]
            elif kind == "p":
                out += [block[1], ""]
            elif kind == "ul":
                out += [f"- {item}" for item in block[1]] + [""]
            elif kind == "table":
                _, headers, rows, caption = block
                if caption:
                    out += [f"*{caption}*", ""]
                out.append("| " + " | ".join(headers) + " |")
                out.append("|" + "|".join(" --- " if i == 0 else " ---: " for i in range(len(headers))) + "|")
                out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
                out.append("")
            elif kind == "fig":
                out += [f"![{block[2]}]({block[1]})", "", f"*{block[2]}*", ""]
            elif kind == "code":
                out += ["```", block[1].rstrip("\n"), "```", ""]
        return "\n".join(out).rstrip("\n") + "\n"

    def html(self, base: Path) -> str:
        """HTML with every figure read from ``base / path`` and embedded."""
        parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_esc(self.title)}</title>"
                 f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{CSS}</style></head>"
                 f"<body><h1>{_inline(self.title)}</h1>"]
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                parts.append(f"<h{block[1]}>{_inline(block[2])}</h{block[1]}>")
            elif kind == "p":
                parts.append(f"<p>{_inline(block[1])}</p>")
            elif kind == "ul":
                parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block[1]) + "</ul>")
            elif kind == "table":
                _, headers, rows, caption = block
                cap = f"<p class=\"caption\">{_inline(caption)}</p>" if caption else ""
                head = "".join(f"<th>{_inline(h)}</th>" for h in headers)
                body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows)
                # a table wider than the window scrolls inside its own box instead of widening the page
                parts.append(f"{cap}<div class=\"wide\"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
                             f"</table></div>")
            elif kind == "fig":
                data = base64.b64encode((Path(base) / block[1]).read_bytes()).decode("ascii")
                parts.append(f"<figure><img alt=\"{_esc(block[2])}\" src=\"data:image/png;base64,{data}\">"
                             f"<figcaption>{_inline(block[2])}</figcaption></figure>")
            elif kind == "code":
                parts.append(f"<pre><code>{_esc(block[1])}</code></pre>")
        parts.append("</body></html>\n")
        return "\n".join(parts)


def _cell(value) -> str:
    return "" if value is None else str(value)


def _esc(text: str) -> str:
    return html.escape(str(text), quote=True)


def _inline(text: str) -> str:
    """Escape, then render the two inline marks the report uses: **bold** and `code`."""
    text = _esc(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)
