"""Benchmark: the engine against the DuckDB scan floor and a plain pandas implementation.

    python -m kn026.bench.engine [--sizes 100000,1000000,10000000] [--repeat 5] [--custom 12] [--markdown]

Each size runs in fresh subprocesses (so peak memory is the step's own): one for
the engine (load, scan floor, full evaluation, reorder/toggle, one-threshold
change, peak RSS) and one for the pandas boolean-mask alternative. Cohorts come
from the synthetic generator, written once to Parquet under `bench-results/`.
The pandas version is the naive alternative: the same compiled predicates
translated to nullable-pandas expressions (Kleene logic), then a funnel built
with one boolean mask per criterion.

`--custom N` (default 12) screens the protocol with N analyst criteria beside it
(:func:`analyst_criteria`, as typed in the app's rule editor), so the masks are wider
than one 64-bit word (59 + 12 = 71 leaves); `--custom 0` times the protocol alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import sqlglot
from sqlglot import exp

from kn026.base.table import connect
from kn026.core import analysis, custom
from kn026.core import funnel as fm
from kn026.core.criteria import load_protocol
from kn026.core.engine import Engine
from kn026.ingest.cohort import load_cohort

OUT = Path(os.environ.get("KN026_BENCH_OUT", "bench-results"))  # children inherit the parent's


def _timed(fn, repeat: int) -> tuple[float, object]:
    """Median wall time (s) of `repeat` calls, and the last result."""
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cohort_file(n: int, seed: int = 1) -> Path:
    """The benchmark cohort of size n as Parquet (generated once, in chunks)."""
    from kn026.ingest import synth

    OUT.mkdir(exist_ok=True)
    path = OUT / f"cohort_{n}.parquet"
    if not path.exists():
        synth.write(path, n=n, seed=seed)
    return path


# (column, operator, limit, kind) of the analyst criteria: columns every synthetic cohort has
_ANALYST = [("age_years", "<=", 75, "exclusion"), ("weight_kg", ">=", 45, "inclusion"),
            ("hemoglobin_g_l", ">=", 100, "inclusion"), ("anc_1e9_l", ">=", 2, "inclusion"),
            ("platelets_1e9_l", ">=", 120, "inclusion"), ("albumin_g_l", ">=", 32, "inclusion"),
            ("ecog", "<=", 0, "inclusion"), ("lvef_pct", ">=", 55, "inclusion"),
            ("sbp_mmhg", "<=", 140, "exclusion"), ("dbp_mmhg", "<=", 90, "exclusion"),
            ("creatinine_umol_l", "<=", 110, "exclusion"), ("inr", "<=", 1.3, "exclusion")]


def analyst_criteria(count: int) -> list[custom.CustomRule]:
    """`count` analyst criteria (CUST01..): a threshold on a common column with a parameter,
    the limits moving a little on each pass through the column list."""
    rules = []
    for i in range(count):
        col, op, limit, kind = _ANALYST[i % len(_ANALYST)]
        limit = round(limit * (1 + 0.02 * (i // len(_ANALYST))), 3)
        rules.append(custom.CustomRule(f"CUST{i + 1:02d}", kind, f"{col} {op} {limit}", f"{col} {op} :limit",
                                       {"limit": {"default": limit}}))
    return rules


def _protocol(cohort, analyst: int):
    """The protocol, extended with `analyst` criteria; and the analyst rule IDs."""
    protocol = load_protocol()
    if not analyst:
        return protocol, frozenset()
    return custom.extend(protocol, cohort, analyst_criteria(analyst))


def run_engine(n: int, repeat: int, analyst: int = 0) -> dict:
    """Engine timings for one size (run in its own process)."""
    path = cohort_file(n)
    con = connect()
    con.execute("SET enable_progress_bar = false")
    t = time.perf_counter()
    cohort = load_cohort(path, con)
    load_s = time.perf_counter() - t
    protocol, changed = _protocol(cohort, analyst)
    engine = Engine(cohort, protocol, 1, untrusted=changed)
    cols = sorted(set().union(*(r.columns[1] for r in engine.rules)) & cohort.present)
    floor_sql = "SELECT " + ", ".join(f'count("{c}")' for c in cols) + " FROM cohort"
    floor_s, _ = _timed(lambda: con.execute(floor_sql).fetchall(), repeat)

    def full():
        engine.evaluate()
        return engine.histogram()

    full_s, hist = _timed(full, repeat)
    plan = analysis.plan(engine)
    ids, masks = list(plan.ids), list(plan.masks)
    rng = np.random.default_rng(0)

    def reorder():
        perm = rng.permutation(len(ids))
        return fm.funnel(hist, [ids[i] for i in perm], units=[masks[i] for i in perm])

    def toggle():
        keep = [i for i in range(len(ids)) if rng.random() > 0.2]
        return fm.funnel(hist, [ids[i] for i in keep], units=[masks[i] for i in keep])

    reorder_s, _ = _timed(reorder, max(repeat, 20))
    toggle_s, _ = _timed(toggle, max(repeat, 20))
    page_s, _ = _timed(lambda: analysis.run(engine, order=list(reversed(ids))), repeat)
    measure = engine.protocol.measures[0]  # a threshold the protocol file draws (KN026-001: minimum age)
    param = measure.limits[0][0]
    default = float(engine.protocol.rule(measure.rule).params[param].default)
    values = iter(np.linspace(0.8 * default, 1.2 * default, 1000))

    def threshold():
        return engine.histogram({measure.rule: {param: round(float(next(values)), 3)}})

    threshold_s, _ = _timed(threshold, repeat)
    return {
        "n": n, "leaves": len(engine.rules), "mask_words": engine.width, "criteria": len(ids),
        "histogram_rows": len(hist), "load_s": load_s, "floor_s": floor_s,
        "full_s": full_s, "reorder_ms": reorder_s * 1e3, "toggle_ms": toggle_s * 1e3,
        "page_ms": page_s * 1e3, "threshold_ms": threshold_s * 1e3,
        "engine_peak_mb": _peak_mb(), "strict": fm.eligible_counts(fm.collapse(hist, masks))["strict"],
    }


# -- the naive alternative: nullable pandas boolean masks --------------------------------

def _to_pandas(node: exp.Expression, df: pd.DataFrame):
    """Evaluate a compiled predicate tree on nullable pandas columns (Kleene logic)."""
    ev = lambda n: _to_pandas(n, df)  # noqa: E731
    if isinstance(node, exp.Paren):
        return ev(node.this)
    if isinstance(node, exp.Column):
        return df[node.name]
    if isinstance(node, exp.Literal):
        return node.this if node.is_string else float(node.this)
    if isinstance(node, exp.Neg):
        return -ev(node.this)
    if isinstance(node, exp.Boolean):
        return bool(node.this)
    if isinstance(node, exp.Cast) and isinstance(node.this, exp.Null):
        return pd.Series(pd.NA, index=df.index, dtype="Float64")
    if isinstance(node, exp.And):
        return ev(node.this) & ev(node.expression)
    if isinstance(node, exp.Or):
        return ev(node.this) | ev(node.expression)
    if isinstance(node, exp.Not):
        return ~ev(node.this)
    if isinstance(node, exp.Is) and isinstance(node.expression, exp.Null):  # x IS NULL: never unknown
        value = ev(node.this)
        return value.isna().astype("boolean") if isinstance(value, pd.Series) else value is None
    binary = {exp.EQ: "__eq__", exp.NEQ: "__ne__", exp.GT: "__gt__", exp.GTE: "__ge__",
              exp.LT: "__lt__", exp.LTE: "__le__", exp.Add: "__add__", exp.Sub: "__sub__",
              exp.Mul: "__mul__", exp.Div: "__truediv__"}
    for cls, op in binary.items():
        if type(node) is cls:
            left, right = ev(node.this), ev(node.expression)
            if not isinstance(left, pd.Series):
                left, right = right, left
                op = {"__gt__": "__lt__", "__lt__": "__gt__", "__ge__": "__le__", "__le__": "__ge__",
                      "__sub__": "__rsub__", "__truediv__": "__rtruediv__"}.get(op, op)
            return getattr(left, op)(right)
    if isinstance(node, exp.In):
        col = ev(node.this)
        out = col.isin([e.this for e in node.expressions]).astype("boolean")
        return out.mask(col.isna())
    if isinstance(node, exp.Coalesce):
        out = ev(node.this)
        for e in node.expressions:
            out = out.fillna(ev(e)) if isinstance(out, pd.Series) else out
        return out
    if isinstance(node, (exp.Greatest, exp.Least)):
        args = [ev(node.this), *(ev(e) for e in node.expressions)]
        series = [a for a in args if isinstance(a, pd.Series)]
        scalars = [a for a in args if not isinstance(a, pd.Series)]
        out = series[0]
        for s in series[1:]:
            out = np.fmax(out, s) if isinstance(node, exp.Greatest) else np.fmin(out, s)
        for s in scalars:
            out = out.clip(lower=s) if isinstance(node, exp.Greatest) else out.clip(upper=s)
        return out
    if isinstance(node, exp.Round):
        return ev(node.this).round(0)
    if isinstance(node, exp.Pow):
        return ev(node.this) ** ev(node.expression)
    raise NotImplementedError(type(node).__name__)


def pandas_screen(df: pd.DataFrame, engine: Engine) -> dict:
    """Evaluate every rule with pandas masks and build the sequential funnel (strict/optimistic)."""
    fail, unknown = {}, {}
    for rule in engine.rules:
        if rule.id in engine.not_assessable:
            continue
        tree = sqlglot.parse_one(engine.rule_sql(rule.id), read="duckdb")
        result = _to_pandas(tree, df)
        if not isinstance(result, pd.Series):
            result = pd.Series(result, index=df.index, dtype="boolean")
        result = result.astype("boolean")
        fail[rule.id] = (~result).fillna(False).to_numpy(bool)
        unknown[rule.id] = result.isna().to_numpy()
    strict = np.ones(len(df), bool)
    optimistic = np.ones(len(df), bool)
    steps = []
    for crit in engine.protocol.criteria:
        ids = [r.id for r in crit.rules if r.id in fail]
        if not ids:
            continue
        f = np.logical_or.reduce([fail[i] for i in ids])
        u = np.logical_or.reduce([unknown[i] for i in ids]) & ~f
        optimistic &= ~f
        strict &= ~f & ~u
        steps.append((crit.id, int(strict.sum()), int(optimistic.sum())))
    return {"steps": steps, "strict": int(strict.sum())}


def run_pandas(n: int, repeat: int, analyst: int = 0) -> dict:
    path = cohort_file(n)
    head = load_cohort(pd.read_parquet(path).head(1), connect())
    protocol, changed = _protocol(head, analyst)
    engine = Engine(head, protocol, 1, untrusted=changed)
    cols = sorted(set().union(*(r.columns[1] for r in engine.rules)))
    df = pd.read_parquet(path, columns=[c for c in cols if c in engine.cohort.present],
                         dtype_backend="numpy_nullable")
    for c in df.columns:  # one nullable dtype per kind: Float64, boolean, python strings
        if str(df[c].dtype).startswith("Int"):
            df[c] = df[c].astype("Float64")
        elif isinstance(df[c].dtype, pd.StringDtype):
            df[c] = df[c].astype(pd.StringDtype("python"))
    pandas_s, out = _timed(lambda: pandas_screen(df, engine), max(1, repeat // 2))
    return {"n": n, "pandas_s": pandas_s, "pandas_strict": out["strict"], "pandas_peak_mb": _peak_mb()}


def _child(kind: str, n: int, repeat: int, analyst: int) -> dict:
    cmd = [sys.executable, "-m", "kn026.bench.engine", "--child", kind, "--n", str(n), "--repeat", str(repeat),
           "--custom", str(analyst)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          env={**os.environ, "KN026_BENCH_OUT": str(OUT)})
    if proc.returncode:
        raise RuntimeError(f"{kind} benchmark at n={n} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict]) -> str:
    """The README's benchmark table."""
    head = ("| patients | leaves (words) | load | scan floor | full evaluation | x floor | pandas | pandas / engine "
            "| reorder | toggle | page (collapse+funnel+stats) | one threshold | engine peak RSS |\n"
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {r['leaves']} ({r['mask_words']}) | {r['load_s']:.2f} s | {r['floor_s']:.3f} s | "
            f"{r['full_s']:.3f} s | "
            f"{r['full_s'] / r['floor_s']:.1f} | {r['pandas_s']:.2f} s | {r['pandas_s'] / r['full_s']:.1f}x | "
            f"{r['reorder_ms']:.1f} ms | {r['toggle_ms']:.1f} ms | {r['page_ms']:.0f} ms | "
            f"{r['threshold_ms']:.0f} ms | {r['engine_peak_mb'] / 1024:.2f} GB |")
    return "\n".join(lines)


