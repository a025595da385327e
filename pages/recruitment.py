"""Recruitment: how long enrolling the target takes, with which sites, and what the scenario buys."""

import calendar
import datetime as dt
from dataclasses import replace

import streamlit as st

from kn026.forecast import charts as fcharts
from kn026.forecast import recruitment as rc
from kn026.forecast import sites as fsites
from ui import components, results, session, shell
from ui import recruitment as page

ctx = shell.page_start("Recruitment", ":material/trending_up:")

st.title("Recruitment forecast")
components.context_line(ctx)
st.caption("How long enrolling the target takes, with honest uncertainty: the Poisson-Gamma recruitment model "
           "(Anisimov and Fedorov) fed by the funnel's eligible fraction and each site's screening rate. "
           "Method and assumptions: the *Method* tab and docs/forecast.md.")
summary = st.container()  # the readout goes above the inputs; filled once they are read

estimated, why_not = page.rec_estimated_sites(ctx)
token = page.rec_token()
today = dt.date.today()


def end_of_month(d: dt.date, months: int) -> dt.date:
    y, m = divmod(d.month - 1 + months, 12)
    year, month = d.year + y, m + 1
    return dt.date(year, month, calendar.monthrange(year, month)[1])


_num = st.column_config.NumberColumn
SUMMARY_COLUMNS = {
    "bound": "Bound", "forecast": "Forecast", "eligible_pct": _num("Eligible", format="%.1f%%"),
    "median_months": _num("Median (months)", format="%.1f",
                          help="Half of the simulated trials reach the target by then."),
    "median_date": st.column_config.DateColumn("Median date"),
    "pi80": st.column_config.TextColumn("80 % interval (months)",
                                        help="8 in 10 simulated trials reach the target within this range."),
    "pi95": st.column_config.TextColumn("95 % interval (months)"),
    "note": "Note",
}

# --------------------------------------------------------------------------- inputs
inputs_box = st.container(border=True)
with inputs_box:
    st.markdown("**Trial**")
    c = st.columns(5)
    declared = ctx.protocol.enrollment
    target = c[0].number_input(
        "Target enrolment", min_value=0, max_value=100_000, step=1,
        **page.rec_state("target", declared.target if declared.target is not None else 100),
        help=f"Patients to enrol in this stage. The protocol file's figure: {declared.text()}; it gives no split "
             "between stages, so enter this stage's share of it. Confirm the number with the sponsor.")
    enrolled = c[1].number_input("Already enrolled", min_value=0, max_value=100_000, step=1,
                                 **page.rec_state("enrolled", 0), help="Patients in the trial at the start date.")
    uptake = c[2].number_input(
        "Uptake (%)", min_value=0.0, max_value=100.0, step=5.0, format="%.1f",
        **page.rec_state("uptake", 100 * fsites.DEFAULT_UPTAKE),
        help="Share of eligible patients who enrol: consent, willingness, investigator judgement, screen "
             "failures the data cannot show. Default 85 %.")
    start = c[3].date_input("Enrolment starts", **page.rec_state("start", today), format="YYYY-MM-DD")
    deadline = c[4].date_input("Deadline", **page.rec_state("deadline", end_of_month(today, 12)),
                               format="YYYY-MM-DD",
                               help="Gives P(target reached by then) and how many more sites reach it with "
                                    "the probability set under *Simulation*.")

    st.caption(f"Target used: {rc.target_text(declared, int(target))}.")
    st.markdown("**Sites**")
    if estimated is None:
        source = "inputs"
        st.caption(f"Site rates from inputs: {why_not}.")
    else:
        source = st.radio("Site screening rates", list(rc.SOURCES), format_func=rc.SOURCES.get, horizontal=True,
                          **page.rec_state("source", "cohort"), label_visibility="collapsed",
                          help="From the cohort: each site's rate is its empirical-Bayes posterior Gamma from "
                               "its screening dates. From inputs: sites you describe.")
    c = st.columns(5)  # the grid of the Trial row
    if source == "cohort":
        default_share = 100 * rc.default_approach(estimated, ctx.data.kind in rc.SYNTHETIC_KINDS)
        approach = c[0].number_input(
            "Share approached (%)", min_value=0.0, max_value=100.0, step=0.5, format="%.1f",
            **page.rec_state(f"approach.{token}", default_share),
            help="Share of each site's patients in the cohort who are approached for *this* trial (competing "
                 "trials, referral habits, investigators' choice; consent is in the uptake). 100 % when the "
                 "cohort is this trial's screening log. For a synthetic cohort the default brings the sites "
                 f"back to the generator's unscaled {rc.SYNTHETIC_REFERRAL_RATE:g} referrals per site-month: "
                 "its volume was scaled to fill the cohort, not to be a rate.")
        n_sites, mean_rate, cv = estimated.n_sites, estimated.prior_mean, fsites.DEFAULT_CV
        col = 1
    else:
        approach = 100.0
        n_sites = c[0].number_input("Sites", min_value=1, max_value=2_000, step=1,
                                    **page.rec_state("n_sites", estimated.n_sites if estimated else 20))
        mean_rate = c[1].number_input(
            "Screened / site-month", min_value=0.0, max_value=1_000.0, step=0.1, format="%.2f",
            **page.rec_state("mean_rate", rc.SYNTHETIC_REFERRAL_RATE),
            help="Mean patients each site screens for this trial per month at full speed.")
        cv = c[2].number_input("Between-site CV", min_value=0.0, max_value=5.0, step=0.1, format="%.2f",
                               **page.rec_state("cv", fsites.DEFAULT_CV),
                               help="Coefficient of variation of the site rates (0: every site at the mean). "
                                    "0.8 is a generic default; use experience from comparable trials.")
        c, col = st.columns(5), 0
    stagger = c[col].number_input("Sites open over (months)", min_value=0.0, max_value=60.0, step=1.0,
                                  format="%.1f", **page.rec_state("stagger", 0.0),
                                  help="0: every site opens at the start; else evenly over this many months.")
    ramp = c[col + 1].number_input("Ramp-up (months)", min_value=0.0, max_value=24.0, step=1.0, format="%.1f",
                                   **page.rec_state("ramp", 0.0),
                                   help="A newly opened site reaches full speed linearly over this many months.")
    new_month = c[col + 2].number_input(
        "Extra sites open (month)", min_value=0.0, max_value=60.0, step=1.0, format="%.1f",
        **page.rec_state("new_site_month", 3.0),
        help="When additional sites (for the deadline) could start enrolling, in months after the start: "
             "site start-up takes time.")
    with st.expander("Simulation"):
        s = st.columns(3)
        n_sims = s[0].number_input("Simulated trials", min_value=200, max_value=50_000, step=1_000,
                                   **page.rec_state("n_sims", fsites.DEFAULT_SIMS))
        seed = s[1].number_input("Seed", min_value=0, max_value=2**31 - 1, step=1, **page.rec_state("seed", 0))
        probability = s[2].number_input("Finish by the deadline with probability (%)", min_value=50.0,
                                        max_value=99.0, step=5.0, format="%.0f",
                                        **page.rec_state("probability", 100 * fsites.DEFAULT_PROBABILITY))

