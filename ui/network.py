"""State of the Network page (pages/network.py).

The site histogram files uploaded in this session (read from memory once, kept across page
switches), the page's inputs under `kn026.net.*` (session.page_input), and memos of this
session's own histogram and of the merged network. Reading, merging and the file format are in
kn026.scale.federated; nothing here writes to disk.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pandas as pd
import streamlit as st

from kn026.core import analysis
from kn026.core import funnel as fm
from kn026.core.criteria import CriteriaError
from kn026.core.scenario import Scenario
from kn026.report import export, patients, suppression
from ui.results import kinds, labels
from ui.scenarios import order_state
from ui.session import Ctx, K, W, engine_key, memo, page_input, page_value, scenario_key

# --- network
# State of the Network page (pages/network.py): the site histogram files uploaded in this
# session (read from memory once, kept across page switches under `kn026.net.files`), the
# page's inputs under `kn026.net.*` (widgets `kn026.w.net.*`), and memos of this session's
# own histogram and of the merged network. Reading, merging and the file format are in
# kn026.scale.federated; nothing here writes to disk.

K_NET = K + "net."
K_NET_FILES = K_NET + "files"  # {sha256 of the bytes: NetFile}, in upload order
K_NET_UPLOADER = K_NET + "uploader"  # version of the uploader widget (bumped to empty it)
K_NET_IN_WIDGET = K_NET + "in_widget"  # file keys the uploader held at its last change


@dataclass(frozen=True)
class NetFile:
    """One uploaded histogram file: its document, or why it was refused."""

    key: str  # SHA-256 of the bytes: the same file uploaded twice is kept once
    name: str
    doc: dict | None
    error: str | None


@dataclass(frozen=True)
class Network:
    """A merged network and the (suppressed) tables the page shows."""

    hist: fm.Histogram
    meta: dict
    result: analysis.Result
    attrition: suppression.Table  # network funnel + per-criterion statistics
    sites: suppression.Table  # screened / strict / optimistic / unknown per site
    files: suppression.Table  # per site: engine, its own suppression, rules n/a there
    download: bytes  # the merged network histogram (kn026-histogram JSON)


def net_state(name: str, default) -> dict:
    """Keyword arguments (key, on_change, args) for Network input `name` (session.page_input)."""
    return page_input("net", name, default)


def net_value(name: str, default=None):
    return page_value("net", name, default)


def uploaded(key: str) -> list:
    """The files now in the uploader `key` (empty after navigating back: the kept ones are in net_files)."""
    return st.session_state.get(key) or []


def net_files() -> list[NetFile]:
    return list(st.session_state.setdefault(K_NET_FILES, {}).values())


def net_add_files(files) -> list[NetFile]:
    """Read uploaded histogram files, given as (name, bytes) pairs, into the session.

    A malformed file is kept with its error message (shown next to its name), so the
    analyst sees which file to fix; only valid files take part in a merge.
    """
    import hashlib

    from kn026.scale import federated

    store = st.session_state.setdefault(K_NET_FILES, {})
    added = []
    for name, data in files:
        key = hashlib.sha256(data).hexdigest()
        if key not in store:
            try:
                store[key] = NetFile(key, name, federated.histogram_from_bytes(data, name), None)
            except federated.FederatedError as err:
                store[key] = NetFile(key, name, None, str(err))
        added.append(store[key])
    return added


def net_uploader_key() -> str:
    """Key of the site-file uploader; a fresh uploader (after a page switch) holds none of the kept files."""
    key = W + f"net.upload.{st.session_state.get(K_NET_UPLOADER, 0)}"
    if not st.session_state.get(key):
        st.session_state[K_NET_IN_WIDGET] = ()
    return key


def net_on_upload(key: str) -> None:
    """Uploader callback: add new files; drop the ones removed from the uploader (its ✕)."""
    current = net_add_files((f.name, f.getvalue()) for f in (st.session_state.get(key) or []))
    keys = tuple(f.key for f in current)
    store = st.session_state[K_NET_FILES]
    for gone in set(st.session_state.get(K_NET_IN_WIDGET, ())) - set(keys):
        store.pop(gone, None)
    st.session_state[K_NET_IN_WIDGET] = keys


def net_clear() -> None:
    """Button callback: forget every uploaded site file (and empty the uploader)."""
    st.session_state[K_NET_FILES] = {}
    st.session_state[K_NET_IN_WIDGET] = ()
    st.session_state[K_NET_UPLOADER] = st.session_state.get(K_NET_UPLOADER, 0) + 1


def net_scenario(ctx: Ctx) -> Scenario:
    """The active scenario as the sites must all run it: its funnel order as in its YAML file.

    The order is part of the scenario fingerprint (it is the network funnel's default
    order): a hand-made order is kept as stored (as a scenario file gives it), the most
    restrictive order as resolved on this cohort (as the scenario download writes it).
    """
    mode, manual = order_state(ctx.scenario_name)
    order = manual if mode == "manual" else ctx.order if mode == "restrictive" else ()
    return dataclasses.replace(ctx.scenario, order=tuple(order))


def net_site_doc(ctx: Ctx, site: str, below: int | None) -> dict:
    """This session's cohort as a site's histogram document (stage and scenario of the sidebar)."""
    from kn026.scale import federated

    scen = net_scenario(ctx)
    key = ("net_doc", engine_key(ctx.engine), scenario_key(scen), scen.order, str(site).strip(), below)
    return memo(key, lambda: federated.export_histogram(ctx.engine.histogram(scen.overrides), ctx.engine, scen,
                                                        site, below))


def histogram_json(doc: dict) -> bytes:
    """A histogram document as the file a site shares (as `python -m kn026 histogram` writes it)."""
    import json

    return (json.dumps(doc, indent=1) + "\n").encode("utf-8")


def _session_mismatch(own: dict, first: dict) -> str | None:
    """Why this session's histogram cannot join the uploaded ones, in terms of the sidebar."""
    if own["protocol"] != first["protocol"]:
        return (f"the uploaded files screen {first['protocol']}, this session {own['protocol']}; leave this "
                "session's cohort out")
    if own["stage"] != first["stage"]:
        return (f"the uploaded files are for stage {first['stage']}, this session's cohort is screened at stage "
                f"{own['stage']}: pick Stage {first['stage']} in the sidebar, or leave this session's cohort out")
    if own["scenario"]["fingerprint"] != first["scenario"]["fingerprint"]:
        name = first["scenario"]["name"]
        return (f"the uploaded files ran scenario “{name}”, this session runs “{own['scenario']['name']}”: "
                f"select the same scenario in the sidebar (upload its YAML on the Criteria page, with its "
                f"funnel order), or leave this session's cohort out")
    if own["criteria_fingerprint"] != first["criteria_fingerprint"]:
        return ("the uploaded files were screened with other criteria or thresholds than this session; "
                "leave this session's cohort out")
    return None


