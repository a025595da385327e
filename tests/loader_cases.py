"""Tricky loader inputs and a canonical record of what the loader makes of them.

`tests/golden/loader_outcomes.json` holds the outcomes captured from the loader as it
was before the one-reader rewrite (issue 13; main at 9acd685, with the unit guard),
through both of its entry points: the command line's `load_cohort(path)` (a DuckDB view
over the file) and the app's `loading.load_upload(name, bytes)` (pyarrow); frames go
through `load_cohort(frame)`. `tests/ingest/test_loader_golden.py` replays every case through
the current loader and compares. To capture again from a loader of another commit
(only when its behaviour is meant to change, and say so in the commit):

    git archive <commit> | tar -x -C /tmp/old && cp tests/loader_cases.py /tmp/old/tests/
    (cd /tmp/old && PYTHONPATH=. python -m tests.loader_cases) > tests/golden/loader_outcomes.json
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kn026.base import schema

NBSP = "\u00a0"


def _csv(header, rows, delimiter=",", newline="\n") -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter, lineterminator=newline)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _every_kind_rows(n: int, bad: bool) -> tuple[list[str], list[list[str]]]:
    """n rows over every dictionary kind, with spacing, case and spelling variants."""
    header = ["patient_id", "site_id", "country", "screening_date", "age_years", "sex", "primary_site",
              "histology", "disease_extent", "her2_ihc", "her2_ish", "ecog", "consent_signed", "hbv_active",
              "inr", "days_since_angina", "brain_metastases", "weight_kg", "lvef_drop_on_anti_her2_pct",
              "anthracycline_doxorubicin_eq_mg_m2", "Site Note", "lab_batch"]
    sexes = ["F", "m", " Female ", "MALE", "w", "", f"{NBSP}f", "man"]
    flags = ["yes", "No", " TRUE", "f", "1", "0", "", "\tY"]
    extents = ["Metastatic", "locally advanced unresectable", "Locally-Advanced  Unresectable", "RECURRENT", ""]
    dates = ["2024-03-31", " 2024-01-01", "2024-02-29T10:15:00", "2024-03-31 10:15:00", ""]
    rows = []
    for i in range(n):
        rows.append([
            f"P{i:04d}" if i % 7 else f" P{i:04d} ", f"S{i % 13:02d}", ["China", "France ", ""][i % 3],
            dates[i % len(dates)], ["18", "17.9", " 60 ", ".5", "1E2", "", "120"][i % 7], sexes[i % len(sexes)],
            [f"Site {i % 97}", "GEJ", "Stomach", ""][i % 4], ["Adenocarcinoma", "Signet Ring Cell", ""][i % 3],
            extents[i % len(extents)], ["0", "3.0", "+1", "", "2"][i % 5], ["Positive", " NEGATIVE", ""][i % 3],
            ["0", "1", "2.0", "-0", "", "1e0"][i % 6], flags[i % len(flags)], flags[(i + 3) % len(flags)],
            ["1.8", "0.95", "", " 1.2 "][i % 4], ["091", "", "5", "36500"][i % 4],
            ["None", "Treated Stable", "active", "treated-stable", ""][i % 5], ["70", "20", "", "350"][i % 4],
            ["-100", "100", "0", ""][i % 4], ["0", "", "450.5"][i % 3],
            [" keep  me ", "", "NA", "null", "N/A"][i % 5], ["007", "1.50", ""][i % 3],
        ])
    if bad:
        rows[1][11] = "1.5"  # ecog decimal
        rows[2][11] = "7"  # ecog out of range
        for i in range(3, 12):
            rows[i][4] = ["abc", "1,5", "NaN", "inf", "-1", "121", "½", "<5", "18 years"][i - 3]  # 9 bad ages
        rows[4][5] = "x"
        rows[5][12] = "maybe"
        rows[6][3] = "2024-13-01"
        rows[7][8] = "advanced"
        rows[8][17] = "0"  # weight: open low bound
        rows[9][10] = "equivocal"
        rows[10][15] = "13.5"
        rows[11][16] = "yes"
    return header, rows


def csv_cases() -> dict[str, bytes]:
    """CSV files (bytes) that every CSV reader must read the same way."""
    h, r = _every_kind_rows(40, bad=False)
    hb, rb = _every_kind_rows(40, bad=True)
    hw, rw = _every_kind_rows(400, bad=False)  # more than 64 distinct values in open columns
    for i, row in enumerate(rw):
        row[6] = f"Site {i}"
        row[4] = f"{18 + (i % 700) / 10:.1f}"
    cases = {
        "every_kind": _csv(h, r),
        "every_kind_bad": _csv(hb, rb),
        "wide_domains": _csv(hw, rw),
        "semicolon": _csv(h, r[:6], delimiter=";"),
        "tab": _csv(h, r[:6], delimiter="\t"),
        "pipe": _csv(h, r[:6], delimiter="|"),
        "crlf": _csv(h, r[:6], newline="\r\n"),
        "bom": b"\xef\xbb\xbf" + _csv(h, r[:6]),
        "quoted_everything": b'"patient_id","ecog","note"\n"P1","1","a, b"\n"P2","","say ""hi"""\n',
        "quoted_newline": b'patient_id,ecog,note\nP1,1,"two\nlines"\nP2,2,x\n',
        "quoted_empty": b'patient_id,ecog,note\nP1,"",""\nP2," 2 "," "\n',
        "no_final_newline": b"patient_id,ecog\nP1,1\nP2,2",
        "blank_line_inside": b"patient_id,ecog\nP1,1\n\nP2,2\n",
        "trailing_blank_lines": b"patient_id,ecog\nP1,1\nP2,2\n\n\n",
        "header_only": b"patient_id,ecog\n",
        "single_column": b"patient_id\nP1\nP2\n",
        "header_spaces_case": b" Patient_ID ,ECOG, Age_Years\nP1,1,50\n",
        "duplicate_header": b"patient_id,age_years,Age_Years\nP1,1,2\n",
        "duplicate_header_exact": b"patient_id,ecog,ecog\nP1,1,2\n",
        "duplicate_extra_header": b"patient_id,Note,note\nP1,a,b\n",
        "no_patient_id": b"id,ecog\nP1,1\n",
        "empty_header_name": b"patient_id,,ecog\nP1,x,1\n",
        "duplicate_ids": b"patient_id,ecog\nP1,0\nP2,1\nP1,1\n P2 ,2\nP3,\nP3,1\n",
        "many_duplicate_ids": ("patient_id\n" + "".join(f"P{i % 8}\n" for i in range(24))).encode(),
        "empty_ids": b"patient_id,ecog\nP1,0\n,1\n   ,2\nP4,3\n",
        "ids_and_values_bad": b"patient_id,ecog\nP1,1\nP1,9\n,0\n",
        "nan_inf_text": b"patient_id,age_years,ecog,creatinine_umol_l\nP1,NaN,inf,-inf\nP2,nan,Infinity,+inf\n",
        "huge_integers": b"patient_id,ecog,days_since_angina\nP1,3000000000,1e20\nP2,1e300,-0\n",
        "na_words_in_extra": b"patient_id,note,other\nP1,NA,null\nP2,N/A,#N/A\nP3,NULL,nan\n",
        "nbsp_and_tabs": "patient_id,primary_site,sex,consent_signed\nP1,\u00a0GEJ\t,\u00a0F\u00a0,\tyes\u00a0\n".encode(),
        "unicode_text": "patient_id,country,note\nP1,Zürich,北京\nP2,Deutschland,é\n".encode(),
        "latin1": "patient_id,histology\nP1,adénocarcinome\n".encode("latin-1"),
        "ragged_long_row": b"patient_id,ecog\nP1,1\nP2,2,3\n",
        "ragged_short_row": b"patient_id,ecog,age_years\nP1,1,50\nP2,2\n",
        "only_quotes_header": b'"patient_id"\n"P1"\n',
        "single_quote_values": b"patient_id,note\nP1,'a,b'\nP2,x\n",
    }
    cases.update(_guard_cases())
    return cases


