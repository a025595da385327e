"""What the analyses need from an engine: the one interface of the three engine shapes.

`kn026.core.analysis` computes funnels, orders, per-site tables and comparisons from
any object with this shape: the DuckDB `Engine` (kn026.core.engine), the Spark or
warehouse `QueryEngine` (kn026.scale.portable) and the network's `MergedEngine`
(kn026.scale.federated), which has only a merged histogram. Declared as
`typing.Protocol`s so each shape is checked against it (tests/test_screening.py)
rather than trusted by convention.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from kn026.core.funnel import Histogram


class RuleShape(Protocol):
    id: str
    stages: Sequence[int]


class CriterionShape(Protocol):
    id: str
    stages: Sequence[int]
    rules: Sequence[RuleShape]


class ProtocolShape(Protocol):
    name: str
    criteria: Sequence[CriterionShape]


class CohortShape(Protocol):
    present: frozenset[str]  # dictionary columns the screened table has
    n: int


@runtime_checkable
class ScreeningEngine(Protocol):
    """A screened cohort at one stage: leaf rules on mask bits, and the histogram of their masks."""

    protocol: ProtocolShape
    stage: int
    bit: Mapping[str, int]  # rule ID -> bit of the fail / unknown masks
    not_assessable: Mapping[str, list[str]]  # rule ID -> its missing columns (n/a on this cohort)
    cohort: CohortShape
    rules_key: str | None  # the analyst rules this engine adds (kn026.core.analysis.rules_key), None for none

    def histogram(self, overrides: dict | None = None, by_site: bool = False) -> Histogram:
        """Patients per (fail mask, unknown mask) [and site] under threshold `overrides`."""
        ...
