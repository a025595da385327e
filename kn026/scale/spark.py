"""Screening on Apache Spark: the portable histogram query run where the data lives.

    python -m kn026 funnel --engine spark --cohort cohort.parquet --stage 1 [--spark-master URL]

The Spark SQL text is :func:`kn026.scale.portable.screening_sql` for dialect ``spark``; Spark
returns only the histogram rows ``(f0.., u0.., n)`` (63-bit mask words), which become a
:class:`kn026.core.funnel.Histogram`, so everything downstream (funnel, per-criterion
table, Shapley shares, per-site counts) is the same code as for DuckDB.
:func:`spark_engine` returns an engine look-alike (:class:`kn026.scale.portable.QueryEngine`)
that :mod:`kn026.core.analysis` accepts in place of :class:`kn026.core.engine.Engine`.

The Parquet file must follow the data dictionary (as ``python -m kn026 synth`` or a
validated export writes it): the columns are cast to the dictionary's types but
spellings are not normalised. On a cluster the path must be readable by the
executors (``hdfs://``, ``s3a://``, ``dbfs:/``, ...).

PySpark is an optional extra (``requirements-spark.txt``, Java 17+); importing this
module works without it, calling it raises a clear error.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

from kn026.base import schema
from kn026.core.criteria import Protocol
from kn026.core.funnel import Histogram
from kn026.core.scenario import Scenario
from kn026.scale.portable import ALL_COLUMNS, QueryEngine, histogram_from_arrow, histogram_from_rows

DEFAULT_MASTER = "local[*]"
DEFAULT_DRIVER_MEMORY = "8g"  # the machine has 24 GB; leaves room for DuckDB and the OS
LOOPBACK = "127.0.0.1"
_SPARK_TYPES = {"VARCHAR": "STRING", "DOUBLE": "DOUBLE", "INTEGER": "INT",
                "BOOLEAN": "BOOLEAN", "DATE": "DATE"}


class SparkUnavailable(RuntimeError):
    """PySpark (or Java) is not installed."""


def spark_session(master: str = DEFAULT_MASTER, driver_memory: str = DEFAULT_DRIVER_MEMORY,
                  conf: dict | None = None, app_name: str = "kn026"):
    """A SparkSession (created once per process; later calls return the same one).

    The driver binds to 127.0.0.1 only and the web UI is off unless ``conf`` turns it
    on; Arrow transfers keep NULLs as NULLs. ``master`` is ``local[*]`` (all cores of
    this machine) or any Spark master URL (``spark://host:7077``, ``yarn``, ...).
    """
    try:
        # PySpark 4.3 warns about pandas 3 (on import and on Arrow transfers); pandas is not used
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas",
                                category=FutureWarning)
        from pyspark.sql import SparkSession
    except ImportError as err:
        raise SparkUnavailable("the Spark engine needs PySpark: pip install -r requirements-spark.txt "
                               "(and Java 17 or newer)") from err
    os.environ.setdefault("SPARK_LOCAL_IP", LOOPBACK)
    settings = {
        "spark.driver.host": LOOPBACK,
        "spark.driver.bindAddress": LOOPBACK,
        "spark.driver.memory": driver_memory,
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.session.timeZone": "UTC",
        # The screening projection compiles to one huge method that HotSpot never JIT-compiles
        # (limit 8000 bytes); above this size Spark falls back to per-expression code, which
        # measured 3-4x less CPU per row here. Spark's docs recommend 8000 on HotSpot.
        "spark.sql.codegen.hugeMethodLimit": "8000",
        "spark.sql.warehouse.dir": str(Path(tempfile.gettempdir()) / "kn026-spark-warehouse"),
    }
    if master.startswith("local"):
        settings["spark.sql.shuffle.partitions"] = "8"  # the histogram is small
    settings.update(conf or {})
    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def register_cohort(spark, path: str | Path, view: str = "cohort") -> frozenset[str]:
    """Expose the Parquet cohort as temp view `view`, dictionary columns cast to their types.

    Returns the dictionary columns present (matched case-insensitively); other
    columns are left out of the view.
    """
    try:
        frame = spark.read.parquet(str(path))
    except Exception as err:  # noqa: BLE001 - pyspark's AnalysisException: missing path, not Parquet, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"Spark cannot read {path} as Parquet: {first}") from None
    by_lower = {name.lower(): name for name in frame.columns}
    present = sorted(set(by_lower) & ALL_COLUMNS)
    if not present:
        raise ValueError(f"{path} has no column of the data dictionary")
    select = []
    for name in present:
        src = by_lower[name].replace("`", "``")
        typ = _SPARK_TYPES[schema.BY_NAME[name].sql_type]
        select.append(f"CAST(`{src}` AS {typ}) AS `{name}`")
    frame.selectExpr(*select).createOrReplaceTempView(view)
    return frozenset(present)


def _collect(spark, sql: str, by_site: bool) -> Histogram:
    result = spark.sql(sql)
    if hasattr(result, "toArrow"):  # Spark >= 4.0
        return histogram_from_arrow(result.toArrow(), by_site)
    return histogram_from_rows(result.collect(), by_site)


def spark_engine(path: str | Path, protocol: Protocol, stage: int, spark=None,
                 master: str = DEFAULT_MASTER, view: str = "cohort") -> QueryEngine:
    """An engine look-alike screening `path` on Spark (see :class:`kn026.scale.portable.QueryEngine`)."""
    spark = spark or spark_session(master)
    present = register_cohort(spark, path, view)
    return QueryEngine(protocol, stage, present, lambda sql, by_site: _collect(spark, sql, by_site),
                       dialect="spark", table=view, source=str(path))


def spark_histogram(path: str | Path, protocol: Protocol, stage: int, scenario: Scenario | None = None,
                    master: str = DEFAULT_MASTER, by_site: bool = False, spark=None) -> Histogram:
    """Histogram of (fail, unknown[, site]) masks of a Parquet cohort, computed by Spark.

    Equal to ``Engine(load_cohort(path), protocol, stage).histogram(scenario.overrides,
    by_site)`` for a cohort that follows the dictionary (tests/test_spark.py).
    """
    engine = spark_engine(path, protocol, stage, spark=spark, master=master)
    return engine.histogram((scenario or Scenario()).overrides, by_site=by_site)
