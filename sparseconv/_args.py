"""Argument normalisation shared by the tensor type and the layers: every error names the argument."""
from collections.abc import Sequence


def triple(value, name, lo=None, hi=None):
    """int or sequence of 3 ints -> tuple of 3 ints within [lo, hi]; ValueError/TypeError naming `name`."""
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected an int or 3 ints, got {value!r}")
    if isinstance(value, int):
        out = (value,) * 3
    elif isinstance(value, Sequence) or hasattr(value, "tolist"):
        seq = value.tolist() if hasattr(value, "tolist") else list(value)
        if len(seq) != 3:
            raise ValueError(f"{name}: expected an int or 3 ints, got {len(seq)} values {seq!r}")
        try:
            out = tuple(int(v) for v in seq)
        except (TypeError, ValueError):
            raise TypeError(f"{name}: expected integers, got {seq!r}") from None
        if any(o != v for o, v in zip(out, seq)):
            raise TypeError(f"{name}: expected integers, got {seq!r}")
    else:
        raise TypeError(f"{name}: expected an int or 3 ints, got {type(value).__name__}")
    if lo is not None and min(out) < lo or hi is not None and max(out) > hi:
        span = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name}: expected values {span}, got {out}")
    return out


def positive_int(value, name, hi=None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected a positive int, got {value!r}")
    if value < 1 or hi is not None and value > hi:
        raise ValueError(f"{name}: expected an int in [1, {hi}], got {value}" if hi else
                         f"{name}: expected a positive int, got {value}")
    return value


def optional_str(value, name):
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name}: expected a str or None, got {type(value).__name__}")
    return value
