"""The feasibility report: the app's aggregate tables for one engine + scenario, suppressed together.

`build(engine, scenario, settings, cohort_label)` computes the tables the app exports
(attrition = funnel + per-criterion statistics, failure combinations, scenario vs
protocol totals and per-criterion changes, sites and countries), publishes them in one
`kn026.report.workbook.Workbook` so that one suppression step protects every cell against
arithmetic across all of them, and returns a `Report`: the suppressed tables with
readable headers, provenance lines (protocol, stage, cohort, scenario, population,
date, suppression) and what the charts need. `render(report, "xlsx" | "html" |
"pptx")` turns it into file bytes (kn026.feasibility.files, kn026.feasibility.slides); nothing is
written to disk. The app calls the same two functions (no Streamlit here).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt

import pandas as pd

from kn026.core import analysis
from kn026.core import funnel as fm
from kn026.core.engine import Engine
from kn026.core.scenario import Scenario
from kn026.feasibility.document import Report, Section, Settings
from kn026.forecast import recruitment as rc
from kn026.forecast import sites as fsites
from kn026.report import export, patients, published
from kn026.report.workbook import Published, Table, Workbook

FORMATS = ("xlsx", "html", "pptx")
POLICY_LABELS = {"both": "Strict and optimistic", "strict": "Strict (unknown fails)",
                 "optimistic": "Optimistic (unknown passes)"}

COMBINATION_COLUMNS = {"label": "Combination", "size": "Criteria", "count": "Patients", "pct": "% of screened"}
TOTALS_COLUMNS = {"measure": "Measure", "base": "Protocol", "other": "Scenario", "delta": "Change"}
MEASURES = {"screened": "Screened", "strict": "Eligible · strict", "optimistic": "Eligible · optimistic",
            "unknown": "Unknown"}
DELTA_COLUMNS = {"criterion": "Criterion", "label": "Short name", "status": "Note",
                 "failed_base": "Fail · protocol", "failed_other": "Fail · scenario", "failed_delta": "Fail · change",
                 "unknown_base": "Unknown · protocol", "unknown_other": "Unknown · scenario",
                 "unknown_delta": "Unknown · change", "unique_base": "Only this · protocol",
                 "unique_other": "Only this · scenario", "unique_delta": "Only this · change"}
SITE_COLUMNS = {"site": "Site", "country": "Country", "sites": "Sites", "screened": "Screened",
                "strict": "Eligible · strict", "optimistic": "Eligible · optimistic", "unknown": "Unknown",
                "excluded": "Not eligible", "pct_strict": "% eligible · strict",
                "pct_optimistic": "% eligible · optimistic"}


def _now() -> str:
    return _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z").strip()


def build(engine: Engine, scenario: Scenario | None = None, settings: Settings | None = None,
          cohort_label: str = "cohort") -> Report:
    """The report of `engine`'s cohort under `scenario` (default: the protocol)."""
    settings = settings or Settings()
    if settings.policy not in POLICY_LABELS:
        raise ValueError(f"policy must be one of {', '.join(POLICY_LABELS)}")
    if settings.bound not in ("optimistic", "strict"):
        raise ValueError("bound must be 'optimistic' or 'strict'")
    scenario = scenario or Scenario()
    screened_engine = analysis.engine_for(engine, scenario)
    protocol = screened_engine.protocol
    stage = engine.stage
    labels = {c.id: patients.criterion_label(c, stage) for c in protocol.criteria}
    kinds = {c.id: c.kind for c in protocol.criteria}
    texts = {c.id: c.text for c in protocol.criteria}
    res = analysis.run(screened_engine, scenario, list(settings.order) or None)
    n = int(res.totals["screened"])

    wb = Workbook(settings.k)
    frames: dict[str, pd.DataFrame] = {}
    att = export.attrition_frame(res, labels, kinds)
    published.attrition(wb, att, "Attrition", restrictive=settings.restrictive)
    frames["Attrition"] = att
    combos = res.combinations(settings.top, settings.bound)
    if not combos.empty:
        everything = fm.combinations(res.histogram, res.plan.ids, top=None, bound=settings.bound)
        published.combinations(wb, combos, "Combinations", bound=settings.bound,
                               complete=len(everything) <= len(combos))
        frames["Combinations"] = combos
    if not scenario.is_protocol:
        base = analysis.run(engine, Scenario())
        tot = fm.compare_totals(base.histogram, res.histogram)
        deltas = fm.compare(base.histogram, res.histogram, base.plan.ids, res.plan.ids)
        deltas.insert(1, "label", [labels.get(c, "") for c in deltas["criterion"]])
        deltas.insert(2, "status", ["disabled in scenario" if not o else "only in scenario" if not b else ""
                                    for b, o in zip(deltas["in_base"], deltas["in_other"], strict=True)])
        published.compare_totals(wb, tot, "Scenario vs protocol")
        published.compare_deltas(wb, deltas, "Per-criterion changes")
        frames["Scenario vs protocol"], frames["Per-criterion changes"] = tot, deltas
    if "site_id" in engine.cohort.present:
        sites = patients.with_rates(patients.site_table(engine, scenario))
        countries = patients.with_rates(patients.country_table(sites))
        published.sites(wb, sites, countries, ("Sites", "Countries"))
        frames["Sites"], frames["Countries"] = sites, countries
    out = wb.suppress()

    sections = [Section("attrition", "Sequential attrition and per-criterion statistics", out["Attrition"],
                        dict(export.ATTRITION_COLUMNS),
                        "Remaining and lost at each step (strict: unknown fails; optimistic: unknown passes); "
                        "failures, unique failures, unknowns and Shapley shares of each criterion.")]
    if "Combinations" in frames:
        what = "failing criteria" if settings.bound == "optimistic" else "failing or unknown criteria"
        sections.append(Section("combinations", f"Most frequent combinations of {what}", out["Combinations"],
                                COMBINATION_COLUMNS,
                                "Each excluded patient is counted once, under the exact set of criteria that "
                                "exclude them."))
    if "Scenario vs protocol" in frames:
        t = out["Scenario vs protocol"]
        shown = t.frame.assign(measure=t.frame["measure"].map(MEASURES))
        sections.append(Section("totals", f"{scenario.name} vs the protocol: eligible patients",
                                Table(shown, t.hidden, t.threshold), TOTALS_COLUMNS,
                                "Changes: " + ("; ".join(scenario.changes(protocol)) or "none")))
        sections.append(Section("deltas", "Per criterion: protocol → scenario", out["Per-criterion changes"],
                                DELTA_COLUMNS, "Patients failing, unknown on, or failing only this criterion."))
    if "Sites" in frames:
        sections.append(Section("sites", "Screened and eligible patients per site", out["Sites"],
                                {c: SITE_COLUMNS[c] for c in ("site", "country", "screened", "strict", "optimistic",
                                                              "unknown", "excluded", "pct_strict", "pct_optimistic")},
                                "Percentages are of the site's screened patients."))
        sections.append(Section("countries", "Screened and eligible patients per country", out["Countries"],
                                {c: SITE_COLUMNS[c] for c in ("country", "sites", "screened", "strict", "optimistic",
                                                              "unknown", "excluded", "pct_strict", "pct_optimistic")}))
    extra = {"is_protocol": scenario.is_protocol}
    if settings.forecast:
        fc_section, curves = recruitment_forecast(engine, out["Attrition"], settings.recruitment)
        if fc_section is not None:
            sections.append(fc_section)
            extra["curves"] = curves
    about = about_rows(engine, scenario, settings, cohort_label, n, protocol, out)
    name = scenario.name if not scenario.is_protocol else "Protocol"
    title = f"{protocol.name} stage {stage} feasibility: {name}"
    return Report(title, about, sections, out, settings, name, labels, texts, tuple(res.plan.ids), extra)


