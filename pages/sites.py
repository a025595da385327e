"""Sites: screened and eligible counts per site and per country, with small-cell suppression."""

import re

import streamlit as st

from kn026.report import charts, export
from ui import components, results, session, shell
from ui import sites as page

ctx = shell.page_start("Sites", ":material/location_on:")

st.title("Sites and countries")
components.context_line(ctx)

tables = results.site_tables(ctx)
if tables is None:
    st.warning("This cohort has no **site_id** column, so screened and eligible counts cannot be split by site. "
               "Add site_id (and country) to the file to see this page.", icon=":material/location_off:")
    st.stop()

sites, countries = tables
site_view, country_view = sites.masked(), countries.masked()
raw = sites.frame
c = st.columns(4)
c[0].metric("Sites", f"{len(raw):,}", border=True)
c[1].metric("Countries", f"{len(countries.frame):,}", border=True)
median = float(raw["screened"].median())
c[2].metric("Median screened per site", f"< {ctx.k}" if ctx.k and median < ctx.k else f"{median:,.0f}",
            border=True, help="Half of the sites screened fewer patients than this.")
with_eligible = int((raw["strict"] > 0).sum())
hidden_any = bool(sites.hidden["strict"].any())
c[3].metric("Sites with eligible patients", "—" if ctx.k and hidden_any else f"{with_eligible:,}", border=True,
            help="Not shown under small-cell suppression: it would tell which hidden counts are zero."
            if ctx.k and hidden_any else "Sites with at least one strictly eligible patient.")

if ctx.k:
    st.info(f"Small-cell suppression is on: counts below {ctx.k}, and complementary counts that would reveal "
            f"them by subtraction (within a site, a country, or the totals), are hidden "
            f"({sites.n_hidden + countries.n_hidden:,} cells).", icon=":material/visibility_off:")

slug = re.sub(r"[^A-Za-z0-9]+", "_", ctx.scenario_name).strip("_").lower()
names = export.SITE_COLUMNS  # the table, its CSV and the Excel sheet name the columns alike
num = st.column_config.NumberColumn
config = {c: num(names[c], format="localized") for c in ("screened", "strict", "optimistic", "unknown")} | {
    c: num(names[c], format="%.1f%%") for c in ("pct_strict", "pct_optimistic")} | {
    "site": st.column_config.TextColumn(names["site"], width="small", pinned=True), "country": names["country"],
    "sites": names["sites"]}
columns = ["screened", "strict", "optimistic", "unknown", "pct_strict", "pct_optimistic"]
if ctx.policy == "strict":
    columns = [c for c in columns if "optimistic" not in c and c != "unknown"]
elif ctx.policy == "optimistic":
    columns = [c for c in columns if "strict" not in c]

tab_sites, tab_countries = session.tabs("sites", ["By site", "By country"])


def sites_tab():
    c1, c2 = st.columns([2, 3], vertical_alignment="bottom")
    top = c1.slider("Sites in the chart (largest first)", 5, max(5, len(raw)), min(20, max(5, len(raw))),
                    key=page.top_key())
    c2.caption("Grey: screened · teal: eligible if unknowns pass (optimistic) · blue: eligible with nothing "
               "unknown (strict).")
    fig = results.figure(ctx, "sites", lambda: charts.sites_figure(
        site_view, title=f"Screened and eligible patients, {top} largest sites", top=top), top)
    st.plotly_chart(fig, theme=None, config={"displaylogo": False}, key="sites_chart")
    st.dataframe(site_view[["site", "country", *columns]], hide_index=True, height=420, column_config=config,
                 placeholder="suppressed" if ctx.k else "", key="sites_table")
    st.download_button("Download per-site table (CSV)",
                       export.csv_bytes(export.table_for_export(sites, names)),
                       file_name=f"kn026_stage{ctx.stage}_{slug}_sites.csv", mime="text/csv",
                       icon=":material/download:", on_click="ignore", key="dl_sites")


def countries_tab():
    fig = results.figure(ctx, "countries", lambda: charts.sites_figure(
        country_view, key="country", title="Screened and eligible patients per country"))
    st.plotly_chart(fig, theme=None, config={"displaylogo": False}, key="countries_chart")
    st.dataframe(country_view[["country", "sites", *columns]], hide_index=True, column_config=config,
                 placeholder="suppressed" if ctx.k else "", key="countries_table")
    st.download_button("Download per-country table (CSV)",
                       export.csv_bytes(export.table_for_export(countries, names)),
                       file_name=f"kn026_stage{ctx.stage}_{slug}_countries.csv", mime="text/csv",
                       icon=":material/download:", on_click="ignore", key="dl_countries")


for tab, body in ((tab_sites, sites_tab), (tab_countries, countries_tab)):
    if tab.open:
        with tab:
            body()
st.caption("Eligible · strict: no criterion fails and none is unknown. Eligible · optimistic: no criterion fails. "
           "Unknown: optimistic minus strict. Percentages are of the site's (country's) screened patients.")

shell.page_end()
