"""SDTM findings -> assessed columns: labs (LB), vitals (VS), ECG (EG), LVEF (CV), ECOG, RECIST lesions (TU).

Each column is the latest usable result dated 0 to N days before the subject's index date
(N: the protocol's assessment window, or --lookback-days), both ends included. A usable
result has the searched test code, a numeric standard result (--STRESN, else a numeric
--STRESC) in a unit the terms file converts, a full date, and is not NOT DONE (nor, in LB,
a urine specimen). A subject whose only usable results are older than the window gets NULL
and the column in `stale_columns`; results after the index date are never used. Units and
test codes live in kn026/ingest/concepts/sdtm_terms.yaml.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

import pandas as pd

from kn026.ingest.sdtm_report import SdtmColumn
from kn026.ingest.sdtm_terms import convert, parse_dtc, unit_factor

_ORDER = ["date", "drv", "time", "rank", "seq"]
_ASC = [False, False, False, True, False]


def _get(frame: pd.DataFrame, name: str) -> pd.Series:
    return frame[name] if name in frame.columns else pd.Series([None] * len(frame), index=frame.index, dtype=object)


def results(ctx, domain: str, testcd, group: str, rep: SdtmColumn, integer=None) -> pd.DataFrame:
    """Usable results of `testcd` in `domain` (frame: subject, date, time, drv, seq, value, uln, unit, key)."""
    frame = ctx.data[domain].frame
    p = domain
    codes = {str(t).upper() for t in testcd}
    hit = frame[testcodes(ctx, domain).isin(codes)]
    rows = []
    not_done = {str(x).upper() for x in ctx.terms["defaults"].get("not_done") or []}
    urine = {str(x).upper() for x in ctx.terms["defaults"].get("exclude_specimens") or []}
    for r in hit.to_dict("records"):
        code = str(r.get(p + "TESTCD")).upper()
        unit = r.get(p + "STRESU") or ""
        rep.units[unit] += 1
        if str(r.get(p + "STAT") or "").upper() in not_done:
            rep.skipped["not done"] += 1
            continue
        if p == "LB" and str(r.get("LBSPEC") or "").upper() in urine:
            rep.skipped["urine specimen"] += 1
            continue
        text = r.get(p + "STRESN") or r.get(p + "STRESC")
        found = unit_factor(group, unit, ctx.terms, ctx.cache.setdefault("units", {}))
        if found is None:
            rep.skipped[f"unit {unit or '(none)'} not convertible"] += 1
            continue
        value = convert(text, found[1], ctx.decimals) if text is not None else None
        if value is None:
            rep.skipped["no numeric result"] += 1
            continue
        if integer is not None and not (value == int(value) and integer[0] <= value <= integer[1]):
            rep.skipped[f"not a whole number {integer[0]}-{integer[1]}"] += 1
            continue
        dtc = parse_dtc(r.get(p + "DTC"))
        if dtc is None or not dtc.full:
            rep.skipped["no full date" if dtc is None else "partial date"] += 1
            continue
        subject = r.get("USUBJID")
        if subject not in ctx.index:
            rep.skipped["subject not in the cohort"] += 1
            continue
        uln = r.get(p + "STNRHI")
        rows.append({"subject": subject, "date": dtc.first, "time": dtc.time, "key": str(r.get(p + "DTC")),
                     "drv": str(r.get(p + "DRVFL") or "").upper() == "Y", "seq": _num(r.get(p + "SEQ")),
                     "value": value, "uln": convert(uln, found[1], ctx.decimals) if uln else None,
                     "unit": found[0], "factor": found[1], "code": code})
    return pd.DataFrame(rows, columns=["subject", "date", "time", "key", "drv", "seq", "value", "uln", "unit",
                                       "factor", "code"])


def testcodes(ctx, domain: str) -> pd.Series:
    """The domain's --TESTCD in upper case (computed once per domain)."""
    key = "testcd:" + domain
    if key not in ctx.cache:
        frame = ctx.data[domain].frame
        ctx.cache[key] = _get(frame, domain + "TESTCD").map(lambda v: str(v or "").upper())
    return ctx.cache[key]


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return 0.0


