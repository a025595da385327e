"""The identities of each kind of table the app and the report publish.

Each function adds one kind of table to a `kn026.report.workbook.Workbook` together with what
a reader can derive about its cells: the arithmetic of the table itself, the links to
tables of the same release (the same quantity, sums across tables) and true
inequalities (unique failures never exceed failures). Declaring a true fact the reader
might not know is always safe (it can only hide more); forgetting one that the reader
knows is a leak, so every fact used by the adversarial test (tests/report/test_disclosure.py,
written independently from the tables' meaning) must be here too.

Notation below: N screened (public); per funnel step i (0 = screened): s strict,
o optimistic, u unknown so far, ls / lo lost (strict / optimistic); per criterion i of
the funnel: f failed, n unknown on it, q unique failures (fail mask == this criterion),
hs / ho Shapley shares (strict / optimistic); m criteria in the funnel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from kn026.report.workbook import Ref, Workbook

SCREENED = "screened"
ATTRITION_DERIVED = {"pct_strict": "strict", "pct_optimistic": "optimistic"}
SITE_COUNTS = ("screened", "strict", "optimistic", "unknown", "excluded")
SITE_DERIVED = {"pct_strict": ("strict", "screened"), "pct_optimistic": ("optimistic", "screened")}


def screened(wb: Workbook, n: int) -> Ref:
    """The number screened: public (it is in every title)."""
    return wb.constant(SCREENED, n)


def _unknown_col(frame: pd.DataFrame) -> str:
    return "unknown_so_far" if "unknown_so_far" in frame.columns else "unknown"


def attrition(wb: Workbook, frame: pd.DataFrame, name: str = "Attrition", *, restrictive: bool = False) -> None:
    """A funnel (kn026.core.funnel.funnel) or the attrition table (kn026.report.export.attrition_frame).

    Equations: o_i = s_i + u_i; s_{i-1} = ls_i + s_i and o_{i-1} = lo_i + o_i; row 0 is
    N, N, 0, 0, 0 (public); lo_1 = f_1 and ls_1 = f_1 + n_1; the Shapley shares add up
    to the excluded (sum ho = N - o_m, sum hs = N - s_m). Inequalities: q_i <= lo_i <= f_i,
    ls_i <= f_i + n_i, f_i + n_i <= N, q_i <= ho_i <= f_i <= m ho_i,
    hs_i <= f_i + n_i <= m hs_i, sum q <= N - o_m <= sum f; with `restrictive` (most
    restrictive first) f_i >= f_{i+1}.
    """
    unk = _unknown_col(frame)
    steps = ["strict", "optimistic", unk, "lost_strict", "lost_optimistic"]
    stats = [c for c in ("failed", "unique") if c in frame.columns]
    has_stats = "failed" in frame.columns
    counts = [c for c in steps if c in frame.columns] + stats + (["unknown"] if has_stats and unk != "unknown"
                                                                    else [])
    real = [c for c in ("shapley_strict", "shapley_optimistic") if c in frame.columns]
    wb.add(name, frame, counts, real=real, derived=ATTRITION_DERIVED)
    f = frame.reset_index(drop=True)
    rows = len(f)
    if not rows:
        return
    n = int(f["strict"].iloc[0])
    big_n = screened(wb, n)

    def c(i: int, col: str) -> Ref:
        return (name, i, col)

    wb.same(c(0, "strict"), big_n)
    wb.same(c(0, "optimistic"), big_n)
    wb.prefer_visible(c(rows - 1, "strict"), c(rows - 1, "optimistic"), c(rows - 1, unk))
    wb.public(c(0, unk), c(0, "lost_strict"), c(0, "lost_optimistic"))
    for i in range(rows):
        wb.equation([(c(i, "strict"), 1), (c(i, unk), 1), (c(i, "optimistic"), -1)])
        if i:
            for b in ("strict", "optimistic"):
                wb.equation([(c(i - 1, b), 1), (c(i, f"lost_{b}"), -1), (c(i, b), -1)])
    if not has_stats or rows < 2:
        return
    m = rows - 1
    last = rows - 1
    have = wb.has
    wb.equation([(c(1, "lost_optimistic"), 1), (c(1, "failed"), -1)])
    wb.equation([(c(1, "lost_strict"), 1), (c(1, "failed"), -1), (c(1, "unknown"), -1)])
    for i in range(1, rows):
        wb.at_most([(c(i, "lost_optimistic"), 1), (c(i, "failed"), -1)])
        wb.at_most([(c(i, "lost_strict"), 1), (c(i, "failed"), -1), (c(i, "unknown"), -1)])
        wb.at_most([(c(i, "failed"), 1), (c(i, "unknown"), 1), (big_n, -1)])
        if have(c(i, "unique")):
            wb.at_most([(c(i, "unique"), 1), (c(i, "lost_optimistic"), -1)])
        if have(c(i, "shapley_optimistic")):
            if have(c(i, "unique")):
                wb.at_most([(c(i, "unique"), 1), (c(i, "shapley_optimistic"), -1)])
            wb.at_most([(c(i, "shapley_optimistic"), 1), (c(i, "failed"), -1)])
            wb.at_most([(c(i, "failed"), 1), (c(i, "shapley_optimistic"), -m)])
        if have(c(i, "shapley_strict")):
            wb.at_most([(c(i, "shapley_strict"), 1), (c(i, "failed"), -1), (c(i, "unknown"), -1)])
            wb.at_most([(c(i, "failed"), 1), (c(i, "unknown"), 1), (c(i, "shapley_strict"), -m)])
        if restrictive and i < last:
            wb.at_most([(c(i + 1, "failed"), 1), (c(i, "failed"), -1)])
    for col, bound in (("shapley_optimistic", "optimistic"), ("shapley_strict", "strict")):
        if all(have(c(i, col)) for i in range(1, rows)):
            wb.equation([(c(i, col), 1) for i in range(1, rows)] + [(c(last, bound), 1), (big_n, -1)])
    if all(have(c(i, "unique")) for i in range(1, rows)):
        wb.at_most([(c(i, "unique"), 1) for i in range(1, rows)] + [(c(last, "optimistic"), 1), (big_n, -1)])
    wb.at_most([(big_n, 1), (c(last, "optimistic"), -1)] + [(c(i, "failed"), -1) for i in range(1, rows)])


def combinations(wb: Workbook, frame: pd.DataFrame, name: str = "Combinations", *, bound: str = "optimistic",
                 attrition_name: str | None = "Attrition", complete: bool = False) -> None:
    """The most frequent exact failure combinations (kn026.core.funnel.combinations).

    Rows are sorted by count (c_j >= c_{j+1}). With the funnel of the same release:
    sum c <= N - final (the excluded); per criterion, the combinations containing it
    add up to at most f_i (optimistic) or f_i + n_i (strict); per step, those whose first
    criterion in funnel order is step i add up to at most lo_i (ls_i); with `complete`
    (every combination is listed) these are equations. Under the optimistic bound the
    one-criterion combination {i} is the unique failures q_i (the same quantity).
    """
    wb.add(name, frame, ["count"], derived={"pct": "count"})
    f = frame.reset_index(drop=True)
    for j in range(len(f) - 1):
        wb.at_most([((name, j + 1, "count"), 1), ((name, j, "count"), -1)])
    if attrition_name is None or attrition_name not in wb.sheets:
        return
    att = wb.sheets[attrition_name].frame
    step = {cid: i for i, cid in enumerate(att["criterion"]) if i}
    if not step or not len(f):
        return
    last = len(att) - 1
    final = "optimistic" if bound == "optimistic" else "strict"
    add = wb.equation if complete else wb.at_most
    big_n = (("", SCREENED, ""))
    add([((name, j, "count"), 1) for j in range(len(f))] + [((attrition_name, last, final), 1), (big_n, -1)])
    members: dict[str, list[int]] = {}
    first: dict[str, list[int]] = {}
    for j, crit in enumerate(f["criteria"]):
        crit = [c for c in crit if c in step]
        if not crit:
            continue
        for cid in crit:
            members.setdefault(cid, []).append(j)
        first.setdefault(min(crit, key=step.get), []).append(j)
        if bound == "optimistic" and len(crit) == 1 and wb.has((attrition_name, step[crit[0]], "unique")):
            wb.same((name, j, "count"), (attrition_name, step[crit[0]], "unique"))
    lost = "lost_optimistic" if bound == "optimistic" else "lost_strict"
    for cid, i in step.items():
        terms = [((name, j, "count"), 1) for j in members.get(cid, [])]
        if wb.has((attrition_name, i, "failed")):
            cap = [((attrition_name, i, "failed"), -1)]
            if bound != "optimistic":
                cap.append(((attrition_name, i, "unknown"), -1))
            add(terms + cap)
        add([((name, j, "count"), 1) for j in first.get(cid, [])] + [((attrition_name, i, lost), -1)])


def compare_totals(wb: Workbook, frame: pd.DataFrame, name: str = "Scenario vs protocol", *,
                   attrition_name: str | None = "Attrition") -> None:
    """kn026.core.funnel.compare_totals: measures (screened, strict, optimistic, unknown) x base, other, delta.

    Per row other - base = delta; per column optimistic = strict + unknown and
    optimistic <= N; screened is public. The scenario column is the funnel's last row.
    """
    wb.add(name, frame, ["base", "other"], signed=["delta"])
    f = frame.reset_index(drop=True)
    pos = {m: i for i, m in enumerate(f["measure"])}
    big_n = screened(wb, int(f.loc[pos["screened"], "base"])) if "screened" in pos else None
    for i in range(len(f)):
        wb.equation([((name, i, "other"), 1), ((name, i, "base"), -1), ((name, i, "delta"), -1)])
    if big_n is not None:
        wb.same((name, pos["screened"], "base"), big_n)
        wb.same((name, pos["screened"], "other"), big_n)
        wb.public((name, pos["screened"], "delta"))
    if {"strict", "unknown", "optimistic"} <= set(pos):
        for col in ("base", "other", "delta"):
            wb.equation([((name, pos["strict"], col), 1), ((name, pos["unknown"], col), 1),
                         ((name, pos["optimistic"], col), -1)])
        if big_n is not None:
            for col in ("base", "other"):
                wb.at_most([((name, pos["optimistic"], col), 1), (big_n, -1)])
    if attrition_name in wb.sheets:
        att = wb.sheets[attrition_name].frame
        last = len(att) - 1
        unk = _unknown_col(att)
        for m, col in (("strict", "strict"), ("optimistic", "optimistic"), ("unknown", unk)):
            if m in pos:
                wb.same((name, pos[m], "other"), (attrition_name, last, col))


COMPARED = ("failed", "unknown", "marginal", "unique")


def compare_deltas(wb: Workbook, frame: pd.DataFrame, name: str = "Per-criterion changes", *,
                   attrition_name: str | None = "Attrition", totals_name: str | None = "Scenario vs protocol",
                   stats: Sequence[str] = COMPARED) -> None:
    """kn026.core.funnel.compare: per criterion, <stat>_base / _other / _delta.

    delta = other - base; marginal is failed; a criterion absent from one side counts 0
    there (public); unique <= failed and failed + unknown <= N on each side; the
    scenario side is the funnel's per-criterion statistics; with the totals table, on
    the protocol side sum unique <= N - optimistic <= sum failed.
    """
    stats = [s for s in stats if f"{s}_base" in frame.columns]
    counts = [f"{s}_{side}" for s in stats for side in ("base", "other")]
    wb.add(name, frame, counts, signed=[f"{s}_delta" for s in stats])
    f = frame.reset_index(drop=True)
    big_n = ("", SCREENED, "") if wb.has(("", SCREENED, "")) else None
    for i in range(len(f)):
        for s in stats:
            wb.equation([((name, i, f"{s}_other"), 1), ((name, i, f"{s}_base"), -1), ((name, i, f"{s}_delta"), -1)])
        if "marginal" in stats and "failed" in stats:
            for side in ("base", "other", "delta"):
                wb.same((name, i, f"marginal_{side}"), (name, i, f"failed_{side}"))
        for side, flag in (("base", "in_base"), ("other", "in_other")):
            if flag in f.columns and not bool(f[flag].iloc[i]):
                wb.public(*[(name, i, f"{s}_{side}") for s in stats])
            if "unique" in stats and "failed" in stats:
                wb.at_most([((name, i, f"unique_{side}"), 1), ((name, i, f"failed_{side}"), -1)])
            if big_n is not None and "unknown" in stats and "failed" in stats:
                wb.at_most([((name, i, f"failed_{side}"), 1), ((name, i, f"unknown_{side}"), 1), (big_n, -1)])
    if attrition_name in wb.sheets:
        att = wb.sheets[attrition_name].frame
        step = {cid: i for i, cid in enumerate(att["criterion"]) if i}
        for i, cid in enumerate(f["criterion"]):
            if cid not in step:
                continue
            for s, col in (("failed", "failed"), ("unknown", "unknown"), ("unique", "unique")):
                if s in stats and wb.has((attrition_name, step[cid], col)):
                    wb.same((name, i, f"{s}_other"), (attrition_name, step[cid], col))
    if totals_name in wb.sheets and big_n is not None:
        tot = wb.sheets[totals_name].frame
        opt = (totals_name, list(tot["measure"]).index("optimistic"), "base")
        rows = [i for i in range(len(f)) if "in_base" not in f.columns or bool(f["in_base"].iloc[i])]
        if "unique" in stats and rows:
            wb.at_most([((name, i, "unique_base"), 1) for i in rows] + [(opt, 1), (big_n, -1)])
        if "failed" in stats:
            wb.at_most([(big_n, 1), (opt, -1)] + [((name, i, "failed_base"), -1) for i in rows])


def sites(wb: Workbook, site_frame: pd.DataFrame, country_frame: pd.DataFrame | None,
          names: tuple[str, str] = ("Sites", "Countries"), *, attrition_name: str | None = "Attrition",
          columns: Sequence[str] = SITE_COUNTS) -> None:
    """Per-site and per-country tables (kn026.report.patients.site_table / country_table).

    Per row optimistic = strict + unknown and screened = optimistic + excluded; a
    country is the sum of its sites; the countries (else the sites) add up to the
    release's totals: N screened (public), and the funnel's last row when the release
    has one (excluded = N - o_m), else public totals. A table sorted by screened tells
    screened_i >= screened_{i+1}.
    """
    site_name, country_name = names
    cols = [c for c in columns if c in site_frame.columns]
    derived = {k: v for k, v in SITE_DERIVED.items() if k in site_frame.columns}
    wb.add(site_name, site_frame, cols, derived=derived)
    frames = {site_name: site_frame.reset_index(drop=True)}
    if country_frame is not None:
        wb.add(country_name, country_frame, cols, derived=derived)
        frames[country_name] = country_frame.reset_index(drop=True)
    for tname, f in frames.items():
        for i in range(len(f)):
            if {"strict", "unknown", "optimistic"} <= set(cols):
                wb.equation([((tname, i, "strict"), 1), ((tname, i, "unknown"), 1), ((tname, i, "optimistic"), -1)])
            if {"optimistic", "excluded", "screened"} <= set(cols):
                wb.equation([((tname, i, "optimistic"), 1), ((tname, i, "excluded"), 1),
                             ((tname, i, "screened"), -1)])
        if "screened" in cols:
            values = f["screened"].to_numpy()
            if len(values) > 1 and np.all(values[1:] <= values[:-1]):
                for i in range(len(f) - 1):
                    wb.at_most([((tname, i + 1, "screened"), 1), ((tname, i, "screened"), -1)])
    top = site_name
    if country_frame is not None:
        sf, cf = frames[site_name], frames[country_name]
        for j, country in enumerate(cf["country"]):
            members = [i for i, c in enumerate(sf["country"]) if c == country]
            for col in cols:
                wb.equation([((site_name, i, col), 1) for i in members] + [((country_name, j, col), -1)])
        top = country_name
    f = frames[top]
    total_n = int(frames[site_name]["screened"].sum()) if "screened" in cols else None
    big_n = screened(wb, total_n) if total_n is not None else None
    att = wb.sheets[attrition_name].frame if attrition_name in wb.sheets else None
    for col in cols:
        terms = [((top, i, col), 1) for i in range(len(f))]
        if col == "screened":
            wb.equation(terms + [(big_n, -1)])
            continue
        if att is not None and len(att):
            last = len(att) - 1
            unk = _unknown_col(att)
            source = {"strict": "strict", "optimistic": "optimistic", "unknown": unk}.get(col)
            if source is not None:
                wb.equation(terms + [((attrition_name, last, source), -1)])
                continue
            if col == "excluded" and big_n is not None:
                wb.equation(terms + [((attrition_name, last, "optimistic"), 1), (big_n, -1)])
                continue
        total = wb.constant(f"{top}.total.{col}", float(frames[site_name][col].sum()))
        wb.equation(terms + [(total, -1)])


def parts(wb: Workbook, name: str, frame: pd.DataFrame, column: str, total: int,
          derived: dict[str, str] | None = None) -> None:
    """Counts that add up to a public total (the bins of a histogram, with its missing values)."""
    wb.add(name, frame, [column], derived=derived)
    t = wb.constant(f"{name}.total", total)
    wb.equation([((name, i, column), 1) for i in range(len(frame))] + [(t, -1)])


def independent(wb: Workbook, name: str, frame: pd.DataFrame, columns: Sequence[str],
                derived: dict[str, str] | None = None) -> None:
    """Counts with no identity among them (beyond the ones the caller adds)."""
    wb.add(name, frame, list(columns), derived=derived)


RECRUITMENT_DERIVED = ("expected", "share_pct", "enrol_rate", "rate_mean", "rate_80", "candidate_rate")


def recruitment_sites(wb: Workbook, frame: pd.DataFrame, name: str = "Recruitment sites", *,
                      sites_name: str | None = "Sites") -> None:
    """The Recruitment page's per-site table (kn026.forecast.recruitment.site_table frame).

    Its `screened` column is the Sites table's (the same quantity, by site); every number
    computed from a site's patients (rates, their interval, expected patients, share)
    is hidden with that site's screened count, since it gives the count back.
    """
    derived = {c: "screened" for c in RECRUITMENT_DERIVED if c in frame.columns and "screened" in frame.columns}
    wb.add(name, frame, ["screened"] if "screened" in frame.columns else [], derived=derived)
    if "screened" not in frame.columns or sites_name not in wb.sheets:
        return
    sites = wb.sheets[sites_name].frame
    row_of = {str(s): i for i, s in enumerate(sites["site"])}
    for i, site in enumerate(frame["site"]):
        j = row_of.get(str(site))
        if j is not None and wb.has((name, i, "screened")) and wb.has((sites_name, j, "screened")):
            if wb.value((name, i, "screened")) == wb.value((sites_name, j, "screened")):
                wb.same((name, i, "screened"), (sites_name, j, "screened"))