plan = rc.Plan(target=int(target), enrolled=int(enrolled), uptake=uptake / 100, start=start, deadline=deadline,
               source=source, approach=approach / 100, n_sites=int(n_sites), mean_rate=float(mean_rate),
               cv=float(cv), stagger=float(stagger), ramp=float(ramp), new_site_month=float(new_month),
               probability=probability / 100, n_sims=int(n_sims), seed=int(seed))
problem = plan.check()
if problem:
    st.error(f"Cannot forecast: {problem}.", icon=":material/error:")
    shell.page_end()
    st.stop()
sites = rc.build_sites(plan, estimated)

bounds = rc.BOUNDS if ctx.policy == "both" else (ctx.policy,)
all_totals = page.rec_totals(ctx)
fractions = {name: rc.bound_fractions(t) for name, t in all_totals.items()}
active = fractions[ctx.scenario_name]
outcomes = {b: page.rec_outcome(ctx, plan, sites, b, active[b], b.capitalize()) for b in bounds}

with inputs_box:
    screened_sm, _ = rc.implied_rates(sites, 0.0, plan.uptake)
    per_bound = [f"{rc.implied_rates(sites, active[b], plan.uptake)[1]:.2f} ({b})" for b in bounds
                 if active[b] is not None]
    where = (f"{sites.n_sites} sites estimated from the cohort ({estimated.prior_mean:.2f} candidates per site-month, "
             f"{plan.approach:.1%} approached)" if source == "cohort"
             else f"{sites.n_sites} sites from inputs")
    st.caption(f"**Sites:** {where} → {screened_sm:.2f} screened per site-month for this trial → "
               f"{', '.join(per_bound) or '—'} enrolled per site-month at full speed.")
    fast = [b for b in bounds if active[b] is not None
            and rc.implied_rates(sites, active[b], plan.uptake)[1] > rc.FAST_ENROLMENT]
    if fast:
        st.warning(f"Each site would enrol more than {rc.FAST_ENROLMENT:g} patients a month; for comparison, "
                   f"{rc.BENCHMARK}. If the cohort lists every candidate a site sees, lower *Share approached*.",
                   icon=":material/speed:")