def _product(ctx, spec: dict, direct: pd.DataFrame, rep: SdtmColumn) -> pd.DataFrame:
    """A derived result per draw (USUBJID, --DTC) where every factor is on record and no direct result is."""
    parts = spec["derive"]["product"]
    frames = []
    for i, part in enumerate(parts):
        f = results(ctx, spec["domain"], part["testcd"], part["units"], rep)
        f = f.sort_values("seq").drop_duplicates(["subject", "key"], keep="last")
        frames.append(f.rename(columns={c: f"{c}{i}" for c in ("value", "unit", "factor", "code", "seq", "uln")}))
    if not frames:
        return direct.iloc[0:0]
    out = frames[0]
    for f in frames[1:]:
        out = out.merge(f[["subject", "key"] + [c for c in f.columns if c[-1].isdigit()]], on=["subject", "key"])
    taken = set(zip(direct["subject"], direct["key"], strict=True))
    out = out[[(s, k) not in taken for s, k in zip(out["subject"], out["key"], strict=True)]]
    rows = []
    for r in out.to_dict("records"):
        value = Decimal(1)
        for i in range(len(parts)):
            value *= Decimal(repr(r[f"value{i}"]))
        rows.append({**{k: r[k] for k in ("subject", "date", "time", "key", "drv")}, "seq": r["seq0"],
                     "value": float(round(value, ctx.decimals)), "uln": None,
                     "unit": " x ".join(r[f"unit{i}"] for i in range(len(parts))), "factor": None,
                     "code": " x ".join(r[f"code{i}"] for i in range(len(parts)))})
    return pd.DataFrame(rows, columns=direct.columns)


def fill_finding(ctx, col: str, sources: list[dict]) -> tuple[SdtmColumn, dict, dict]:
    """One assessed column: (report, {subject: value}, {subject: ULN}) from its sources in the terms file."""
    rep = SdtmColumn(col, "derived")
    domains = [s["domain"] for s in sources if s["domain"] in ctx.data]
    if not domains:
        rep.status = "absent"
        rep.note = f"not searched: {' / '.join(dict.fromkeys(s['domain'] for s in sources))} not in the study"
        return rep, {}, {}
    days = ctx.windows.assessment_days(col)
    w = ctx.windows.window(col)
    rep.window = (f"0-{days} days before the index date ({w.basis})" if days is not None
                  else "latest on or before the index date (the protocol gives no window)")
    labels, chosen, found_any = [], {}, []
    for rank, spec in enumerate(sources):
        if spec["domain"] not in ctx.data:
            continue
        if "derive" in spec:
            direct = found_any[-1] if found_any else results(ctx, spec["domain"], [], "score", rep)
            f = _product(ctx, spec, direct, rep)
            labels.append(f"{spec['domain']} " + " x ".join("/".join(p["testcd"]) for p in spec["derive"]["product"])
                          + " (where no direct result)")
        else:
            f = results(ctx, spec["domain"], spec["testcd"], spec["units"], rep, spec.get("integer"))
            labels.append(f"{spec['domain']} {'/'.join(spec['testcd'])}"
                          + (" (only without the above)" if spec.get("fallback") else ""))
        for domain, codes in (ctx.terms.get("never", {}).get(col) or {}).items():
            if domain == spec["domain"]:
                seen = Counter(v for v in testcodes(ctx, domain) if v in codes)
                for code, n in seen.items():
                    rep.skipped[f"{code}: {codes[code]}"] = n
        f = f.assign(rank=rank, idx=f["subject"].map(ctx.index))
        f = f.assign(before=[(i - d).days for i, d in zip(f["idx"], f["date"], strict=True)] if len(f) else [])
        found_any.append(f)
        if spec.get("fallback"):
            f = f[~f["subject"].isin(list(chosen))]
        inside = f[(f["before"] >= 0) & ((f["before"] <= days) if days is not None else True)]
        for r in inside.sort_values(_ORDER, ascending=_ASC).drop_duplicates("subject").to_dict("records"):
            best = chosen.get(r["subject"])
            if best is None or _later(r, best):
                chosen[r["subject"]] = r
    rep.source = "; ".join(labels)
    allf = pd.concat(found_any, ignore_index=True) if found_any else pd.DataFrame(columns=["subject", "before"])
    older = set(allf.loc[allf["before"] > (days if days is not None else 10**9), "subject"])
    later = set(allf.loc[allf["before"] < 0, "subject"])
    stale = older - set(chosen)
    rep.n_stale, rep.n_after = len(stale), len(later - set(chosen) - older)
    for r in chosen.values():
        if r["factor"] is not None:
            rep.conversions[r["unit"] or "(no unit)"] = f"x {r['factor'].normalize():f}"
        else:
            rep.conversions[r["unit"]] = "product of the converted results"
    rep.n_value = len(chosen)
    ctx.stale.setdefault(col, set()).update(stale)
    values = {s: r["value"] for s, r in chosen.items()}
    ulns = {s: r["uln"] for s, r in chosen.items() if r["uln"] is not None}
    return rep, values, ulns