# -- whole process: the command line and the app's upload path against a pandas peer -------

WHOLE_TARGETS = {"csv": 0.5, "parquet": 0.5, "upload_s": 3.0}


def csv_file(n: int, seed: int = 1) -> Path:
    """The benchmark cohort of size n as CSV in the dictionary's columns (from its Parquet)."""
    import duckdb

    path = OUT / f"cohort_{n}.csv"
    if not path.exists():
        src = cohort_file(n, seed)
        con = duckdb.connect()
        con.execute("SET enable_progress_bar = false")
        con.execute(f"COPY (SELECT * FROM read_parquet('{src}')) TO '{path}' (HEADER)")
        con.close()
    return path


def peer(path: str) -> dict:
    """The pandas peer, whole: read the file with pandas, nullable-boolean masks, the funnel."""
    t = time.perf_counter()
    path = str(path)
    if path.endswith(".csv"):
        df = pd.read_csv(path, dtype_backend="numpy_nullable")
    else:
        df = pd.read_parquet(path, dtype_backend="numpy_nullable")
    engine = Engine(load_cohort(df.head(1), connect()), load_protocol(), 1)  # the rules' compiled SQL
    for c in df.columns:  # one nullable dtype per kind: Float64, boolean, python strings
        if str(df[c].dtype).startswith("Int"):
            df[c] = df[c].astype("Float64")
        elif isinstance(df[c].dtype, pd.StringDtype):
            df[c] = df[c].astype(pd.StringDtype("python"))
    out = pandas_screen(df, engine)
    return {"strict": out["strict"], "steps": len(out["steps"]), "in_process_s": time.perf_counter() - t}


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _process(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, stdout) of one fresh process: CPU time is what other jobs on the
    machine do not change much, wall time is what the user waits."""
    cpu, t = _cpu_children(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return seconds, _cpu_children() - cpu, proc.stdout


def whole_process(path: Path, repeat: int) -> dict:
    """`python -m kn026 funnel --json` and the pandas peer on one file, run alternately."""
    ours, theirs, ours_cpu, theirs_cpu, strict = [], [], [], [], set()
    for _ in range(repeat):
        s, cpu, out = _process([sys.executable, "-m", "kn026", "funnel", "--json", "--cohort", str(path),
                                "--stage", "1"])
        ours.append(s)
        ours_cpu.append(cpu)
        strict.add(("ours", json.loads(out)["totals"]["strict"]))
        s, cpu, out = _process([sys.executable, "-m", "kn026.bench.engine", "--peer", str(path)])
        theirs.append(s)
        theirs_cpu.append(cpu)
        strict.add(("pandas", json.loads(out.strip().splitlines()[-1])["strict"]))
    counts = dict(strict)
    if len(strict) != 2 or counts["ours"] != counts["pandas"]:
        raise RuntimeError(f"the command line and the pandas peer disagree on {path}: {sorted(strict)}")
    return {"ours_s": statistics.median(ours), "pandas_s": statistics.median(theirs),
            "ours_cpu_s": statistics.median(ours_cpu), "pandas_cpu_s": statistics.median(theirs_cpu),
            "ours_runs": ours, "pandas_runs": theirs, "strict": counts["ours"]}


def upload_to_funnel(n: int) -> dict:
    """The app's upload path, server side, in this (fresh) process: CSV bytes to the first funnel.

    What the app (ui/sources.py) does for an upload: `loading.load_upload` (sniff, read, validate, store),
    `loading.seal`, then the engine's first full evaluation and the funnel page's result.
    """
    from kn026.ingest import loading

    data = csv_file(n).read_bytes()
    protocol = load_protocol()
    steps = {}
    t = time.perf_counter()
    con, cohort = loading.load_upload(f"cohort_{n}.csv", data, max_bytes=len(data) + 1)
    steps["load_s"] = time.perf_counter() - t
    loading.seal(con)
    engine = Engine(cohort, protocol, 1)
    result = analysis.run(engine)
    steps["total_s"] = time.perf_counter() - t
    steps["screen_s"] = steps["total_s"] - steps["load_s"]
    return {**steps, "strict": int(result.totals["strict"]), "n": cohort.n, "peak_mb": _peak_mb()}


def run_whole(csv_rows: int, parquet_rows: int, upload_rows: int, repeat: int) -> dict:
    """Figures (a), (b), (c) of issue 13 in one run, with the machine's load before and after."""
    load_before = os.getloadavg()
    out = {"cpus": os.cpu_count(), "load_before": load_before}
    for kind, n in (("csv", csv_rows), ("parquet", parquet_rows)):
        path = csv_file(n) if kind == "csv" else cohort_file(n)
        out[kind] = {"n": n, "mb": path.stat().st_size / 1e6, **whole_process(path, repeat)}
    runs = [_child("upload", upload_rows, 1, 0) for _ in range(repeat)]
    out["upload"] = {"n": upload_rows, "total_s": statistics.median(r["total_s"] for r in runs),
                     "load_s": statistics.median(r["load_s"] for r in runs),
                     "screen_s": statistics.median(r["screen_s"] for r in runs),
                     "runs": [r["total_s"] for r in runs], "strict": runs[0]["strict"],
                     "peak_mb": max(r["peak_mb"] for r in runs)}
    out["load_after"] = os.getloadavg()
    return out


