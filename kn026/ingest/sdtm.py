"""CDISC SDTM study -> screening cohort: one row per DM subject at an index date.

`import_sdtm(source, index_date)` reads a study's domains (a folder, a zip path or bytes, or
{file name: bytes}; CSV, SAS transport or Dataset-JSON: kn026.ingest.sdtm_source) and describes
every DM subject at the index date as one row of the screening cohort
(cohort-dictionary.md), with an import report (kn026.ingest.sdtm_report). Sponsors use it to see
how an earlier trial's patients would screen under a new protocol.

- Index date (`first-dose`, the default): RFXSTDTC, else RFSTDTC, else the first EXSTDTC;
  screen failures without a dose: RFICDTC (informed consent), else DMDTC. `screening`: the
  last day of the screening visit (VISIT with "SCREEN" in LB, VS, EG), else RFICDTC, else
  DMDTC. Or one ISO date for everyone. The report says which date each subject got.
- Assessed columns (kn026.ingest.sdtm_findings) take the latest result inside the protocol's
  assessment window (`protocol.windows`, or --lookback-days for all of them); an older one
  only leaves the column NULL and lists it in `stale_columns`. Events and history
  (kn026.ingest.sdtm_events) search the protocol's event look-backs, never shortened.
- What the study does not have stays absent (dictionary v2 then makes a rule n/a or reads
  the column as unknown); the report lists domains read and not found and why each column
  is absent. Test codes, units and terms: kn026/ingest/concepts/sdtm_terms.yaml.

The output is for `kn026.ingest.cohort.load_cohort` (the CLI runs it before writing), so the unit
guard and every check apply. Nothing here reads or writes anything but the source.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd

from kn026.base import schema
from kn026.ingest.sdtm_events import KINDS
from kn026.ingest.sdtm_findings import fill_finding, fill_lesions
from kn026.ingest.sdtm_report import SdtmColumn, SdtmReport
from kn026.ingest.sdtm_source import read_study
from kn026.ingest.sdtm_terms import Matcher, check_terms, load_terms, parse_dtc

READ = ("DM", "LB", "VS", "EG", "CV", "QS", "RS", "FA", "TU", "MH", "CM", "EX", "PR")
BUILTIN = ("patient_id", "site_id", "country", "screening_date", "age_years", "sex")
_AGE_UNITS = {"YEARS": 1.0, "YEAR": 1.0, "MONTHS": 1 / 12, "MONTH": 1 / 12, "WEEKS": 7 / 365.25,
              "WEEK": 7 / 365.25, "DAYS": 1 / 365.25, "DAY": 1 / 365.25}


class _Context:
    """What the column fillers share: domains, index dates, windows, terms, and what they found."""

    def __init__(self, data, index, windows, terms, closed_world):
        self.data, self.index, self.windows, self.terms = data, index, windows, terms
        self.closed_world = closed_world
        self.decimals = int(terms["defaults"].get("exact_decimals", 6))
        self.matcher = Matcher(terms)
        self.stale: dict[str, set] = {}
        self.undated: dict[str, set] = {}
        self.cache: dict[str, list] = {}
        self.warnings: list[str] = []


def _index_option(value) -> str | dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    text = str(value or "first-dose").strip().lower()
    if text in ("first-dose", "first_dose", "screening"):
        return text.replace("_", "-")
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"index date {value!r}: give first-dose, screening or a date YYYY-MM-DD") from None


def import_sdtm(source, index_date="first-dose", lookback_days: int | None = None, *, protocol=None,
                terms: str | Path | dict | None = None, closed_world: bool = True,
                name: str | None = None) -> tuple[pd.DataFrame, SdtmReport]:
    """Build the screening cohort from an SDTM study (see the module docstring).

    `source`: a folder or zip path, the bytes of a zip, or {file name: bytes} (uploads:
    read in memory). `lookback_days` replaces every assessment window of `protocol`
    (default KN026-001), never its event look-backs. `terms` replaces the terms file.
    `closed_world=False` makes a history flag without a record NULL instead of false.
    Returns (cohort frame of dictionary columns, report); ValueError names what to fix.
    """
    option = _index_option(index_date)
    if protocol is None:
        from kn026.core.criteria import load_protocol

        protocol = load_protocol()
    windows = protocol.windows.with_assessment_days(lookback_days)
    if isinstance(terms, dict):
        check_terms(terms)
        doc = terms
    else:
        doc = load_terms(terms)
    shown = name or (str(source) if isinstance(source, (str, Path)) else "uploaded files")
    data = read_study(source)
    report = SdtmReport(shown, option if isinstance(option, str) else option.isoformat(), lookback_days,
                        closed_world)
    report.domains = {d: data[d].describe() for d in READ if d in data}
    report.not_found = [d for d in READ if d not in data]
    report.ignored = sorted(set(data) - set(READ))
    if "DM" not in data:
        raise ValueError(f"{shown}: no DM (demographics) domain; the cohort is one row per DM subject, "
                         f"so give dm.csv, dm.xpt or dm.json")
    dm = _dm(data["DM"].frame, shown)
    index = _index_dates(dm, data, option, doc, report)
    ctx = _Context(data, index, windows, doc, closed_world)
    values: dict[str, dict] = {}
    reports: dict[str, SdtmColumn] = {}
    for col, sources in doc["findings"].items():
        rep, vals, ulns = fill_finding(ctx, col, sources)
        if rep.status == "derived" and not sum(rep.units.values()):  # never measured: absent, not unknown
            rep.status = "absent"
            rep.note = f"no {rep.source} record in the study" + (
                f" ({'; '.join(rep.skipped)})" if rep.skipped else "")
        reports[col] = rep
        if rep.status == "derived":
            values[col] = vals
            uln = next((s["uln"] for s in sources if s.get("uln")), None)
            if uln:
                values[uln] = ulns
                reports[uln] = SdtmColumn(uln, "derived", f"--STNRHI of the {col} record", rep.window,
                                          len(ulns), conversions=rep.conversions,
                                          note="the record's own upper limit, converted like the value; NULL: "
                                               "the default ULN applies")
    lesion_reps, lesion_values = fill_lesions(ctx)
    for rep in lesion_reps:
        reports[rep.column] = rep
        if rep.status == "derived":
            values[rep.column] = lesion_values[rep.column]
    for col, spec in doc["events"].items():
        rep, vals = KINDS[spec["kind"]](ctx, col, spec)
        reports[col] = rep
        if rep.status == "derived":
            values[col] = vals
    assessed = [c for c in values if c in schema.ASSESSED]
    if assessed:
        stale = {}
        for col in schema.COLUMNS:
            for subject in ctx.stale.get(col.name, ()):
                if col.name in values:
                    stale.setdefault(subject, []).append(col.name)
        values["stale_columns"] = {s: ",".join(cols) for s, cols in stale.items()}
        reports["stale_columns"] = SdtmColumn("stale_columns", "derived", "dates of the assessed results", "",
                                              len(stale), note="assessed columns whose only result is dated before "
                                                               "the assessment window (left NULL)")
    frame = _assemble(dm, index, values)
    report.warnings += ctx.warnings
    _report_columns(report, reports, frame, doc)
    return frame, report


def _dm(frame: pd.DataFrame, shown: str) -> pd.DataFrame:
    if "USUBJID" not in frame.columns:
        raise ValueError(f"{shown}: DM has no USUBJID column; the SDTM subject identifier is required")
    ids = frame["USUBJID"]
    if ids.isna().any():
        raise ValueError(f"{shown}: DM row {int(ids.isna().to_numpy().argmax()) + 1} has no USUBJID; "
                         f"every subject needs one")
    dup = ids[ids.duplicated()]
    if len(dup):
        raise ValueError(f"{shown}: DM lists USUBJID {dup.iloc[0]} more than once; one row per subject")
    return frame


def _full(text) -> dt.date | None:
    d = parse_dtc(text)
    return d.first if d is not None and d.full else None


def _index_dates(dm: pd.DataFrame, data, option, doc: dict, report: SdtmReport) -> dict[str, dt.date]:
    """Each subject's index date, recorded in the report with its source; subjects without one left out."""
    first_ex = {}
    if "EX" in data:
        for r in data["EX"].frame.to_dict("records"):
            d = _full(r.get("EXSTDTC"))
            if d is not None and r.get("USUBJID") and (r["USUBJID"] not in first_ex or d < first_ex[r["USUBJID"]]):
                first_ex[r["USUBJID"]] = d
    screening = _screening_visits(data, doc) if option == "screening" else {}
    index, none, dead = {}, [], []
    for r in dm.to_dict("records"):
        subject = r["USUBJID"]
        if isinstance(option, dt.date):
            chosen = (option, "fixed date")
        else:
            dose = [(_full(r.get("RFXSTDTC")), "RFXSTDTC (first dose)"), (_full(r.get("RFSTDTC")), "RFSTDTC"),
                    (first_ex.get(subject), "EXSTDTC (first dose in EX)")]
            tail = [(_full(r.get("RFICDTC")), "RFICDTC (informed consent)"), (_full(r.get("DMDTC")), "DMDTC")]
            if option == "screening":
                first = next((d for d, _ in dose if d), None)
                visit = screening.get(subject, [])
                visit = [d for d in visit if first is None or d <= first]
                cands = [(max(visit) if visit else None, "screening visit (last VISIT ~ SCREEN date)")] + tail
            else:
                cands = dose + tail
            chosen = next(((d, s) for d, s in cands if d is not None), (None, "no usable date"))
        death = _full(r.get("DTHDTC"))
        if chosen[0] is not None and death is not None and death < chosen[0]:
            dead.append(subject)
            report.subjects.append((subject, None, "died before the index date"))
            continue
        report.subjects.append((subject, chosen[0].isoformat() if chosen[0] else None, chosen[1]))
        if chosen[0] is None:
            none.append(subject)
        else:
            index[subject] = chosen[0]
    if none:
        report.excluded["without a usable index date (no full date in DM, EX or a screening visit)"] = none
    if dead:
        report.excluded["who died before the index date (DTHDTC)"] = dead
    return index


