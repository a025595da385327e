"""Check an uploaded cohort file before any parser sees it (exports are made safe by kn026.report.neutralise).

`sniff` decides from the bytes, not only from the name, whether an upload is a CSV,
Parquet or Excel (.xlsx) file, and rejects everything else with a message the
analyst can act on: too large, empty, a renamed binary (PNG, PDF, ZIP, ELF, ...), an
HTML error page saved as .csv, text that is not UTF-8, a CSV with NUL bytes, a
Parquet file without its PAR1 magic at both ends, a workbook that is not a real
.xlsx (or is macro-enabled, encrypted, or a zip bomb).

Encodings: CSV must be UTF-8, with or without a byte-order mark. Other encodings
(Latin-1, Windows-1252, UTF-16) are rejected with the fix ("save as CSV UTF-8")
rather than guessed, so that category values never turn into mojibake silently.

"""

from __future__ import annotations

import codecs
import io
import re
import zipfile
from pathlib import PurePath

MAX_BYTES = 200 * 1024 * 1024
MAX_XLSX_UNCOMPRESSED = 1024 * 1024 * 1024  # 1 GiB inflated, whatever the upload limit
MAX_XLSX_RATIO = 200  # inflated / compressed, per member and overall
MAX_XLSX_MEMBERS = 10_000
KINDS = ("csv", "parquet", "xlsx")
_EXTENSIONS = {".csv": "csv", ".txt": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet",
               ".xlsx": "xlsx"}