def _guard_cases() -> dict[str, bytes]:
    """The unit guard (dictionary v2 section 4): implausible values, and medians of another unit."""
    h = ["patient_id", "hemoglobin_g_l", "weight_kg", "lvef_pct", "anc_1e9_l", "platelets_1e9_l",
         "albumin_g_l", "creatinine_umol_l"]
    fine = ["125", "70", "55", "4.1", "250", "40", "80"]
    rows = [[f"P{i}"] + fine for i in range(14)]
    rows[1][1], rows[2][1], rows[3][2], rows[4][2] = "12.5", "300", "15", "400"  # hb g/dL, hb odd, weights
    rows[5][3], rows[6][4], rows[7][5], rows[8][6], rows[9][7] = "0.55", "1500", "0.5", "3.5", "1.1"
    rows[10][1], rows[11][1] = "-1", "abc"  # bad values, not guarded twice
    gdl = [[f"G{i}", f"{9 + i * 0.5:.1f}"] for i in range(12)]  # g/dL: every value and the median
    few = gdl[:9]  # nine values: too few for a median
    pounds = [[f"L{i}", str(150 + 10 * i), str(21 + i), str(20 + 2 * i)] for i in range(12)]
    return {
        "guard_values": _csv(h, rows),
        "guard_hb_gdl": _csv(["patient_id", "hemoglobin_g_l"], gdl),
        "guard_hb_gdl_few": _csv(["patient_id", "hemoglobin_g_l"], few),
        "guard_medians_only": _csv(["patient_id", "weight_kg", "anc_1e9_l", "platelets_1e9_l"], pounds),
    }


