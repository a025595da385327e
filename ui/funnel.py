"""State of the Funnel page: widget keys and the memoised overlap table."""

from __future__ import annotations

from ui.results import ckey
from ui.scenarios import active_name
from ui.session import memo, wkey


def order_key(mode: str) -> str:
    """The funnel-order control's key; with the mode in it, a hand reorder redraws the control."""
    return wkey("order_mode", active_name(), mode)


def overlap_top_key() -> str:
    return wkey("overlap_top")


def overlap_bound_key() -> str:
    return wkey("overlap_bound")


def compare_all_key() -> str:
    return wkey("compare_all")


def combinations(ctx, res, top: int, bound: str):
    """The most frequent fail / unknown combinations, once per engine, scenario, order and view."""
    return memo(("combos", *ckey(ctx, top, bound)), lambda: res.combinations(top, bound))
