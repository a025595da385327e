"""SDTM events -> history flags and event columns: medical history (MH), medications (CM), procedures (PR), exposure (EX).

Terms are matched with the OMOP importer's concept sets and drug groups (kn026.ingest.sdtm_terms.Matcher)
and the terms file's ATC prefixes, MedDRA terms and name patterns. Dates are ISO 8601; a partial
date is read as the latest day it can mean, never after the index date (so an event that may fall
inside an exclusion window counts as inside it), and the report counts such dates.

- `days` columns: whole days from the last day of the latest matching record on or before the
  index date (MH: its start; CM / PR: its end, the index date while ongoing, else its start; EX:
  doses before the index date only) within the protocol's event look-back. NULL: none on record.
- `flag` columns (MH): true when a matching record is on file (within `window_days`, or not ended
  with `ongoing`), NULL when only an `unknown_sets` record is, else the closed-world `absent`
  value for subjects with any MH record and NULL for subjects without one.
- the systemic corticosteroid dose and the last anti-tumour drug's half-life (CM).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from decimal import Decimal

from kn026.ingest.sdtm_report import SdtmColumn
from kn026.ingest.sdtm_terms import Dtc, like, parse_dtc

_TERM = {"MH": ("MHDECOD", "MHTERM"), "CM": ("CMDECOD", "CMTRT"), "PR": ("PRDECOD", "PRTRT"), "EX": ("EXTRT",)}
_ONGOING_TPT = {"ONGOING", "AFTER"}
_ONGOING_RF = {"DURING", "AFTER", "DURING/AFTER"}


class Record:
    """One MH / CM / PR / EX row: its term, dates and the fields the columns read."""

    def __init__(self, domain: str, row: dict):
        self.domain, self.row = domain, row
        self.subject = row.get("USUBJID")
        names = [row.get(f) for f in _TERM.get(domain, ())]
        self.term = next((str(n) for n in names if n), "")
        self.names = [str(n) for n in names if n]
        self.start: Dtc | None = parse_dtc(row.get(domain + "STDTC"))
        self.end: Dtc | None = parse_dtc(row.get(domain + "ENDTC"))
        tpt, rf = str(row.get(domain + "ENRTPT") or "").upper(), str(row.get(domain + "ENRF") or "").upper()
        self.ongoing = tpt in _ONGOING_TPT or rf in _ONGOING_RF
        self.ended_before = tpt == "BEFORE" or rf == "BEFORE"

    def partial(self) -> bool:
        return any(d is not None and not d.full for d in (self.start, self.end))

    def begins_by(self, index: dt.date, strictly: bool = False) -> bool:
        """Started on or before (`strictly`: before) the index date; an undated record counts as history."""
        if self.start is None:
            return self.end is None or self.end.first <= index
        return self.start.first < index if strictly else self.start.first <= index

    def last_day(self, index: dt.date) -> dt.date | None:
        """The record's last day up to the index date (see the module docstring), None when undated."""
        if self.domain == "MH":
            return min(self.start.last, index) if self.start else None
        if self.end is not None:
            return min(self.end.last, index)
        if self.ongoing:
            return index
        return min(self.start.last, index) if self.start else None

    def active_at(self, index: dt.date) -> bool:
        """Not ended before the index date (no end date and no 'before' flag: still active)."""
        if self.ended_before:
            return False
        return self.end is None or self.end.last >= index or self.ongoing

    def since(self, cutoff: dt.date) -> bool | None:
        """On file on or after `cutoff` (started or not yet ended then); None when the record cannot say
        (ended before the study at an unknown date, after starting before the cutoff)."""
        if (self.start and self.start.last >= cutoff) or (self.end and self.end.last >= cutoff):
            return True
        if self.end is None:
            return True if self.ongoing or not self.ended_before else None
        return False


class Sources:
    """Which records a column's source entries match (see the terms file's `events`)."""

    def __init__(self, ctx, spec: dict):
        self.ctx, self.spec = ctx, spec
        self.names = like(spec.get("names"))
        self.exclude = like(spec.get("exclude_names"))
        self.category = like(spec.get("category"))
        self.atc = [str(a).upper() for a in spec.get("atc") or []]

    def match(self, rec: Record) -> str | None:
        """The matched term (or 'ATC <code>'), else None."""
        s, m, t = self.spec, self.ctx.matcher, rec.term.lower()
        if not rec.term and not s.get("any"):
            return None
        if self.exclude and self.exclude.match(t):
            return None
        if s.get("any"):
            return rec.term or rec.domain
        if any(m.in_set(t, name) for name in s.get("sets") or []):
            return rec.term
        if "groups" in s:
            for n in rec.names:
                if m.drug(n, s["groups"]):
                    return rec.term
        code = str(rec.row.get(rec.domain + "CLASCD") or "").upper()
        if code and any(code.startswith(a) for a in self.atc):
            return f"{rec.term} (ATC {code})"
        if self.names and self.names.match(t):
            return rec.term
        cat = str(rec.row.get(rec.domain + "CAT") or "").lower()
        if self.category and cat and self.category.match(cat):
            return rec.term
        return None