def _typed_arrow() -> pa.Table:
    return pa.table({
        "patient_id": pa.array(["P1", "P2", "P3", " P4 "]),
        "ecog": pa.array([0, 1, None, 5], pa.int64()),
        "her2_ihc": pa.array([3, 2, None, 0], pa.int8()),
        "age_years": pa.array([58.5, 18.0, None, 120.0], pa.float64()),
        "inr": pa.array([1.8, None, 1.0, 0.9], pa.float32()),
        "consent_signed": pa.array([True, False, None, True]),
        "sex": pa.array(["female", "M", None, " w "]),
        "brain_metastases": pa.array(["Treated Stable", "none", None, "ACTIVE"]).dictionary_encode(),
        "screening_date": pa.array([dt.date(2024, 3, 31), None, dt.date(2024, 1, 1), dt.date(2020, 2, 29)]),
        "prior_systemic_lines": pa.array([1.0, 2.0, None, 0.0]),
        "days_since_angina": pa.array(["091", "", None, " 5 "], pa.large_string()),
        "lvef_pct": pa.array([55, 60, None, 70], pa.uint16()),
        "site_note": pa.array(["a", "", None, "d"]),
        "stamp": pa.array([dt.datetime(2024, 1, 1, 10, 0), None, None, None]),
    })


def _typed_bad_arrow() -> pa.Table:
    return pa.table({
        "patient_id": pa.array(["P1", "P2", "P3"]),
        "ecog": pa.array([7, 3_000_000_000, -1], pa.int64()),
        "age_years": pa.array([float("nan"), 121.0, float("-inf")]),
        "her2_ihc": pa.array([1.5, float("inf"), 2.0]),
        "hbv_active": pa.array(["maybe", "yes", None]),
        "screening_date": pa.array([dt.datetime(2024, 1, 1, 23, 59), None, dt.datetime(1999, 1, 1)]),
    })


def parquet_cases() -> dict[str, bytes]:
    out = {}
    for name, table in (("typed", _typed_arrow()), ("typed_bad", _typed_bad_arrow()),
                        ("duplicate_header", pa.Table.from_arrays(
                            [pa.array(["P1"]), pa.array([1]), pa.array([2])], names=["patient_id", "ecog", "ECOG"])),
                        ("int_patient_id", pa.table({"patient_id": pa.array([1, 2, 2]), "ecog": pa.array([0, 1, 2])})),
                        ("guard_typed", pa.table({
                            "patient_id": [f"P{i}" for i in range(12)],
                            "hemoglobin_g_l": pa.array([9.0 + i for i in range(11)] + [None]),
                            "lvef_pct": pa.array([0.6] + [60] * 11, pa.float64()),
                            "weight_kg": pa.array([70] * 11 + [1000], pa.int32())})),
                        ("text_numbers", pa.table({"patient_id": ["P1", "P2"], "ecog": ["1", "2.0"],
                                                   "age_years": ["50", " 60.5 "], "hbv_active": ["Y", "n"],
                                                   "screening_date": ["2024-03-31", ""]}))):
        buf = io.BytesIO()
        pq.write_table(table, buf)
        out[name] = buf.getvalue()
    return out