def _later(a: dict, b: dict) -> bool:
    """True when result `a` wins over `b`: later day, the sponsor's derived record, later time, earlier source."""
    return (a["date"], a["drv"], a["time"], -a["rank"], a["seq"]) > (b["date"], b["drv"], b["time"], -b["rank"], b["seq"])


def fill_lesions(ctx) -> tuple[list[SdtmColumn], dict[str, dict]]:
    """measurable_lesions / nonmeasurable_lesions (target / non-target lesions) and liver_metastases
    (a lesion in the liver) from the baseline tumour identification (TU) inside the lesions' window."""
    spec = ctx.terms.get("lesions") or {}
    names = ("measurable_lesions", "nonmeasurable_lesions", "liver_metastases")
    dom = spec.get("domain", "TU")
    if dom not in ctx.data:
        reps = [SdtmColumn(n, "absent", note=f"not searched: {dom} not in the study") for n in names]
        return reps, {}
    frame = ctx.data[dom].frame
    days = ctx.windows.assessment_days("measurable_lesions")
    w = ctx.windows.window("measurable_lesions")
    window = (f"0-{days} days before the index date ({w.basis})" if days is not None
              else "latest on or before the index date (the protocol gives no window)")
    target = {str(x).upper() for x in spec.get("target") or []}
    nontarget = {str(x).upper() for x in spec.get("nontarget") or []}
    liver = {str(x).upper() for x in spec.get("liver") or []}
    codes = {str(x).upper() for x in spec.get("testcd") or []}
    reps = {n: SdtmColumn(n, "derived", f"{dom} {'/'.join(sorted(codes))}", window) for n in names}
    rows = []
    for r in frame.to_dict("records"):
        if str(r.get(dom + "TESTCD") or "").upper() not in codes:
            continue
        kind = str(r.get(dom + "STRESC") or r.get(dom + "ORRES") or "").upper()
        rep = reps["measurable_lesions"]
        rep.units[kind] += 1
        dtc = parse_dtc(r.get(dom + "DTC"))
        if kind not in target | nontarget:
            rep.skipped[f"result {kind or '(none)'}"] += 1
            continue
        if dtc is None or not dtc.full or r.get("USUBJID") not in ctx.index:
            rep.skipped["no full date or subject not in the cohort"] += 1
            continue
        rows.append((r["USUBJID"], (ctx.index[r["USUBJID"]] - dtc.first).days, kind,
                     r.get(dom + "LNKID") or r.get(dom + "SEQ"), str(r.get(dom + "LOC") or "").upper()))
    values: dict[str, dict] = {n: {} for n in names}
    by_subject: dict[str, list] = {}
    for row in rows:
        by_subject.setdefault(row[0], []).append(row)
    stale = set()
    for subject, lesions in by_subject.items():
        inside = [x for x in lesions if x[1] >= 0 and (days is None or x[1] <= days)]
        if not inside:
            if any(days is not None and x[1] > days for x in lesions):
                stale.add(subject)
                for n in names[:2]:
                    reps[n].n_stale += 1
            else:
                for n in names[:2]:
                    reps[n].n_after += 1
            continue
        values["measurable_lesions"][subject] = len({x[3] for x in inside if x[2] in target})
        values["nonmeasurable_lesions"][subject] = len({x[3] for x in inside if x[2] in nontarget})
        values["liver_metastases"][subject] = any(x[4] in liver for x in inside)
    for n in names:
        reps[n].n_value = len(values[n])
    reps["liver_metastases"].n_true = sum(values["liver_metastases"].values())
    reps["liver_metastases"].note = "true when a baseline lesion's location (TULOC) is the liver; NULL without lesions"
    reps["measurable_lesions"].note = ("target lesions (RECIST 1.1 selects up to 5 measurable lesions as targets, "
                                       "so at least one target means at least one measurable lesion)")
    reps["nonmeasurable_lesions"].note = "non-target lesions"
    for n in names[:2]:
        ctx.stale.setdefault(n, set()).update(stale)
    return list(reps.values()), values