def records(ctx, domain: str) -> list[Record]:
    if domain not in ctx.cache:
        frame = ctx.data[domain].frame
        ctx.cache[domain] = [Record(domain, r) for r in frame.to_dict("records") if r.get("USUBJID") in ctx.index]
    return ctx.cache[domain]


def _window_text(ctx, col: str) -> tuple[int | None, str]:
    w = ctx.windows.window(col)
    days = ctx.windows.lookback_days(col)
    return days, (w.text() if w else "look-back the whole record (the protocol declares none)")


def fill_days(ctx, col: str, spec: dict) -> tuple[SdtmColumn, dict]:
    """Days since the latest matching record (record-based: NULL = none on record)."""
    sources = [s for s in spec["sources"] if s["domain"] in ctx.data]
    rep = SdtmColumn(col, "derived")
    if not sources:
        rep.status = "absent"
        rep.note = "not searched: " + " / ".join(s["domain"] for s in spec["sources"]) + " not in the study"
        return rep, {}
    days, rep.window = _window_text(ctx, col)
    rep.source = "; ".join(_label(s) for s in sources)
    best: dict[str, tuple[int, str]] = {}
    for s in sources:
        m = Sources(ctx, s)
        for rec in records(ctx, s["domain"]):
            term = m.match(rec)
            if term is None:
                continue
            index = ctx.index[rec.subject]
            if not rec.begins_by(index, strictly=rec.domain == "EX"):
                rep.skipped["after the index date"] += 1
                continue
            last = rec.last_day(index)
            if last is None:
                rep.skipped["no date (not counted)"] += 1
                ctx.undated.setdefault(col, set()).add(rec.subject)
                continue
            before = (index - last).days
            if days is not None and before > days:
                rep.skipped["before the look-back"] += 1
                continue
            if rec.partial():
                rep.skipped["partial date read as its latest day (counted)"] += 1
            if rec.subject not in best or before < best[rec.subject][0]:
                best[rec.subject] = (before, term)
    for _, term in best.values():
        rep.terms[term] += 1
    rep.n_value = len(best)
    rep.terms = Counter(dict(rep.terms.most_common()))
    rep.note = "days since the last day of the latest record; NULL: none on record"
    if col in ctx.undated:
        ctx.warnings.append(f"{col}: {len(ctx.undated[col])} subjects have a matching record without a date, "
                            f"not counted (it reads as none on record): {', '.join(sorted(ctx.undated[col])[:10])}")
    return rep, {s: b for s, (b, _) in best.items()}


def _label(s: dict) -> str:
    parts = [f"sets {', '.join(s['sets'])}" if s.get("sets") else "",
             f"drug groups {s['groups'] if isinstance(s['groups'], str) else ', '.join(s['groups'])}"
             if s.get("groups") else "",
             f"ATC {', '.join(s['atc'])}" if s.get("atc") else "", "names" if s.get("names") else "",
             f"category {', '.join(s['category'])}" if s.get("category") else "", "every record" if s.get("any") else ""]
    return f"{s['domain']} " + ", ".join(p for p in parts if p)


def fill_flag(ctx, col: str, spec: dict) -> tuple[SdtmColumn, dict]:
    """A history flag from MH (see the module docstring)."""
    dom = spec.get("domain", "MH")
    rep = SdtmColumn(col, "derived", _label(spec))
    if dom not in ctx.data:
        rep.status, rep.note = "absent", f"not searched: {dom} not in the study"
        return rep, {}
    window = spec.get("window_days")
    rep.window = (f"on file within {window} days before the index date" if window is not None else "any time before "
                  "the index date") + (", not ended" if spec.get("ongoing") else "")
    yes, unknown = Sources(ctx, spec), Sources(ctx, {"sets": spec.get("unknown_sets") or []})
    value: dict[str, object] = {}
    with_records = set()
    for rec in records(ctx, dom):
        with_records.add(rec.subject)
        index = ctx.index[rec.subject]
        term = yes.match(rec)
        doubt = unknown.match(rec) if term is None and spec.get("unknown_sets") else None
        if term is None and doubt is None:
            continue
        if not rec.begins_by(index):
            rep.skipped["after the index date"] += 1
            continue
        if spec.get("ongoing") and not rec.active_at(index):
            rep.skipped["ended before the index date"] += 1
            continue
        if window is not None:
            within = rec.since(index - dt.timedelta(days=int(window)))
            if within is False:
                rep.skipped[f"ended more than {window} days before the index date"] += 1
                continue
            if within is None and term is not None:
                term, doubt = None, f"{rec.term}, end date unknown"
        if term is not None:
            if value.get(rec.subject) is not True:
                rep.terms[term] += 1
            value[rec.subject] = True
        elif rec.subject not in value:
            value[rec.subject] = None
            rep.terms[f"{doubt} (unknown)"] += 1
    absent = spec.get("absent", False) if ctx.closed_world else None
    for subject in with_records:
        value.setdefault(subject, absent)
    rep.n_value = sum(v is not None for v in value.values())
    rep.n_true = sum(v is True for v in value.values())
    shown = "NULL" if absent is None else str(absent).lower()
    rep.note = (f"true when on record; {shown} when not ({'closed' if ctx.closed_world else 'open'} world), "
                f"NULL for subjects without any {dom} record"
                + (f"; NULL when only {', '.join(spec['unknown_sets'])} is on record" if spec.get("unknown_sets") else ""))
    rep.terms = Counter(dict(rep.terms.most_common()))
    return rep, {s: v for s, v in value.items() if v is not None}


