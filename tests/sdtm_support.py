"""Test helpers for the SDTM importer: a minimal SAS transport (XPORT v5) writer.

Neither pyreadstat nor a pandas XPORT writer is installed, and the importer must not
depend on one just for tests, so the fixtures' `.xpt` files are written here, from the
CSV fixtures (`python -m tests.sdtm_support` rewrites them). The layout follows the SAS
"Record Layout of a SAS Version 5 or 6 Data Set in SAS Transport (XPORT) Format" (TS-140):
80-byte header records, 140-byte NAMESTR records, IBM hexadecimal floating point numbers.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pandas as pd

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sdtm"
_STAMP = b"01JAN26:00:00:00"  # fixed, so regenerated files are byte-identical


def ibm_double(value: float | None) -> bytes:
    """8-byte IBM hexadecimal floating point (big endian); None / NaN: SAS missing ('.')."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return b"\x2e" + b"\x00" * 7
    if value == 0:
        return b"\x00" * 8
    sign = 0x80 if value < 0 else 0
    x = abs(float(value))
    exponent = 0
    while x >= 1:
        x /= 16
        exponent += 1
    while x < 1 / 16:
        x *= 16
        exponent -= 1
    mantissa = int(round(x * (1 << 56)))  # x is exact in binary, so this is exact for IEEE doubles
    if mantissa >= 1 << 56:
        mantissa >>= 4
        exponent += 1
    return bytes([sign | (exponent + 64)]) + mantissa.to_bytes(7, "big")


def _record(text: bytes) -> bytes:
    return text.ljust(80, b" ")[:80]


def _header(kind: bytes, tail: bytes = b"000000000000000000000000000000  ") -> bytes:
    return _record(b"HEADER RECORD*******" + kind.ljust(8) + b"HEADER RECORD!!!!!!!" + tail)


def xpt_bytes(frame: pd.DataFrame, name: str, numeric: tuple[str, ...] = ()) -> bytes:
    """One data set in XPORT v5: columns in `numeric` as doubles (empty -> missing), the rest as text."""
    cols = list(frame.columns)
    lengths, is_num = [], []
    for c in cols:
        num = c in numeric
        is_num.append(num)
        lengths.append(8 if num else max(1, int(frame[c].fillna("").astype(str).map(
            lambda s: len(s.encode("latin-1"))).max() if len(frame) else 1)))
    out = [_header(b"LIBRARY"),
           _record(b"SAS     SAS     SASLIB  9.4     X64_10PR" + b" " * 24 + _STAMP),
           _record(_STAMP),
           _header(b"MEMBER", b"000000000000000001600000000140  "),
           _header(b"DSCRPTR"),
           _record(b"SAS     " + name.upper().encode().ljust(8) + b"SASDATA 9.4     X64_10PR" + b" " * 24 + _STAMP),
           _record(_STAMP + b" " * 16 + name.upper().encode().ljust(40) + b" " * 8),
           _header(b"NAMESTR", f"000000{len(cols):04d}00000000000000000000  ".encode())]
    namestr, pos = b"", 0
    for i, (c, num, n) in enumerate(zip(cols, is_num, lengths, strict=True)):
        namestr += struct.pack(">hhhh8s40s8shhh2s8shhl52s", 1 if num else 2, 0, n, i + 1,
                               c.encode().ljust(8), c.encode().ljust(40), b"", 0, 0, 0, b"", b"", 0, 0, pos, b"")
        pos += n
    out.append(namestr + b" " * (-len(namestr) % 80))
    out.append(_header(b"OBS"))
    body = b""
    for _, row in frame.iterrows():
        for c, num, n in zip(cols, is_num, lengths, strict=True):
            v = row[c]
            empty = v is None or (isinstance(v, float) and math.isnan(v)) or str(v) == ""
            if num:
                body += ibm_double(None if empty else float(v))
            else:
                body += ("" if empty else str(v)).encode("latin-1").ljust(n)
    out.append(body + b" " * (-len(body) % 80))
    return b"".join(out)


# The numeric variables of the fixture domains (the SDTM standard's numeric ones); the rest is text.
NUMERIC = ("AGE", "LBSTRESN", "LBSTNRHI", "LBSTNRLO", "VSSTRESN", "EGSTRESN", "QSSTRESN", "RSSTRESN",
           "CVSTRESN", "FASTRESN", "CMDOSE", "CMDOSTOT", "EXDOSE", "LBSEQ", "VSSEQ", "EGSEQ", "MHSEQ",
           "CMSEQ", "PRSEQ", "EXSEQ", "TUSEQ", "QSSEQ", "RSSEQ", "CVSEQ", "FASEQ", "VISITNUM")


def write_study_xpt(csv_dir: Path, xpt_dir: Path, keep: tuple[str, ...] = ()) -> list[Path]:
    """Each CSV domain of `csv_dir` as `.xpt` in `xpt_dir` (domains in `keep` are left to other formats)."""
    xpt_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(csv_dir.glob("*.csv")):
        if path.stem.upper() in keep:
            continue
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        target = xpt_dir / (path.stem.lower() + ".xpt")
        target.write_bytes(xpt_bytes(frame, path.stem, tuple(c for c in frame.columns if c in NUMERIC)))
        written.append(target)
    return written


def dataset_json(frame: pd.DataFrame, name: str, numeric: tuple[str, ...] = ()) -> dict:
    """One data set as CDISC Dataset-JSON 1.1 (`columns`, `rows`); numeric variables as JSON numbers."""
    columns = [{"itemOID": f"IT.{name.upper()}.{c}", "name": c, "label": c,
                "dataType": "float" if c in numeric else "string"} for c in frame.columns]
    rows = [[(None if v == "" else float(v) if c in numeric else v) for c, v in zip(frame.columns, row, strict=True)]
            for row in frame.itertuples(index=False)]
    return {"datasetJSONCreationDateTime": "2026-01-01T00:00:00", "datasetJSONVersion": "1.1.0",
            "itemGroupOID": f"IG.{name.upper()}", "records": len(rows), "name": name.upper(), "label": name.upper(),
            "columns": columns, "rows": rows}


def write_fixtures() -> list[Path]:
    """study_xpt/: every CSV domain of study_csv/ as SAS transport, except VS as Dataset-JSON 1.1."""
    import json

    out = write_study_xpt(FIXTURES / "study_csv", FIXTURES / "study_xpt", keep=("VS",))
    vs = pd.read_csv(FIXTURES / "study_csv" / "vs.csv", dtype=str, keep_default_na=False)
    target = FIXTURES / "study_xpt" / "vs.json"
    doc = dataset_json(vs, "VS", tuple(c for c in vs.columns if c in NUMERIC))
    target.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return [*out, target]


if __name__ == "__main__":
    for p in write_fixtures():
        print(p)
