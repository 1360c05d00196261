"""State feedback: which inputs are interesting when no coverage instrumentation runs.

Without libFuzzer's edge counters (the mutation engine, Ray workers) an input is kept for the
corpus when the device state it leaves behind shows something no earlier input showed: a
*feature* is one saved-state field (its key path) with its value in a bucket -- small values
exactly, larger ones by bit length, strings by length -- as AFL buckets hit counts, so a free
running counter does not make every input new.  The state is the one the save/restore oracle
saves after each input anyway, so the feedback costs one walk over it.
"""

from __future__ import annotations


def _bucket(value: object) -> int:
    t = type(value)
    if t is int:
        v: int = value  # type: ignore[assignment]
        return v if 0 <= v < 16 else (16 + v.bit_length() if v > 0 else -1)
    if t is bool:
        return 1 if value else 0
    if t is str:
        return 64 + min(len(value), 64).bit_length()  # type: ignore[arg-type]
    return -2 if value is None else -3


def state_features(state: object) -> set[int]:
    """The features of a saved state (hashes of key path and value bucket)."""
    out: set[int] = set()
    _walk(state, 0, out)
    return out


def _walk(value: object, path: int, out: set[int]) -> None:
    # Paths are hashes chained from the keys: no strings are built.
    t = type(value)
    if t is dict:
        for k, v in value.items():  # type: ignore[attr-defined]
            tv = type(v)
            if tv is int:
                out.add(hash((path, k, v if 0 <= v < 16 else 16 + v.bit_length())))
            elif tv is dict or tv is list or tv is tuple:
                _walk(v, hash((path, k)), out)
            else:
                out.add(hash((path, k, _bucket(v))))
    elif t is list or t is tuple:
        for i, v in enumerate(value):  # type: ignore[arg-type]
            if type(v) is int:
                out.add(hash((path, i, v if 0 <= v < 16 else 16 + v.bit_length())))
            elif type(v) in (dict, list, tuple):
                _walk(v, hash((path, i)), out)
            else:
                out.add(hash((path, i, _bucket(v))))
    else:
        out.add(hash((path, _bucket(value))))