def net_merge(ctx: Ctx, include_session: bool, site: str) -> tuple[Network | None, str | None]:
    """Merge the valid uploaded files (and this session's cohort if asked): (network, None) or (None, why not)."""
    from kn026.scale import federated

    docs = [f.doc for f in net_files() if f.doc is not None]
    own = None
    if include_session:
        try:
            own = net_site_doc(ctx, site, None)
        except federated.FederatedError as err:
            return None, f"This session's cohort cannot join the network: {err} (the Share tab's site name)."
        if docs:
            why = _session_mismatch(own, docs[0])
            if why:
                return None, f"This session's cohort cannot join the network: {why}."
        docs = [*docs, own]
    if not docs:
        return None, None
    key = ("net_merge", tuple(f.key for f in net_files() if f.doc is not None),
           None if own is None else (engine_key(ctx.engine), scenario_key(net_scenario(ctx)), own["site"]),
           ctx.k)

    def build():
        try:
            federated.check_no_overlap(docs)
            hist, meta = federated.merge_histograms(docs)
            res, by_site = federated.network_result(hist, meta)
        except (federated.FederatedError, ValueError, CriteriaError) as err:
            return None, str(err)
        frame = export.attrition_frame(res, labels(ctx), kinds(ctx))
        sites = patients.with_rates(by_site.assign(excluded=by_site["screened"] - by_site["optimistic"]))
        rows = pd.DataFrame([{"site": s["site"], "engine": s["engine"] or "",
                              "suppress_below": s["suppress_below"], "suppressed": s["suppressed"],
                              "not_assessable": ", ".join(s["not_assessable"])} for s in meta["sites"]])
        if ctx.k:
            table = suppression.suppress_attrition(frame, ctx.k)
            site_table = suppression.suppress_margins(
                sites, ["strict", "unknown", "excluded"], "screened", ctx.k,
                sums={"optimistic": ["strict", "unknown"]}, also={"pct_strict": "strict",
                                                                   "pct_optimistic": "optimistic"})
            files = suppression.suppress_independent(rows, ["suppressed"], ctx.k)
        else:
            table, site_table, files = (suppression.unsuppressed(frame), suppression.unsuppressed(sites),
                                        suppression.unsuppressed(rows))
        body = histogram_json(federated.network_histogram(hist, meta))
        return Network(hist, meta, res, table, site_table, files, body), None

    return memo(key, build)


def share_drop_key(k: int | None) -> str:
    return W + f"net.share_drop.{k}"


def share_k_key(k: int | None) -> str:
    return W + f"net.share_k.{k}"

