"""spconv arguments that choose how spconv computes, not what: accepted, checked, and ignored here (our kernels
pick their own path and always accumulate in float32), with one note per process so nobody expects them to act."""
import warnings
from enum import Enum


class ConvAlgo(Enum):
    """spconv.pytorch.ConvAlgo's members, so that `algo=spconv.ConvAlgo.Native` still runs."""

    Native = 0
    MaskImplicitGemm = 1
    MaskSplitImplicitGemm = 2


_noted = set()


def note_once(what):
    if what not in _noted:
        _noted.add(what)
        warnings.warn(f"sparseconv.spconv: {what} is accepted and ignored (sparseconv picks its own kernels; "
                      "the results do not depend on it)", UserWarning, stacklevel=4)


def check_algo(algo, name="algo"):
    """None, a ConvAlgo, or spconv's own ConvAlgo member (matched by name)."""
    if algo is None:
        return None
    if getattr(algo, "name", None) not in ConvAlgo.__members__:
        raise ValueError(f"{name}: expected None or a ConvAlgo ({', '.join(ConvAlgo.__members__)}), got {algo!r}")
    note_once(f"{name}={algo}")
    return ConvAlgo[algo.name]


def expand(value, ndim, name):
    """spconv's expand_nd: an int or ndim ints -> list of ndim ints, with an error that names the argument."""
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected an int or {ndim} ints, got {value!r}")
    if isinstance(value, int):
        return [value] * ndim
    try:
        seq = list(value.tolist() if hasattr(value, "tolist") else value)
        out = [int(v) for v in seq]
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected an int or {ndim} ints, got {value!r}") from None
    if out != seq:
        raise TypeError(f"{name}: expected integers, got {seq!r}")
    if len(out) != ndim:
        raise ValueError(f"{name}: expected an int or {ndim} ints, got {len(out)} values {out}")
    return out


def lift(values, fill):
    """ndim (2 or 3) values -> 3, the 2D case on a unit third axis (kernel 1, stride 1, padding 0)."""
    return tuple(values) + (fill,) * (3 - len(values))
