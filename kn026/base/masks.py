"""Bit masks of any width as arrays of 64-bit words.

A per-patient mask has one bit per rule (leaf) or criterion, and a protocol with analyst
criteria beside it can have more than 64. Masks of ``n`` rows are therefore stored as a
``uint64`` array of shape ``(W, n)``: word ``k`` (``words[k]``, one contiguous array)
holds bits ``64k .. 64k + 63`` of every row. Keeping each word contiguous lets the
vectorised tricks of :mod:`kn026.core.funnel` and :mod:`kn026.core.engine` (byte and 16-bit chunk
lookups, popcounts, ``bincount``) run word by word on plain 1-D arrays, and ``W == 1``
is the old one-word layout with no copy (``words[0]``). In APIs a single mask is a
plain Python ``int`` of any size; these helpers convert between the two.

The second half holds the per-row operations the funnel maths is built from (lookup
tables per 16-bit segment, lowest set bits, popcount-by-byte sums, packed-key
grouping), each generalised from one word to W words by looping over words and
segments, never over rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

WORD = 64
_U64 = np.dtype(np.uint64)
_WORD_MASK = (1 << WORD) - 1
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def width_for(nbits: int) -> int:
    """Words needed for masks of `nbits` bits (at least one)."""
    return max(1, -(-int(nbits) // WORD))


def split(mask: int, width: int) -> np.ndarray:
    """The `width` words of one Python-int mask (``uint64``, shape ``(width,)``)."""
    mask = int(mask)
    if mask < 0:
        raise ValueError(f"mask {mask} is negative")
    if mask >> (WORD * width):
        raise ValueError(f"mask {mask:#x} needs more than {width} words")
    return np.array([(mask >> (WORD * k)) & _WORD_MASK for k in range(width)], dtype=np.uint64)


def words_of(values, width: int | None = None, what: str = "mask") -> np.ndarray:
    """Masks as a C-contiguous ``(W, n)`` ``uint64`` array.

    `values` is a ``(W, n)`` integer array (taken as is), a 1-D integer array (one word),
    or a sequence / object array of Python ints of any size. `width` pads to that many
    words (never fewer than the values need). Negative masks are refused.
    """
    arr = values if isinstance(values, np.ndarray) else np.asarray(values, dtype=object)
    if arr.dtype == object:
        flat = [int(v) for v in arr.reshape(-1)]
        if any(v < 0 for v in flat):
            raise ValueError(f"{what} masks must be >= 0")
        top = max(flat, default=0).bit_length()
        w = max(width_for(top), width or 1)
        out = np.empty((w, len(flat)), np.uint64)
        if not flat:
            return out
        if top <= 63:  # fits int64: one vectorised conversion
            out[0] = np.array(flat, dtype=np.int64).view(np.uint64)
            out[1:] = 0
            return out
        for k in range(w):
            out[k] = np.array([(v >> (WORD * k)) & _WORD_MASK for v in flat], dtype=np.uint64)
        return out
    if arr.ndim not in (1, 2) and arr.size:
        raise ValueError(f"{what} masks must be a 1-D array or (words, rows) array, got shape {arr.shape}")
    if arr.size == 0:
        rows = arr.shape[-1] if arr.ndim == 2 else 0
        return np.zeros((max(width or 1, arr.shape[0] if arr.ndim == 2 else 1), rows), np.uint64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{what} masks must be integers, got {arr.dtype}")
    if arr.dtype.kind == "i" and np.any(arr < 0):
        raise ValueError(f"{what} masks must be >= 0")
    arr = np.ascontiguousarray(arr.astype(np.uint64, copy=False))
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    return widen(arr, width or 1)


def widen(words: np.ndarray, width: int) -> np.ndarray:
    """`words` with zero words appended up to `width` (returned as is when wide enough)."""
    if len(words) >= width:
        return words
    out = np.zeros((width, words.shape[1]), np.uint64)
    out[: len(words)] = words
    return out


def take(words: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Rows `index` (integer positions or a boolean mask) of a word array, C-contiguous.

    (``words[:, index]`` would come out in Fortran order for two or more words, and every
    per-word trick needs each word contiguous.)
    """
    index = np.asarray(index)
    if index.dtype == bool:
        return np.compress(index, words, axis=1)
    return np.take(words, index, axis=1)


