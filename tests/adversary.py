"""A reader who wants the suppressed counts back: reads a report file, does the arithmetic.

Written from what the published tables mean (their headers, README / docs), not from
kn026.report.published: the identities below are this reader's own. For every cell shown as
suppressed it solves, with scipy's linprog, the smallest and largest value consistent
with every number the file shows (tables and chart data alike), the identities and
non-negativity, and reports the interval. Rounded numbers (percentages and Shapley
shares, 2 decimals) are used as intervals of +- 0.005.

Readers: `read_xlsx`, `read_html`, `read_pptx` return {section: DataFrame with the
file's headers and cell values (numbers, or the label text)} plus the chart values
keyed like table cells, and N (patients screened, from the title block).
"""

from __future__ import annotations

import io
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
from scipy.optimize import linprog

LABEL = "suppressed"

# section title (prefix) -> key; the same words the report uses for its sheets and slides
SHEETS = {"Attrition": "attrition", "Combinations": "combinations", "Scenario vs protocol": "totals",
          "Per-criterion changes": "deltas", "Sites": "sites", "Countries": "countries"}
TITLES = [("Sequential attrition", "attrition"), ("Most frequent combinations", "combinations"),
          ("Per criterion: protocol", "deltas"), ("Screened and eligible patients per site", "sites"),
          ("Screened and eligible patients per country", "countries"), ("Recruitment forecast", "forecast")]


def _number(v):
    """A cell as a float, None for an empty cell, or the string itself (a label, a name)."""
    if v is None:
        return None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return None if np.isnan(v) else float(v)
    s = str(v).strip()
    if s == "":
        return None
    t = s.replace(",", "")
    if t.lower() == "nan":
        return None
    if re.fullmatch(r"[+-]?\d+(\.\d+)?", t):
        return float(t)
    return s


# --------------------------------------------------------------------------- readers


def read_xlsx(data: bytes):
    import openpyxl

    wb = openpyxl.load_workbook(io.BytesIO(data), data_only=False)
    about = {r[0]: r[1] for r in wb["About"].iter_rows(min_row=4, values_only=True) if r and r[0]}
    tables = {}
    for ws in wb.worksheets[1:]:
        key = SHEETS.get(ws.title)
        if key is None:
            continue
        rows = list(ws.iter_rows(values_only=True))
        h = next(i for i, r in enumerate(rows) if i >= 3 and r and r[0] is not None)
        header = [str(c) for c in rows[h]]
        body = [[_number(v) for v in r] for r in rows[h + 1:] if any(v is not None for v in r)]
        tables[key] = pd.DataFrame(body, columns=header)
    return tables, {}, _screened(about["Cohort"])


def _screened(text: str) -> int:
    return int(re.search(r"\(([\d,]+) patients\)", text).group(1).replace(",", ""))


