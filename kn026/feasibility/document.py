"""The feasibility report as data: its settings, its sections (published, suppressed tables) and the report.

`kn026.feasibility.report.build` fills a `Report`; `kn026.feasibility.files` and
`kn026.feasibility.slides` render it. Kept apart so the renderers need not import the
builder, nor the builder the renderers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from kn026.forecast import recruitment as rc
from kn026.report.neutralise import neutralise_formulas
from kn026.report.protection import DEFAULT_THRESHOLD
from kn026.report.workbook import HIDDEN_TEXT, Published, Table

ALL_PATIENTS = "all patients"


@dataclass(frozen=True)
class Settings:
    """What the report shows and how it is protected.

    `k`: suppression threshold (0 = off; `kn026.report.protection.CMS_THRESHOLD` = 11 for the
    CMS / PCORnet rule). `order`: criterion IDs in funnel order (empty: the scenario's,
    else the protocol's); `restrictive`: the order is "most restrictive first" (it
    tells the reader how failures rank, which the suppression takes into account).
    `population`: who is counted (filters come later). `label`: the text of a hidden cell.
    """

    k: int = DEFAULT_THRESHOLD
    order: tuple[str, ...] = ()
    order_label: str = ""
    restrictive: bool = False
    policy: str = "both"
    top: int = 12
    bound: str = "optimistic"
    population: str = ALL_PATIENTS
    label: str = HIDDEN_TEXT
    forecast: bool = True
    recruitment: rc.Plan = field(default_factory=rc.Plan)  # target, uptake, start, approach share, ...


@dataclass
class Section:
    """One published table: its suppressed cells, which columns to show and how to name them."""

    key: str
    title: str
    table: Table
    columns: dict[str, str]  # frame column -> header, in display order
    note: str = ""

    def display(self, label: str = HIDDEN_TEXT) -> pd.DataFrame:
        """Hidden cells labelled, readable headers, numbers rounded, formulas neutralised."""
        frame = self.table.labelled(label)[list(self.columns)]
        for col in frame.columns:
            frame[col] = frame[col].map(rounded)
        return neutralise_formulas(frame.rename(columns=self.columns))


@dataclass
class Report:
    """A feasibility report ready to render."""

    title: str
    about: list[tuple[str, str]]
    sections: list[Section]
    published: Published
    settings: Settings
    scenario_name: str
    labels: dict[str, str]
    texts: dict[str, str]
    order: tuple[str, ...]
    extra: dict = field(default_factory=dict)

    def section(self, key: str) -> Section | None:
        return next((s for s in self.sections if s.key == key), None)

    @property
    def k(self) -> int:
        return self.published.k


def rounded(value):
    """Numbers as published: whole counts as int, shares and percentages to 2 decimals."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)) or hasattr(value, "item"):
        try:
            v = float(value)
        except (TypeError, ValueError):
            return value
        if pd.isna(v):
            return None
        return int(v) if float(v).is_integer() and not isinstance(value, float) else round(v, 2)
    return value