def _screening_visits(data, doc: dict) -> dict[str, list[dt.date]]:
    words = [str(w).upper() for w in doc["defaults"].get("screening_visit") or ["SCREEN"]]
    out: dict[str, list[dt.date]] = {}
    for dom in ("LB", "VS", "EG"):
        if dom not in data:
            continue
        for r in data[dom].frame.to_dict("records"):
            visit = str(r.get("VISIT") or "").upper()
            d = _full(r.get(dom + "DTC"))
            if d is not None and any(w in visit for w in words):
                out.setdefault(r.get("USUBJID"), []).append(d)
    return out


def _age(r: dict, index: dt.date) -> float | None:
    birth = _full(r.get("BRTHDTC"))
    if birth is not None:
        return float(index.year - birth.year - ((index.month, index.day) < (birth.month, birth.day)))
    try:
        age = float(r.get("AGE"))
    except (TypeError, ValueError):
        return None
    factor = _AGE_UNITS.get(str(r.get("AGEU") or "YEARS").upper())
    return None if factor is None else round(age * factor, 2)


def _assemble(dm: pd.DataFrame, index: dict, values: dict[str, dict]) -> pd.DataFrame:
    rows = []
    for r in dm.to_dict("records"):
        s = r["USUBJID"]
        if s not in index:
            continue
        sex = schema.SEX_WORDS.get(str(r.get("SEX") or "").strip().lower())
        row = {"patient_id": s, "site_id": r.get("SITEID"), "country": r.get("COUNTRY"),
               "screening_date": index[s], "age_years": _age(r, index[s]), "sex": sex}
        for col in schema.COLUMNS:
            if col.name in values:
                row[col.name] = values[col.name].get(s)
        rows.append(row)
    names = [c.name for c in schema.COLUMNS if c.name in BUILTIN or c.name in values]
    frame = pd.DataFrame(rows, columns=names)
    for col in schema.COLUMNS:
        if col.name not in frame.columns:
            continue
        if col.kind == schema.INTEGER:
            frame[col.name] = pd.array([None if pd.isna(v) else int(v) for v in frame[col.name]], dtype="Int64")
        elif col.kind == schema.FLAG:
            frame[col.name] = pd.array([None if v is None or pd.isna(v) else bool(v) for v in frame[col.name]],
                                       dtype="boolean")
        elif col.kind == schema.NUMBER:
            frame[col.name] = pd.to_numeric(frame[col.name], errors="raise").astype("float64")
        elif col.kind in (schema.ID, schema.TEXT, schema.CATEGORY):
            frame[col.name] = pd.Series([None if v is None or (isinstance(v, float) and pd.isna(v)) else str(v)
                                         for v in frame[col.name]], dtype=object, index=frame.index)
    return frame


def _report_columns(report: SdtmReport, reports: dict, frame: pd.DataFrame, doc: dict) -> None:
    builtin = {"patient_id": "DM.USUBJID", "site_id": "DM.SITEID", "country": "DM.COUNTRY",
               "screening_date": "the index date (see the subjects table)",
               "age_years": "DM.BRTHDTC at the index date (whole years), else DM.AGE / AGEU",
               "sex": "DM.SEX (M, F; U and others NULL)"}
    not_derived = doc.get("not_derived") or {}
    for col in schema.COLUMNS:
        name = col.name
        if name in builtin:
            report.columns.append(SdtmColumn(name, "index", builtin[name], n_value=int(frame[name].notna().sum())))
        elif name in reports:
            rep = reports[name]
            if rep.status == "derived" and name in frame.columns:
                rep.n_value = int(frame[name].notna().sum())
                if col.kind == schema.FLAG:
                    rep.n_true = int((frame[name] == True).sum())  # noqa: E712
            report.columns.append(rep)
        else:
            report.columns.append(SdtmColumn(name, "absent", note=str(
                not_derived.get(name) or "not derived from SDTM (no entry in sdtm_terms.yaml)")))
