"""The three engine shapes satisfy the one interface the analyses use (kn026.core.screening)."""

from __future__ import annotations

import pytest

from kn026.base.table import connect
from kn026.core import analysis
from kn026.core.criteria import load_protocol
from kn026.core.engine import Engine
from kn026.core.scenario import Scenario
from kn026.core.screening import ScreeningEngine
from kn026.ingest import synth
from kn026.ingest.cohort import load_cohort
from kn026.scale import federated
from kn026.scale.portable import QueryEngine, histogram_from_arrow

PROTOCOL = load_protocol()


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(load_cohort(synth.generate(400, 3), connect()), PROTOCOL, 1)


def test_the_duckdb_engine_has_the_shape(engine):
    assert isinstance(engine, ScreeningEngine)


def test_the_query_engine_has_the_shape(engine):
    def run(sql: str, by_site: bool):  # the emitted DuckDB query on the loaded table
        return histogram_from_arrow(engine.con.cursor().sql(sql).to_arrow_table(), by_site)

    query = QueryEngine(PROTOCOL, 1, engine.cohort.present, run, "duckdb", engine.cohort.table)
    assert isinstance(query, ScreeningEngine)
    assert analysis.run(query).totals == analysis.run(engine).totals


def test_the_merged_engine_has_the_shape_and_gives_the_same_funnel(engine):
    doc = federated.export_histogram(engine.histogram(), engine, Scenario(), "A")
    hist, meta = federated.merge_histograms([doc])
    merged = federated.MergedEngine(hist, meta)
    assert isinstance(merged, ScreeningEngine)
    assert analysis.run(merged, federated.scenario_of(meta)).totals == analysis.run(engine).totals


def test_an_object_without_a_histogram_is_not_an_engine():
    class Half:
        protocol = stage = bit = not_assessable = cohort = rules_key = None

    assert not isinstance(Half(), ScreeningEngine)