FORECAST_COLUMNS = {"bound": "Bound", "eligible_pct": "Eligible %", "median_months": "Median (months)",
                    "median_date": "Median date", "pi80": "80 % interval (months)", "pi95": "95 % interval (months)",
                    "note": "Note"}


def recruitment_forecast(engine: Engine, attrition: Table, plan: rc.Plan) -> tuple[Section | None, dict]:
    """Months to the enrolment target per funnel bound (kn026.forecast.recruitment / kn026.forecast.model).

    Needs site_id and screening_date (site rates are estimated from the cohort). A bound
    whose eligible count is suppressed is not forecast: the fraction would give it back.
    Returns the section (None when the cohort cannot be forecast) and the enrolment
    curves (month, q10, q50, q90 per bound) for the charts. Without a target in `plan`, the
    protocol file's enrolment target (and none when it declares none).
    """
    if plan.target is None:
        declared = engine.protocol.enrollment
        if declared.target is None:
            return None, {}
        plan = dataclasses.replace(plan, target=declared.target, target_source=declared.text())
    frame = rc.cohort_site_frame(engine.cohort)
    if frame is None or frame.empty:
        return None, {}

    try:
        sites = rc.build_sites(plan, fsites.estimate_sites(frame))
    except ValueError:
        return None, {}
    last = attrition.masked().iloc[-1]
    n = int(attrition.frame["strict"].iloc[0])
    outcomes, curves = {}, {}
    for bound in rc.BOUNDS:
        value = last[bound]
        fraction = None if pd.isna(value) else int(value) / n
        out = rc.run_bound(plan, sites, bound, fraction, n, label=bound, with_need=False)
        outcomes[bound] = out
        if out.ok:
            curves[bound] = out.result.curve[["month", "q10", "q50", "q90"]].copy()
    table = rc.summary_table(outcomes, None)
    hidden = pd.DataFrame(False, index=table.index, columns=table.columns)
    cols = {c: FORECAST_COLUMNS[c] for c in table.columns if c in FORECAST_COLUMNS}
    table["median_date"] = [d.strftime("%Y-%m-%d") if not pd.isna(d) else "" for d in table["median_date"]]
    note = (f"Target {plan.target_source or f'{plan.target} patients'} from {plan.start:%Y-%m-%d}; uptake {plan.uptake:.0%}; "
            f"{sites.n_sites} sites at their cohort screening rates x {plan.approach:.1%} approached; "
            f"{plan.n_sims:,} simulations (Poisson-Gamma, docs/forecast.md).")
    return Section("forecast", "Recruitment forecast", Table(table, hidden, attrition.threshold), cols, note), curves


