"""Bit masks of any width as arrays of 64-bit words.

A per-patient mask has one bit per rule (leaf) or criterion, and a protocol with analyst
criteria beside it can have more than 64. Masks of ``n`` rows are therefore stored as a
``uint64`` array of shape ``(W, n)``: word ``k`` (``words[k]``, one contiguous array)
holds bits ``64k .. 64k + 63`` of every row. Keeping each word contiguous lets the
vectorised tricks of :mod:`kn026.funnel` and :mod:`kn026.engine` (byte and 16-bit chunk
lookups, popcounts, ``bincount``) run word by word on plain 1-D arrays, and ``W == 1``
is the old one-word layout with no copy (``words[0]``). In APIs a single mask is a
plain Python ``int`` of any size; these helpers convert between the two.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

WORD = 64
_U64 = np.dtype(np.uint64)
_WORD_MASK = (1 << WORD) - 1
_HASH = np.uint64(0x9E3779B97F4A7C15)


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
    one 64-bit key mixing all columns is O(n); every row is then checked against its
    group's first row, and a hash collision falls back to an exact sort.
    """
    n = len(columns[0])
    key = np.array(columns[0], dtype=np.uint64, copy=True)
    for col in columns[1:]:
        key *= _HASH
        key ^= col.astype(np.uint64, copy=False)
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


__all__ = ["WORD", "equal", "group_rows", "ints_of", "nonzero", "repack", "split", "take", "union", "widen",
           "width_for", "words_of"]
