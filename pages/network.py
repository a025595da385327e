"""Network: share this cohort's histogram, or merge site histograms into one network funnel.

Sites that cannot share patient rows share the histogram of (fail, unknown) masks
instead (kn026.scale.federated); histograms add, so the network funnel, per-criterion table
and per-site breakdown are the same computations as for one cohort.
"""

import html
import re

import pandas as pd
import streamlit as st

from kn026.report import charts
from kn026.scale import federated
from ui import components, results, session, shell
from ui import network as page

ctx = shell.page_start("Network", ":material/hub:")
placeholder = "suppressed" if ctx.k else ""
_MD = re.compile(r"([\\`*_{}\[\]<>()#+|!$~])")


def md(text) -> str:
    """Site and file names come from uploaded files: shown as text, never as markdown."""
    return _MD.sub(r"\\\1", str(text))


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", str(text)).strip("_").lower() or "site"


st.title("Network feasibility")
components.context_line(ctx)
st.caption("Hospitals that cannot share patient rows can still answer one feasibility question together: each "
           "site screens its own patients and shares only a small histogram file, and the histograms add up to "
           "the network's funnel. The same file comes from `python -m kn026 histogram` at a site.")

tab_share, tab_merge = session.tabs("network", ["Share this cohort's histogram", "Merge site histograms"])


def share_tab():
    c1, c2, c3 = st.columns([4, 3, 2], vertical_alignment="bottom", gap="medium")
    site = c1.text_input("Site name", max_chars=80, help="How this cohort is named in the network funnel.",
                         **page.net_state("site", "My site"))
    drop = c2.toggle("Drop small cells before sharing", value=ctx.k is not None, key=page.share_drop_key(ctx.k),
                     help="Rows of the histogram with fewer patients than the threshold are left out; only their "
                          "number of patients is reported. The network then counts them as unknown on every "
                          "criterion (out of the strict bound, in the optimistic one). The default follows the "
                          "sidebar's small-cell suppression.")
    below = c3.number_input("Drop rows below", min_value=2, max_value=50, value=ctx.k or 5, step=1,
                            key=page.share_k_key(ctx.k), disabled=not drop)
    try:
        doc = page.net_site_doc(ctx, site, int(below) if drop else None)
    except federated.FederatedError as err:
        st.warning(f"{err}. Type a site name to make the file.", icon=":material/edit:")
        return
    supp = doc["suppression"] or {}
    m1, m2, m3, m4 = st.columns([2, 2, 2, 2.4], vertical_alignment="center")
    m1.metric("Patients", f"{doc['total']:,}", border=True, help="Everyone screened; the total is shared.")
    m2.metric("Histogram rows", f"{len(doc['rows']):,}", border=True,
              help="Distinct combinations of failed and unknown rules, each with its number of patients.")
    m3.metric("Patients in dropped rows", f"{supp.get('suppressed', 0):,}", border=True,
              help="Patients whose combination is rarer than the threshold: shared as a total only.")
    m4.download_button("Download the histogram (JSON)", page.histogram_json(doc),
                       file_name=f"kn026_stage{doc['stage']}_{slug(doc['site'])}_histogram.json",
                       mime="application/json", type="primary", icon=":material/download:",
                       on_click="ignore", key="dl_site_histogram", width="stretch")
    scen = doc["scenario"]
    na = doc["not_assessable"]
    st.markdown(
        f"**What is in the file.** {doc['protocol']} stage {doc['stage']}, "
        + ("the protocol as written" if ctx.is_protocol else f"scenario “{md(scen['name'])}”")
        + f", site “{md(doc['site'])}”: for each combination of rules a patient fails or cannot be assessed on, "
        f"how many patients have it ({len(doc['rows']):,} rows over {len(doc['leaves'])} rules), and the total. "
        "**No patient rows, identifiers, dates or values.** "
        + (f"Rows with fewer than {supp['below']} patients are left out ({supp['suppressed']:,} patients, "
           "reported as a total). " if supp else "Every row is included, however small: turn on *Drop small "
           "cells* if your data agreement asks for it. ")
        + (f"Not assessable here (columns absent): {', '.join(sorted(na))}." if na else ""))
    st.markdown("**Criteria fingerprint** — every site of one network must show the same one (same criteria "
                "file, stage and thresholds); the scenario fingerprint also covers switched-off criteria and "
                "the funnel order:")
    st.code(f"criteria  {doc['criteria_fingerprint']}\nscenario  {scen['fingerprint']}", language=None)
    with st.expander("Look inside the file"):
        head = {k: v for k, v in doc.items() if k != "rows"}
        head["rows"] = doc["rows"][:5] + ([f"… {len(doc['rows']) - 5:,} more rows"] if len(doc["rows"]) > 5 else [])
        st.json(head, expanded=1)
        st.caption("Rows are [fail mask, unknown mask, patients]: bit j of a mask is rule j of `leaves`.")