def ints_of(words: np.ndarray) -> list[int]:
    """One Python int per row of a ``(W, n)`` word array."""
    if len(words) == 1:
        return [int(v) for v in words[0].tolist()]
    out = [0] * words.shape[1]
    for k in range(len(words) - 1, -1, -1):
        out = [(o << WORD) | v for o, v in zip(out, words[k].tolist(), strict=True)]
    return out


def union(words: np.ndarray) -> int:
    """OR of every row, as a Python int."""
    if words.shape[1] == 0:
        return 0
    return sum(int(np.bitwise_or.reduce(w)) << (WORD * k) for k, w in enumerate(words))


def nonzero(words: np.ndarray) -> np.ndarray:
    """Per row: is any bit set (bool)."""
    if len(words) == 1:
        return words[0] != 0
    return np.bitwise_or.reduce(words, axis=0) != 0


def equal(words: np.ndarray, mask: int) -> np.ndarray:
    """Per row: does the row's mask equal `mask` (bool)."""
    if int(mask) >> (WORD * len(words)):
        return np.zeros(words.shape[1], bool)
    target = split(mask, len(words))
    out = words[0] == target[0]
    for k in range(1, len(words)):
        out &= words[k] == target[k]
    return out


def group_rows(columns: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Rows equal on every column, grouped: (group index per row, first row of each group).

    Groups are numbered in order of first appearance. A hash table (pandas factorize) on
    one 64-bit key mixing all columns (:func:`_mix` after each) is O(n); every row is then
    checked against its group's first row, and a hash collision falls back to an exact sort.
    """
    n = len(columns[0])
    key = np.array(columns[0], dtype=np.uint64, copy=True)
    tmp = np.empty(n, np.uint64)
    _mix(key, tmp)
    for col in columns[1:]:
        key ^= col.astype(np.uint64, copy=False)
        _mix(key, tmp)
    gid, uniques = pd.factorize(key)
    first = np.empty(len(uniques), np.int64)
    first[gid[::-1]] = np.arange(n - 1, -1, -1)
    if all(np.array_equal(col[first][gid], col) for col in columns):
        return gid.astype(np.int64, copy=False), first
    order = np.lexsort(list(columns)[::-1])
    new = np.zeros(n, bool)
    new[:1] = True
    for col in columns:
        c = col[order]
        new[1:] |= c[1:] != c[:-1]
    sorted_gid = np.cumsum(new) - 1
    gid = np.empty(n, np.int64)
    gid[order] = sorted_gid
    # renumber by first appearance so both paths agree
    first_sorted = order[new]
    rank = np.argsort(np.argsort(first_sorted, kind="stable"), kind="stable")
    return rank[gid], np.sort(first_sorted)


def _mix(key: np.ndarray, tmp: np.ndarray) -> None:
    """splitmix64's finalizer, in place: a bijection whose every output bit depends on every
    input bit, so structured masks (few bits, mostly in low positions) do not collide the
    way a plain multiply-and-xor chain lets them."""
    np.right_shift(key, np.uint64(30), out=tmp)
    key ^= tmp
    key *= _MIX1
    np.right_shift(key, np.uint64(27), out=tmp)
    key ^= tmp
    key *= _MIX2
    np.right_shift(key, np.uint64(31), out=tmp)
    key ^= tmp


def repack(words: Sequence[np.ndarray], bits: int) -> np.ndarray:
    """Words of `bits` bits each (word k = bits ``bits*k ..``; e.g. 63-bit signed BIGINTs
    from SQL) as ``(W, n)`` 64-bit words. Values must lie in ``0 .. 2**bits - 1``."""
    n = len(words[0]) if len(words) else 0
    out = np.zeros((width_for(bits * len(words)), n), np.uint64)
    for k, w in enumerate(words):
        w = np.asarray(w)
        if w.dtype.kind == "i":
            if n and w.min() < 0:
                raise ValueError("masks must be non-negative")
            w = w.astype(np.int64, copy=False).view(np.uint64)
        w = w.astype(np.uint64, copy=False)
        if n and bits < WORD and int(w.max()) >> bits:
            raise ValueError(f"a mask word has bits beyond its {bits}")
        j, off = divmod(bits * k, WORD)
        out[j] |= w << np.uint64(off)
        if off + bits > WORD:
            out[j + 1] |= w >> np.uint64(WORD - off)
    return out


# --------------------------------------------------------------------------- per-row lookups
# The vectorised tricks of the funnel maths, word by word: 16-bit segment lookup tables,
# lowest set bits, popcount-by-byte histograms and packed-key grouping. A "segment" s is
# bits 16s .. 16s + 15 of a mask (word s // 4, chunk s % 4).

_LE_U64 = np.dtype("<u8")
_ONE = np.uint64(1)
# _BYTE_BITS[v, j] == 1.0 when bit j of byte v is set: turns a 256-bin histogram of one
# mask byte into 8 per-bit sums with one small matrix product.
_BYTE_BITS = ((np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1).astype(np.float64)


def ternary_tables(nbytes: int) -> list[np.ndarray]:
    """Per mask byte b: table[v] = sum of 3**(8b + j) over the bits j set in v."""
    tables = []
    bits = np.arange(8)
    for b in range(nbytes):
        powers = np.array([3 ** (8 * b + j) for j in range(8)], dtype=object)
        with_bit = (np.arange(256)[:, None] >> bits[None, :]) & 1
        tables.append(np.array((with_bit * powers[None, :]).sum(axis=1), dtype=np.uint64))
    return tables


def ternary(mask: np.ndarray, tables: list[np.ndarray]) -> np.ndarray:
    """Sum of 3**j over the set bits j (exact in uint64 for masks of <= 40 bits)."""
    by_byte = mask.astype(_LE_U64, copy=False).view(np.uint8).reshape(-1, 8)
    out = np.zeros(len(mask), np.uint64)
    buf = np.empty(len(mask), np.uint64)
    for b, table in enumerate(tables):
        np.take(table, by_byte[:, b], out=buf, mode="clip")
        out += buf
    return out


def _unit_segments(units: Sequence[int], width: int) -> np.ndarray:
    """``out[i, s]`` = 16-bit segment s of ``units[i]`` for the segments of `width` words
    (uint64, shape ``(len(units), 4 * width)``); bits beyond `width` words are dropped."""
    limit = (1 << (WORD * width)) - 1
    words = words_of([int(u) & limit for u in units], width)[:width]
    return np.ascontiguousarray(words.T).astype(_LE_U64, copy=False).view(np.uint16).astype(np.uint64)


def unit_tables(units: Sequence[int], width: int) -> list[list[tuple[int, np.ndarray]]]:
    """Per output word o (units 64o .. 64o + 63): for each 16-bit segment s of a leaf mask of
    `width` words that any of those units touches, (s, table) where ``table[v]`` has bit
    ``i`` set when ``v & (units[64o + i] >> 16s) & 0xFFFF != 0``."""
    v = np.arange(256, dtype=np.uint64)
    per_word = []
    segments = _unit_segments(units, width)
    for o in range(width_for(len(units))):
        group = segments[WORD * o: WORD * (o + 1)]
        unit_bits = np.uint64(1) << np.arange(len(group), dtype=np.uint64)
        tables = []
        for segment in np.flatnonzero(group.any(axis=0)) if len(group) else ():
            lo, hi = group[:, segment] & np.uint64(0xFF), group[:, segment] >> np.uint64(8)
            t_lo = np.bitwise_or.reduce(np.where((v[:, None] & lo[None, :]) != 0, unit_bits, np.uint64(0)), axis=1)
            t_hi = np.bitwise_or.reduce(np.where((v[:, None] & hi[None, :]) != 0, unit_bits, np.uint64(0)), axis=1)
            # index = lo + 256 * hi, the value of the little-endian uint16 chunk
            tables.append((int(segment), (t_hi[:, None] | t_lo[None, :]).reshape(-1)))
        per_word.append(tables)
    return per_word


def _segments(words: np.ndarray, segment: int) -> np.ndarray:
    """16-bit segment `segment` of every row (a strided uint16 view, no copy)."""
    w, c = divmod(segment, 4)
    return words[w].astype(_LE_U64, copy=False).view(np.uint16).reshape(-1, 4)[:, c]


def any_per_unit(
    mask: np.ndarray, tables, out: np.ndarray, buf: np.ndarray, index: np.ndarray
) -> np.ndarray:
    """out bit i = (mask & units[i]) != 0, via one table lookup per 16-bit segment.

    ``mask`` is a ``(W, n)`` word array, ``tables`` one output word's list from
    :func:`unit_tables`. ``buf`` (uint64) and ``index`` (intp) are scratch arrays of length
    n: casting the chunk into a reused intp array spares ``np.take`` a fresh index array
    per lookup.
    """
    if not tables:
        out[:] = 0
        return out
    for j, (segment, table) in enumerate(tables):
        index[:] = _segments(mask, segment)
        np.take(table, index, out=out if j == 0 else buf, mode="clip")
        if j:
            out |= buf
    return out


def _rank_dtype(none: int) -> type:
    return np.uint8 if none <= 255 else np.uint16


def rank_tables(units: Sequence[int], width: int, none: int) -> list[tuple[int, np.ndarray]]:
    """Per 16-bit segment s of a `width`-word leaf mask touched by a unit: (s, table) with
    ``table[v]`` = the first unit index i with ``v & (units[i] >> 16s) & 0xFFFF != 0``, or
    `none` when there is none."""
    if not units:
        return []
    v = np.arange(256, dtype=np.uint64)
    dtype = _rank_dtype(none)
    segments = _unit_segments(units, width)
    tables = []
    for segment in np.flatnonzero(segments.any(axis=0)):
        per_byte = []
        for byte in (segments[:, segment] & np.uint64(0xFF), segments[:, segment] >> np.uint64(8)):
            hits = (v[:, None] & byte[None, :]) != 0
            per_byte.append(np.where(hits.any(axis=1), hits.argmax(axis=1), none).astype(dtype))
        lo, hi = per_byte
        tables.append((int(segment), np.minimum(hi[:, None], lo[None, :]).reshape(-1)))
    return tables


def first_unit(mask: np.ndarray, tables, index: np.ndarray, none: int,
               out: np.ndarray | None = None) -> np.ndarray:
    """Per row the first unit whose leaves meet the ``(W, n)`` ``mask``, `none` when none.

    ``index`` is an intp scratch array of length n (see :func:`any_per_unit`). With
    ``out`` the result is the element-wise minimum with ``out`` (written in place).
    """
    n = mask.shape[1]
    if out is None:
        out = np.full(n, none, _rank_dtype(none))
    if n == 0:
        return out
    buf = np.empty(n, out.dtype)
    for segment, table in tables:
        index[:] = _segments(mask, segment)
        np.take(table, index, out=buf, mode="clip")
        np.minimum(out, buf, out=out)
    return out


def _lowest_bit(mask: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """Index of the lowest set bit per row of one word (uint8), 64 where the word is zero.

    ``scratch`` is a uint64 array of the same length, overwritten.
    """
    low = np.negative(mask, out=scratch)  # two's complement: mask & -mask isolates the lowest bit
    np.bitwise_and(low, mask, out=low)
    low -= _ONE  # ones below the lowest bit; 0 - 1 wraps to all 64 ones
    return np.bitwise_count(low)


def lowest_bits(mask: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """Index of the lowest set bit per row of a ``(W, n)`` mask, ``64 * W`` where it is zero
    (uint8 for one word, else uint16)."""
    if len(mask) == 1:
        return _lowest_bit(mask[0], scratch)
    out = np.full(mask.shape[1], WORD * len(mask), np.uint16)
    for k in range(len(mask) - 1, -1, -1):
        low = _lowest_bit(mask[k], scratch).astype(np.uint16)
        hit = low < WORD
        low += np.uint16(WORD * k)
        np.copyto(out, low, where=hit)
    return out


def group_sum(
    keys: np.ndarray, counts: np.ndarray, key_bits: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Group rows by a uint64 key of ``key_bits`` bits: (distinct sorted keys, summed counts, first row).

    When the counts fit in the bits the key leaves free, key and count are packed into one
    uint64 and sorted with ``np.sort`` (several times faster than ``np.argsort``); the
    first-row index is then not available (None).
    """
    free = 64 - key_bits
    if 0 < free < 64 and len(counts) and int(counts.max()) < (1 << free) and int(counts.min()) >= 0:
        packed = keys << np.uint64(free)
        packed |= counts.astype(np.uint64)
        packed.sort()
        sorted_keys = packed >> np.uint64(free)
        sorted_counts = (packed & np.uint64((1 << free) - 1)).astype(np.int64)
        first = None
    else:
        order = np.argsort(keys)
        sorted_keys = keys[order]
        sorted_counts = counts[order]
        first = order
    starts = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))
    summed = np.add.reduceat(sorted_counts, starts) if len(starts) else sorted_counts[:0]
    return (
        sorted_keys[starts],
        summed.astype(np.int64, copy=False),
        (first[starts] if first is not None else None),
    )


