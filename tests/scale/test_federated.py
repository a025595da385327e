"""Federated feasibility: site histograms merge into the funnel of the pooled cohort."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kn026.base.table import connect
from kn026.cli import histogram as histogram_cli
from kn026.cli.main import main as cli_main
from kn026.core import analysis
from kn026.core.criteria import DEFAULT_PROTOCOL, load_protocol
from kn026.core.custom import CustomRule
from kn026.core.engine import Engine
from kn026.core.scenario import Scenario
from kn026.ingest import synth
from kn026.ingest.cohort import load_cohort
from kn026.scale import federated, portable
from tests import cohorts
from tests.cohorts import as_counter

PROTOCOL = load_protocol()
SCENARIO = Scenario("crcl50", overrides={"INCL07.CRCL": {"min": Decimal(50)},
                                         "EXCL03.WASHOUT": {"washout_min_days": Decimal(21)}},
                    disabled=frozenset({"INCL06"}))


@pytest.fixture(scope="module")
def pooled() -> pd.DataFrame:
    frame = synth.generate(4000, seed=11, sites=4)
    # boundary values and NULLs from the test strategies, on top of the synthetic mix
    rng = np.random.default_rng(3)
    for col in ("inr", "pt_s", "qtcf_ms", "last_anticancer_half_life_days", "ecog"):
        dtype = "Int64" if col == "ecog" else "Float64"
        column = frame[col].astype(dtype)
        pick = rng.random(len(frame)) < 0.3
        values = rng.choice(np.array(cohorts.VALUES[col], dtype=object), int(pick.sum()))
        column[pick] = pd.array(list(values), dtype=dtype)
        frame[col] = column
    return frame


def site_docs(frame: pd.DataFrame, stage: int, scenario: Scenario, k=None, drop=None) -> list[dict]:
    docs = []
    for site, part in frame.groupby("site_id", sort=True):
        part = part.reset_index(drop=True)
        if drop and site in drop:
            part = part.drop(columns=drop[site])
        engine = Engine(load_cohort(part, connect()), PROTOCOL, stage)
        docs.append(federated.export_histogram(engine.histogram(scenario.overrides), engine, scenario,
                                               site, suppress_below=k))
    return docs


@pytest.mark.parametrize("stage", [1, 2])
def test_merged_sites_equal_pooled_cohort(pooled, stage):
    engine = Engine(load_cohort(pooled, connect()), PROTOCOL, stage)
    hist, meta = federated.merge_histograms(site_docs(pooled, stage, SCENARIO))
    assert hist.sites == tuple(sorted(pooled["site_id"].unique()))
    assert as_counter(hist) == as_counter(engine.histogram(SCENARIO.overrides, by_site=True))
    assert meta["total"] == len(pooled) and meta["suppressed"] == 0
    result, sites = federated.network_result(hist, meta)
    want = analysis.run(engine, SCENARIO)
    assert result.totals == want.totals
    assert result.plan == want.plan
    pd.testing.assert_frame_equal(result.funnel, want.funnel)
    pd.testing.assert_frame_equal(result.stats, want.stats)
    pd.testing.assert_frame_equal(sites, analysis.by_site(engine, SCENARIO))
    order = ["EXCL03", "INCL07"]
    pd.testing.assert_frame_equal(federated.network_result(hist, meta, order)[0].funnel,
                                  analysis.run(engine, SCENARIO, order).funnel)


def test_suppression_drops_small_rows_and_keeps_bounds(pooled):
    k = 5
    full = site_docs(pooled, 1, SCENARIO)
    docs = site_docs(pooled, 1, SCENARIO, k=k)
    for a, b in zip(full, docs, strict=True):
        small = [r for r in a["rows"] if r[2] < k]
        kept = {(r[0], r[1]) for r in b["rows"]}
        dropped = [r for r in a["rows"] if (r[0], r[1]) not in kept]
        assert b["suppression"] == {"below": k, "suppressed": sum(r[2] for r in dropped)}
        assert all(r[2] >= k for r in b["rows"]) and all(r in dropped for r in small)
        assert b["total"] == a["total"]
        assert [r for r in a["rows"] if (r[0], r[1]) in kept] == b["rows"]
        # the rows add up to the public total: the dropped ones must not be recoverable by subtraction,
        # so each lies in [0, suppressed] with at least two of them and suppressed >= k (a site with
        # fewer than k patients outside its published rows cannot be protected: it then drops all)
        if dropped and len(dropped) < len(a["rows"]):
            assert len(dropped) >= 2 and b["suppression"]["suppressed"] >= k
    assert sum(d["suppression"]["suppressed"] for d in docs) > 0
    true_res, true_sites = federated.network_result(*federated.merge_histograms(full))
    hist, meta = federated.merge_histograms(docs)
    res, sites = federated.network_result(hist, meta)
    assert res.totals["screened"] == true_res.totals["screened"] == len(pooled)
    assert meta["suppressed"] == sum(d["suppression"]["suppressed"] for d in docs)
    # the strict bound can only fall, the optimistic one only rise: still true bounds
    assert (res.funnel["strict"] <= true_res.funnel["strict"]).all()
    assert (res.funnel["optimistic"] >= true_res.funnel["optimistic"]).all()
    assert (sites["screened"] == true_sites["screened"]).all()
    assert (sites["strict"] <= true_sites["strict"]).all()
    assert (sites["optimistic"] >= true_sites["optimistic"]).all()


def test_round_trip_and_validation(tmp_path, pooled):
    doc = site_docs(pooled.head(300), 1, SCENARIO)[0]
    path = federated.write_histogram(tmp_path / "a.json", doc)
    assert federated.read_histogram(path) == json.loads(json.dumps(doc))
    assert doc["leaves"] == [r.id for r in portable.stage_rules(PROTOCOL, 1)]
    assert doc["criteria_fingerprint"] == portable.criteria_fingerprint(PROTOCOL, 1, SCENARIO)
    assert doc["scenario"]["overrides"] == {"EXCL03.WASHOUT": {"washout_min_days": "21"}, "INCL07.CRCL": {"min": "50"}}
    bad = dict(doc, total=doc["total"] + 1)
    with pytest.raises(federated.FederatedError, match="add up to"):
        federated.write_histogram(tmp_path / "b.json", bad)
    for broken, message in [
        ({**doc, "version": 9}, "format version"),
        ({**doc, "format": "csv"}, "not a kn026-histogram"),
        ({**doc, "rows": [["0x3", "0x1", 5]], "total": 5}, "not a valid mask pair"),
        ({**doc, "rows": [[hex(1 << len(doc["leaves"])), "0x0", 5]], "total": 5}, "not a valid mask pair"),
        ({**doc, "rows": [["1", "0x0", 5]], "total": 5}, "hexadecimal"),
        ({**doc, "rows": [[3, 0, 5]], "total": 5}, "hexadecimal"),  # version 1 rows in a version 2 file
        ({**doc, "rows": [["0x3", "0x0", "5"]], "total": 5}, "whole number"),
        ({k: v for k, v in doc.items() if k != "leaves"}, "'leaves'"),
    ]:
        (tmp_path / "x.json").write_text(json.dumps(broken))
        with pytest.raises(federated.FederatedError, match=message):
            federated.read_histogram(tmp_path / "x.json")
    (tmp_path / "y.json").write_text("{not json")
    with pytest.raises(federated.FederatedError, match="not a JSON"):
        federated.read_histogram(tmp_path / "y.json")


def test_version_1_files_are_refused_with_what_to_do(tmp_path, pooled):
    doc = site_docs(pooled.head(300), 1, SCENARIO)[0]
    assert doc["version"] == 2 and all(isinstance(r[0], str) and r[0].startswith("0x") for r in doc["rows"])
    old = {**doc, "version": 1, "rows": [[int(f, 16), int(u, 16), n] for f, u, n in doc["rows"]]}
    (tmp_path / "old.json").write_text(json.dumps(old))
    with pytest.raises(federated.FederatedError, match=r"version 1.*reads version 2.*export its histogram again"):
        federated.read_histogram(tmp_path / "old.json")
    with pytest.raises(federated.FederatedError, match="export its histogram again"):
        federated.histogram_from_bytes(json.dumps(old).encode(), "old.json")
    with pytest.raises(federated.FederatedError, match="export its histogram again"):
        federated.merge_histograms([doc, dict(old, site="other")])
    # the exported query's result: version 1 had columns f, u, n
    (tmp_path / "rows.csv").write_text("f,u,n\n0,0,5\n")
    with pytest.raises(federated.FederatedError, match=r"^\S*rows.csv: columns f, u, n .*older kn026 \(rows version 1\).*f0, f1, u0, u1, n"):
        histogram_cli.main_histogram(_histogram_args(tmp_path / "rows.csv", tmp_path / "x.json"))
    (tmp_path / "rows.csv").write_text("f0,u0,f1,u1,f2,u2,n\n0,0,0,0,0,0,5\n")  # 67 rules: two words
    with pytest.raises(federated.FederatedError, match="f2, u2 are more mask words"):
        histogram_cli.main_histogram(_histogram_args(tmp_path / "rows.csv", tmp_path / "x.json"))
    (tmp_path / "rows.csv").write_text("u0,n\n0,5\n")
    with pytest.raises(federated.FederatedError, match="f0, f1, u1 missing"):
        histogram_cli.main_histogram(_histogram_args(tmp_path / "rows.csv", tmp_path / "x.json"))
    assert not (tmp_path / "x.json").exists()


def _histogram_args(rows, out, scenario=None):
    from types import SimpleNamespace

    return SimpleNamespace(out=str(out), protocol=None, scenario=scenario, rows=str(rows), stage=1, columns=None,
                           site="A", suppress_below=None)


@pytest.fixture(scope="module")
def wide():
    """64 analyst criteria beside the protocol (123 leaves, masks of two words)."""
    return Scenario("wide", overrides={"CUST64": {"limit": 1}, "INCL07.PLT": {"min": 75}},
                    custom=tuple(cohorts.analyst_rules(64)))


def test_64_analyst_criteria_merge_into_the_pooled_funnel(pooled, wide, tmp_path):
    docs = []
    for site, part in pooled.groupby("site_id", sort=True):
        engine = analysis.engine_for(Engine(load_cohort(part.reset_index(drop=True), connect()), PROTOCOL, 1), wide)
        docs.append(federated.export_histogram(engine.histogram(wide.overrides), engine, wide, site))
    assert len(docs[0]["leaves"]) == 67 + 64
    assert any(int(r[0], 16) >> 64 or int(r[1], 16) >> 64 for d in docs for r in d["rows"])
    paths = [federated.write_histogram(tmp_path / f"{d['site']}.json", d) for d in docs]
    hist, meta = federated.merge_histograms([federated.read_histogram(p) for p in paths])
    pooled_engine = analysis.engine_for(Engine(load_cohort(pooled, connect()), PROTOCOL, 1), wide)
    assert as_counter(hist) == as_counter(pooled_engine.histogram(wide.overrides, by_site=True))
    result, sites = federated.network_result(hist, meta)
    want = analysis.run(pooled_engine, wide)
    assert len(want.plan.ids) > 64 and result.histogram.width == 2
    pd.testing.assert_frame_equal(result.funnel, want.funnel)
    pd.testing.assert_frame_equal(result.stats, want.stats)
    pd.testing.assert_frame_equal(sites, analysis.by_site(pooled_engine, wide))
    network = federated.network_histogram(hist, meta)
    again, _ = federated.merge_histograms([network])
    assert as_counter(fm_merge_sites(again)) == as_counter(pooled_engine.histogram(wide.overrides))


def fm_merge_sites(hist):
    from kn026.core import funnel as fm

    return fm.merge(fm.Histogram(hist.fail, hist.unknown, hist.count))


def test_64_analyst_criteria_from_exported_query_rows(pooled, wide, tmp_path):
    """The `sql` query with two mask words, run at the site, becomes the same site file."""
    part = pooled[pooled["site_id"] == sorted(pooled["site_id"].unique())[0]].reset_index(drop=True)
    cohort = load_cohort(part, connect())
    sql = portable.screening_sql(PROTOCOL, 1, "duckdb", wide, present=cohort.present)
    rows = cohort.con.execute(sql).df()
    assert list(rows.columns) == ["f0", "f1", "f2", "u0", "u1", "u2", "n"]  # 131 leaves: three words
    rows.to_csv(tmp_path / "rows.csv", index=False)
    scen = tmp_path / "wide.yaml"
    scen.write_text(wide.to_yaml(PROTOCOL))
    assert histogram_cli.main_histogram(_histogram_args(tmp_path / "rows.csv", tmp_path / "rows.json", str(scen))) == 0
    engine = analysis.engine_for(Engine(cohort, PROTOCOL, 1), wide)
    want = federated.export_histogram(engine.histogram(wide.overrides), engine, wide, "A")
    got = federated.read_histogram(tmp_path / "rows.json")
    assert got["rows"] == want["rows"] and got["criteria_fingerprint"] == want["criteria_fingerprint"]


def test_mismatches_are_refused(tmp_path, pooled):
    small = pooled[pooled["site_id"].isin(sorted(pooled["site_id"].unique())[:2])].head(400)
    a, b = site_docs(small, 1, SCENARIO)
    federated.merge_histograms([a, b])
    with pytest.raises(federated.FederatedError, match=r"stage differs.*stage 1.*stage 2"):
        federated.merge_histograms([a, site_docs(small, 2, SCENARIO)[1]])
    with pytest.raises(federated.FederatedError, match=r"scenario differs.*'crcl50'.*'Protocol'"):
        federated.merge_histograms([a, site_docs(small, 1, Scenario())[1]])
    with pytest.raises(federated.FederatedError, match="more than one histogram from site"):
        federated.merge_histograms([a, dict(b, site=a["site"])])
    # another criteria file (a changed default threshold), same scenario
    text = DEFAULT_PROTOCOL.read_text(encoding="utf-8").replace(
        "min_age: {default: 18,", "min_age: {default: 21,")
    other_path = tmp_path / "other.yaml"
    other_path.write_text(text, encoding="utf-8")
    other = load_protocol(other_path)
    part = small[small["site_id"] == b["site"]].reset_index(drop=True)
    engine = Engine(load_cohort(part, connect()), other, 1)
    c = federated.export_histogram(engine.histogram(SCENARIO.overrides), engine, SCENARIO, b["site"])
    assert c["scenario"]["fingerprint"] == a["scenario"]["fingerprint"]
    with pytest.raises(federated.FederatedError, match="criteria fingerprint differs"):
        federated.merge_histograms([a, c])
    with pytest.raises(federated.FederatedError, match="no histogram"):
        federated.merge_histograms([])


def test_rule_missing_at_one_site_counts_as_unknown_there(pooled):
    sites = sorted(pooled["site_id"].unique())
    # dictionary v2: COAG is n/a only without both INR and PT
    docs = site_docs(pooled, 1, Scenario(), drop={sites[0]: ["pt_s", "inr"]})
    assert docs[0]["not_assessable"] == {"INCL07.COAG": ["inr", "pt_s"]}
    hist, meta = federated.merge_histograms(docs)
    assert meta["partially_assessable"] == {"INCL07.COAG": [sites[0]]}
    assert meta["not_assessable"] == {}
    bit = 1 << docs[0]["leaves"].index("INCL07.COAG")
    assert all(u & bit for _, u, _, site in hist.records() if site == 0)
    result, _ = federated.network_result(hist, meta)
    assert "INCL07" in result.plan.ids
    # dropped everywhere: n/a in the network funnel too
    docs = site_docs(pooled, 1, Scenario(), drop={s: ["pt_s", "inr"] for s in sites})
    hist, meta = federated.merge_histograms(docs)
    assert meta["not_assessable"] == {"INCL07.COAG": ["inr", "pt_s"]}
    assert meta["partially_assessable"] == {}


def test_merged_engine_refuses_other_thresholds(pooled):
    hist, meta = federated.merge_histograms(site_docs(pooled.head(500), 1, SCENARIO))
    engine = federated.MergedEngine(hist, meta)
    with pytest.raises(federated.FederatedError, match="re-run"):
        analysis.run(engine, Scenario("x", overrides={"INCL01": {"min_age": Decimal(30)}}))


def test_cli_histogram_and_merge(tmp_path, pooled, capsys):
    sites = sorted(pooled["site_id"].unique())[:3]
    files = []
    for s in sites:
        part = pooled[pooled["site_id"] == s]
        csv_path = tmp_path / f"{s}.csv"
        part.to_csv(csv_path, index=False)
        out = tmp_path / f"{s}.json"
        assert cli_main(["histogram", "--cohort", str(csv_path), "--stage", "1", "--site", s,
                               "--out", str(out), "--suppress-below", "3"]) == 0
        files.append(str(out))
    capsys.readouterr()
    assert cli_main(["merge", *files, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    pooled3 = pooled[pooled["site_id"].isin(sites)].reset_index(drop=True)
    want = analysis.run(Engine(load_cohort(pooled3, connect()), PROTOCOL, 1))
    assert doc["totals"]["screened"] == want.totals["screened"]
    assert doc["totals"]["strict"] <= want.totals["strict"] <= want.totals["optimistic"] \
        <= doc["totals"]["optimistic"]
    assert [s["site"] for s in doc["sites"]] == sites
    assert cli_main(["merge", *files]) == 0
    text = capsys.readouterr().out
    assert "network of 3 site(s)" in text and "suppressed small cells" in text
    # a refused merge: exit status 2 and one line naming the problem
    other = tmp_path / "stage2.json"
    part = pooled[pooled["site_id"] == sites[0]]
    part.to_csv(tmp_path / "s2.csv", index=False)
    assert cli_main(["histogram", "--cohort", str(tmp_path / "s2.csv"), "--stage", "2",
                           "--site", "other", "--out", str(other)]) == 0
    capsys.readouterr()
    assert cli_main(["merge", files[0], str(other)]) == 2
    assert "stage differs" in capsys.readouterr().err


def test_cli_histogram_from_exported_query_rows(tmp_path, pooled, capsys):
    """A site runs the exported SQL in its own database and converts the f,u,n result."""
    part = pooled[pooled["site_id"] == sorted(pooled["site_id"].unique())[0]].drop(columns=["pt_s", "inr"])
    part = part.reset_index(drop=True)
    cohort = load_cohort(part, connect())
    columns = ",".join(sorted(cohort.present))
    sql = portable.screening_sql(PROTOCOL, 1, "duckdb", SCENARIO, present=cohort.present)
    rows = cohort.con.execute(sql).df()
    rows.to_csv(tmp_path / "rows.csv", index=False)
    scen = tmp_path / "s.yaml"
    scen.write_text(SCENARIO.to_yaml(PROTOCOL))
    assert cli_main(["histogram", "--rows", str(tmp_path / "rows.csv"), "--columns", columns,
                           "--stage", "1", "--scenario", str(scen), "--site", "A",
                           "--out", str(tmp_path / "rows.json")]) == 0
    assert cli_main(["histogram", "--cohort", str(_write(part, tmp_path / "a.parquet")),
                           "--stage", "1", "--scenario", str(scen), "--site", "A",
                           "--out", str(tmp_path / "cohort.json")]) == 0
    a = federated.read_histogram(tmp_path / "rows.json")
    b = federated.read_histogram(tmp_path / "cohort.json")
    assert a["rows"] == b["rows"] and a["not_assessable"] == b["not_assessable"] == {"INCL07.COAG": ["inr", "pt_s"]}
    assert a["criteria_fingerprint"] == b["criteria_fingerprint"]
    assert a["engine"] == "sql" and b["engine"] == "duckdb"
    federated.merge_histograms([a, dict(b, site="B")])


def _write(frame: pd.DataFrame, path: Path) -> Path:
    load_cohort(frame, con := connect())
    con.execute(f"COPY cohort TO '{path}' (FORMAT parquet)")
    return path


ANALYST = Scenario("analyst", overrides={"INCL01": {"min_age": Decimal(21)}},
                   custom=(CustomRule("AGECAP", "inclusion", "Aged at most $max_age years",
                                      "age_years <= $max_age", {"max_age": {"default": 75}}),),
                   replace={"INCL05": "ecog IN (0, 1) OR ecog IS NULL AND age_years < 40"})


def test_sites_with_custom_rules_merge_into_the_pooled_funnel(pooled, tmp_path, capsys):
    """Analyst-written rules travel in the fingerprint: every site must run the same ones."""
    docs = []
    for site, part in pooled.groupby("site_id", sort=True):
        engine = analysis.engine_for(Engine(load_cohort(part.reset_index(drop=True), connect()), PROTOCOL, 1),
                                     ANALYST)
        docs.append(federated.export_histogram(engine.histogram(ANALYST.overrides), engine, ANALYST, site))
    assert docs[0]["leaves"][-1] == "AGECAP" and docs[0]["scenario"]["custom"][0]["id"] == "AGECAP"
    hist, meta = federated.merge_histograms(docs)
    pooled_engine = analysis.engine_for(Engine(load_cohort(pooled, connect()), PROTOCOL, 1), ANALYST)
    assert as_counter(hist) == as_counter(pooled_engine.histogram(ANALYST.overrides, by_site=True))
    result, _ = federated.network_result(hist, meta)
    assert result.totals == analysis.run(pooled_engine, ANALYST).totals
    # the same thresholds without the analyst rules: refused, not silently mixed
    plain = Scenario("analyst", overrides=ANALYST.overrides)
    engine = Engine(load_cohort(pooled[pooled["site_id"] == docs[0]["site"]].reset_index(drop=True), connect()),
                    PROTOCOL, 1)
    other = federated.export_histogram(engine.histogram(plain.overrides), engine, plain, "elsewhere")
    with pytest.raises(federated.FederatedError, match="scenario"):
        federated.merge_histograms([docs[0], other])
    # an engine that was not extended for the scenario cannot label the custom bits
    with pytest.raises(federated.FederatedError, match="engine_for"):
        federated.export_histogram(engine.histogram(), engine, ANALYST, "x")


# --------------------------------------------------------------------------- in memory (the app)


def test_histogram_from_bytes_reads_what_write_histogram_writes(tmp_path, pooled):
    doc = site_docs(pooled.head(300), 1, SCENARIO)[0]
    path = federated.write_histogram(tmp_path / "a.json", doc)
    assert federated.histogram_from_bytes(path.read_bytes(), "a.json") == federated.read_histogram(path)
    assert federated.histogram_from_bytes(b"\xef\xbb\xbf" + path.read_bytes(), "bom.json")["site"] == doc["site"]
    for data, message in [
        (b"x" * 101, "at most"),
        (b"\xff\xfe\x00garbage", "not a text"),
        (b"{not json", "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
        (json.dumps({**doc, "criteria": [["INCL01", ["NOPE"]]]}).encode(), "'criteria' must be"),
        (json.dumps({**doc, "criteria": [1, 2]}).encode(), "'criteria' must be"),
        (json.dumps({**doc, "not_assessable": {"INCL01": "age"}}).encode(), "list of column names"),
        (json.dumps({**doc, "scenario": {**doc["scenario"], "overrides": {"INCL01": {"min_age": "old"}}}}).encode(),
         "not a number"),
        (json.dumps({**doc, "scenario": {**doc["scenario"], "disabled": "INCL06"}}).encode(), "list of IDs"),
    ]:
        with pytest.raises(federated.FederatedError, match=message) as err:
            federated.histogram_from_bytes(data, "bad.json", max_bytes=100 if len(data) == 101 else 10**9)
        assert "bad.json" in str(err.value)


def test_network_histogram_is_a_site_file_that_merges_again(pooled):
    sites = sorted(pooled["site_id"].unique())
    docs = site_docs(pooled, 1, SCENARIO, k=5, drop={sites[0]: ["pt_s"]})
    hist, meta = federated.merge_histograms(docs[:3])
    net = federated.network_histogram(hist, meta, "Region North")
    assert net["site"] == "Region North" and net["engine"] == "merged"
    assert net["total"] == sum(d["total"] for d in docs[:3])
    assert net["suppression"] == {"below": 5, "suppressed": meta["suppressed"]} and meta["suppressed"] > 0
    assert [s["site"] for s in net["network"]["sites"]] == sites[:3]
    assert json.loads(json.dumps(net)) == federated.histogram_from_bytes(json.dumps(net).encode(), "n.json")
    # the region merged with the fourth site gives the same network as the four site files
    two_level = federated.network_result(*federated.merge_histograms([net, docs[3]]))[0]
    flat = federated.network_result(*federated.merge_histograms(docs))[0]
    assert two_level.totals == flat.totals
    pd.testing.assert_frame_equal(two_level.funnel, flat.funnel)
    pd.testing.assert_frame_equal(two_level.stats, flat.stats)
    # ... but not with a site it already contains
    federated.check_no_overlap([net, docs[3]])
    with pytest.raises(federated.FederatedError, match=rf"site '{sites[1]}' is in both"):
        federated.check_no_overlap([net, docs[1]])
    with pytest.raises(federated.FederatedError, match="in both"):
        federated.check_no_overlap([docs[0], net])
    federated.check_no_overlap(docs)  # plain files: duplicates are merge_histograms' to refuse


def test_differences_name_what_keeps_a_file_out(pooled):
    small = pooled[pooled["site_id"].isin(sorted(pooled["site_id"].unique())[:2])].head(400)
    a, b = site_docs(small, 1, SCENARIO)
    assert federated.differences(b, a) == []
    assert federated.differences(site_docs(small, 2, SCENARIO)[1], a) == ["stage 2"]
    assert federated.differences(site_docs(small, 1, Scenario())[1], a) == ["scenario 'Protocol'"]
    assert federated.differences(dict(b, criteria_fingerprint="sha256:0"), a) == ["criteria or thresholds"]
    assert federated.differences(dict(b, leaves=b["leaves"][::-1]), a) == ["rule order"]


def test_cli_merge_out_is_a_site_file_that_merges_again(tmp_path, pooled, capsys):
    """`merge --out` writes the site format: regions can merge into a country without double counting."""
    sites = sorted(pooled["site_id"].unique())
    files = []
    for s in sites:
        csv_path = tmp_path / f"{s}.csv"
        pooled[pooled["site_id"] == s].to_csv(csv_path, index=False)
        files.append(tmp_path / f"{s}.json")
        assert cli_main(["histogram", "--cohort", str(csv_path), "--stage", "1", "--site", s,
                               "--out", str(files[-1])]) == 0
    region = tmp_path / "region.json"
    assert cli_main(["merge", *map(str, files[:2]), "--out", str(region)]) == 0
    capsys.readouterr()
    assert federated.read_histogram(region)["total"] == int(pooled["site_id"].isin(sites[:2]).sum())
    assert cli_main(["merge", str(region), *map(str, files[2:]), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    want = analysis.run(Engine(load_cohort(pooled, connect()), PROTOCOL, 1))
    assert doc["totals"] == want.totals


def test_funnel_order_does_not_split_the_network():
    a = Scenario("s", overrides=SCENARIO.overrides, order=("INCL05", "INCL01"))
    b = Scenario("s", overrides=SCENARIO.overrides)
    assert portable.scenario_fingerprint(PROTOCOL, a) == portable.scenario_fingerprint(PROTOCOL, b)


def test_identical_files_are_named_not_merged_silently():
    from kn026.scale.federated import content_key, identical_files

    a, b = b'{"site": "A"}', b'{"site": "B"}'
    assert identical_files([("a.json", a), ("b.json", b)]) == []
    assert identical_files([("a.json", a), ("copy of a.json", a), ("b.json", b), ("a.json", a)]) == [
        ("copy of a.json", "a.json"), ("a.json", "a.json")]
    # a file kept from an earlier upload (the uploader is empty after a page switch)
    assert identical_files([("again.json", a)], {content_key(a): "a.json"}) == [("again.json", "a.json")]
    assert identical_files([("a.json", a)], {content_key(a): "a.json"}) == []  # the kept file itself