def files_overview(files) -> bool:
    """The uploaded files, each marked ok / refused / differing from the first valid file; True if any differs."""
    ref = next((f.doc for f in files if f.doc is not None), None)
    rows, differ = [], False
    for f in files:
        if f.doc is None:
            rows.append({"File": f.name, "Site": "", "Stage": None, "Scenario": "", "Patients": None,
                         "Status": "refused: see below"})
            continue
        d = f.doc
        diff = federated.differences(d, ref)
        differ |= bool(diff)
        rows.append({"File": f.name, "Site": d["site"], "Stage": d["stage"], "Scenario": d["scenario"]["name"],
                     "Patients": d["total"],
                     "Status": f"differs from {ref['site']}: {', '.join(diff)}" if diff else "ok"})
    st.dataframe(rows, hide_index=True, width="stretch", key="net_files",
                 column_config={"Patients": st.column_config.NumberColumn(format="localized"),
                                "Stage": st.column_config.NumberColumn(width=60),
                                "Status": st.column_config.TextColumn(width="medium")})
    for f in files:
        if f.error:
            st.error(f"**{md(f.name)}** was not used: {md(f.error)}", icon=":material/error:")
    return differ


def network_view(net: page.Network) -> None:
    meta, res = net.meta, net.result
    n_sites = len(meta["sites"])
    st.subheader(f"Network funnel · {n_sites} site{'s' if n_sites != 1 else ''}")
    scen = meta["scenario"]
    st.caption(f"{meta['protocol']} · stage {meta['stage']} · "
               + ("protocol as written" if scen["name"] == session.PROTOCOL else f"scenario “{md(scen['name'])}”")
               + f" · criteria fingerprint `{meta['criteria_fingerprint'][:23]}…`"
               + (f" · counts below {ctx.k} hidden" if ctx.k else ""))
    shown = net.attrition.masked()
    last = shown.iloc[-1]
    c = st.columns(4)
    c[0].metric(":gray[■] Screened", f"{meta['total']:,}", border=True, help="Patients screened at all sites.")
    for col, (field, label) in zip(c[1:], (("strict", ":blue[■] Eligible · strict"),
                                           ("optimistic", ":green[■] Eligible · optimistic"),
                                           ("unknown_so_far", ":orange[■] Unknown")), strict=True):
        value = last[field]
        col.metric(label, components.fmt(None if pd.isna(value) else value), border=True)
    if meta["suppressed"]:
        dropped = net.files.masked().set_index("site")["suppressed"]
        where = [f"{md(s['site'])} (threshold {s['suppress_below']}: "
                 + ("a few patients" if pd.isna(dropped[s["site"]]) else f"{int(dropped[s['site']]):,} patients")
                 + ")" for s in meta["sites"] if s["suppressed"]]
        hidden = dropped.isna().any()  # then the sum would give the hidden count away
        st.info(f"{len(where)} site(s) dropped small cells before sharing: {'; '.join(where)}. "
                + ("These" if hidden else f"These {meta['suppressed']:,}")
                + " patients count as unknown on every criterion: out of the strict bound, in the optimistic "
                "one, so both remain true bounds (only wider).", icon=":material/visibility_off:")
    for rid, where in meta["partially_assessable"].items():
        st.warning(f"**{rid}** is not assessable at {', '.join(md(w) for w in where)} (a column is absent there): "
                   "those sites' patients count as unknown on it.", icon=":material/warning:")
    if res.plan.not_assessable:
        st.warning("Not assessable at any site, left out of the funnel: "
                   + "; ".join(f"**{cid}** ({', '.join(cols)} absent)" for cid, cols in
                               res.plan.not_assessable.items()), icon=":material/warning:")

    t_funnel, t_table, t_sites = session.tabs("network_result", ["Funnel", "Per criterion", "Per site"])
    labels, texts = results.labels(ctx), results.texts(ctx)
    if t_funnel.open:
        with t_funnel:
            fig = charts.funnel_figure(shown, labels, texts, ctx.policy,
                                       title=f"Network: patients remaining after each criterion · "
                                             f"{charts.POLICY_LABELS[ctx.policy]}")
            st.plotly_chart(fig, theme=None, config={"displaylogo": False}, key="net_funnel_chart")
            if ctx.policy == "both":
                st.caption("Blue: eligible so far, unknown counting as failing. Amber: still unknown; blue + amber "
                           "is the optimistic bound. Hover a bar for the criterion's text and counts.")
    if t_table.open:
        with t_table:
            cols = ["step", "criterion", "label", "strict", "optimistic", "unknown_so_far", "lost_strict",
                    "lost_optimistic", "failed", "unique", "unknown", "shapley_strict", "shapley_optimistic"]
            if ctx.policy == "strict":
                cols = [c for c in cols if c not in ("optimistic", "unknown_so_far", "lost_optimistic",
                                                     "shapley_optimistic")]
            elif ctx.policy == "optimistic":
                cols = [c for c in cols if c not in ("strict", "lost_strict", "shapley_strict")]
            num = st.column_config.NumberColumn
            config = {"step": num("Step", width=50, pinned=True),
                      "criterion": st.column_config.TextColumn("Criterion", width=80, pinned=True),
                      "label": st.column_config.TextColumn("Short name", width=210),
                      "strict": num("Remaining · strict", format="localized"),
                      "optimistic": num("Remaining · optimistic", format="localized"),
                      "unknown_so_far": num("Unknown so far", format="localized"),
                      "lost_strict": num("Lost here · strict", format="localized"),
                      "lost_optimistic": num("Lost here · optimistic", format="localized"),
                      "failed": num("Fail (marginal)", format="localized"),
                      "unique": num("Fail only this", format="localized"),
                      "unknown": num("Unknown on it", format="localized"),
                      "shapley_strict": num("Shapley · strict", format="%,.1f"),
                      "shapley_optimistic": num("Shapley · optimistic", format="%,.1f")}
            st.dataframe(shown[cols], hide_index=True, column_config=config, placeholder=placeholder,
                         height=36 * min(len(shown), 18) + 38, key="net_attrition_table")
    if t_sites.open:
        with t_sites:
            sites = net.sites.masked()
            files = net.files.masked().set_index("site")
            view = sites.assign(
                suppress_below=[files.loc[s, "suppress_below"] for s in sites["site"]],
                suppressed=[files.loc[s, "suppressed"] for s in sites["site"]],
                not_assessable=[files.loc[s, "not_assessable"] or "—" for s in sites["site"]])
            by_size = sites.sort_values("screened", ascending=False, na_position="last")
            fig = charts.sites_figure(by_size.assign(site=[html.escape(str(s)) for s in by_size["site"]]),
                                      title="Screened and eligible patients per site")
            st.plotly_chart(fig, theme=None, config={"displaylogo": False}, key="net_sites_chart")
            num = st.column_config.NumberColumn
            config = {"site": st.column_config.TextColumn("Site"), "screened": num("Screened", format="localized"),
                      "strict": num("Eligible · strict", format="localized"),
                      "optimistic": num("Eligible · optimistic", format="localized"),
                      "unknown": num("Unknown", format="localized"),
                      "pct_strict": num("% strict", format="%.1f%%"),
                      "pct_optimistic": num("% optimistic", format="%.1f%%"),
                      "suppress_below": num("Own threshold",
                                            help="The small-cell threshold the site applied before sharing "
                                                 "(empty: none)."),
                      "suppressed": num("Dropped", format="localized", width="small",
                                        help="Patients in the rows the site dropped: counted as unknown."),
                      "not_assessable": st.column_config.TextColumn("Not assessable there",
                                                                    help="Rules whose columns the site lacks: "
                                                                         "its patients count as unknown on them.")}
            counts = ["screened", "strict", "optimistic", "unknown", "pct_strict", "pct_optimistic"]
            if ctx.policy == "strict":
                counts = [c for c in counts if "optimistic" not in c and c != "unknown"]
            elif ctx.policy == "optimistic":
                counts = [c for c in counts if "strict" not in c]
            shown_cols = ["site", *counts, "suppress_below", "suppressed", "not_assessable"]
            st.dataframe(view[shown_cols], hide_index=True, column_config=config, placeholder=placeholder,
                         key="net_sites_table")
            st.caption("Eligible · strict: no criterion fails and none is unknown. Eligible · optimistic: no "
                       "criterion fails. Percentages are of the site's screened patients.")
    stage = meta["stage"]
    st.download_button("Download the network histogram (JSON)", net.download,
                       file_name=f"kn026_stage{stage}_network_{n_sites}_sites_histogram.json",
                       mime="application/json", icon=":material/download:", on_click="ignore", key="dl_network",
                       help="The merged network in the same format as a site's file (sites summed; the sites it "
                            "contains are listed inside), so it can join a larger network.")


