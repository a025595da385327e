"""The SDTM import report: domains read, each subject's index date, and how each column was filled."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pandas as pd


@dataclass
class SdtmColumn:
    """How one dictionary column was filled from SDTM."""

    column: str
    status: str  # "derived" (present), "absent" (left out: rules needing it are n/a), "index" (DM / index date)
    source: str = ""  # domains and test codes (or terms) searched
    window: str = ""  # the assessment window or event look-back applied
    n_value: int = 0  # patients with a value
    n_true: int | None = None  # flags: patients with true
    n_stale: int = 0  # patients whose only value is dated before the window (left NULL, in stale_columns)
    n_after: int = 0  # patients whose only value is dated after the index date (left NULL)
    units: Counter = field(default_factory=Counter)  # unit as recorded -> records of the searched test codes
    conversions: dict[str, str] = field(default_factory=dict)  # unit -> factor applied to the values taken
    skipped: Counter = field(default_factory=Counter)  # reason -> records not used
    terms: Counter = field(default_factory=Counter)  # matched MH / CM / PR term -> patients
    note: str = ""

    def to_dict(self) -> dict:
        def join(c) -> str:
            return "; ".join(f"{k} ({v})" for k, v in c.items())

        return {"column": self.column, "status": self.status, "source": self.source, "window": self.window,
                "n_value": self.n_value, "n_true": self.n_true, "n_stale": self.n_stale, "n_after": self.n_after,
                "units": join(self.units), "conversions": "; ".join(f"{u} {f}" for u, f in self.conversions.items()),
                "skipped": join(self.skipped), "terms": join(self.terms), "note": self.note}


@dataclass
class SdtmReport:
    """What the SDTM import did: domains, index dates per subject, and one line per dictionary column."""

    source: str
    index_date: str  # "first-dose", "screening" or an ISO date
    lookback_days: int | None  # --lookback-days (replaces every assessment window); None: the protocol's
    closed_world: bool
    domains: dict[str, str] = field(default_factory=dict)  # domain -> "lb.xpt (SAS transport, 120 rows)"
    not_found: list[str] = field(default_factory=list)  # domains the importer reads that the study lacks
    ignored: list[str] = field(default_factory=list)  # domains present but not read
    subjects: list[tuple[str, str | None, str]] = field(default_factory=list)  # (USUBJID, index date, its source)
    excluded: dict[str, list[str]] = field(default_factory=dict)  # reason -> USUBJIDs left out
    columns: list[SdtmColumn] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def n_subjects(self) -> int:
        return sum(1 for _, d, _ in self.subjects if d is not None)

    def column(self, name: str) -> SdtmColumn:
        for c in self.columns:
            if c.column == name:
                return c
        raise KeyError(f"{name!r} is not in the import report")

    def index_sources(self) -> Counter:
        return Counter(src for _, d, src in self.subjects if d is not None)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([c.to_dict() for c in self.columns])

    def subjects_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.subjects, columns=["patient_id", "index_date", "index_source"])

    def to_text(self) -> str:
        how = "the protocol's" if self.lookback_days is None else f"{self.lookback_days} days (override)"
        lines = [f"SDTM import from {self.source}: index date {self.index_date}, assessment windows {how}, "
                 f"{'closed' if self.closed_world else 'open'} world: {self.n_subjects} subjects",
                 "  domains read: " + (", ".join(f"{d} {v}" for d, v in self.domains.items()) or "none"),
                 "  domains not found: " + (", ".join(self.not_found) or "none")]
        if self.ignored:
            lines.append("  domains not read: " + ", ".join(self.ignored))
        lines.append("  index dates: " + ", ".join(f"{n} from {s}" for s, n in self.index_sources().items()))
        for reason, ids in self.excluded.items():
            lines.append(f"  left out: {len(ids)} {reason}: {', '.join(ids[:10])}" + (" ..." if len(ids) > 10 else ""))
        for c in self.columns:
            if c.status == "absent":
                lines.append(f"  {c.column}: absent (n/a) - {c.note}")
                continue
            parts = [f"{c.column}: {c.n_value}/{self.n_subjects} with a value"
                     + (f", {c.n_true} true" if c.n_true is not None else "") + (f" [{c.source}]" if c.source else "")]
            if c.window:
                parts.append(c.window)
            if c.n_stale:
                parts.append(f"{c.n_stale} only before the window (stale)")
            if c.n_after:
                parts.append(f"{c.n_after} only after the index date")
            if c.units:
                parts.append("units " + ", ".join(f"{u or '(none)'} ({n})" for u, n in c.units.items()))
            if c.conversions:
                parts.append("converted " + ", ".join(f"{u} {f}" for u, f in c.conversions.items()))
            if c.skipped:
                parts.append("skipped " + ", ".join(f"{r} ({n})" for r, n in c.skipped.items()))
            if c.terms:
                parts.append("terms " + ", ".join(f"{t} ({n})" for t, n in list(c.terms.items())[:8]))
            if c.note:
                parts.append(c.note)
            lines.append("  " + "; ".join(parts))
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)
