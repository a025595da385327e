"""Tests for kn026.ingest.sniff: sniffing uploads by their bytes, and formula neutralisation."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pandas as pd
import pytest

from kn026.ingest.sniff import UploadError, sniff
from kn026.report.neutralise import neutralise_formulas, neutralise_text

CSV = b"patient_id,age_years,sex\np1,45,F\np2,70,M\n"


def xlsx_bytes(frame: pd.DataFrame | None = None) -> bytes:
    buf = io.BytesIO()
    (frame if frame is not None else pd.DataFrame({"patient_id": ["p1"], "age_years": [45]})).to_excel(
        buf, index=False)
    return buf.getvalue()


def parquet_bytes() -> bytes:
    buf = io.BytesIO()
    pd.DataFrame({"patient_id": ["p1", "p2"], "age_years": [45.0, 70.0]}).to_parquet(buf)
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


# -- accepted ----------------------------------------------------------------------------

@pytest.mark.parametrize("data, name, kind", [
    (CSV, "cohort.csv", "csv"),
    (CSV, "COHORT.CSV", "csv"),
    (b"\xef\xbb\xbf" + CSV, "excel-utf8.csv", "csv"),
    ("patient_id,site\np1,Zürich\np2,北京\n".encode(), "unicode.csv", "csv"),
    (b"patient_id;age_years\r\np1;45\r\n", "semicolons.txt", "csv"),
    (b"patient_id\tage_years\np1\t45\n", "tabs.tsv", "csv"),
    (b"patient_id,note\np1,\"<html> is fine inside a cell\"\n", "cell.csv", "csv"),
    (b"-5,=1\n", "odd-but-text.csv", "csv"),
])
def test_accepts_csv(data, name, kind):
    assert sniff(data, name) == kind


def test_accepts_real_parquet_and_xlsx(tmp_path):
    assert sniff(parquet_bytes(), "cohort.parquet") == "parquet"
    assert sniff(parquet_bytes(), "cohort.pq") == "parquet"
    assert sniff(xlsx_bytes(), "cohort.xlsx") == "xlsx"
    assert sniff(bytearray(CSV), "c.csv") == "csv"
    assert sniff(memoryview(CSV), "c.csv") == "csv"


def test_accepted_files_load_with_the_cohort_loader(tmp_path):
    from kn026.ingest.cohort import load_cohort

    for name, data in (("c.csv", b"\xef\xbb\xbf" + CSV), ("c.parquet", parquet_bytes()), ("c.xlsx", xlsx_bytes())):
        sniff(data, name)
        path = tmp_path / name
        path.write_bytes(data)
        assert load_cohort(path).n >= 1


# -- rejected ----------------------------------------------------------------------------

def test_too_large():
    with pytest.raises(UploadError, match=r"big.csv: the file is 250 MB; the limit is 200 MB"):
        sniff(bytes(250 * 1024 * 1024), "big.csv")


def test_too_large_small_limit_and_empty():
    with pytest.raises(UploadError, match="the file is 300 bytes; the limit is 200 bytes"):
        sniff(b"x" * 300, "c.csv", max_bytes=200)
    with pytest.raises(UploadError, match="empty"):
        sniff(b"", "c.csv")
    with pytest.raises(UploadError, match="no data"):
        sniff(b"\xef\xbb\xbf  \n\n", "c.csv")
    with pytest.raises(UploadError, match="not a file's bytes"):
        sniff("patient_id\n", "c.csv")


@pytest.mark.parametrize("data, what", [
    (b"\x89PNG\r\n\x1a\n" + bytes(100), "a PNG image"),
    (b"\xff\xd8\xff\xe0" + bytes(100), "a JPEG image"),
    (b"GIF89a" + bytes(10), "a GIF image"),
    (b"%PDF-1.7\n%...", "a PDF document"),
    (b"\x7fELF\x02\x01\x01" + bytes(50), "an ELF executable"),
    (b"MZ\x90\x00" + bytes(50), "a Windows executable"),
    (b"\x1f\x8b\x08\x00" + bytes(20), "a gzip archive"),
    (b"SQLite format 3\x00" + bytes(20), "an SQLite database"),
    (b"PAR1" + bytes(20) + b"PAR1", "a Parquet file"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(20), "old-style Office file"),
])
def test_renamed_binary_as_csv(data, what):
    with pytest.raises(UploadError, match=what):
        sniff(data, "cohort.csv")


def test_zip_or_workbook_named_csv_gets_a_hint():
    with pytest.raises(UploadError, match=r"a ZIP archive, not a CSV file \(an Excel workbook\? rename"):
        sniff(xlsx_bytes(), "cohort.csv")
    with pytest.raises(UploadError, match="ZIP archive"):
        sniff(zip_bytes({"a.txt": b"x"}), "cohort.csv")


@pytest.mark.parametrize("page", [
    b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
    b"\n\n  <html lang='en'><head><title>Sign in</title>",
    b"\xef\xbb\xbf<!doctype HTML>",
    b"<?xml version='1.0'?><error>AccessDenied</error>",
    b"<!-- saved from url=(0014)about:internet -->",
    b"<script>alert(1)</script>",
])
def test_html_page_named_csv(page):
    with pytest.raises(UploadError, match="HTML or XML page"):
        sniff(page, "export.csv")


@pytest.mark.parametrize("data, message", [
    ("patient_id,site\np1,Z\u00fcrich\n".encode("latin-1"), r"not UTF-8 text \(byte 0xFC at byte 20, line 2\)"),
    ("patient_id,note\np1,caf\u00e9\n".encode("cp1252"), r"byte 0xE9 at byte 22, line 2"),
    (b"a,b\n1,\xc3\n", "not UTF-8"),  # truncated multi-byte character at the end
    (b"a,b\n1,\xed\xa0\x80\n", "not UTF-8"),  # a UTF-16 surrogate encoded in UTF-8
    (b"a,b\n1,\xc0\xaf\n", "not UTF-8"),  # overlong encoding of '/'
])
def test_not_utf8(data, message):
    with pytest.raises(UploadError, match=message) as info:
        sniff(data, "c.csv")
    assert "CSV UTF-8" in str(info.value)


def test_not_utf8_far_into_a_large_file_reports_the_right_byte():
    body = b"patient_id,age_years\n" + b"p1,45\n" * 400_000
    bad = body + b"p2,\xe9\n"
    with pytest.raises(UploadError, match=f"at byte {len(body) + 3:,}, line 400002"):
        sniff(bad, "c.csv")
    # a multi-byte character split across the 1 MiB decoding chunks is fine
    split = b"x" * ((1 << 20) - 1) + "é".encode() + b"\n"
    assert sniff(split, "c.csv") == "csv"


def test_utf16_csv():
    with pytest.raises(UploadError, match="UTF-16"):
        sniff("patient_id\np1\n".encode("utf-16"), "c.csv")
    with pytest.raises(UploadError, match="NUL bytes"):
        sniff("patient_id\np1\n".encode("utf-16-le"), "c.csv")


def test_nul_bytes_in_csv():
    with pytest.raises(UploadError, match=r"NUL bytes \(first at byte 12, line 2\)"):
        sniff(b"patient_id\np\x001\n", "c.csv")


def test_parquet_magic_at_both_ends():
    good = parquet_bytes()
    with pytest.raises(UploadError, match="no PAR1 marker at the end"):
        sniff(good[:-10], "c.parquet")
    with pytest.raises(UploadError, match="no PAR1 marker at the start"):
        sniff(b"XXXX" + good[4:], "c.parquet")
    with pytest.raises(UploadError, match="not a Parquet file"):
        sniff(CSV, "c.parquet")
    with pytest.raises(UploadError, match="a PNG image, not a Parquet file"):
        sniff(b"\x89PNG\r\n\x1a\n" + bytes(20), "c.parquet")
    with pytest.raises(UploadError, match="not a Parquet file"):
        sniff(b"PAR1PAR1", "c.parquet")


def test_xlsx_checks():
    with pytest.raises(UploadError, match="not a ZIP-based workbook"):
        sniff(CSV, "c.xlsx")
    with pytest.raises(UploadError, match="a PDF document, not an Excel .xlsx file"):
        sniff(b"%PDF-1.4 ...", "c.xlsx")
    with pytest.raises(UploadError, match="password-protected"):
        sniff(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(100), "c.xlsx")
    with pytest.raises(UploadError, match="broken ZIP"):
        sniff(b"PK\x03\x04" + bytes(40), "c.xlsx")
    with pytest.raises(UploadError, match=r"not an Excel workbook \(no \[Content_Types\].xml"):
        sniff(zip_bytes({"word/document.xml": b"<x/>", "[Content_Types].xml": b"<x/>"}), "c.xlsx")
    with pytest.raises(UploadError, match="not an Excel workbook"):
        sniff(zip_bytes({"xl/workbook.xml": b"<x/>"}), "c.xlsx")


def test_xlsx_with_macros_is_rejected():
    real = zipfile.ZipFile(io.BytesIO(xlsx_bytes()))
    members = {i.filename: real.read(i.filename) for i in real.infolist()}
    members["xl/vbaProject.bin"] = b"\x00" * 100
    with pytest.raises(UploadError, match="contains macros"):
        sniff(zip_bytes(members), "c.xlsx")


def test_xlsx_zip_bomb_is_rejected():
    members = {"[Content_Types].xml": b"<x/>", "xl/workbook.xml": b"<x/>",
               "xl/worksheets/sheet1.xml": b"\x00" * (50 * 1024 * 1024)}
    data = zip_bytes(members)
    assert len(data) < 1024 * 1024
    with pytest.raises(UploadError, match="ZIP bomb"):
        sniff(data, "c.xlsx")


@pytest.mark.parametrize("name, message", [
    ("cohort.xls", ".xls workbooks are not accepted"),
    ("cohort.xlsm", ".xlsm workbooks are not accepted"),
    ("cohort.ods", ".ods workbooks"),
    ("cohort.json", "unsupported file type .json"),
    ("cohort", r"unsupported file type \(no extension\)"),
    ("cohort.csv.exe", "unsupported file type .exe"),
    ("../../etc/passwd", "unsupported file type"),
])
def test_unsupported_names(name, message):
    with pytest.raises(UploadError, match=message):
        sniff(CSV, name)


def test_file_names_in_messages_are_sanitised():
    with pytest.raises(UploadError) as info:
        sniff(b"\x89PNG\r\n\x1a\n", "C:\\Users\\x\\evil\nname\x1b[31m.csv")
    message = str(info.value)
    assert "\n" not in message and "\x1b" not in message and "Users" not in message
    assert message.startswith("evil?name?[31m.csv is a PNG image")


# -- formula neutralisation ------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("=1+1", "'=1+1"),
    ("=HYPERLINK(\"http://evil\",\"x\")", "'=HYPERLINK(\"http://evil\",\"x\")"),
    ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
    ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
    ("@SUM(A1:A10)", "'@SUM(A1:A10)"),
    ("\t=1+1", "'\t=1+1"),
    ("\r=1+1", "'\r=1+1"),
    ("-1+2", "'-1+2"),
    ("-5", "-5"),
    ("+1.5e3", "+1.5e3"),
    ("-0.25", "-0.25"),
    ("safe", "safe"),
    (" =1+1", " =1+1"),
    ("", ""),
    ("a=b", "a=b"),
])
def test_neutralise_text(value, expected):
    assert neutralise_text(value) == expected


def test_neutralise_formulas_frame():
    frame = pd.DataFrame({
        "patient_id": ["p1", "=cmd", "@x", None],
        "delta": [-5, 3, -1, 0],
        "ratio": [-0.5, np.nan, 1.5, -2.0],
        "flag": [True, False, None, True],
        "site": pd.Categorical(["=evil", "ok", "=evil", "ok"]),
        "note": pd.Series(["-1+2", "+5", pd.NA, "x"], dtype="string"),
        "when": pd.to_datetime(["2024-01-01", None, "2024-03-01", "2024-04-01"]),
    })
    frame["=SUM(A1)"] = 1
    out = neutralise_formulas(frame)
    assert list(out["patient_id"][:3]) == ["p1", "'=cmd", "'@x"] and pd.isna(out["patient_id"][3])
    assert out["delta"].tolist() == [-5, 3, -1, 0] and out["delta"].dtype == frame["delta"].dtype
    assert out["ratio"].iloc[0] == -0.5 and out["ratio"].dtype == np.float64
    assert out["flag"].tolist() == frame["flag"].tolist()
    assert list(out["site"]) == ["'=evil", "ok", "'=evil", "ok"]
    assert out["note"].iloc[0] == "'-1+2" and out["note"].iloc[1] == "+5" and pd.isna(out["note"].iloc[2])
    assert out["when"].equals(frame["when"])
    assert "'=SUM(A1)" in out.columns
    assert frame["patient_id"][1] == "=cmd" and "=SUM(A1)" in frame.columns  # input untouched


def test_neutralise_formulas_duplicate_labels_and_mixed_objects():
    frame = pd.DataFrame([["=a", "=b", -3]], columns=["x", "x", "y"])
    frame["y"] = frame["y"].astype(object)
    out = neutralise_formulas(frame)
    assert out.iloc[0].tolist() == ["'=a", "'=b", -3]


def test_neutralised_export_is_inert_in_excel_and_csv(tmp_path):
    frame = neutralise_formulas(pd.DataFrame({"v": ["=1+1", "-4", "@A1"], "n": [-1, 2, 3]}))
    path = tmp_path / "export.xlsx"
    frame.to_excel(path, index=False)
    from openpyxl import load_workbook

    sheet = load_workbook(path).active
    cells = [[c.value for c in row] for row in sheet.iter_rows(min_row=2)]
    assert [c[0] for c in cells] == ["'=1+1", "-4", "'@A1"]
    assert all(sheet.cell(row=r, column=1).data_type == "s" for r in (2, 3, 4))
    assert [c[1] for c in cells] == [-1, 2, 3]
    text = frame.to_csv(index=False)
    assert "\n'=1+1," in text and "\n-4,2" in text