def merge_tab():
    key = page.net_uploader_key()
    c1, c2 = st.columns([3, 2], gap="large")
    with c1:
        st.file_uploader("Site histogram files (.json)", type=["json"], accept_multiple_files=True, key=key,
                         on_change=page.net_on_upload, args=(key,),
                         max_upload_size=federated.MAX_FILE_BYTES // 2**20,
                         help="The files the sites made with the Network page or `python -m kn026 histogram`. "
                              "They are read in memory and kept only in this browser session.")
    with c2:
        site = page.net_value("site", "My site")
        st.toggle("Add this session's cohort as a site", **page.net_state("include", False),
                  help="Screens the cohort loaded in this session with the sidebar's stage and scenario and adds "
                       "it to the network under the site name of the other tab.")
        if page.net_value("include"):
            st.caption(f"As site “{md(site)}”: {md(ctx.data.label)}, stage {ctx.stage}, "
                       + ("protocol as written." if ctx.is_protocol else f"scenario “{md(ctx.scenario_name)}”."))
    files = page.net_files()
    uploaded = page.uploaded(key)
    if files and not uploaded:  # an uploader cannot be refilled: say where the files are
        c1.info(f"The upload box starts empty when you come back to this page, but the {len(files)} file(s) "
                "listed below are still in use in the network funnel. Clear them with the button below.",
                icon=":material/folder_open:")
    for name, first in federated.identical_files(((f.name, f.getvalue()) for f in uploaded),
                                                 {f.key: f.name for f in files}):
        st.warning(f"**{md(name)}** is the same file as **{md(first)}** (identical content): it counts once, as "
                   "one site. If these are two different sites, one of them sent the wrong file.",
                   icon=":material/content_copy:")
    differ = False
    if files:
        differ = files_overview(files)
        st.button("Clear the uploaded files", icon=":material/delete:", on_click=page.net_clear, key="net_clear")
    net, error = page.net_merge(ctx, bool(page.net_value("include")), site)
    if error:
        error = re.sub(r"^cannot merge: ", "", error)
        hint = (" Remove the file(s) whose status says *differs* (✕ in the file box), or ask those sites to "
                "re-run with the same criteria file, stage and scenario." if differ else "")
        st.error(f"**The files cannot be merged:** {md(error)}{hint}", icon=":material/block:")
        return
    if net is None:
        st.info("Upload the histogram files of two or more sites (or one, and add this session's cohort). Every "
                "site must have screened the same stage with the same criteria file and scenario; files that "
                "differ are refused with the reason.", icon=":material/upload_file:")
        return
    network_view(net)


for tab, body in ((tab_share, share_tab), (tab_merge, merge_tab)):
    if tab.open:
        with tab:
            body()

shell.page_end()
