"""The whole-process benchmark harness (kn026.bench.engine --whole) on tiny cohorts: it runs the
command line and the pandas peer on the same files, checks they agree, times the app's
upload path and renders the README table. Correctness of the harness only: no time limits."""

from __future__ import annotations

import json

from kn026.bench import engine as bench


def test_whole_process_harness_on_tiny_cohorts(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "OUT", tmp_path)
    result = bench.run_whole(csv_rows=300, parquet_rows=400, upload_rows=200, repeat=1)
    for kind, n in (("csv", 300), ("parquet", 400)):
        r = result[kind]
        assert r["n"] == n and len(r["ours_runs"]) == len(r["pandas_runs"]) == 1
        assert r["ours_s"] > 0 and r["pandas_s"] > 0 and 0 <= r["strict"] <= n
        assert 0 < r["ours_cpu_s"] and 0 < r["pandas_cpu_s"]
    assert (tmp_path / "cohort_300.csv").read_text().startswith("patient_id,")
    upload = result["upload"]
    assert upload["n"] == 200 and 0 < upload["load_s"] <= upload["total_s"]
    table = bench.whole_markdown(result)
    lines = table.splitlines()
    assert lines[0].startswith("| measure | rows | ours | pandas peer |") and len(lines) == 7
    assert all(line.count("|") == lines[0].count("|") for line in lines[1:5])
    assert "| 300 |" in lines[2] and "| 400 |" in lines[3] and "| 200 |" in lines[4]
    assert "load average" in lines[-1]
    json.dumps(result)  # the harness writes it as bench_whole.json


def test_peer_agrees_with_the_engine_on_the_command_line_fixture():
    """The pandas peer reads a CSV itself and must count what `python -m kn026 funnel` counts."""
    from kn026.core import analysis
    from kn026.core.criteria import load_protocol
    from kn026.core.engine import Engine
    from kn026.ingest.cohort import load_cohort

    fixture = "tests/fixtures/cli_cohort.csv"
    ours = analysis.run(Engine(load_cohort(fixture), load_protocol(), 1)).totals["strict"]
    assert bench.peer(fixture)["strict"] == ours