def fill_half_life(ctx, col: str, spec: dict) -> tuple[SdtmColumn, dict]:
    """The longest half-life of the anti-tumour drugs of the last exposure day; NULL when one has none on file."""
    dom = spec.get("domain", "CM")
    rep = SdtmColumn(col, "derived", _label(spec) + " (half-lives from omop_concepts.yaml)")
    if dom not in ctx.data:
        rep.status, rep.note = "absent", f"not searched: {dom} not in the study"
        return rep, {}
    m = Sources(ctx, spec)
    last: dict[str, tuple[dt.date, list]] = {}
    for rec in records(ctx, dom):
        if m.match(rec) is None:
            continue
        index = ctx.index[rec.subject]
        day = rec.last_day(index) if rec.begins_by(index) else None
        if day is None:
            continue
        drug = next((d for d in (ctx.matcher.drug(n, spec.get("groups")) for n in rec.names) if d), None)
        hl = drug.get("half_life_days") if drug else None
        if rec.subject not in last or day > last[rec.subject][0]:
            last[rec.subject] = (day, [hl])
        elif day == last[rec.subject][0]:
            last[rec.subject][1].append(hl)
    value = {s: float(max(h)) for s, (_, h) in last.items() if all(x is not None for x in h)}
    rep.n_value = len(value)
    rep.note = "NULL (washout 28 days) when a drug of the last day has no half-life on file"
    return rep, value


def fill_dose_daily(ctx, col: str, spec: dict) -> tuple[SdtmColumn, dict]:
    """Highest daily prednisone-equivalent dose of systemic corticosteroids overlapping the look-back."""
    dom = spec.get("domain", "CM")
    rep = SdtmColumn(col, "derived", _label(spec))
    if dom not in ctx.data:
        rep.status, rep.note = "absent", f"not searched: {dom} not in the study"
        return rep, {}
    days, rep.window = _window_text(ctx, col)
    d = ctx.terms["defaults"]
    local = {str(x).upper() for x in d.get("local_routes") or []}
    per_day = {str(k).upper(): Decimal(str(v)) for k, v in (d.get("doses_per_day") or {}).items()}
    mg = {str(k).lower(): Decimal(str(v)) for k, v in (d.get("dose_units") or {}).items()}
    m = Sources(ctx, spec)
    value: dict[str, float] = {}
    uncomputable = set()
    for rec in records(ctx, dom):
        term = m.match(rec)
        if term is None:
            continue
        index = ctx.index[rec.subject]
        last = rec.last_day(index) if rec.begins_by(index) else None
        if last is None or (days is not None and (index - last).days > days):
            continue
        if str(rec.row.get("CMROUTE") or "").upper() in local:
            rep.skipped["local route"] += 1
            continue
        drug = next((x for x in (ctx.matcher.drug(n, spec.get("groups")) for n in rec.names) if x), None)
        dose = _daily_mg(rec.row, per_day, mg)
        if drug is None or dose is None:
            uncomputable.add(rec.subject)
            rep.skipped["dose or ingredient not computable"] += 1
            continue
        eq = float(round(dose * Decimal(str(drug.get("factor", 1))), ctx.decimals))
        rep.terms[term] += 1
        value[rec.subject] = max(eq, value.get(rec.subject, 0.0))
    if uncomputable:
        ctx.warnings.append(f"{col}: {len(uncomputable)} subjects have a systemic corticosteroid whose daily dose "
                            f"cannot be computed (CMDOSTOT, or CMDOSE x CMDOSFRQ in mg); it counts as none: "
                            f"{', '.join(sorted(uncomputable)[:10])}")
    rep.n_value = len(value)
    rep.note = ("CMDOSTOT, else CMDOSE x doses per day (CMDOSFRQ), in mg, x the prednisone-equivalent factor; "
                "local routes left out; NULL: none on record")
    return rep, value


def _daily_mg(row: dict, per_day: dict, mg: dict) -> Decimal | None:
    unit = mg.get(str(row.get("CMDOSU") or "").strip().lower())
    if unit is None:
        return None
    try:
        if row.get("CMDOSTOT"):
            return Decimal(str(row["CMDOSTOT"])) * unit
        n = per_day.get(str(row.get("CMDOSFRQ") or "").upper())
        if row.get("CMDOSE") and n is not None:
            return Decimal(str(row["CMDOSE"])) * unit * n
    except ArithmeticError:
        return None
    return None


KINDS = {"days": fill_days, "flag": fill_flag, "half_life": fill_half_life, "dose_daily": fill_dose_daily}