def excel_cases() -> dict[str, bytes]:
    frames = {
        "typed": pd.DataFrame({
            "patient_id": ["P1", "P2", "P3"], "age_years": [58, 60.5, None], "ecog": [1, None, 2.0],
            "consent_signed": [True, False, None], "sex": ["female", "M", " f "],
            "screening_date": [dt.datetime(2024, 3, 31), None, dt.datetime(2024, 1, 1, 10, 30)],
            "disease_extent": ["Metastatic", "Recurrent", None], "Site Note": ["kept", None, " x "],
            "inr": [1.8, 0.30000000000000004, 1e-7]}),
        "bad": pd.DataFrame({"patient_id": ["P1", "P2", "P2"], "ecog": [1, 9, 1.5], "hbv_active": ["yes", 2, "x"]}),
        "duplicate_header": pd.DataFrame([["P1", 50, 60]], columns=["patient_id", "Age_Years", "age_years"]),
    }
    out = {}
    for name, frame in frames.items():
        buf = io.BytesIO()
        frame.to_excel(buf, index=False)
        out[name] = buf.getvalue()
    return out


def frame_cases() -> dict[str, object]:
    return {
        "pandas_mixed": pd.DataFrame({
            "patient_id": ["P1", "P2", "P3"], "ecog": [0, 1, None], "age_years": [58.0, float("nan"), 30],
            "consent_signed": [True, None, False], "sex": ["F", "male", None], "Extra": ["x", "y", "z"]}),
        "pandas_bad": pd.DataFrame({"patient_id": ["P1", "P2"], "ecog": [1.5, 2.0], "age_years": ["abc", "40"]}),
        "pandas_duplicate": pd.DataFrame([["P1", 50, 60]], columns=["patient_id", "ecog", "ecog"]),
        "pandas_text": pd.DataFrame({"patient_id": ["A", "B", "C", "D"], "hemoglobin_g_l": ["125", " 91 ", "", "x"],
                                     "primary_site": ["GEJ", "gej ", "Stomach", None]}),
        "arrow_typed": _typed_arrow(),
        "arrow_bad": _typed_bad_arrow(),
    }


# ----------------------------------------------------------------------------- outcomes


def _value(v):
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    if isinstance(v, (dt.date, dt.datetime)):
        return f"{type(v).__name__}:{v.isoformat()}"
    return v if v is None or isinstance(v, (bool, int, str)) else repr(v)


def outcome(load) -> dict:
    """What `load()` produced: the table (names, types, rows in stored order) or the problems."""
    from kn026.ingest.problems import CohortError

    try:
        cohort = load()
    except CohortError as err:
        return {"error": str(err), "total": err.total,
                "problems": [[p.column, p.message, p.row, p.patient_id, p.value, p.count] for p in err.problems]}
    con = cohort.con
    types = con.execute(f'DESCRIBE "{cohort.table}"').fetchall()
    rows = con.execute(f'SELECT * FROM "{cohort.table}"').fetchall()
    return {"n": cohort.n, "present": sorted(cohort.present), "extra": list(cohort.extra),
            "warnings": list(cohort.warnings), "columns": [[r[0], r[1]] for r in types],
            "rows": [[_value(v) for v in row] for row in rows]}


def _file_outcome(data: bytes, suffix: str) -> dict:
    from kn026.ingest.cohort import load_cohort

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"c{suffix}"
        path.write_bytes(data)
        return outcome(lambda: load_cohort(path))


def _upload_outcome(data: bytes, suffix: str) -> dict:
    from kn026.ingest import loading

    return outcome(lambda: loading.load_upload(f"c{suffix}", data)[1])


def all_outcomes() -> dict[str, dict]:
    """Every case through every entry point that accepts it: {"<path>/<kind>/<case>": outcome}."""
    from kn026.ingest.cohort import load_cohort

    out = {}
    for suffix, cases in ((".csv", csv_cases()), (".parquet", parquet_cases()), (".xlsx", excel_cases())):
        kind = suffix[1:]
        for name, data in cases.items():
            out[f"cli/{kind}/{name}"] = _file_outcome(data, suffix)
            out[f"upload/{kind}/{name}"] = _upload_outcome(data, suffix)
    for name, frame in frame_cases().items():
        out[f"frame/{name}"] = outcome(lambda f=frame: load_cohort(f))
    return out


def main() -> int:
    json.dump(all_outcomes(), sys.stdout, indent=1, sort_keys=True, ensure_ascii=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    assert schema.BY_NAME  # the dictionary is importable
    sys.exit(main())
