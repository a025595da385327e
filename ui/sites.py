"""State of the Sites page: widget keys."""

from __future__ import annotations

from ui.session import wkey


def top_key() -> str:
    return wkey("sites_top")