def whole_markdown(r: dict) -> str:
    """The README's whole-process table."""
    lines = ["| measure | rows | ours | pandas peer | ours / pandas | CPU: ours / pandas | target | met |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for kind, label in (("csv", "CSV, `python -m kn026 funnel --json`, whole process"),
                        ("parquet", "Parquet, `python -m kn026 funnel --json`, whole process")):
        x = r[kind]
        ratio = x["ours_s"] / x["pandas_s"]
        cpu = f"{x['ours_cpu_s']:.2f} s / {x['pandas_cpu_s']:.2f} s"
        lines.append(f"| {label} ({x['mb']:.0f} MB) | {x['n']:,} | {x['ours_s']:.2f} s | {x['pandas_s']:.2f} s | "
                     f"{ratio:.2f}x | {cpu} | <= {WHOLE_TARGETS[kind]}x | "
                     f"{'yes' if ratio <= WHOLE_TARGETS[kind] else 'no'} |")
    u = r["upload"]
    lines.append(f"| app upload path, CSV bytes to first funnel (server side; load {u['load_s']:.2f} s + screen "
                 f"{u['screen_s']:.2f} s; peak RSS {u['peak_mb'] / 1024:.2f} GB) | {u['n']:,} | {u['total_s']:.2f} s | | | "
                 f"| <= {WHOLE_TARGETS['upload_s']:.0f} s | "
                 f"{'yes' if u['total_s'] <= WHOLE_TARGETS['upload_s'] else 'no'} |")
    lines.append(f"\nMedians; {r['cpus']} CPUs; load average {r['load_before'][0]:.1f} before, "
                 f"{r['load_after'][0]:.1f} after.")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m kn026.bench.engine", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="100000,1000000,10000000")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--markdown", action="store_true", help="print the README table")
    p.add_argument("--whole", action="store_true",
                   help="whole-process figures instead: CSV and Parquet command line against the pandas peer, "
                        "and the app's upload path (issue 13)")
    p.add_argument("--csv-rows", type=int, default=200_000)
    p.add_argument("--parquet-rows", type=int, default=1_000_000)
    p.add_argument("--upload-rows", type=int, default=100_000)
    p.add_argument("--custom", type=int, default=12, metavar="N",
                   help="analyst criteria beside the protocol (default 12: masks of two words; 0: none)")
    p.add_argument("--child", choices=("engine", "pandas", "upload"), help=argparse.SUPPRESS)
    p.add_argument("--peer", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.peer:
        print(json.dumps(peer(args.peer)))
        return 0
    if args.child:
        fn = {"engine": run_engine, "pandas": run_pandas, "upload": lambda n, _, __: upload_to_funnel(n)}[args.child]
        print(json.dumps(fn(args.n, args.repeat, args.custom)))
        return 0
    if args.whole:
        OUT.mkdir(exist_ok=True)
        result = run_whole(args.csv_rows, args.parquet_rows, args.upload_rows, max(1, args.repeat))
        (OUT / "bench_whole.json").write_text(json.dumps(result, indent=2))
        print(whole_markdown(result) if args.markdown else json.dumps(result, indent=2))
        return 0
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        cohort_file(n)
        row = {**_child("engine", n, args.repeat, args.custom), **_child("pandas", n, args.repeat, args.custom)}
        if row["pandas_strict"] != row["strict"]:
            raise RuntimeError(f"pandas and the engine disagree at n={n}: "
                               f"{row['pandas_strict']} vs {row['strict']} strictly eligible")
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    OUT.mkdir(exist_ok=True)
    (OUT / "bench.json").write_text(json.dumps(rows, indent=2))
    print(markdown(rows) if args.markdown else json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
