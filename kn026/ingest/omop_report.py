"""The OMOP import report: persons left out, and how each dictionary column was filled."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass
class ColumnReport:
    """How one dictionary column was filled."""

    column: str
    status: str  # "derived" (present, from records), "absent" (left out), "index" (PERSON / index date)
    source: str  # OMOP table(s) and concept set(s)
    n_value: int = 0  # patients with a non-NULL value
    n_true: int | None = None  # flags: patients with TRUE
    concepts: list[tuple[int, str, int]] = field(default_factory=list)  # (concept_id, name, patients)
    units: dict[str, int] = field(default_factory=dict)  # unit -> patients whose value used it
    note: str = ""

    def to_dict(self) -> dict:
        return {"column": self.column, "status": self.status, "source": self.source,
                "n_value": self.n_value, "n_true": self.n_true,
                "concepts": "; ".join(f"{cid} {name} ({n})" for cid, name, n in self.concepts),
                "units": "; ".join(f"{u} ({n})" for u, n in self.units.items()), "note": self.note}


@dataclass
class ImportReport:
    """What the OMOP import did: persons, index dates, and one line per dictionary column."""

    source: str
    cdm_version: str
    index_date: str  # "last" or an ISO date
    lookback_days: int | None  # --lookback-days: replaces every assessment window; None: the protocol's windows
    closed_world: bool
    n_persons: int = 0  # rows in the cohort
    n_source_persons: int = 0  # rows in PERSON
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> persons left out
    columns: list[ColumnReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    tables: dict[str, int] = field(default_factory=dict)  # CDM table -> rows

    def column(self, name: str) -> ColumnReport:
        for c in self.columns:
            if c.column == name:
                return c
        raise KeyError(f"{name!r} is not in the import report")

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([c.to_dict() for c in self.columns])

    def to_text(self) -> str:
        lines = [f"OMOP import from {self.source} (CDM {self.cdm_version}), index date "
                 f"{self.index_date}, assessment windows "
                 f"{'of the protocol' if self.lookback_days is None else f'{self.lookback_days} days (override)'}, "
                 f"{'closed' if self.closed_world else 'open'} world: {self.n_persons} of "
                 f"{self.n_source_persons} persons"]
        for reason, n in self.excluded.items():
            lines.append(f"  left out: {n} {reason}")
        for c in self.columns:
            if c.status == "absent":
                lines.append(f"  {c.column}: absent (n/a) - {c.note}")
                continue
            extra = f", {c.n_true} true" if c.n_true is not None else ""
            concepts = ", ".join(f"{cid} {name} ({n})" for cid, name, n in c.concepts[:5])
            more = f" +{len(c.concepts) - 5} more" if len(c.concepts) > 5 else ""
            lines.append(f"  {c.column}: {c.n_value}/{self.n_persons} with a value{extra} "
                         f"[{c.source}]" + (f" from {concepts}{more}" if concepts else "")
                         + (f"; units {', '.join(f'{u} ({n})' for u, n in c.units.items())}" if c.units else "")
                         + (f"; {c.note}" if c.note else ""))
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

