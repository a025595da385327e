"""Histogram maths: funnels, per-criterion statistics, Shapley shares, combinations.

Everything here works on a :class:`Histogram` of distinct ``(fail_mask, unknown_mask[, site])``
triples with patient counts, never on patient rows. The screening engine produces one
histogram per evaluation; reordering or toggling criteria only re-runs :func:`collapse`
and the functions below, so no patient is rescanned.

Masks and three-valued logic (dictionary, section 2)
----------------------------------------------------
Bit ``j`` of a mask stands for one rule ("leaf"), or, after :func:`collapse`, for one
criterion ("unit"). Per row:

* bit in ``fail`` (and never in ``unknown``): the patient fails that leaf / criterion;
* bit in ``unknown`` only: it cannot be assessed (a needed value is NULL);
* bit in neither: pass.

A criterion made of several leaves fails if any of its leaves fails, else is unknown if
any is unknown, else passes (:func:`collapse`). A patient is *strictly* eligible when no
criterion fails and none is unknown, *optimistically* eligible when no criterion fails.

Masks of any width
------------------
There is no ceiling on the number of leaves or criteria. ``Histogram.fail`` and
``.unknown`` are ``uint64`` arrays of shape ``(W, n)`` (:mod:`kn026.base.masks`): word ``k``
is the contiguous array ``fail[k]`` holding bits ``64k .. 64k + 63`` of the ``n`` rows.
Every function below works word by word; ``W == 1`` (at most 64 bits, the common case)
runs the one-word code paths unchanged. Single masks in arguments (``units``,
:func:`unit_mask`) are Python ints of any size; :meth:`Histogram.records` gives rows as
Python ints. :func:`collapse` returns ``max(1, ceil(len(units) / 64))`` words.

Conventions
-----------
* Functions taking ``names`` expect a collapsed histogram whose bit ``i`` is
  ``names[i]``; a set bit at a position ``>= len(names)`` raises ``ValueError``.
* Histograms need not be merged: every analysis gives the same answer on a merged or
  unmerged histogram (``collapse(..., merge=False)`` is the fast path).
* Counts are summed exactly: in ``int64``, or in ``float64`` ``np.bincount`` where every
  partial sum is an integer below 2**53 (9e15 patients), hence exact too. Count columns of
  returned DataFrames are ``int64``; scalars are Python ``int``.
* Percentages are of the screened total, as floats in 0..100, and 0.0 when nobody was
  screened.
* Histogram rows are processed with vectorised numpy; Python loops only run over
  criteria, mask words, bytes or 16-bit chunks of a mask, or output rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache, cached_property

import numpy as np
import pandas as pd

from kn026.base import masks as mw

__all__ = [
    "BOUNDS",
    "Histogram",
    "by_site",
    "collapse",
    "combinations",
    "compare",
    "compare_totals",
    "criterion_stats",
    "eligible_counts",
    "for_site",
    "funnel",
    "merge",
    "shapley",
    "unit_mask",
]

BOUNDS = ("strict", "optimistic")
_WORD = mw.WORD  # bits per mask word

_ALL_BITS = (1 << _WORD) - 1


# --------------------------------------------------------------------------- histogram


@dataclass(frozen=True, eq=False)
class Histogram:
    """Distinct ``(fail, unknown[, site])`` mask rows with patient counts.

    ``fail`` and ``unknown`` are ``uint64`` word arrays of shape ``(W, n)`` (see the module
    docstring) with ``fail & unknown == 0``; 1-D integer arrays are taken as one word,
    sequences of Python ints as masks of any size (the narrower of the two is padded).
    ``count`` is ``int64`` (>= 0); ``site`` is ``None`` or ``int32`` codes indexing
    ``sites``. Rows need not be distinct (see :func:`merge`). Inputs are converted to those
    dtypes and validated; arrays are not copied when they already have them.
    """

    fail: np.ndarray
    unknown: np.ndarray
    count: np.ndarray
    site: np.ndarray | None = None
    sites: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        fail = mw.words_of(self.fail, what="fail")
        unknown = mw.words_of(self.unknown, what="unknown")
        width = max(len(fail), len(unknown))
        fail, unknown = mw.widen(fail, width), mw.widen(unknown, width)
        count = np.asarray(self.count)
        if count.dtype.kind not in "iu" and count.size and not np.array_equal(count, np.round(count)):
            raise ValueError("count must hold whole numbers")
        count = count.astype(np.int64, copy=False).reshape(-1) if count.size else np.zeros(0, np.int64)
        n = fail.shape[1]
        if unknown.shape[1] != n or len(count) != n:
            raise ValueError(f"fail, unknown and count lengths differ: {n}, {unknown.shape[1]}, {len(count)}")
        if n and np.any(count < 0):
            raise ValueError("count must be >= 0")
        if n and np.any(np.bitwise_and(fail, unknown)):
            raise ValueError("a leaf cannot be both failed and unknown (fail & unknown != 0)")
        sites = tuple(str(s) for s in self.sites)
        site = self.site
        if site is not None:
            site = np.asarray(site)
            if site.size and site.dtype.kind not in "iu":
                raise ValueError("site must hold integer codes into `sites`")
            site = site.astype(np.int32, copy=False).reshape(-1) if site.size else np.zeros(0, np.int32)
            if len(site) != n:
                raise ValueError(f"site length {len(site)} differs from {n} rows")
            if n and (site.min() < 0 or site.max() >= len(sites)):
                raise ValueError(f"site codes must lie in 0..{len(sites) - 1} (one name per code in `sites`)")
        elif sites:
            raise ValueError("`sites` given without `site` codes")
        object.__setattr__(self, "fail", fail)
        object.__setattr__(self, "unknown", unknown)
        object.__setattr__(self, "count", count)
        object.__setattr__(self, "site", site)
        object.__setattr__(self, "sites", sites)

    @classmethod
    def _trusted(cls, fail, unknown, count, site, sites) -> Histogram:
        """Build without conversion or validation (arrays already have the right dtypes and
        shapes: C-contiguous ``(W, n)`` words of equal width)."""
        h = object.__new__(cls)
        object.__setattr__(h, "fail", fail)
        object.__setattr__(h, "unknown", unknown)
        object.__setattr__(h, "count", count)
        object.__setattr__(h, "site", site)
        object.__setattr__(h, "sites", sites)
        return h

    @classmethod
    def from_counts(cls, counts: Mapping[tuple[int, ...], int], sites: Sequence[str] = ()) -> Histogram:
        """Build from ``{(fail, unknown): n}`` or, with ``sites``, ``{(fail, unknown, site_code): n}``.

        Masks are Python ints of any size. Handy for tests and hand-made examples.
        """
        keys = list(counts)
        with_site = bool(sites)
        width = 3 if with_site else 2
        for key in keys:
            if len(key) != width:
                raise ValueError(f"key {key!r}: expected {width} items")
        fail = [int(k[0]) for k in keys]
        unknown = [int(k[1]) for k in keys]
        words = mw.width_for(max((v.bit_length() for v in fail + unknown), default=0))
        count = np.array([counts[k] for k in keys], dtype=np.int64)
        site = np.array([k[2] for k in keys], dtype=np.int32) if with_site else None
        return cls(mw.words_of(fail, words, "fail"), mw.words_of(unknown, words, "unknown"), count, site,
                   tuple(sites))

    def __len__(self) -> int:
        return len(self.count)

    @property
    def width(self) -> int:
        """Number of 64-bit words per mask."""
        return len(self.fail)

    @property
    def total(self) -> int:
        """Number of patients (screened)."""
        return int(self.count.sum())

    @cached_property
    def _weights(self) -> np.ndarray:
        """``count`` as float64, the weight type ``np.bincount`` wants (cached)."""
        return self.count.astype(np.float64)

    @cached_property
    def used_bits(self) -> int:
        """OR of every fail and unknown mask: the bits that are ever not passed (cached)."""
        return mw.union(self.fail) | mw.union(self.unknown)

    def records(self) -> list[tuple[int, ...]]:
        """Rows as Python ints: ``(fail, unknown, count)``, or ``(fail, unknown, count, site)``."""
        cols = [mw.ints_of(self.fail), mw.ints_of(self.unknown), self.count.tolist()]
        if self.site is not None:
            cols.append(self.site.tolist())
        return list(zip(*cols, strict=True))

    def __repr__(self) -> str:
        site = f", {len(self.sites)} sites" if self.site is not None else ""
        return f"Histogram({len(self)} rows, {self.total} patients{site})"


def unit_mask(bits: Sequence[int]) -> int:
    """Mask of a unit (criterion) from its leaf bit positions: ``unit_mask([0, 3]) == 0b1001``."""
    mask = 0
    for b in bits:
        if int(b) < 0:
            raise ValueError(f"leaf bit {b} is negative")
        mask |= 1 << int(b)
    return mask


def for_site(h: Histogram, site: int | str) -> Histogram:
    """Rows of one site (by code or name), without the site column."""
    if h.site is None:
        raise ValueError("histogram has no site column")
    code = h.sites.index(site) if isinstance(site, str) else int(site)
    if not 0 <= code < len(h.sites):
        raise ValueError(f"unknown site {site!r}")
    keep = h.site == code
    return Histogram._trusted(mw.take(h.fail, keep), mw.take(h.unknown, keep), h.count[keep], None, ())


# --------------------------------------------------------------------------- merge


def merge(h: Histogram) -> Histogram:
    """Sum rows with identical ``(fail, unknown, site)``; drop rows with a zero count.

    Rows come out in a deterministic order (sorted by an internal key, or by first
    appearance) and keep the input's word width. The grouping key is one ``uint64`` when
    it fits (plain bit packing up to 32 mask bits less the site bits, base-3 packing up to
    40 bits, since ``fail & unknown == 0`` leaves three states per bit), else rows are
    grouped by a hash of every word and the site, checked exactly
    (:func:`kn026.base.masks.group_rows`).
    """
    fail, unknown, count, site = h.fail, h.unknown, h.count, h.site
    if len(count) and not np.all(count):
        keep = count != 0
        fail, unknown, count = mw.take(fail, keep), mw.take(unknown, keep), count[keep]
        site = site[keep] if site is not None else None
    n = len(count)
    if n <= 1:
        return Histogram._trusted(fail, unknown, count, site, h.sites)
    width = len(fail)
    nbits = h.used_bits.bit_length()
    if nbits > _WORD:
        used = mw.width_for(nbits)
        columns = [*fail[:used], *unknown[:used]] + ([site] if site is not None else [])
        gid, first = mw.group_rows(columns)
        summed = np.zeros(len(first), np.int64)
        np.add.at(summed, gid, count)
        return Histogram._trusted(
            mw.take(fail, first), mw.take(unknown, first), summed, site[first] if site is not None else None, h.sites)

    # every mask lives in word 0: the one-word paths, widened back at the end
    fail, unknown = fail[0], unknown[0]
    nsites = max(len(h.sites), 1) if site is not None else 1
    site_bits = (nsites - 1).bit_length()
    if 2 * nbits + site_bits <= 64:
        # plain packing: fail | unknown | site, decodable from the key itself
        key = fail << np.uint64(nbits + site_bits)
        key |= unknown << np.uint64(site_bits)
        if site is not None:
            key |= site.astype(np.uint64)
        keys, summed, _ = mw.group_sum(key, count, 2 * nbits + site_bits)
        low = np.uint64((1 << nbits) - 1)
        return Histogram._trusted(
            _widened(keys >> np.uint64(nbits + site_bits), width),
            _widened((keys >> np.uint64(site_bits)) & low, width),
            summed,
            (keys & np.uint64((1 << site_bits) - 1)).astype(np.int32) if site is not None else None,
            h.sites,
        )
    if 3**nbits * nsites <= _ALL_BITS:
        # base-3 packing (fail & unknown == 0 leaves three states per bit): up to 40 bits
        tables = mw.ternary_tables((nbits + 7) // 8)
        key = mw.ternary(fail, tables)
        key *= np.uint64(2)
        key += mw.ternary(unknown, tables)
        if site is not None:
            key *= np.uint64(nsites)
            key += site.astype(np.uint64)
        _, summed, first = mw.group_sum(key, count, 64)
    else:  # 41..64 bits: group by a hash of the columns (O(n), exact: see mw.group_rows)
        gid, first = mw.group_rows([fail, unknown] + ([site] if site is not None else []))
        summed = np.zeros(len(first), np.int64)
        np.add.at(summed, gid, count)
    return Histogram._trusted(
        _widened(fail[first], width),
        _widened(unknown[first], width),
        summed,
        site[first] if site is not None else None,
        h.sites,
    )


def _widened(word0: np.ndarray, width: int) -> np.ndarray:
    """A ``(width, n)`` word array whose word 0 is `word0` and the others zero."""
    return mw.widen(word0.reshape(1, -1), width)


_merge = merge  # `collapse` has a keyword argument named `merge`


# --------------------------------------------------------------------------- collapse


def collapse(h: Histogram, units: Sequence[int], *, merge: bool = True) -> Histogram:
    """Group leaves into units (criteria): result bit ``i`` stands for ``units[i]``.

    ``units[i]`` is the leaf mask of unit ``i`` (the OR of its leaf bits, a Python int), in
    the caller's order; pass only the enabled, assessable criteria. Bit ``i`` of the result
    *fails* when ``fail & units[i] != 0`` and is *unknown* when it does not fail and
    ``unknown & units[i] != 0`` (the dictionary's rule: any failing sub-rule fails the
    criterion, else any unknown makes it unknown). Leaves outside every unit are dropped,
    so ordering and toggling criteria are just different ``units`` lists. A unit may share
    leaves with another; a zero unit always passes. The result has
    ``max(1, ceil(len(units) / 64))`` words.

    With ``merge=False`` the rows are not merged (one output row per input row), which saves
    the sort: every function in this module accepts unmerged histograms.
    """
    units = _check_units(units)
    width = mw.width_for(len(units))
    identity = all(u == 1 << i for i, u in enumerate(units)) and h.used_bits >> len(units) == 0
    if identity:
        fail, unknown = h.fail[:width], h.unknown[:width]
        out = Histogram._trusted(mw.widen(fail, width), mw.widen(unknown, width), h.count, h.site, h.sites)
    else:
        n = len(h)
        fail = np.empty((width, n), np.uint64)
        unknown = np.empty((width, n), np.uint64)
        buf = np.empty(n, np.uint64)
        index = np.empty(n, np.intp)
        for o, tables in enumerate(mw.unit_tables(units, h.width)):
            mw.any_per_unit(h.fail, tables, fail[o], buf, index)
            mw.any_per_unit(h.unknown, tables, unknown[o], buf, index)
            np.bitwise_and(unknown[o], np.invert(fail[o], out=buf), out=unknown[o])
        out = Histogram._trusted(fail, unknown, h.count, h.site, h.sites)
    if merge:
        return _merge(out)
    if "_weights" in h.__dict__:  # same counts: reuse the cached float64 copy
        out.__dict__["_weights"] = h.__dict__["_weights"]
    return out


# --------------------------------------------------------------------------- helpers


def _check_name_list(names: Sequence[str]) -> list[str]:
    if isinstance(names, str):
        raise TypeError("names must be a sequence of criterion names, not one string")
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        raise ValueError(f"criterion names must be unique: {names}")
    return names


def _check_names(h: Histogram, names: Sequence[str]) -> list[str]:
    """Validate names for a collapsed histogram: no set bit beyond the last name."""
    names = _check_name_list(names)
    used = h.used_bits
    if used >> len(names):
        raise ValueError(
            f"histogram has bits beyond the {len(names)} named criteria "
            f"(mask {used:#x}); collapse it first or pass one name per bit"
        )
    return names


def _check_units(units: Sequence[int]) -> list[int]:
    units = [int(u) for u in units]
    for u in units:
        if u < 0:
            raise ValueError(f"unit mask {u} is negative")
    return units


def _bound_mask(h: Histogram, bound: str) -> np.ndarray:
    """The mask that excludes a patient: ``fail`` (optimistic) or ``fail | unknown`` (strict)."""
    if bound == "optimistic":
        return h.fail
    if bound == "strict":
        return h.fail | h.unknown
    raise ValueError(f"bound must be one of {BOUNDS}, got {bound!r}")


def _states(h: Histogram) -> np.ndarray:
    """Per row (uint8): 0 strictly eligible, 1 unknown (optimistic only), 2 excluded."""
    state = mw.nonzero(h.fail).view(np.uint8)  # a fresh array: safe to update in place
    state += mw.nonzero(h.fail | h.unknown)
    return state


@cache
def _inv_pop(pops: int) -> np.ndarray:
    """``[0, 1, 1/2, ..., 1/(pops - 1)]``: the Shapley weight of a row with p bits set."""
    return np.concatenate(([0.0], 1.0 / np.arange(1, pops)))


def _shapley_from(pop_sums: np.ndarray) -> np.ndarray:
    return pop_sums @ _inv_pop(pop_sums.shape[1])


def _to_int(values: np.ndarray) -> np.ndarray:
    return np.rint(values).astype(np.int64)


def _pct(values, total: int):
    if total == 0:
        return np.zeros(len(values)) if isinstance(values, np.ndarray) else 0.0
    return np.asarray(values, dtype=np.float64) * (100.0 / total)


# --------------------------------------------------------------------------- analyses


def eligible_counts(h: Histogram) -> dict[str, int]:
    """Eligibility over all bits of ``h``.

    ``screened``: all patients; ``strict``: no fail and no unknown; ``optimistic``: no
    fail; ``unknown`` = optimistic - strict; ``excluded_strict`` = screened - strict;
    ``excluded_optimistic`` = screened - optimistic.
    """
    by_state = _to_int(np.bincount(_states(h), weights=h._weights, minlength=3))
    strict, unknown, excluded = (int(v) for v in by_state)
    screened = strict + unknown + excluded
    optimistic = strict + unknown
    return {
        "screened": screened,
        "strict": strict,
        "optimistic": optimistic,
        "unknown": optimistic - strict,
        "excluded_strict": screened - strict,
        "excluded_optimistic": screened - optimistic,
    }


def funnel(h: Histogram, names: Sequence[str], units: Sequence[int] | None = None) -> pd.DataFrame:
    """Sequential funnel: criterion ``names[i]`` is bit ``i`` of a collapsed ``h`` and step ``i + 1``.

    Row 0 is ``Screened`` (step 0). After step ``i``: ``strict`` patients have no fail and
    no unknown on bits ``0..i``; ``optimistic`` ones have no fail on bits ``0..i``;
    ``unknown = optimistic - strict``. ``lost_strict`` / ``lost_optimistic`` are the
    decreases from the previous row (0 on row 0); ``pct_strict`` / ``pct_optimistic`` are
    percentages of the screened total. The last row equals :func:`eligible_counts`.

    A patient leaves the strict funnel at its lowest failed-or-unknown bit and the
    optimistic one at its lowest failed bit, so one ``bincount`` does both bounds.

    Fast path: with ``units`` (leaf masks, as for :func:`collapse`) ``h`` is the
    uncollapsed leaf histogram and the result equals ``funnel(collapse(h, units), names)``
    without building the collapsed masks: a lookup table per 16-bit chunk gives each row
    the first unit it fails (or is unknown on) directly.
    """
    # One 8-byte scratch per row serves every step (fresh large arrays are costly).
    scratch = np.empty(len(h), np.uint64)
    if units is None:
        names = _check_names(h, names)
        # the "never" value (64 * W) must not be a step: widen when there are more names
        width = max(h.width, mw.width_for(len(names)))
        fail, unknown = mw.widen(h.fail, width), mw.widen(h.unknown, width)
        never = _WORD * width
        first_optimistic = mw.lowest_bits(fail, scratch)
        # lowest bit of fail | unknown = the lower of the two lowest bits
        first_strict = np.minimum(first_optimistic, mw.lowest_bits(unknown, scratch))
    else:
        units = _check_units(units)
        names = _check_name_list(names)
        if len(units) != len(names):
            raise ValueError(f"{len(units)} units for {len(names)} names")
        never = max(_WORD, len(units))
        tables = mw.rank_tables(units, h.width, never)
        first_optimistic = mw.first_unit(h.fail, tables, scratch.view(np.intp), never)
        # first unit failed or unknown = the lower of the first failed and first unknown
        first_strict = mw.first_unit(h.unknown, tables, scratch.view(np.intp), never, first_optimistic.copy())
    k = len(names)
    total = h.total
    # joint[s, o]: patients leaving the strict funnel at step s and the optimistic at o (`never`: stays)
    radix = never + 1
    index = scratch.view(np.intp)
    np.multiply(first_strict, radix, out=index, dtype=np.intp)
    index += first_optimistic
    joint = np.bincount(index, weights=h._weights, minlength=radix**2).reshape(radix, radix)
    lost_s = _to_int(joint.sum(axis=1)[:k])
    lost_o = _to_int(joint.sum(axis=0)[:k])
    strict = total - np.concatenate(([0], np.cumsum(lost_s)))
    optimistic = total - np.concatenate(([0], np.cumsum(lost_o)))
    return pd.DataFrame(
        {
            "step": np.arange(k + 1, dtype=np.int64),
            "criterion": ["Screened", *names],
            "strict": strict.astype(np.int64),
            "optimistic": optimistic.astype(np.int64),
            "unknown": (optimistic - strict).astype(np.int64),
            "lost_strict": np.concatenate(([0], lost_s)).astype(np.int64),
            "lost_optimistic": np.concatenate(([0], lost_o)).astype(np.int64),
            "pct_strict": _pct(strict, total),
            "pct_optimistic": _pct(optimistic, total),
        }
    )


def shapley(h: Histogram, bound: str, n_bits: int | None = None) -> np.ndarray:
    """Exact Shapley share of each bit in the number of patients excluded (float64 per bit).

    Game: the players are the criteria (bits); ``v(S)`` = number of patients excluded when
    only the criteria in ``S`` are applied, i.e. patients whose exclusion mask ``M``
    meets ``S``. ``M`` is the fail mask for ``bound="optimistic"`` (unknown counts as
    pass) and ``fail | unknown`` for ``bound="strict"`` (unknown counts as fail).

    ``v`` is a sum over patients of ``1[M_p & S != 0]``; in that one-patient game the bits
    of ``M_p`` are symmetric and the others are null players, so each bit of ``M_p`` gets
    ``1 / popcount(M_p)``. By linearity::

        share_i = sum over rows with bit i in M of count / popcount(M)

    Shares are >= 0, do not depend on the order of criteria, and sum (up to float
    rounding) to the number excluded: ``total - strict`` or ``total - optimistic``
    eligible. Unknowns therefore enter only through the choice of bound: strict shares a
    patient also among the criteria it is unknown on; optimistic ignores unknowns.

    Returns ``n_bits`` values (default ``64 * h.width``: one per bit of the masks).
    """
    mask = _bound_mask(h, bound)
    n_bits = _WORD * h.width if n_bits is None else int(n_bits)
    if n_bits < 0:
        raise ValueError("n_bits must be >= 0")
    return _shapley_from(mw.bit_pop_sums(mask, h._weights, n_bits))


def criterion_stats(h: Histogram, names: Sequence[str]) -> pd.DataFrame:
    """Order-independent statistics per criterion of a collapsed histogram (bit ``i`` = ``names[i]``).

    Columns (counts of patients):

    * ``passed`` / ``failed`` / ``unknown``: the criterion's own verdict;
      ``passed + failed + unknown`` = screened.
    * ``marginal`` = ``failed``: fails it at all, whatever else.
    * ``unique``: fails this criterion and no other (fail mask == this bit), whatever its
      unknowns elsewhere: the OHDSI "gain count", the patients who would become
      *optimistically* eligible if only this criterion were dropped.
    * ``unique_strict``: failed-or-unknown mask == this bit (fails it or is unknown on it,
      and passes everything else): would become *strictly* eligible without it.
    * ``shapley_strict`` / ``shapley_optimistic``: :func:`shapley` shares (floats).

    Sequential losses (which depend on the order) are in :func:`funnel`, not here.
    """
    names = _check_names(h, names)
    k = len(names)
    total = h.total
    by_fail = mw.bit_pop_sums(h.fail, h._weights, k)
    by_either = mw.bit_pop_sums(h.fail | h.unknown, h._weights, k)
    failed = _to_int(by_fail.sum(axis=1))
    # fail and unknown bits are disjoint, so (fail | unknown) counts = failed + unknown
    unknown = _to_int(by_either.sum(axis=1)) - failed
    return pd.DataFrame(
        {
            "criterion": names,
            "passed": (total - failed - unknown).astype(np.int64),
            "failed": failed,
            "unknown": unknown,
            "marginal": failed.copy(),
            "unique": _to_int(by_fail[:, 1]),
            "unique_strict": _to_int(by_either[:, 1]),
            "shapley_strict": _shapley_from(by_either),
            "shapley_optimistic": _shapley_from(by_fail),
        }
    )


def _mask_names(mask: int, names: Sequence[str]) -> tuple[str, ...]:
    return tuple(names[i] for i in range(len(names)) if mask >> i & 1)


def combinations(
    h: Histogram, names: Sequence[str], top: int | None = 10, bound: str = "optimistic"
) -> pd.DataFrame:
    """Most frequent exact combinations of excluding criteria (UpSet style).

    Each excluded patient is counted once, under the exact set of criteria that exclude it:
    its fail mask (``bound="optimistic"``) or its ``fail | unknown`` mask (``"strict"``).
    Patients with an empty mask are not listed, so with ``top=None`` (all combinations)
    the counts sum to the number excluded under that bound.

    Columns: ``criteria`` (tuple of names in bit order), ``label`` (``"LAB2 + ECG9"``),
    ``size`` (number of criteria), ``count``, ``pct`` (of screened). Sorted by count
    descending, then label; ``top`` keeps the first rows. Labels are built only for the
    combinations that can make the cut (counts >= the top-th largest), so this stays cheap
    unless a huge number of combinations tie at that count.
    """
    names = _check_names(h, names)
    mask = _bound_mask(h, bound)
    excluded = mw.nonzero(mask) & (h.count > 0)
    masks, counts = mw.take(mask, excluded), h.count[excluded]
    if len(counts) and len(masks) == 1:
        keys, counts, _ = mw.group_sum(masks[0], counts, len(names))
        masks = keys.reshape(1, -1)
    elif len(counts):
        gid, first = mw.group_rows(list(masks))
        summed = np.zeros(len(first), np.int64)
        np.add.at(summed, gid, counts)
        masks, counts = mw.take(masks, first), summed
    if top is not None and 0 <= top < len(counts):
        # Only rows tied with the top-th largest count or above can make the cut.
        threshold = np.partition(counts, len(counts) - top)[len(counts) - top] if top else np.inf
        keep = counts >= threshold
        masks, counts = mw.take(masks, keep), counts[keep]
    criteria = [_mask_names(m, names) for m in mw.ints_of(masks)]
    labels = [" + ".join(c) for c in criteria]
    rows = sorted(zip(counts.tolist(), labels, criteria, strict=True), key=lambda r: (-r[0], r[1]))
    if top is not None:
        rows = rows[: max(top, 0)]
    total = h.total
    return pd.DataFrame(
        {
            "criteria": pd.Series([r[2] for r in rows], dtype=object),
            "label": pd.Series([r[1] for r in rows], dtype=object),
            "size": np.array([len(r[2]) for r in rows], dtype=np.int64),
            "count": np.array([r[0] for r in rows], dtype=np.int64),
            "pct": _pct(np.array([r[0] for r in rows], dtype=np.int64), total),
        }
    )


def by_site(h: Histogram) -> pd.DataFrame:
    """Per site (every name in ``h.sites``, in code order): screened, strict, optimistic, unknown.

    Over all bits of ``h`` (collapse first to choose the criteria). Raises ``ValueError``
    when the histogram has no site column.
    """
    if h.site is None:
        raise ValueError("histogram has no site column")
    n = len(h.sites)
    index = h.site.astype(np.intp)
    index *= 3
    index += _states(h)
    by_state = _to_int(np.bincount(index, weights=h._weights, minlength=3 * n)).reshape(n, 3)
    strict, unknown = by_state[:, 0], by_state[:, 1]
    return pd.DataFrame(
        {
            "site": pd.Series(list(h.sites), dtype=object),
            "screened": by_state.sum(axis=1),
            "strict": strict,
            "optimistic": strict + unknown,
            "unknown": unknown,
        }
    )


_COMPARED = ("failed", "unknown", "marginal", "unique")


def compare(
    base: Histogram,
    other: Histogram,
    names_base: Sequence[str],
    names_other: Sequence[str],
) -> pd.DataFrame:
    """Scenario (``other``) against protocol (``base``), per criterion present in either.

    Both histograms are collapsed (bit ``i`` = ``names_*[i]``). Rows follow ``names_base``,
    then criteria only in ``names_other``. Columns: ``criterion``, ``in_base``,
    ``in_other``, then for each of failed, unknown, marginal, unique: ``<stat>_base``,
    ``<stat>_other`` and ``<stat>_delta`` (other - base). A criterion absent from one side
    (disabled or new) counts 0 there: it excludes nobody. See :func:`compare_totals` for
    the eligible counts.
    """
    stats_base = criterion_stats(base, names_base).set_index("criterion")
    stats_other = criterion_stats(other, names_other).set_index("criterion")
    order = list(stats_base.index) + [c for c in stats_other.index if c not in stats_base.index]
    columns: dict[str, object] = {
        "criterion": order,
        "in_base": [c in stats_base.index for c in order],
        "in_other": [c in stats_other.index for c in order],
    }
    for stat in _COMPARED:
        b = stats_base[stat].reindex(order, fill_value=0).to_numpy(np.int64)
        o = stats_other[stat].reindex(order, fill_value=0).to_numpy(np.int64)
        columns[f"{stat}_base"] = b
        columns[f"{stat}_other"] = o
        columns[f"{stat}_delta"] = o - b
    return pd.DataFrame(columns)


def compare_totals(base: Histogram, other: Histogram) -> pd.DataFrame:
    """Eligible counts of protocol (``base``) and scenario (``other``) and the delta.

    One row per measure (screened, strict, optimistic, unknown) with columns
    ``measure``, ``base``, ``other``, ``delta`` (other - base).
    """
    measures = ("screened", "strict", "optimistic", "unknown")
    b, o = eligible_counts(base), eligible_counts(other)
    return pd.DataFrame(
        {
            "measure": list(measures),
            "base": np.array([b[m] for m in measures], dtype=np.int64),
            "other": np.array([o[m] for m in measures], dtype=np.int64),
            "delta": np.array([o[m] - b[m] for m in measures], dtype=np.int64),
        }
    )
