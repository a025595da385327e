"""The units a dictionary column's values may be given in, and the factor to its own unit.

One table serves the mapping wizard's unit setting and the loader's "declare the unit"
choice (kn026.ingest.edits), so that a column declared in g/dL converts the same way through
either: the lab units of `kn026/ingest/concepts/omop_concepts.yaml`, then the conversions the
dictionary's unit guard names (`schema.Guard.units`) that no lab table lists (an LVEF
given as a fraction, platelets in 10^4/uL). Values are converted with
`omop_concepts.convert` (in decimal, rounded: 13.2 g/dL is 132 g/L, not 131.99999999999997).
"""

from __future__ import annotations

from kn026.base import schema
from kn026.ingest import omop_concepts


def guard_units(column: str) -> list[tuple[str, float]]:
    """(unit, factor) of the conversions the column's unit guard names ([] when it has no guard)."""
    guard = schema.BY_NAME[column].guard
    return [(unit, unit_factor(column, unit)) for unit, _ in guard.units] if guard else []


def units_for(column: str) -> list[str]:
    """Units a dictionary column's values can be given in (dictionary unit first); [] if unitless."""
    table = [u["unit"] for u in omop_concepts.column_units(column)]
    guard = schema.BY_NAME[column].guard
    extra = [unit for unit, _ in guard.units if not _in_table(column, unit)] if guard else []
    if extra and not table:
        table = [schema.BY_NAME[column].unit]
    return table + extra


def _in_table(column: str, unit: str) -> bool:
    norm = omop_concepts.normalise_unit(unit)
    return any(norm in u["aliases"] for u in omop_concepts.column_units(column))


def unit_factor(column: str, unit: str, where: str = "mapping") -> float:
    """Factor from `unit` to the dictionary unit of `column`; ValueError lists the known units."""
    norm = omop_concepts.normalise_unit(unit)
    table = omop_concepts.column_units(column)
    for u in table:
        if norm in u["aliases"]:
            return u["factor"]
    col = schema.BY_NAME[column]
    for name, factor in col.guard.units if col.guard else ():
        if norm == omop_concepts.normalise_unit(name):
            return float(factor)
    if not table and norm == omop_concepts.normalise_unit(col.unit):
        return 1.0
    known = ", ".join(units_for(column)) or (col.unit or "no unit")
    raise ValueError(f"{where}: unit {unit!r} is not known for {column}; use one of {known} or give a factor")


def conversion_text(column: str, unit: str) -> str:
    """"g/dL (× 10 → g/L)": a declared unit and what it does."""
    return f"{unit} (× {unit_factor(column, unit):g} → {schema.BY_NAME[column].unit})"