def about_rows(engine, scenario: Scenario, settings: Settings, cohort_label: str, n: int, protocol,
               out: Published) -> list[tuple[str, str]]:
    """Provenance: what every table of the report is about (also on every slide's footer)."""
    changes = scenario.changes(protocol) if not scenario.is_protocol else []
    k = out.k
    if k:
        supp = (f"counts below {k} hidden, with the counts that would reveal them by arithmetic "
                f"({out.n_hidden} cells shown as “{settings.label}”)")
    else:
        supp = "off"
    order = settings.order_label or ("as given" if settings.order else "protocol order")
    return [
        ("Protocol", f"{protocol.name} ({protocol.registry})" if getattr(protocol, "registry", "") else protocol.name),
        ("Stage", f"{engine.stage}: {protocol.stages.get(engine.stage, '')}".rstrip(": ")),
        ("Cohort", f"{cohort_label} ({n:,} patients)"),
        ("Population", settings.population),
        ("Scenario", scenario.name if not scenario.is_protocol else "Protocol"),
        ("Changes from protocol", "; ".join(changes) or "none"),
        ("Funnel order", order),
        ("Unknown handling", POLICY_LABELS[settings.policy]),
        ("Small-cell suppression", supp),
        ("Generated", _now()),
    ]


def render(report: Report, fmt: str) -> bytes:
    """The report as file bytes: "xlsx", "html" or "pptx" (each renderer imported when asked for)."""
    fmt = fmt.lower().lstrip(".")
    if fmt == "xlsx":
        from kn026.feasibility.files import to_xlsx

        return to_xlsx(report)
    if fmt == "html":
        from kn026.feasibility.files import to_html

        return to_html(report).encode("utf-8")
    if fmt == "pptx":
        from kn026.feasibility.slides import to_pptx

        return to_pptx(report)
    raise ValueError(f"unknown report format {fmt!r}; use one of {', '.join(FORMATS)}")


def with_disabled(scenario: Scenario, ids) -> Scenario:
    """`scenario` with more criteria / rules switched off (the CLI's --disable)."""
    return dataclasses.replace(scenario, disabled=scenario.disabled | set(ids))