def bit_pop_sums(mask: np.ndarray, weights: np.ndarray, nbits: int) -> np.ndarray:
    """``out[i, p]`` = sum of weights over rows whose ``(W, n)`` mask has bit ``i`` and ``p``
    bits set.

    Shape ``(nbits, 64 * W + 1)``. Everything per bit follows: ``out.sum(1)`` counts rows
    with the bit, ``out[:, 1]`` rows with exactly that bit, ``out @ 1/p`` the Shapley
    shares. One ``np.bincount`` over (popcount, byte value) per mask byte, no pass per bit.
    """
    width = len(mask)
    pops = WORD * width + 1
    nbytes = min((nbits + 7) // 8, 8 * width)
    out = np.zeros((max(nbits, nbytes * 8), pops))
    n = mask.shape[1]
    if n and nbits:
        pop256 = np.bitwise_count(mask[0]).astype(np.intp)
        for k in range(1, width):
            pop256 += np.bitwise_count(mask[k])
        pop256 *= 256
        index = np.empty(n, np.intp)
        for b in range(nbytes):
            w, byte = divmod(b, 8)
            by_byte = mask[w].astype(_LE_U64, copy=False).view(np.uint8).reshape(-1, 8)[:, byte]
            np.add(pop256, by_byte, out=index)
            per_value = np.bincount(index, weights=weights, minlength=256 * pops)
            out[8 * b : 8 * b + 8] = (per_value.reshape(pops, 256) @ _BYTE_BITS).T
    return out[:nbits]


__all__ = ["WORD", "any_per_unit", "bit_pop_sums", "equal", "first_unit", "group_rows", "group_sum", "ints_of",
           "lowest_bits", "nonzero", "rank_tables", "repack", "split", "take", "ternary", "ternary_tables", "union",
           "unit_tables", "widen", "width_for", "words_of"]
