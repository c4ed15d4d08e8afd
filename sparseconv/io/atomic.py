"""Outputs written under a temporary name beside their destination, then renamed into place: a reader never sees
half a file, and a failed or interrupted write (Ctrl-C, SIGTERM) keeps the old file, or none, and leaves no
temporary file behind.

The temporary name is chosen (and known to the cleanup) before the file is created, so no moment exists at which
a signal leaves a file that nothing will remove.
"""
import contextlib
import os
import secrets

PREFIX = ".sparseconv-"


def temporary_name(dst, suffix=None):
    """A fresh name beside dst, with dst's suffix unless given; not yet created (see claim)."""
    suffix = os.path.splitext(dst)[1] if suffix is None else suffix
    return os.path.join(os.path.dirname(os.path.abspath(dst)), f"{PREFIX}{secrets.token_hex(6)}{suffix}")


def claim(tmp):
    """Creates tmp, failing if it exists (another writer's name)."""
    open(tmp, "xb").close()


@contextlib.contextmanager
def atomic_output(dst, suffix=None):
    """``with atomic_output(dst) as tmp:`` write tmp; it becomes dst when the block ends without an exception and
    is removed otherwise (KeyboardInterrupt and SystemExit included)."""
    tmp = temporary_name(dst, suffix)
    try:
        claim(tmp)
        yield tmp
        os.replace(tmp, os.path.abspath(dst))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
