"""The `--engine {duckdb,spark}` option every screening command shares, and the engine it asks for."""

from __future__ import annotations

import argparse
from pathlib import Path

from kn026.core.criteria import Protocol
from kn026.scale.spark import DEFAULT_MASTER, spark_engine


def add_cli_engine_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--engine {duckdb,spark}`` and ``--spark-master`` to a command's parser."""
    parser.add_argument("--engine", choices=("duckdb", "spark"), default="duckdb",
                        help="where the screening query runs (spark: Parquet cohorts, needs "
                             "requirements-spark.txt and Java 17)")
    parser.add_argument("--spark-master", default=DEFAULT_MASTER,
                        help="Spark master URL for --engine spark (default local[*])")


def engine_from_args(args, protocol: Protocol):
    """The engine a command asked for: a Spark look-alike, or None for the DuckDB engine.

    ``args`` needs ``engine``, ``cohort``, ``stage`` and ``spark_master``. The caller
    builds the DuckDB engine itself when this returns None.
    """
    if getattr(args, "engine", "duckdb") != "spark":
        return None
    path = Path(args.cohort)
    remote = str(args.cohort).startswith(("hdfs:", "s3a:", "s3:", "dbfs:", "abfss:", "gs:", "file:"))
    if path.suffix.lower() not in (".parquet", ".pq") and not path.is_dir() and not remote:
        raise ValueError(f"--engine spark reads Parquet cohorts; {path.name} is not .parquet "
                         "(convert it with the DuckDB engine or `python -m kn026 synth`)")
    return spark_engine(args.cohort, protocol, args.stage, master=args.spark_master)
