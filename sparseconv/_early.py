"""`sparseconv classify`: its first input starts decoding before the command imports torch.

`import torch` and loading the model take about 1.5 s on one core, the same at any thread count. When this
process is the `sparseconv` command (`python -m sparseconv.cli` or the console script) running `classify` on more
than one thread, sparseconv/__init__.py calls start() before it imports torch: the arguments are read with the
command's own parser (sparseconv/_cli_args.py, no torch), and the first input's decoding starts in a codec child
process (io.raw.EarlyDecode: numpy and laspy only) beside the imports. cmd_classify take()s it and classify_files
uses it for that file (else ends it). Nothing starts with one thread (everything there runs on one core, one
step after another), under torchrun, for a PLY/PCD/XYZ/PTS input, or where the arguments or files are not in
order: the command then runs as without this and reports any error itself. A decode not taken is ended, and its
temporary folder removed, at exit.
"""
import atexit
import os
import signal
import sys

_pending = None


class _NotNow(Exception):
    pass


def _command_args():
    """The command's arguments when this process is the `sparseconv` command, else None."""
    argv = sys.argv
    if argv[:1] == ["-m"]:  # python -m X: while X's packages are imported, argv[0] is "-m"
        orig = getattr(sys, "orig_argv", [])
        k = len(orig) - len(argv)
        return argv[1:] if k >= 0 and orig[k] in ("sparseconv.cli", "-msparseconv.cli") else None
    if argv and os.path.basename(argv[0]) == "sparseconv":  # the console script
        return argv[1:]
    return None


def _threads(args):
    """The thread count classify_files will use, without torch: --threads, else OMP_NUM_THREADS, else the cores
    this process may run on (torch's default; where torch says otherwise, classify_files ends the decode)."""
    if args.threads is not None:
        return args.threads
    try:
        return int(os.environ["OMP_NUM_THREADS"])
    except (KeyError, ValueError):
        pass
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def start():
    """Starts the first input's decoding when this process is `sparseconv classify` on 2+ threads; never raises."""
    global _pending
    argv = _command_args()
    if not argv or argv[0] != "classify" or os.environ.get("WORLD_SIZE", "1") != "1":
        return
    try:
        _pending = _start(argv)
    except Exception:  # anything wrong: nothing started; the command finds and reports it
        _pending = None
    if _pending is not None:
        atexit.register(_close_pending)
        # a SIGTERM while torch is imported: exit through atexit (which ends the decode and removes its
        # folder) rather than die with both left behind; cli.main sets its own handler once it runs
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _exit_on_signal)


def _exit_on_signal(signum, frame):
    sys.exit(128 + signum)


def _start(argv):
    import argparse

    from ._cli_args import build_parser, classify_inputs, classify_output
    from .io import is_open3d_file
    from .io.las import DEFAULT_CHUNK
    from .io.raw import EarlyDecode

    class Quiet(argparse.ArgumentParser):  # the command's parser says nothing and exits nowhere here
        def exit(self, status=0, message=None):
            raise _NotNow

        def error(self, message):
            raise _NotNow

        def print_help(self, file=None):
            raise _NotNow

        def print_usage(self, file=None):
            raise _NotNow

    args = build_parser(parser_class=Quiet).parse_args(argv)
    if _threads(args) < 2:
        return None
    paths, to_folder = classify_inputs(args)
    src = paths[0]
    if is_open3d_file(src):
        return None
    if to_folder:  # as cmd_classify does next
        os.makedirs(args.output, exist_ok=True)
    dst = classify_output(args, src, to_folder)
    # where classify_files would refuse the file (it says why), nothing starts
    if os.path.abspath(src) == os.path.abspath(dst) or (os.path.exists(dst) and not args.overwrite) \
            or not os.path.isdir(os.path.dirname(os.path.abspath(dst))):
        return None
    return EarlyDecode(src, dst, DEFAULT_CHUNK, _threads(args))


def take():
    """The decode start() began (an io.raw.EarlyDecode, now the caller's to close), or None."""
    global _pending
    early, _pending = _pending, None
    return early


def _close_pending():
    early = take()
    if early is not None:
        early.close()
