"""What the loader found wrong with a cohort: one `Problem` per cell, column or file, and the error that carries them.

Shared by the reader (unreadable files), the loader (cells) and the importers, so a
message names the column, row, patient, value and fix the same way everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One bad value (or a file-level problem when `row` is None)."""

    column: str
    message: str
    row: int | None = None  # 1-based data row (header excluded)
    patient_id: str | None = None
    value: str | None = None
    count: int = 1  # how many rows share this problem in this column
    # value (unreadable or out of range), unit (unit guard), median (unit guard, whole column),
    # missing_id, duplicate, date (a mapped date its format does not read), edit (a refused edit),
    # "" (the file or its header): which choices kn026.ingest.edits offers for it
    kind: str = ""
    rows: tuple[int, ...] = ()  # a duplicated patient_id: the rows that share it (the first ten)

    @property
    def sentence(self) -> str:
        """The message ending with a full stop, to join with other sentences (its first word
        may be a file or column name, so its case is kept)."""
        text = self.message.strip()
        return text if text.endswith((".", "!", "?")) else text + "."

    def __str__(self) -> str:
        where = f"row {self.row}" if self.row is not None else ""
        if self.patient_id is not None:
            where += f" (patient_id {self.patient_id})"
        value = f" value {self.value!r}:" if self.value is not None else ""
        return f"{self.column}: {where}{value} {self.message}".replace("  ", " ").strip()


class CohortError(ValueError):
    """The cohort cannot be loaded; `problems` lists every issue found."""

    def __init__(self, problems: list[Problem], total: int | None = None):
        self.problems = problems
        self.total = total if total is not None else len(problems)
        lines = [str(p) for p in problems[:20]]
        more = self.total - len(lines)
        super().__init__("\n".join(lines) + (f"\n... and {more} more" if more > 0 else ""))
