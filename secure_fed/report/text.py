"""HTML text helpers of the report: escaping (quotes too) and number, byte and id formatting."""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from typing import Any

from secure_fed.report.load import _num


# -- formatting ------------------------------------------------------------------------------
def esc(v: Any) -> str:
    """HTML-escape ``str(v)`` (quotes too: safe in text and in attribute values)."""
    return html.escape(str(v), quote=True)


def fmt(v: Any, digits: int = 4) -> str:
    """A value for display, escaped: numbers to ``digits`` significant digits, null as a dash."""
    if v is None:
        return "&ndash;"
    if isinstance(v, float):
        return esc(f"{v:.{digits}g}")
    if isinstance(v, dict | list):
        return esc(json.dumps(v, sort_keys=True))
    return esc(v)


def fmt_bytes(v: Any) -> str:
    x = _num(v)
    if x is None:
        return "&ndash;"
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if abs(x) >= size:
            return f"{x / size:.2f} {unit}"
    return f"{x:.0f} B"


def ids(v: Any, limit: int = 12) -> str:
    """A list of client ids, shortened after ``limit`` entries."""
    if not isinstance(v, list):
        return "&ndash;"
    items = v
    shown = ", ".join(str(i) for i in items[:limit])
    more = f", ... ({len(items)} in all)" if len(items) > limit else ""
    return esc(shown + more) if items else "none"


def kv_table(rows: Iterable[tuple[str, Any]], cls: str = "kv") -> str:
    """Two-column table; keys and values are escaped here."""
    body = "".join(f"<tr><th scope='row'>{esc(k)}</th><td>{fmt(v)}</td></tr>" for k, v in rows)
    return f"<table class='{cls}'>{body}</table>"


# -- plots ---------------------------------------------------------------------------------


def section(sid: str, title: str, body: str) -> str:
    """One report section: an id for links, an escaped title, and its HTML body."""
    return f"<section id='{sid}'><h2>{esc(title)}</h2>{body}</section>"