class _Tables(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables, self.about = {}, {}
        self.cur, self.row, self.cell, self.key, self.in_about = None, None, None, None, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "data-section" in a:
            self.key, self.cur = a["data-section"], []
        elif tag == "table" and a.get("class") == "about":
            self.in_about, self.cur = True, []
        elif tag == "tr" and self.cur is not None:
            self.row = []
        elif tag in ("td", "th") and self.row is not None:
            self.cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.row.append(self.cell)
            self.cell = None
        elif tag == "tr" and self.row is not None:
            self.cur.append(self.row)
            self.row = None
        elif tag == "table" and self.cur is not None:
            if self.in_about:
                self.about = {r[0]: r[1] for r in self.cur if len(r) == 2}
                self.in_about = False
            else:
                self.tables[self.key] = pd.DataFrame([[_number(v) for v in r] for r in self.cur[1:]],
                                                     columns=self.cur[0])
            self.cur = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def read_html(data: bytes):
    p = _Tables()
    p.feed(data.decode("utf-8"))
    return p.tables, {}, _screened(p.about["Cohort"])


def read_pptx(data: bytes):
    """Tables (joined over their slides) and every chart series, keyed (chart title, series, category)."""
    from pptx import Presentation

    prs = Presentation(io.BytesIO(data))
    tables: dict[str, list] = {}
    headers: dict[str, list] = {}
    chart_values = []
    about = {}
    for i, slide in enumerate(prs.slides):
        texts = [s.text_frame.text for s in slide.shapes if s.has_text_frame]
        title = texts[0] if texts else ""
        for shape in slide.shapes:
            if shape.has_table:
                rows = [[c.text for c in r.cells] for r in shape.table.rows]
                if i == 0:
                    about = {r[0]: r[1] for r in rows}
                    continue
                key = next((k for prefix, k in TITLES if title.startswith(prefix)), None)
                if key is None and " vs the protocol" in title:
                    key = "totals"
                if key is None:
                    continue
                headers[key] = rows[0]
                tables.setdefault(key, []).extend([[_number(v) for v in r] for r in rows[1:]])
            if shape.has_chart:
                chart = shape.chart
                cats = list(chart.plots[0].categories)
                for series in chart.plots[0].series:
                    for cat, v in zip(cats, series.values, strict=True):
                        chart_values.append((title, series.name, cat, v))
    frames = {k: pd.DataFrame(v, columns=headers[k]) for k, v in tables.items()}
    return frames, chart_values, _screened(about["Cohort"])


# --------------------------------------------------------------------------- the reader's model


class Model:
    """Variables for cells; what is shown fixes them; identities constrain them."""

    def __init__(self):
        self.index: dict[tuple, int] = {}
        self.lo: list[float] = []
        self.hi: list[float] = []
        self.hidden: dict[tuple, int] = {}
        self.integer: list[bool] = []
        self.eq: list[tuple[dict, float]] = []
        self.ub: list[tuple[dict, float]] = []

    def var(self, key, signed=False, integer=True) -> int:
        if key not in self.index:
            self.index[key] = len(self.lo)
            self.lo.append(-np.inf if signed else 0.0)
            self.hi.append(np.inf)
            self.integer.append(integer)
        return self.index[key]

    def cell(self, key, value, signed=False, tol=0.0, integer=True) -> int | None:
        """A published cell: a number fixes its variable (within `tol`), the label hides it."""
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return None  # pandas turns an empty cell of a numeric column into NaN
        j = self.var(key, signed, integer)
        if isinstance(value, str):
            if value == LABEL:
                self.hidden[key] = j
                return j
            return None
        self.lo[j] = max(self.lo[j], value - tol)
        self.hi[j] = min(self.hi[j], value + tol)
        return j

    def has(self, key) -> bool:
        return key in self.index

    def _terms(self, terms: dict) -> dict:
        """Variables of the terms; a quantity the file does not show is a free count (a change: any sign)."""
        out: dict[int, float] = {}
        for k, c in terms.items():
            j = self.var(k, signed=k[-1] == "delta")
            out[j] = out.get(j, 0.0) + c
        return out

    def equal(self, terms: dict, rhs: float = 0.0, tol: float = 0.0) -> None:
        terms = self._terms(terms)
        if tol:
            self.ub.append((terms, rhs + tol))
            self.ub.append(({j: -c for j, c in terms.items()}, -rhs + tol))
        else:
            self.eq.append((terms, rhs))

    def at_most(self, terms: dict, rhs: float = 0.0) -> None:
        self.ub.append((self._terms(terms), rhs))

    def attack(self) -> dict[tuple, tuple[float, float]]:
        """Smallest and largest value of each hidden cell. Cells pinned to one value are
        substituted first; the rest splits into groups that share no constraint, one LP
        system per group (the same answers as one big system, much faster)."""
        n = len(self.lo)
        lo, hi = np.array(self.lo), np.array(self.hi)
        fixed = np.isfinite(lo) & np.isfinite(hi) & (hi - lo < 1e-12)
        rows = [(t, b, True) for t, b in self.eq] + [(t, b, False) for t, b in self.ub]
        parent = list(range(n))

        def find(c):
            while parent[c] != c:
                parent[c] = parent[parent[c]]
                c = parent[c]
            return c

        for terms, _, _ in rows:
            free = [j for j in terms if not fixed[j]]
            for j in free[1:]:
                a, b = find(free[0]), find(j)
                if a != b:
                    parent[b] = a
        by_group: dict[int, list] = {}
        for r, (terms, _, _) in enumerate(rows):
            free = [j for j in terms if not fixed[j]]
            if free:
                by_group.setdefault(find(free[0]), []).append(r)
        out = {}
        models: dict[int, tuple] = {}
        for key, j in self.hidden.items():
            g = find(j)
            if g not in models:
                models[g] = self._group(by_group.get(g, []), rows, fixed, lo, hi, j)
            solve, pos = models[g]
            a, b = solve(pos[j], False), solve(pos[j], True)
            if self.integer[j]:
                a, b = np.ceil(a - 1e-6), np.floor(b + 1e-6)
            out[key] = (a, b)
        return out

    @staticmethod
    def _group(group_rows, rows, fixed, lo, hi, j):
        """(solve(position, maximise) -> extreme value, positions) for one group of linked cells.

        HiGHS, kept loaded between objectives (warm starts); `linprog` if scipy's HiGHS
        core is not where this scipy keeps it."""
        members = sorted({v for r in group_rows for v in rows[r][0] if not fixed[v]} | {j})
        pos = {v: i for i, v in enumerate(members)}
        a, row_lo, row_hi = [], [], []
        for r in group_rows:
            terms, b, is_eq = rows[r]
            line = np.zeros(len(members))
            const = 0.0
            for v, c in terms.items():
                if fixed[v]:
                    const += c * lo[v]
                else:
                    line[pos[v]] += c
            a.append(line)
            row_hi.append(b - const)
            row_lo.append(b - const if is_eq else -np.inf)
        a = np.array(a).reshape(len(a), len(members))
        col_lo = np.array([lo[v] for v in members])
        col_hi = np.array([hi[v] for v in members])
        try:
            from scipy.optimize._highspy import _core as hc
        except ImportError:  # pragma: no cover
            hc = None

        def by_linprog(i, maximise):
            c = np.zeros(len(members))
            c[i] = -1.0 if maximise else 1.0
            eq = np.array(row_lo) == np.array(row_hi)
            res = linprog(c, A_eq=a[eq] if eq.any() else None, b_eq=np.array(row_hi)[eq] if eq.any() else None,
                          A_ub=a[~eq] if (~eq).any() else None,
                          b_ub=np.array(row_hi)[~eq] if (~eq).any() else None,
                          bounds=[(None if not np.isfinite(x) else x, None if not np.isfinite(y) else y)
                                  for x, y in zip(col_lo, col_hi, strict=True)], method="highs")
            assert res.status in (0, 3), f"the published numbers are inconsistent ({res.message})"
            return (np.inf if maximise else -np.inf) if res.status == 3 else float(res.x[i])

        if hc is None or not len(a):
            return by_linprog, pos
        import scipy.sparse as sparse

        h = hc._Highs()
        h.setOptionValue("output_flag", False)
        lp = hc.HighsLp()
        inf = hc.kHighsInf
        lp.num_col_, lp.num_row_ = len(members), len(a)
        lp.col_cost_ = np.zeros(len(members))
        lp.col_lower_ = np.where(np.isfinite(col_lo), col_lo, -inf)
        lp.col_upper_ = np.where(np.isfinite(col_hi), col_hi, inf)
        lp.row_lower_ = np.where(np.isfinite(row_lo), row_lo, -inf)
        lp.row_upper_ = np.array(row_hi)
        m = sparse.csc_matrix(a)
        lp.a_matrix_.format_ = hc.MatrixFormat.kColwise
        lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = m.indptr, m.indices, m.data
        lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = len(members), len(a)
        h.passModel(lp)

        def solve(i, maximise):
            h.changeColCost(i, 1.0)
            h.changeObjectiveSense(hc.ObjSense.kMaximize if maximise else hc.ObjSense.kMinimize)
            h.run()
            status = h.getModelStatus()
            value = float(h.getInfo().objective_function_value)
            h.changeColCost(i, 0.0)
            if status == hc.HighsModelStatus.kOptimal:
                return value
            if status == hc.HighsModelStatus.kUnbounded:
                return np.inf if maximise else -np.inf
            return by_linprog(i, maximise)  # anything else: let linprog say (and assert feasibility)

        return solve, pos


R2 = 0.005 + 1e-9  # half a unit of the 2nd decimal


def build(tables: dict[str, pd.DataFrame], charts: list, n: int, top: int = 12) -> Model:
    """The reader's system for one report file."""
    m = Model()
    big_n = m.cell(("N",), float(n))
    att = tables["attrition"]
    ids = [str(c) for c in att["Criterion"]]
    steps = len(ids) - 1
    col = {"Remaining (strict)": "s", "Remaining (optimistic)": "o", "Unknown so far": "u",
           "Lost at step (strict)": "ls", "Lost at step (optimistic)": "lo", "Fail (marginal)": "f",
           "Fail only this (unique)": "q", "Unknown on criterion": "n"}
    for i, cid in enumerate(ids):
        for header, short in col.items():
            if header in att.columns:
                m.cell(("att", cid, short), att[header].iloc[i])
        for header, short in (("Shapley share (strict)", "hs"), ("Shapley share (optimistic)", "ho")):
            if header in att.columns:
                m.cell(("att", cid, short), att[header].iloc[i], tol=R2, integer=False)
        for header, short in (("% of screened (strict)", "s"), ("% of screened (optimistic)", "o")):
            if header in att.columns:
                _pct(m, att[header].iloc[i], ("att", cid, short), None, n)
    a = lambda cid, s: ("att", cid, s)  # noqa: E731
    m.equal({a("Screened", "s"): 1, ("N",): -1})
    m.equal({a("Screened", "o"): 1, ("N",): -1})
    last = ids[-1]
    for i, cid in enumerate(ids):
        m.equal({a(cid, "s"): 1, a(cid, "u"): 1, a(cid, "o"): -1})
        if i:
            prev = ids[i - 1]
            m.equal({a(prev, "s"): 1, a(cid, "ls"): -1, a(cid, "s"): -1})
            m.equal({a(prev, "o"): 1, a(cid, "lo"): -1, a(cid, "o"): -1})
            m.at_most({a(cid, "q"): 1, a(cid, "lo"): -1})
            m.at_most({a(cid, "lo"): 1, a(cid, "f"): -1})
            m.at_most({a(cid, "ls"): 1, a(cid, "f"): -1, a(cid, "n"): -1})
            m.at_most({a(cid, "f"): 1, a(cid, "n"): 1, ("N",): -1})
            m.at_most({a(cid, "q"): 1, a(cid, "ho"): -1})
            m.at_most({a(cid, "ho"): 1, a(cid, "f"): -1})
            m.at_most({a(cid, "f"): 1, a(cid, "ho"): -steps})
            m.at_most({a(cid, "hs"): 1, a(cid, "f"): -1, a(cid, "n"): -1})
            m.at_most({a(cid, "f"): 1, a(cid, "n"): 1, a(cid, "hs"): -steps})
    if steps:
        first = ids[1]
        m.equal({a(first, "lo"): 1, a(first, "f"): -1})
        m.equal({a(first, "ls"): 1, a(first, "f"): -1, a(first, "n"): -1})
        crit = ids[1:]
        if m.has(a(first, "ho")):
            m.equal({**{a(c, "ho"): 1 for c in crit}, a(last, "o"): 1, ("N",): -1}, tol=R2 * steps)
        if m.has(a(first, "hs")):
            m.equal({**{a(c, "hs"): 1 for c in crit}, a(last, "s"): 1, ("N",): -1}, tol=R2 * steps)
        m.at_most({**{a(c, "q"): 1 for c in crit}, a(last, "o"): 1, ("N",): -1})
        m.at_most({**{a(c, "f"): -1 for c in crit}, a(last, "o"): -1, ("N",): 1})
    position = {cid: i for i, cid in enumerate(ids)}

    combos = tables.get("combinations")
    if combos is not None:
        rows = len(combos)
        add = m.equal if rows < top else m.at_most
        members: dict[str, list] = {}
        firsts: dict[str, list] = {}
        for j in range(rows):
            key = ("combo", j)
            m.cell(key, combos["Patients"].iloc[j])
            _pct(m, combos["% of screened"].iloc[j], key, None, n)
            crit = [c.strip() for c in str(combos["Combination"].iloc[j]).split("+")]
            for c in crit:
                members.setdefault(c, []).append(key)
            firsts.setdefault(min(crit, key=position.get), []).append(key)
            if len(crit) == 1:
                m.equal({key: 1, a(crit[0], "q"): -1})
            if j:
                m.at_most({key: 1, ("combo", j - 1): -1})
        add({**{("combo", j): 1 for j in range(rows)}, a(last, "o"): 1, ("N",): -1})
        for c in ids[1:]:
            add({**dict.fromkeys(members.get(c, []), 1), a(c, "f"): -1})
            add({**dict.fromkeys(firsts.get(c, []), 1), a(c, "lo"): -1})

    tot = tables.get("totals")
    if tot is not None:
        names = {"Screened": "screened", "Eligible · strict": "strict", "Eligible · optimistic": "optimistic",
                 "Unknown": "unknown"}
        for i in range(len(tot)):
            meas = names[tot["Measure"].iloc[i]]
            for header, side in (("Protocol", "base"), ("Scenario", "other"), ("Change", "delta")):
                m.cell(("tot", meas, side), tot[header].iloc[i], signed=side == "delta")
        for meas in names.values():
            m.equal({("tot", meas, "other"): 1, ("tot", meas, "base"): -1, ("tot", meas, "delta"): -1})
        for side in ("base", "other", "delta"):
            m.equal({("tot", "strict", side): 1, ("tot", "unknown", side): 1, ("tot", "optimistic", side): -1})
        for side in ("base", "other"):
            m.equal({("tot", "screened", side): 1, ("N",): -1})
            m.at_most({("tot", "optimistic", side): 1, ("N",): -1})
        for meas, short in (("strict", "s"), ("optimistic", "o"), ("unknown", "u")):
            m.equal({("tot", meas, "other"): 1, a(last, short): -1})

    deltas = tables.get("deltas")
    if deltas is not None:
        stats = {"Fail": "f", "Unknown": "n", "Only this": "q"}
        prot_rows = []
        for i in range(len(deltas)):
            cid = str(deltas["Criterion"].iloc[i])
            note = str(deltas["Note"].iloc[i]) if "Note" in deltas.columns and deltas["Note"].iloc[i] else ""
            for word, short in stats.items():
                for side, side_key in (("protocol", "base"), ("scenario", "other"), ("change", "delta")):
                    header = f"{word} · {side}"
                    if header in deltas.columns:
                        m.cell(("d", cid, short, side_key), deltas[header].iloc[i], signed=side_key == "delta")
                m.equal({("d", cid, short, "other"): 1, ("d", cid, short, "base"): -1, ("d", cid, short, "delta"): -1})
                if cid in position and note != "disabled in scenario":
                    m.equal({("d", cid, short, "other"): 1, a(cid, short): -1})
            for side in ("base", "other"):
                m.at_most({("d", cid, "q", side): 1, ("d", cid, "f", side): -1})
                m.at_most({("d", cid, "f", side): 1, ("d", cid, "n", side): 1, ("N",): -1})
            if note != "only in scenario":
                prot_rows.append(cid)
        if tot is not None:
            m.at_most({**{("d", c, "q", "base"): 1 for c in prot_rows}, ("tot", "optimistic", "base"): 1, ("N",): -1})
            m.at_most({**{("d", c, "f", "base"): -1 for c in prot_rows}, ("tot", "optimistic", "base"): -1,
                       ("N",): 1})

    site_cols = {"Screened": "screened", "Eligible · strict": "strict", "Eligible · optimistic": "optimistic",
                 "Unknown": "unknown", "Not eligible": "excluded"}
    for key, by in (("sites", "Site"), ("countries", "Country")):
        f = tables.get(key)
        if f is None:
            continue
        for i in range(len(f)):
            name = str(f[by].iloc[i])
            for header, short in site_cols.items():
                if header in f.columns:
                    m.cell((key, name, short), f[header].iloc[i])
            m.equal({(key, name, "strict"): 1, (key, name, "unknown"): 1, (key, name, "optimistic"): -1})
            m.equal({(key, name, "optimistic"): 1, (key, name, "excluded"): 1, (key, name, "screened"): -1})
            for header, short in (("% eligible · strict", "strict"), ("% eligible · optimistic", "optimistic")):
                if header in f.columns:
                    _pct(m, f[header].iloc[i], (key, name, short), (key, name, "screened"), None)
            if i:
                m.at_most({(key, name, "screened"): 1, (key, str(f[by].iloc[i - 1]), "screened"): -1})
    sites, countries = tables.get("sites"), tables.get("countries")
    if sites is not None and countries is not None:
        for country in countries["Country"]:
            members = [str(s) for s, c in zip(sites["Site"], sites["Country"], strict=True) if c == country]
            for short in site_cols.values():
                m.equal({**{("sites", s, short): 1 for s in members}, ("countries", str(country), short): -1})
    top_table = "countries" if countries is not None else "sites" if sites is not None else None
    if top_table is not None:
        f = tables[top_table]
        by = "Country" if top_table == "countries" else "Site"
        names = [str(v) for v in f[by]]
        for short, total in (("screened", {("N",): -1}), ("strict", {a(last, "s"): -1}),
                             ("optimistic", {a(last, "o"): -1}), ("unknown", {a(last, "u"): -1}),
                             ("excluded", {a(last, "o"): 1, ("N",): -1})):
            m.equal({**{(top_table, nm, short): 1 for nm in names}, **total})

    fc = tables.get("forecast")
    if fc is not None:
        for i in range(len(fc)):
            short = "s" if str(fc["Bound"].iloc[i]).lower() == "strict" else "o"
            _pct(m, fc["Eligible %"].iloc[i], a(last, short), None, n)
    _charts(m, charts, ids, tables)
    del big_n
    return m


def _pct(m: Model, pct, count_key, denominator_key, n) -> None:
    """A shown percentage (2 decimals) of a count over N (number) or over another cell."""
    if pct is None or isinstance(pct, str) or np.isnan(pct) or count_key not in m.index:
        return
    lo, hi = (pct - R2) / 100, (pct + R2) / 100
    if denominator_key is None:
        m.at_most({count_key: 1}, hi * n)
        m.at_most({count_key: -1}, -lo * n)
    elif denominator_key in m.index:
        m.at_most({count_key: 1, denominator_key: -hi})
        m.at_most({count_key: -1, denominator_key: lo})


def _charts(m: Model, values: list, ids: list[str], tables) -> None:
    """Chart data (pptx): a number shown for a cell fixes it, like a table cell."""
    for title, series, cat, v in values:
        if v is None or series.startswith("Suppressed"):
            continue
        cid = str(cat).split(" · ")[0]
        key = None
        if title.startswith("Patients remaining"):
            key = ("att", cid, {"Eligible so far, strict": "s", "Unknown (optimistic bound)": "u",
                                "Eligible so far, optimistic": "o"}.get(series))
        elif title.startswith("Patients failing"):
            key = ("att", cid, {"Fail (marginal)": "f", "Fail only this (unique)": "q"}.get(series))
        elif " vs the protocol" in title:
            meas = {"Eligible, strict": "strict", "Eligible, optimistic": "optimistic", "Unknown": "unknown"}[cat]
            key = ("tot", meas, "base" if series == "Protocol" else "other")
        elif title.startswith("Screened and eligible patients per"):
            table = "sites" if "per site" in title else "countries"
            key = (table, str(cat), {"Screened": "screened", "Eligible, optimistic": "optimistic",
                                     "Eligible, strict": "strict"}[series])
        if key is None or None in key:
            continue
        j = m.var(key)
        m.lo[j] = max(m.lo[j], float(v))
        m.hi[j] = min(m.hi[j], float(v))


def attack(tables, charts, n, top: int = 12) -> dict:
    """{hidden cell: (smallest, largest)} for one report file."""
    return build(tables, charts, n, top).attack()