with summary:
    st.subheader("Readout")
    coverage = results.assessability(ctx)
    if coverage is not None and coverage.little:
        st.warning("These forecasts use eligible fractions from a cohort that cannot assess much of the "
                   f"protocol ({len(coverage.not_assessable)} of {coverage.rules} rules n/a"
                   + (f", {len(coverage.mostly_unknown)} unknown for most patients" if coverage.mostly_unknown
                      else "") + "): the optimistic bound is likely too high. See the note under the title.",
                   icon=":material/report:")
    for b in bounds:
        out = outcomes[b]
        frac = "eligible count suppressed" if out.fraction is None else f"{out.fraction:.1%} eligible"
        text = f"**{b.capitalize()}** ({frac}): {rc.sponsor_readout(out, plan.deadline)}"
        if not out.ok:
            st.error(text, icon=":material/block:")
        elif out.result.remaining == 0:
            st.info(text, icon=":material/task_alt:")
        else:
            st.success(text, icon=":material/event_available:")
            if out.need_message:
                st.caption(f"Sites needed: {out.need_message}.")

    if any(o.ok for o in outcomes.values()):
        num = st.column_config.NumberColumn
        st.dataframe(rc.summary_table(outcomes, plan.deadline), hide_index=True, key="rec_summary",
                     column_config=SUMMARY_COLUMNS | {
                         "p_deadline_pct": num(f"P(by {plan.deadline})", format="%.0f%%",
                                           help="Share of simulated trials reaching the target by the deadline."),
                         "sites_needed": num("More sites needed", format="%d",
                                             help=f"Additional sites at the mean rate ({sites.prior_mean:.2f} "
                                                  f"screened per month), opening at month {plan.new_site_month:g}, "
                                                  f"to reach the target by the deadline with probability "
                                                  f"{plan.probability:.0%}.")})

ok = [outcomes[b] for b in bounds if outcomes[b].ok]
if not ok:
    shell.page_end()
    st.stop()
main = ok[0]

# --------------------------------------------------------------------------- details
tab_fan, tab_sites, tab_cmp, tab_method = session.tabs("recruitment", ["Fan chart", "Per site", "Protocol vs scenario",
                                                                  "Method"])


def fan_tab():
    other = ok[1].result if len(ok) > 1 else None
    fig = page.rec_figure("fan", (plan, ctx.scenario_name, tuple(o.bound for o in ok), tuple(active.items())),
                        lambda: fcharts.fan_chart(main.result, other=other, deadline=plan.deadline,
                                             title=f"Patients enrolled over time · {ctx.scenario_name}"))
    st.plotly_chart(fig, theme=None, config={"displaylogo": False}, key="rec_fan")
    st.caption("Solid line: median simulated trial; shaded: the middle 50 / 80 / 95 % of simulated trials at each "
               "date; dotted: expected count (closed form). Read the time to target horizontally at the dashed "
               "target line; the diamond marks the median date."
               + (" Orange: the optimistic bound (unknown values pass)." if other is not None else ""))


def sites_tab():
    hidden = page.rec_hidden_sites(ctx) if source == "cohort" else ()
    table = rc.site_table(main.result, estimated.table if source == "cohort" else None, hidden)
    st.caption(f"{main.bound.capitalize()} bound. Expected patients each site contributes to the "
               f"{main.result.remaining:,} still to enrol, largest first.")
    top = min(25, sites.n_sites - len(hidden))
    fig = page.rec_figure("sites", (plan, main.bound, main.fraction, hidden),
                        lambda: fcharts.site_contribution_chart(rc.visible_contribution(main.result, hidden), top=top,
                                                           title=f"Expected patients per site ({top} largest)"))
    st.plotly_chart(fig, theme=None, config={"displaylogo": False}, key="rec_sites_chart")
    if hidden:
        st.info(f"Small-cell suppression is on: {len(hidden)} site(s) whose screened count is hidden on the Sites "
                "page have their screened count, rates and expected patients hidden here too (they would give "
                "the count back) and are left out of the chart.", icon=":material/visibility_off:")
    num = st.column_config.NumberColumn
    text = st.column_config.TextColumn
    config = {"site": text("Site", width="small"), "country": text("Country", width="small"),
              "expected": num("Expected", format="%.1f", width="small",
                              help="Expected patients of the remaining target enrolled at this site"),
              "share_pct": num("Share", format="%.1f%%", width="small", help="Share of the remaining target"),
              "enrol_rate": num("Enrolled / mo", format="%.2f", width="small",
                                help="Patients enrolled per month at full speed (mean)"),
              "rate_mean": num("Screened / mo", format="%.2f", width="small",
                               help="Patients screened for this trial per month: the site's rate x the share "
                                    "approached (mean)"),
              "rate_80": text("80 % interval", width="small",
                              help="80 % interval of the site's screening rate"),
              "screened": num("In cohort", format="localized", width="small",
                              help="Patients of this site in the cohort"),
              "candidate_rate": num("Candidates / mo", format="%.2f", width="small",
                                    help="Posterior mean rate of the site's patients in the cohort per month"),
              "opens_month": num("Opens (month)", format="%.1f", width="small")}
    st.dataframe(table.masked(), hide_index=True, column_config=config, height=420,
                 placeholder="suppressed" if hidden else "", key="rec_sites_table")


