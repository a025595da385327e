"""SDTM domains from a folder, a zip (path or bytes) or {file name: bytes}: CSV, SAS transport, Dataset-JSON.

Every domain becomes a pandas frame of text cells (stripped; an empty cell is None) with
upper-case variable names, so the importer sees one shape whatever the format: CSV as
text, SAS transport v5 (`.xpt`) through `pandas.read_sas(format="xport")` with numbers
kept exact (`repr` of the stored double), CDISC Dataset-JSON 1.0 (`clinicalData` /
`referenceData`, `itemGroupData`, `itemData`) and 1.1 (`columns`, `rows`; also NDJSON).
The domain is the file's stem (`lb.xpt` -> LB) or, for Dataset-JSON, its dataset name.
Supplemental qualifiers (SUPP--) and files of other types are ignored. Input is only read.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd

FORMATS = {".csv": "CSV", ".xpt": "SAS transport", ".json": "Dataset-JSON", ".ndjson": "Dataset-JSON (NDJSON)"}


@dataclass
class Dataset:
    """One domain as read: its frame of text cells, and where it came from (for the report)."""

    domain: str
    frame: pd.DataFrame
    file: str
    format: str

    def describe(self) -> str:
        return f"{self.file} ({self.format}, {len(self.frame)} rows)"


def read_study(source) -> dict[str, Dataset]:
    """{DOMAIN: Dataset} from a folder, a zip path, zip bytes, or a mapping {file name: bytes}.

    ValueError names the file and the fix: a domain given twice, a file that cannot be read.
    """
    files = _files(source)
    out: dict[str, Dataset] = {}
    for name, data in files:
        suffix = PurePosixPath(name).suffix.lower()
        if suffix not in FORMATS:
            continue
        stem = PurePosixPath(name).stem.upper()
        if stem.startswith("SUPP") or stem.startswith("."):
            continue
        try:
            domain, frame = _parse(name, data, suffix)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"SDTM file {name} cannot be read as {FORMATS[suffix]}: "
                             f"{str(err).splitlines()[0] if str(err) else type(err).__name__}; check the file") from None
        domain = (domain or stem).upper()
        if domain in out:
            raise ValueError(f"domain {domain} is given twice ({out[domain].file}, {name}); keep one file per domain")
        out[domain] = Dataset(domain, frame, name, FORMATS[suffix])
    return out


def _files(source) -> list[tuple[str, bytes]]:
    if isinstance(source, dict):
        return [(str(k), bytes(v)) for k, v in source.items()]
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _zip_members(zipfile.ZipFile(io.BytesIO(bytes(source))))
    path = Path(source)
    if path.is_dir():
        return [(p.name, p.read_bytes()) for p in sorted(path.iterdir()) if p.is_file()]
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return _zip_members(zf)
    if not path.exists():
        raise ValueError(f"SDTM source {path} does not exist; give a folder or a zip of domain files")
    raise ValueError(f"SDTM source {path} is neither a folder nor a zip; give a folder or a zip of domain files")


def _zip_members(zf: zipfile.ZipFile) -> list[tuple[str, bytes]]:
    out = []
    for info in zf.infolist():
        name = PurePosixPath(info.filename)
        if info.is_dir() or info.filename.startswith("__MACOSX") or name.name.startswith("."):
            continue
        out.append((name.name, zf.read(info)))
    return out


def _parse(name: str, data: bytes, suffix: str) -> tuple[str | None, pd.DataFrame]:
    if suffix == ".csv":
        text = _decode(data)
        frame = pd.read_csv(io.StringIO(text), dtype=object, keep_default_na=False)
        return None, _clean(frame)
    if suffix == ".xpt":
        return _xpt(data)
    if suffix == ".ndjson":
        lines = [ln for ln in _decode(data).splitlines() if ln.strip()]
        meta = json.loads(lines[0])
        return _dataset_json({**meta, "rows": [json.loads(ln) for ln in lines[1:]]})
    return _dataset_json(json.loads(_decode(data)))


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _xpt(data: bytes) -> tuple[str | None, pd.DataFrame]:
    reader = pd.read_sas(io.BytesIO(data), format="xport", iterator=True, encoding=None)
    try:
        frame = reader.read()
        member = getattr(reader, "member_info", {}) or {}
    finally:
        reader.close()
    cells = {}
    for col in frame.columns:
        if frame[col].dtype == object:
            cells[col] = [_decode(v) if isinstance(v, bytes) else v for v in frame[col]]
        else:  # numbers as their shortest exact text: 1.2 stays "1.2"
            cells[col] = [None if v is None or math.isnan(v) else _number_text(v) for v in frame[col]]
    name = member.get("set_name")
    name = name.decode() if isinstance(name, bytes) else name
    return (str(name).strip() or None) if name else None, _clean(pd.DataFrame(cells, dtype=object))


def _number_text(v) -> str:
    f = float(v)
    return str(int(f)) if f.is_integer() and abs(f) < 1e15 else repr(f)


def _dataset_json(doc: dict) -> tuple[str | None, pd.DataFrame]:
    """Dataset-JSON 1.1 (`columns` / `rows`) or 1.0 (`clinicalData` or `referenceData` -> `itemGroupData`)."""
    if "columns" in doc and "rows" in doc:
        names = [c["name"] for c in doc["columns"]]
        rows, domain = doc["rows"], doc.get("name")
    else:
        data = doc.get("clinicalData") or doc.get("referenceData")
        if not isinstance(data, dict) or not data.get("itemGroupData"):
            raise ValueError("no 'columns'/'rows' (Dataset-JSON 1.1) nor 'clinicalData'/'referenceData' "
                             "'itemGroupData' (1.0)")
        groups = data["itemGroupData"]
        if len(groups) != 1:
            raise ValueError(f"{len(groups)} item groups in one file; give one dataset per file")
        group = next(iter(groups.values()))
        names = [i["name"] for i in group["items"]]
        rows, domain = group["itemData"], group.get("name")
    cells = {}
    for i, col in enumerate(names):
        if str(col).upper() == "ITEMGROUPDATASEQ":
            continue
        cells[col] = [None if r[i] is None else _number_text(r[i])
                      if isinstance(r[i], (int, float)) and not isinstance(r[i], bool) else str(r[i]) for r in rows]
    return domain, _clean(pd.DataFrame(cells, dtype=object, index=range(len(rows))))


def _clean(frame: pd.DataFrame) -> pd.DataFrame:
    """Upper-case names; text cells stripped; empty -> None."""
    names = [str(c).strip().upper() for c in frame.columns]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"variable {dup[0]} appears twice; keep one")
    cells = {}
    for name, col in zip(names, frame.columns, strict=True):
        values = frame[col].to_numpy(dtype=object, na_value=None)
        cells[name] = [None if v is None or (isinstance(v, float) and math.isnan(v)) else (str(v).strip() or None)
                       for v in values]
    return pd.DataFrame(cells, dtype=object, index=range(len(frame)))
