"""Small helpers for self-contained HTML reports: matplotlib figures as inline PNG."""
from __future__ import annotations

import base64
import html
import io

import matplotlib

matplotlib.use("Agg")  # reports are written on headless servers
import matplotlib.pyplot as plt


def figure_to_img(fig: plt.Figure, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}
th{{background:#f3f3f3}}td.l,th.l{{text-align:left}}img{{max-width:100%}}.muted{{color:#777}}
.train{{background:#eef8ee}}.validation{{background:#fff6e6}}.dropped{{color:#999}}{css}</style></head>
<body><h1>{title}</h1>{body}</body></html>"""


def page(title: str, body: str, css: str = "") -> str:
    """One self-contained page; ``css``: extra style rules (plain CSS, braces as they are)."""
    return PAGE.format(title=html.escape(title), body=body, css=css)