def compare_tab():
    if ctx.is_protocol:
        st.info("The protocol as written is active. Choose a scenario in the sidebar (for example the example "
                "creatinine-clearance scenario), or change a criterion on the Criteria page, to see what it does "
                "to the timeline.", icon=":material/compare_arrows:")
        return
    base = fractions[session.PROTOCOL]
    labels = ("Protocol", "Scenario")
    pairs = {b: (page.rec_outcome(ctx, plan, sites, b, base[b], b.capitalize()), outcomes[b]) for b in bounds}
    changes = ctx.scenario.changes(ctx.protocol)
    for b, (a, s) in pairs.items():
        st.markdown(f"**{b.capitalize()}:** {rc.saving_sentence(a, s, ('Protocol', ctx.scenario_name), changes)}")
    num = st.column_config.NumberColumn
    st.dataframe(rc.comparison_table(pairs, labels, plan.deadline), hide_index=True, key="rec_cmp_table",
                 column_config=SUMMARY_COLUMNS | {
                     "p_deadline_pct": num(f"P(by {plan.deadline})", format="%.0f%%"),
                     "sites_needed": num("More sites needed", format="%d"),
                     "saved_weeks": num("Weeks saved", format="%+.1f",
                                        help="Protocol median minus scenario median (negative: the scenario "
                                             "takes longer)")})
    a, s = pairs[main.bound]
    if a.ok and s.ok:
        fig = page.rec_figure("cmp", (plan, ctx.scenario_name, main.bound, a.fraction, s.fraction),
                            lambda: fcharts.fan_chart(replace(a.result, label="Protocol"),
                                                 other=replace(s.result, label="Scenario"),
                                                 deadline=plan.deadline,
                                                 title=f"Protocol (blue) vs {ctx.scenario_name} (orange) · "
                                                       f"{main.bound} bound"))
        st.plotly_chart(fig, theme=None, config={"displaylogo": False}, key="rec_cmp_chart")
    st.caption("Both forecasts use the same sites and the same random numbers, so the difference is the effect of "
               "the eligible fraction, not simulation noise.")


def method_tab():
    st.markdown(f"""
* **Sites.** Each site screens as a Poisson process; its monthly rate is uncertain and differs between sites
  (Gamma). *From the cohort*: the empirical-Bayes posterior Gamma of each site's rate from its screening dates
  (events over months open), times the share of candidates approached. *From inputs*: the same Gamma for
  every site (mean and CV as entered). New sites for the deadline draw their rate from the across-site Gamma.
* **Share approached.** A cohort row is a patient seen at a site, so the data give candidates per month.
  Only part of them are approached for this trial. 100 % fits a screening log of this trial; for a synthetic
  cohort the default rescales to {rc.SYNTHETIC_REFERRAL_RATE:g} per site-month (the generator's unscaled rate).
  For comparison, {rc.BENCHMARK}. The share is taken as known: its own uncertainty is not in the intervals.
* **Patients.** A screened patient is eligible with the funnel's fraction (strict: unknowns fail; optimistic:
  unknowns pass; the fraction's sampling uncertainty from {ctx.data.cohort.n:,} screened patients is included)
  and enrols with the uptake.
* **Outputs.** {plan.n_sims:,} simulated trials (seed {plan.seed}): the time to target exactly per trial,
  the fan chart, each site's expected patients, and the smallest number of additional sites that reaches the
  target by the deadline with the chosen probability.
* **Not modelled.** Seasonality, site closures, competing trials starting later, random activation delays
  (enter a schedule instead), different eligibility per site.
""")


for tab, body in ((tab_fan, fan_tab), (tab_sites, sites_tab), (tab_cmp, compare_tab), (tab_method, method_tab)):
    if tab.open:
        with tab:
            body()

shell.page_end()
