"""AppTest of the Network page: share this cohort's histogram, merge site histograms.

Drives the real `app.py` headlessly. Site files are made with
`kn026.scale.federated.export_histogram` from two halves of a synthetic cohort and uploaded
through the page's file uploader; downloads are captured where Streamlit stores their
bytes for the browser (its in-memory media storage), so the tests read exactly what a
user would get.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

from kn026.base.table import connect
from kn026.core import analysis
from kn026.core.criteria import load_protocol
from kn026.core.engine import Engine
from kn026.core.scenario import Scenario
from kn026.ingest import synth
from kn026.ingest.cohort import load_cohort
from kn026.scale import federated
from tests import app_support
from tests.app_support import metrics, number, ok, open_tab
from ui import network, session, shell

PAGE = "pages/network.py"
PROTOCOL = load_protocol()


# --------------------------------------------------------------------------- helpers


def network_page() -> AppTest:
    return app_support.new_app(PAGE, "Network feasibility")


def uploader(at: AppTest):
    return next(u for u in at.file_uploader if u.key and u.key.startswith(session.W + "net.upload."))


def upload(at: AppTest, files: dict[str, bytes]) -> AppTest:
    uploader(at).set_value([(name, data, "application/json") for name, data in files.items()]).run()
    ok(at)
    return at


TABLES = {"net_files": "File", "net_attrition_table": "step", "net_sites_table": "not_assessable"}


def frame(at: AppTest, name: str) -> pd.DataFrame:
    """A table of the page, found by a column only it has (st.dataframe keys are not exposed)."""
    found = [d.value for d in at.dataframe if TABLES[name] in d.value.columns]
    assert len(found) == 1, f"{len(found)} tables with column {TABLES[name]!r}"
    return found[0]


def texts(elements) -> str:
    return "\n".join(e.value for e in elements)


@pytest.fixture
def downloads(monkeypatch) -> dict[str, bytes]:
    """Every download button's bytes by file name, as stored for the browser."""
    seen: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def capture(self, path_or_data, mimetype, kind, filename=None):
        if filename and isinstance(path_or_data, bytes):
            seen[filename] = path_or_data
        return original(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", capture)
    return seen


@pytest.fixture(scope="module")
def halves() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two halves (by site) of one synthetic cohort."""
    cohort = synth.generate(1200, seed=41, sites=6)
    sites = sorted(cohort["site_id"].unique())
    north = cohort[cohort["site_id"].isin(sites[:3])].reset_index(drop=True)
    south = cohort[~cohort["site_id"].isin(sites[:3])].reset_index(drop=True)
    return north, south


def site_file(part: pd.DataFrame, name: str, stage: int = 1, scenario: Scenario | None = None,
              below: int | None = None) -> bytes:
    engine = Engine(load_cohort(part, connect()), PROTOCOL, stage)
    scenario = scenario or Scenario()
    doc = federated.export_histogram(engine.histogram(scenario.overrides), engine, scenario, name, below)
    return json.dumps(doc).encode()


def pooled_totals(*parts: pd.DataFrame, stage: int = 1) -> dict:
    pooled = pd.concat(parts, ignore_index=True)
    return analysis.run(Engine(load_cohort(pooled, connect()), PROTOCOL, stage)).totals


# --------------------------------------------------------------------------- share


def test_page_is_registered_last():
    """Network is the advanced page: after the single-cohort pages and Recruitment."""
    urls = [url for *_, url in shell.PAGES]
    assert urls[-1] == "network" and urls.index("recruitment") > urls.index("sites")


def test_share_downloads_this_cohorts_histogram(downloads, tmp_path):
    at = network_page()
    assert "No patient rows" in texts(at.markdown)
    at.text_input(key=session.W + "net.site").set_value("Klinikum Nord").run()
    ok(at)
    name = "kn026_stage1_klinikum_nord_histogram.json"
    assert name in downloads
    path = tmp_path / name
    path.write_bytes(downloads[name])
    doc = federated.read_histogram(path)  # the CLI's reader accepts the app's file
    assert doc["site"] == "Klinikum Nord" and doc["stage"] == 1 and doc["total"] == 20_000
    assert doc["suppression"] is None  # built-in data: the sidebar's suppression is off
    assert doc["criteria_fingerprint"] in texts(at.code)
    # the file is this cohort's screening: its network of one equals the Funnel page's totals
    res, _ = federated.network_result(*federated.merge_histograms([doc]))
    ctx_totals = analysis.run(at.session_state[session.K_DATA].engines[1]).totals
    assert res.totals == ctx_totals
    # small cells dropped before sharing: rows below k left out, their patients counted in the total
    at.toggle(key=session.W + "net.share_drop.None").set_value(True).run()
    at.number_input(key=session.W + "net.share_k.None").set_value(10).run()
    ok(at)
    dropped = federated.histogram_from_bytes(downloads[name], name)
    assert dropped["suppression"]["below"] == 10 and dropped["suppression"]["suppressed"] > 0
    assert all(n >= 10 for _, _, n in dropped["rows"]) and dropped["total"] == 20_000
    assert number(metrics(at)["Patients in dropped rows"]) == dropped["suppression"]["suppressed"]
    # the sidebar's small-cell suppression sets the default: on, at its threshold
    at.sidebar.toggle[0].set_value(True).run()
    ok(at)
    assert at.toggle(key=session.W + "net.share_drop.5").value
    assert federated.histogram_from_bytes(downloads[name], name)["suppression"]["below"] == 5


def test_share_follows_stage_and_scenario_of_the_sidebar(downloads):
    at = network_page()
    next(r for r in at.sidebar.radio if r.label == "Protocol stage").set_value(2).run()
    at.sidebar.selectbox(key=session.W + "active").set_value("Creatinine clearance >= 50 mL/min "
                                                               "(other registry version)").run()
    ok(at)
    doc = federated.histogram_from_bytes(downloads["kn026_stage2_my_site_histogram.json"], "x.json")
    assert doc["stage"] == 2 and doc["scenario"]["overrides"] == {"INCL07.CRCL": {"min": "50"}}


# --------------------------------------------------------------------------- merge


def test_merging_two_sites_equals_screening_the_pooled_cohort(halves, downloads, tmp_path):
    north, south = halves
    at = network_page()
    open_tab(at, "network", "Merge site histograms")
    assert any("Upload the histogram files" in i.value for i in at.info)
    upload(at, {"north.json": site_file(north, "North"), "south.json": site_file(south, "South")})
    want = pooled_totals(north, south)
    m = metrics(at)
    assert number(m["Screened"]) == want["screened"] == 1200
    assert number(m["Eligible · strict"]) == want["strict"]
    assert number(m["Eligible · optimistic"]) == want["optimistic"]
    assert number(m["Unknown"]) == want["unknown"]
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert chart["data"][0]["type"] == "funnel"
    files = frame(at, "net_files")
    assert list(files["Site"]) == ["North", "South"] and list(files["Status"]) == ["ok", "ok"]
    # per criterion: the same as the pooled cohort's
    open_tab(at, "network_result", "Per criterion")
    table = frame(at, "net_attrition_table")
    pooled = pd.concat([north, south], ignore_index=True)
    stats = analysis.run(Engine(load_cohort(pooled, connect()), PROTOCOL, 1)).stats.set_index("criterion")
    for _, row in table.iloc[1:].iterrows():
        assert row["failed"] == stats.loc[row["criterion"], "failed"]
        assert row["unique"] == stats.loc[row["criterion"], "unique"]
    # per site: screened / strict / optimistic of each half
    open_tab(at, "network_result", "Per site")
    sites = frame(at, "net_sites_table").set_index("site")
    for part, name in ((north, "North"), (south, "South")):
        t = pooled_totals(part)
        assert (sites.loc[name, "screened"], sites.loc[name, "strict"], sites.loc[name, "optimistic"]) == \
            (t["screened"], t["strict"], t["optimistic"])
    # the merged network downloads as one histogram file that merges again
    body = downloads["kn026_stage1_network_2_sites_histogram.json"]
    (tmp_path / "net.json").write_bytes(body)
    net = federated.read_histogram(tmp_path / "net.json")
    assert net["total"] == 1200 and [s["site"] for s in net["network"]["sites"]] == ["North", "South"]
    res, _ = federated.network_result(*federated.merge_histograms([net]))
    assert res.totals == want


def test_a_file_of_another_stage_is_refused_with_a_message(halves):
    north, south = halves
    at = network_page()
    open_tab(at, "network", "Merge site histograms")
    upload(at, {"north.json": site_file(north, "North"), "south_stage2.json": site_file(south, "South", stage=2)})
    errors = texts(at.error)
    assert "cannot be merged" in errors and "stage differs" in errors and "'North'" in errors
    assert "stage 2" in errors and not at.get("plotly_chart")
    assert list(frame(at, "net_files")["Status"]) == ["ok", "differs from North: stage 2"]
    assert "Remove the file(s) whose status says" in errors
    assert not [b for b in at.get("download_button") if b.label.startswith("Download the network")]


def test_malformed_files_are_named_and_left_out(halves):
    north, south = halves
    at = network_page()
    open_tab(at, "network", "Merge site histograms")
    good = site_file(north, "North")
    doc = json.loads(site_file(south, "South"))
    doc["total"] += 7
    upload(at, {"north.json": good, "broken.json": b"{not json", "cohort.json": b"patient_id,age\n1,50\n",
                "tampered.json": json.dumps(doc).encode(),
                "odd.json": json.dumps({**doc, "total": doc["total"] - 7, "criteria": [[1, 2]]}).encode()})
    errors = texts(at.error)
    assert "broken.json" in errors and "not valid JSON" in errors
    assert "cohort\\.json" in errors or "cohort.json" in errors
    assert "add up to" in errors and "'criteria' must be" in errors
    files = frame(at, "net_files")
    assert list(files["Status"]) == ["ok"] + ["refused: see below"] * 4
    # the valid file still makes a network (of one site)
    assert number(metrics(at)["Screened"]) == len(north)
    # removing the files from the uploader drops them; the clear button forgets them all
    uploader(at).set_value([("north.json", good, "application/json")]).run()
    ok(at)
    assert list(frame(at, "net_files")["Status"]) == ["ok"]
    at.button(key="net_clear").click().run()
    ok(at)
    assert not at.session_state[network.K_NET_FILES]
    assert "net_files" not in {k for k, v in TABLES.items() if any(v in d.value.columns for d in at.dataframe)}
    assert any("Upload the histogram files" in i.value for i in at.info)


def test_session_cohort_joins_the_network_and_mismatches_say_what_to_change(halves):
    north, south = halves
    at = network_page()
    open_tab(at, "network", "Merge site histograms")
    upload(at, {"north.json": site_file(north, "North"), "south.json": site_file(south, "South")})
    at.toggle(key=session.W + "net.include").set_value(True).run()
    ok(at)
    assert number(metrics(at)["Screened"]) == 1200 + 20_000
    open_tab(at, "network_result", "Per site")
    sites = frame(at, "net_sites_table")
    assert list(sites["site"]) == ["North", "South", "My site"]
    # the sidebar's stage no longer matches the files: the message names the fix
    next(r for r in at.sidebar.radio if r.label == "Protocol stage").set_value(2).run()
    ok(at)
    errors = texts(at.error)
    assert "pick Stage 1 in the sidebar" in errors
    # ... and so does an empty site name for this session's cohort
    next(r for r in at.sidebar.radio if r.label == "Protocol stage").set_value(1).run()
    assert number(metrics(at)["Screened"]) == 21_200
    at.session_state[network.K_NET + "site"] = "  "
    at.run()
    ok(at)
    assert "a site name is needed" in texts(at.error)
    # and the files are uploaded files kept across a page switch
    at.switch_page("pages/sites.py").run()
    at.switch_page(PAGE).run()
    open_tab(at, "network", "Merge site histograms")
    assert list(frame(at, "net_files")["Site"]) == ["North", "South"]


def test_small_cell_suppression_applies_to_the_network_tables(halves):
    north, south = halves
    at = network_page()
    open_tab(at, "network", "Merge site histograms")
    upload(at, {"north.json": site_file(north, "North", below=5), "south.json": site_file(south, "South")})
    assert any("dropped small cells before sharing" in i.value for i in at.info)
    at.sidebar.toggle[0].set_value(True).run()  # the sidebar's small-cell suppression (k = 5)
    ok(at)
    open_tab(at, "network_result", "Per criterion")
    table = frame(at, "net_attrition_table")
    shown = pd.to_numeric(table["unique"], errors="coerce")
    assert shown.isna().any()  # small counts hidden
    assert ((shown.dropna() == 0) | (shown.dropna() >= 5)).all()
    open_tab(at, "network_result", "Per site")
    sites = frame(at, "net_sites_table").set_index("site")
    assert sites.loc["North", "suppress_below"] == 5 and sites.loc["North", "suppressed"] >= 5


def test_a_rule_missing_at_one_site_is_reported(halves):
    north, south = halves
    at = network_page()
    open_tab(at, "network", "Merge site histograms")
    # dictionary v2: with INR present an absent pt_s reads unknown; without INR and PT COAG is n/a
    upload(at, {"north.json": site_file(north, "North"),
                "south.json": site_file(south.drop(columns=["pt_s", "inr"]), "South")})
    assert "INCL07.COAG** is not assessable at South" in texts(at.warning)
    open_tab(at, "network_result", "Per site")
    sites = frame(at, "net_sites_table").set_index("site")
    assert sites.loc["South", "not_assessable"] == "INCL07.COAG" and sites.loc["North", "not_assessable"] == "—"
