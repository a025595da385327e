"""Benchmark: the portable screening query on local Spark against DuckDB.

    python -m kn026.bench.spark [--sizes 10000000,50000000] [--repeat 2] [--markdown]

Cohorts are the synthetic population (``kn026.ingest.synth.write``, seed 1) as Parquet
under ``bench-results/`` (shared with ``kn026.bench.engine``). Every measurement runs in a
fresh subprocess whose whole process tree (Spark's JVM included) is sampled with
psutil every 0.1 s for peak resident memory:

* ``duckdb-sql``: the emitted DuckDB SQL straight on the Parquet file (no load step);
* ``duckdb-engine``: the app's path, ``load_cohort`` (validate + copy into DuckDB)
  then ``Engine.evaluate`` (skipped above ``--engine-max`` patients: it holds the
  cohort in memory);
* ``spark``: the emitted Spark SQL on a ``local[*]`` session (driver memory 8g).

All engines must return the same histogram (compared by digest), so the table only
lists correct runs. The machine has 2 cores: DuckDB gets 2 threads and an 8 GB
memory limit, Spark ``local[*]`` and 8 GB of driver heap.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

OUT = Path("bench-results")
SPARK_MEMORY = "8g"
DUCKDB_MEMORY = "8GB"
THREADS = 2
KINDS = ("duckdb-sql", "duckdb-engine", "spark")


def _digest(hist) -> str:
    from kn026.core import funnel as fm

    h = fm.merge(hist)
    rows = sorted(h.records())
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def _summary(hist, plan_masks) -> dict:
    from kn026.core import funnel as fm

    totals = fm.eligible_counts(fm.collapse(hist, plan_masks))
    return {"histogram_rows": len(hist), "strict": totals["strict"], "optimistic": totals["optimistic"],
            "digest": _digest(hist)}


def _timed(fn, repeat: int) -> tuple[float, float, object]:
    """(first call, median of the following calls or the first, last result)."""
    times, out = [], None
    for _ in range(max(1, repeat)):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    rest = times[1:] or times
    return times[0], statistics.median(rest), out


def child(kind: str, path: str, stage: int, repeat: int) -> dict:
    """One measurement (run in its own process)."""
    t0 = time.perf_counter()
    from kn026.core import analysis
    from kn026.core.criteria import load_protocol

    protocol = load_protocol()
    out: dict = {"kind": kind}
    if kind == "duckdb-sql":
        import duckdb

        from kn026.scale import portable

        con = duckdb.connect(":memory:")
        con.execute(f"SET threads = {THREADS}")
        con.execute(f"SET memory_limit = '{DUCKDB_MEMORY}'")
        con.execute("SET enable_progress_bar = false")
        engine = portable.duckdb_engine(path, protocol, stage, con=con)
        out["startup_s"] = time.perf_counter() - t0

        def query():
            engine._cache.clear()
            return engine.histogram()
    elif kind == "duckdb-engine":
        from kn026.base.table import connect
        from kn026.core.engine import Engine
        from kn026.ingest.cohort import load_cohort

        con = connect(threads=THREADS, memory_limit=DUCKDB_MEMORY)
        con.execute("SET enable_progress_bar = false")
        t = time.perf_counter()
        cohort = load_cohort(path, con)
        out["load_s"] = time.perf_counter() - t
        engine = Engine(cohort, protocol, stage)
        out["startup_s"] = time.perf_counter() - t0

        def query():
            engine.evaluate()
            return engine.histogram()
    elif kind == "spark":
        from kn026.scale import spark as kspark

        session = kspark.spark_session("local[*]", driver_memory=SPARK_MEMORY)
        out["spark_version"] = session.version
        engine = kspark.spark_engine(path, protocol, stage, spark=session)
        out["startup_s"] = time.perf_counter() - t0

        def query():
            engine._cache.clear()
            return engine.histogram()
    else:
        raise ValueError(kind)
    first, again, hist = _timed(query, repeat)
    out.update(first_s=first, query_s=again, total_s=time.perf_counter() - t0,
               **_summary(hist, analysis.plan(engine).masks))
    return out


def measure(kind: str, path: Path, stage: int, repeat: int) -> dict:
    """Run `child` in a subprocess; add its process tree's peak RSS (JVM included)."""
    import psutil

    cmd = [sys.executable, "-m", "kn026.bench.spark", "--child", kind, "--cohort", str(path),
           "--stage", str(stage), "--repeat", str(repeat)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]
    done = threading.Event()

    def sample():
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:
            return
        while not done.is_set():
            rss = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        rss += p.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                break
            peak[0] = max(peak[0], rss)
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t = time.perf_counter()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t
    done.set()
    sampler.join()
    if proc.returncode:
        raise RuntimeError(f"{kind} on {path} failed:\n{stderr[-3000:]}")
    row = json.loads(stdout.strip().splitlines()[-1])
    row.update(peak_rss_gb=peak[0] / 2**30, wall_s=wall)
    return row


def cohort_file(n: int) -> Path:
    from kn026.bench.engine import cohort_file as shared

    return shared(n)


def markdown(rows: list[dict]) -> str:
    head = ("| patients | engine | start-up | first query | repeat query | end to end | peak RSS "
            "| histogram rows | strict eligible |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        start = f"{r['startup_s']:.1f} s"
        if "load_s" in r:
            start += f" (load {r['load_s']:.1f} s)"
        lines.append(f"| {r['n']:,} | {r['kind']} | {start} | {r['first_s']:.1f} s | {r['query_s']:.1f} s | "
                     f"{r['wall_s']:.1f} s | {r['peak_rss_gb']:.2f} GB | {r['histogram_rows']:,} | "
                     f"{r['strict']:,} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m kn026.bench.spark", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="10000000,50000000")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--stage", type=int, default=1)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--engine-max", type=int, default=10_000_000,
                   help="largest cohort for duckdb-engine (it copies the cohort into memory)")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    p.add_argument("--cohort", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.cohort, args.stage, args.repeat)))
        return 0
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        t = time.perf_counter()
        path = cohort_file(n)
        print(f"cohort {path} ready in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        digests = set()
        for kind in args.kinds.split(","):
            if kind == "duckdb-engine" and n > args.engine_max:
                continue
            row = {"n": n, **measure(kind, path, args.stage, args.repeat)}
            digests.add(row["digest"])
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
        if len(digests) != 1:
            raise RuntimeError(f"the engines disagree at n={n}: histogram digests {sorted(digests)}")
    OUT.mkdir(exist_ok=True)
    (OUT / "bench_spark.json").write_text(json.dumps(rows, indent=2))
    print(markdown(rows) if args.markdown else json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