# Leading bytes of formats that are not a cohort file, with a readable name.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"%PDF-", "a PDF document"),
    (b"\x7fELF", "an ELF executable"),
    (b"MZ", "a Windows executable"),
    (b"\xca\xfe\xba\xbe", "a Java class or Mach-O file"),
    (b"\xcf\xfa\xed\xfe", "a Mach-O executable"),
    (b"\xfe\xed\xfa", "a Mach-O executable"),
    (b"\x00asm", "a WebAssembly module"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"BZh", "a bzip2 archive"),
    (b"\xfd7zXZ\x00", "an xz archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"\x28\xb5\x2f\xfd", "a zstd archive"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old-style Office file (.xls/.doc) or an "
                                          "encrypted workbook"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"PK\x05\x06", "a ZIP archive"),
    (b"PK\x07\x08", "a ZIP archive"),
    (b"PAR1", "a Parquet file"),
    (b"RIFF", "a RIFF media file"),
    (b"OggS", "an Ogg media file"),
    (b"ID3", "an MP3 file"),
    (b"\x00\x00\x00\x18ftyp", "an MP4 video"),
    (b"\x00\x00\x00\x20ftyp", "an MP4 video"),
    (b"DUCK", "a DuckDB database"),
)
_MARKUP = re.compile(rb"^\s*(<!doctype\s+html|<html|<head|<body|<script|<\?xml|<svg|<!--|<meta|<title"
                     rb"|<div|<table|<iframe|<style)", re.IGNORECASE)
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_UTF32_BOMS = (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")


class UploadError(ValueError):
    """An upload that is not accepted; the message says why and what to do."""


def _mb(n: int) -> str:
    mb = n / (1024 * 1024)
    if mb >= 10:
        return f"{mb:.0f} MB"
    if mb >= 0.1:
        return f"{mb:.1f} MB"
    return f"{n / 1024:.0f} KB" if n >= 1024 else f"{n} bytes"


def _shown(filename: str) -> str:
    name = PurePath(str(filename).replace("\\", "/")).name or "the file"
    name = "".join(ch if ch.isprintable() else "?" for ch in name)
    return name if len(name) <= 80 else name[:77] + "..."


def sniff(data: bytes, filename: str, max_bytes: int = MAX_BYTES) -> str:
    """Return "csv", "parquet" or "xlsx" for an acceptable upload; raise UploadError otherwise.

    The name's extension says what the file should be; the bytes must agree.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise UploadError("the upload is not a file's bytes")
    data = bytes(data) if not isinstance(data, bytes) else data
    shown = _shown(filename)
    if len(data) > max_bytes:
        raise UploadError(f"{shown}: the file is {_mb(len(data))}; the limit is {_mb(max_bytes)}. "
                          "Upload only the columns the screening needs, or Parquet, which is smaller.")
    if not data:
        raise UploadError(f"{shown}: the file is empty")
    suffix = PurePath(shown).suffix.lower()
    if suffix in (".xls", ".xlsm", ".xlsb", ".ods", ".numbers"):
        raise UploadError(f"{shown}: {suffix} workbooks are not accepted; save the sheet as .xlsx "
                          "(Excel Workbook) or as CSV UTF-8")
    kind = _EXTENSIONS.get(suffix)
    if kind is None:
        raise UploadError(f"{shown}: unsupported file type {suffix or '(no extension)'}; upload a "
                          "CSV (.csv), Parquet (.parquet) or Excel (.xlsx) file")
    if kind == "csv":
        _check_csv(data, shown)
    elif kind == "parquet":
        _check_parquet(data, shown)
    else:
        _check_xlsx(data, shown)
    return kind


def _binary_kind(data: bytes) -> str | None:
    for magic, what in _MAGIC:
        if data.startswith(magic):
            return what
    if data[4:8] == b"ftyp":
        return "an MP4/QuickTime video or HEIC image"
    return None


def _check_csv(data: bytes, shown: str) -> None:
    what = _binary_kind(data)
    if data.startswith(_UTF32_BOMS) or data.startswith(_UTF16_BOMS):
        raise UploadError(f"{shown}: the file is UTF-16/UTF-32 text; save it as 'CSV UTF-8' "
                          "(in Excel: File > Save As > CSV UTF-8)")
    if what is not None:
        hint = (" (an Excel workbook? rename it to .xlsx or save it as CSV UTF-8)"
                if "ZIP" in what else "")
        raise UploadError(f"{shown} is {what}, not a CSV file{hint}")
    body = data[len(_UTF8_BOM):] if data.startswith(_UTF8_BOM) else data
    if _MARKUP.match(body[:2048]):
        raise UploadError(f"{shown} looks like an HTML or XML page, not a CSV file (a saved web page "
                          "or a download error page?); export the data again as CSV")
    nul = body.find(b"\x00")
    if nul >= 0:
        line = body.count(b"\n", 0, nul) + 1
        raise UploadError(f"{shown}: the file contains NUL bytes (first at byte {nul:,}, line {line}); "
                          "it is binary or UTF-16, not a UTF-8 CSV file")
    _check_utf8(body, shown)
    if not body.strip():
        raise UploadError(f"{shown}: the file has no data (only whitespace)")


def _check_utf8(body: bytes, shown: str, chunk: int = 1 << 20) -> None:
    """Decode incrementally (no full copy of a 200 MB upload); report the first bad byte."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    for offset in range(0, len(body), chunk):
        try:
            decoder.decode(body[offset:offset + chunk], final=offset + chunk >= len(body))
        except UnicodeDecodeError:
            # re-decode from the start of any character carried over from the last chunk
            start = offset
            while start > 0 and offset - start < 3 and 0x80 <= body[start - 1] < 0xC0:
                start -= 1
            if start > 0 and body[start - 1] >= 0xC0:
                start -= 1
            try:
                body[start:offset + chunk + 3].decode("utf-8")
                at = offset
            except UnicodeDecodeError as err:
                at = start + err.start
            line = body.count(b"\n", 0, at) + 1
            raise UploadError(
                f"{shown}: the file is not UTF-8 text (byte 0x{body[at]:02X} at byte {at:,}, line "
                f"{line}); save it as 'CSV UTF-8' (in Excel: File > Save As > CSV UTF-8)") from None


def _check_parquet(data: bytes, shown: str) -> None:
    if len(data) < 12 or not data.startswith(b"PAR1") or not data.endswith(b"PAR1"):
        what = _binary_kind(data)
        if what and what != "a Parquet file":
            raise UploadError(f"{shown} is {what}, not a Parquet file")
        where = "start" if not data.startswith(b"PAR1") else "end"
        raise UploadError(f"{shown} is not a Parquet file (no PAR1 marker at the {where}); it may be "
                          "truncated or renamed. Export it again as Parquet, or upload CSV.")


def _zip_members(data: bytes, broken: str) -> list[zipfile.ZipInfo]:
    """The archive's directory; UploadError(`broken` with {err} filled) when it cannot be read."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError) as err:
        raise UploadError(broken.format(err=err)) from None


def _inflation(infos, max_total: int, max_ratio: float) -> tuple[int, int, bool]:
    """(inflated size, packed size, looks like a ZIP bomb): too large in all, or compressed
    more than `max_ratio` overall or in any member above 1 MB."""
    total = sum(i.file_size for i in infos)
    packed = max(1, sum(i.compress_size for i in infos))
    bomb = total > max_total or total / packed > max_ratio or any(
        i.file_size > 1_000_000 and i.file_size / max(1, i.compress_size) > max_ratio for i in infos)
    return total, packed, bomb


def _check_xlsx(data: bytes, shown: str) -> None:
    if not data.startswith(b"PK\x03\x04"):
        what = _binary_kind(data)
        if what and "encrypted" in what:
            raise UploadError(f"{shown} is a password-protected (encrypted) or old-style Excel file; "
                              "remove the password and save as .xlsx, or save as CSV UTF-8")
        raise UploadError(f"{shown} is {what or 'not a ZIP-based workbook'}, not an Excel .xlsx file")
    infos = _zip_members(data, f"{shown} is not a readable .xlsx workbook (broken ZIP: {{err}}); save it "
                               "again from Excel or upload CSV")
    if len(infos) > MAX_XLSX_MEMBERS:
        raise UploadError(f"{shown} has {len(infos):,} parts; that is not a normal workbook")
    names = {i.filename for i in infos}
    if "[Content_Types].xml" not in names or "xl/workbook.xml" not in names:
        raise UploadError(f"{shown} is a ZIP archive but not an Excel workbook (no "
                          "[Content_Types].xml / xl/workbook.xml); save it as .xlsx from Excel or "
                          "upload CSV")
    if any(n.lower().endswith("vbaproject.bin") for n in names):
        raise UploadError(f"{shown} contains macros; save it as a plain .xlsx (Excel Workbook) "
                          "or as CSV UTF-8")
    if any(i.flag_bits & 0x1 for i in infos):
        raise UploadError(f"{shown} has encrypted parts; remove the password and save again")
    total, packed, bomb = _inflation(infos, MAX_XLSX_UNCOMPRESSED, MAX_XLSX_RATIO)
    if bomb:
        raise UploadError(f"{shown} expands to {_mb(total)} ({total / packed:.0f}x its size); that "
                          "is not a normal workbook (a ZIP bomb?). Upload CSV or Parquet instead.")


MAX_ZIP_UNCOMPRESSED = 4 * 1024 * 1024 * 1024  # an OMOP zip may inflate to 4 GiB at most
MAX_ZIP_RATIO = 200
MAX_ZIP_MEMBERS = 10_000
MAX_TEXT_BYTES = 1024 * 1024  # a scenario or mapping YAML is a few KB


def sniff_zip(data: bytes, filename: str, max_bytes: int = MAX_BYTES,
              max_uncompressed: int = MAX_ZIP_UNCOMPRESSED) -> str:
    """Return "zip" for an acceptable ZIP archive (an OMOP CDM upload); raise UploadError otherwise.

    Checks the size limit, the .zip name, the ZIP magic (a renamed PNG or HTML page is
    named), that the directory is readable, and that it is no zip bomb: at most 10,000
    members, `max_uncompressed` inflated and a compression ratio of at most 200; no
    encrypted members. The members themselves are parsed by the importer.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise UploadError("the upload is not a file's bytes")
    data = bytes(data) if not isinstance(data, bytes) else data
    shown = _shown(filename)
    if len(data) > max_bytes:
        raise UploadError(f"{shown}: the file is {_mb(len(data))}; the limit is {_mb(max_bytes)}. "
                          "Zip only the CDM tables the screening needs (PERSON, OBSERVATION_PERIOD, "
                          "MEASUREMENT, CONDITION_OCCURRENCE, DRUG_EXPOSURE, ...), or use Parquet tables.")
    if not data:
        raise UploadError(f"{shown}: the file is empty")
    suffix = PurePath(shown).suffix.lower()
    if suffix != ".zip":
        raise UploadError(f"{shown}: unsupported file type {suffix or '(no extension)'}; upload a .zip of "
                          "the OMOP CDM tables (CSV or Parquet)")
    if not data.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        what = _binary_kind(data)
        if what is None and _MARKUP.match(data[:2048]):
            what = "an HTML or XML page (a saved web page or a download error page?)"
        raise UploadError(f"{shown} is {what or 'not a ZIP archive'}, not a .zip of OMOP tables; zip the "
                          "folder of CDM tables and upload that")
    infos = _zip_members(data, f"{shown} is not a readable ZIP archive ({{err}}); it may be truncated. Zip the "
                               "folder again")
    if len(infos) > MAX_ZIP_MEMBERS:
        raise UploadError(f"{shown} has {len(infos):,} members; an OMOP CDM has a few dozen tables")
    if any(i.flag_bits & 0x1 for i in infos):
        raise UploadError(f"{shown} has encrypted members; zip the tables without a password")
    total, packed, bomb = _inflation(infos, max_uncompressed, MAX_ZIP_RATIO)
    if bomb:
        raise UploadError(f"{shown} expands to {_mb(total)} ({total / packed:.0f}x its size); the limit is "
                          f"{_mb(max_uncompressed)} at most {MAX_ZIP_RATIO}x. Zip fewer tables, or a zip bomb?")
    return "zip"


def sniff_text(data: bytes, filename: str, extensions: tuple[str, ...] = (".yaml", ".yml"),
               max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The upload decoded as UTF-8 text (a scenario or mapping YAML); UploadError otherwise.

    Same checks as a CSV: size, extension, renamed binaries, HTML pages, NUL bytes, UTF-8.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise UploadError("the upload is not a file's bytes")
    data = bytes(data) if not isinstance(data, bytes) else data
    shown = _shown(filename)
    if len(data) > max_bytes:
        raise UploadError(f"{shown}: the file is {_mb(len(data))}; the limit is {_mb(max_bytes)}")
    if not data:
        raise UploadError(f"{shown}: the file is empty")
    suffix = PurePath(shown).suffix.lower()
    if suffix not in extensions:
        raise UploadError(f"{shown}: unsupported file type {suffix or '(no extension)'}; upload a "
                          f"{' or '.join(extensions)} file")
    what = _binary_kind(data)
    if what is not None:
        raise UploadError(f"{shown} is {what}, not a text file")
    body = data[len(_UTF8_BOM):] if data.startswith(_UTF8_BOM) else data
    if _MARKUP.match(body[:2048]):
        raise UploadError(f"{shown} looks like an HTML or XML page, not YAML (a saved web page?); "
                          "download the file again")
    if b"\x00" in body:
        raise UploadError(f"{shown}: the file contains NUL bytes; it is binary or UTF-16, not UTF-8 text")
    _check_utf8(body, shown)
    return body.decode("utf-8")


# -- exports --------------------------------------------------------------------------
