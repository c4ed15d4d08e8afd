"""A LAS/LAZ file's point records as one uncompressed file of raw records (file order), and back.

`sparseconv classify` decodes its input once: decode() puts the records on disk as they are decoded, the
passes that follow read them back with read_records(), and encode() writes the classified copy from them.

lazrs holds the GIL while it decodes or encodes, so in a thread beside the network it stalls every operator
the network runs (measured: the network 20x slower). Where a file is decoded or encoded beside other work
(the next file ahead, one file's output while the next is classified), Decoder and Encoder run it in a child
process (Child: `python raw.py`, tasks on stdin; this file and las.py import only numpy and laspy, not torch),
which takes other cores meanwhile; where nothing else runs, here, with lazrs on every thread.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

try:
    from .las import LasError, _laspy, _open, laz_backend, read_chunks
except ImportError:  # run by path as the child process: las.py lies beside this file (no package, so no torch)
    from las import LasError, _laspy, _open, laz_backend, read_chunks


def decode(src, raw_path, chunk_size, parallel):
    """Writes src's point records to raw_path; yields how many are on disk after each chunk."""
    done = 0
    with open(raw_path, "wb") as f:
        for points in read_chunks(src, chunk_size, parallel):
            points.array.tofile(f)
            f.flush()
            done += len(points)
            yield done


def read_records(f, header, n):
    """The next n records of an open raw file as a laspy point record (scaled x, y, z as in the source)."""
    laspy = _laspy()
    array = np.fromfile(f, header.point_format.dtype(), n)
    if array.size != n:
        raise LasError(f"{f.name}: {array.size} of {n} decoded points on disk")
    return laspy.ScaleAwarePointRecord(array, header.point_format, header.scales, header.offsets)


def encode(src, raw_path, labels_path, out, chunk_size, parallel):
    """Writes out (LAZ or LAS by its suffix): src's header, VLRs and extra bytes, the records of raw_path with
    classification from labels_path (.npy, uint8, one per point). The bytes are those write_classified gives
    with the same chunk_size (laspy refreshes extra-bytes statistics per written chunk)."""
    laspy = _laspy()
    labels = np.load(labels_path, mmap_mode="r")
    with _open(src) as reader:
        header = reader.header
    with open(raw_path, "rb") as f, laspy.open(out, mode="w", header=header, do_compress=out.lower().endswith(".laz"),
                                               laz_backend=laz_backend(parallel)) as writer:
        for start in range(0, labels.size, chunk_size):
            points = read_records(f, header, min(chunk_size, labels.size - start))
            points.classification = np.asarray(labels[start:start + len(points)])
            writer.write_points(points)


class Child:
    """This file run as a child process on up to `threads` cores, doing task after task (its output lines, then
    "ok [value]"). It starts now (imports numpy and laspy) and waits for a task, so one started ahead of need,
    or reused, keeps its interpreter start off the critical path."""

    def __init__(self, threads):
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__)], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.what, self.busy, self.result = None, False, None

    def start(self, *args):
        self.what, self.busy = args, True
        try:
            self.proc.stdin.write(json.dumps(args) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:  # it died (e.g. no laspy): its own message
            self._died()

    def lines(self):
        """The task's output lines; its error as LasError."""
        for line in self.proc.stdout:
            if line.startswith("ok"):
                self.result, self.busy = line[2:].strip(), False
                return
            yield line
        self._died()

    def wait(self):
        """The task's value (the text after "ok")."""
        for _ in self.lines():
            pass
        return self.result

    def _died(self):
        self.proc.wait()
        err = self.proc.stderr.read().strip().splitlines()
        raise LasError(err[-1] if err else f"{self.what[1]}: {self.what[0]} process exited with "
                                           f"{self.proc.returncode}")

    def close(self):
        """An idle child ends at the end of its input; a busy one (an error elsewhere) is killed."""
        if self.proc.poll() is None:
            if self.busy:
                self.proc.kill()
            else:
                self.proc.stdin.close()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if not pipe.closed:
                pipe.close()


class Children:
    """The codec child processes of a run, each reused for task after task: an interpreter start (0.3 s of
    CPU) per process, not per task."""

    def __init__(self, threads):
        self.threads, self.idle = threads, []

    def take(self):
        while self.idle:
            child = self.idle.pop()
            if child.proc.poll() is None:
                return child
            child.close()
        return Child(self.threads)

    def give(self, child):
        """Back after its task ended well; anything else closes it."""
        if child.busy:
            child.close()
        else:
            self.idle.append(child)

    def close(self):
        for child in self.idle:
            child.close()
        self.idle = []


class Decoder:
    """decode() of src into raw_path: started now in `child` (a Child), or run here as counts() is iterated
    (lazrs on every thread when parallel, on this one otherwise). Here suits a file decoded while nothing else
    runs; a child one decoded beside the network."""

    def __init__(self, src, raw_path, chunk_size, child=None, parallel=False):
        self.args, self.child, self.parallel = (src, raw_path, chunk_size), child, parallel
        open(raw_path, "wb").close()  # exists from now on, for the reader
        if child is not None:
            child.start("decode", *self.args)

    def counts(self):
        """Points on disk so far, after each chunk; raises LasError where decode() would."""
        if self.child is None:
            yield from decode(*self.args, parallel=self.parallel)
        else:
            for line in self.child.lines():
                yield int(line)


class EarlyDecode:
    """decode() of src for dst, started now in a Child of its own (`sparseconv classify` starts its first input so
    before it imports torch; sparseconv/_early.py): the temporary folder beside dst that classify_files would
    make for the file, points.raw in it. take() hands folder, child and Decoder over; close() (idempotent) ends
    the child and removes the folder."""

    def __init__(self, src, dst, chunk_size, threads):
        self.src, self.dst, self.chunk_size, self.threads = src, dst, chunk_size, threads
        self.child = self.decoder = None
        self.tmp = tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(dst)), prefix=".sparseconv-")
        try:
            self.child = Child(threads)
            self.decoder = Decoder(src, os.path.join(self.tmp.name, "points.raw"), chunk_size, self.child)
        except BaseException:
            self.close()
            raise

    def matches(self, src, dst, chunk_size, tmp_dir=None):
        same = os.path.abspath(src) == os.path.abspath(self.src) and os.path.abspath(dst) == os.path.abspath(self.dst)
        here = tmp_dir is None or os.path.abspath(tmp_dir) == os.path.dirname(self.tmp.name)
        return self.decoder is not None and same and chunk_size == self.chunk_size and here

    def take(self):
        """(TemporaryDirectory, Child, Decoder), now the caller's."""
        out = self.tmp, self.child, self.decoder
        self.tmp = self.child = self.decoder = None
        return out

    def close(self):
        if self.child is not None:
            self.child.close()  # busy: killed
        if self.tmp is not None:
            self.tmp.cleanup()
        self.tmp = self.child = self.decoder = None


class Encoder:
    """encode() started now in `child` (a Child), or run here at once (lazrs on every thread when parallel);
    wait() returns its seconds."""

    def __init__(self, src, raw_path, labels_path, out, chunk_size, child=None, parallel=False):
        args = (src, raw_path, labels_path, out, chunk_size)
        self.child, t0 = child, time.perf_counter()
        if child is not None:
            child.start("encode", *args)
        else:
            encode(*args, parallel=parallel)
            self.seconds = time.perf_counter() - t0

    def wait(self):
        if self.child is not None:
            self.seconds = float(self.child.wait())
        return self.seconds


def main():
    """Child process: tasks, one JSON list a line on stdin, until its end. ["decode", src, raw, chunk] prints the
    points on disk after each chunk; ["encode", src, raw, labels, out, chunk] its seconds; then "ok". An error:
    one line on stderr, exit 1."""
    what, args = None, []
    try:
        for line in sys.stdin:
            what, *args = json.loads(line)
            if what == "decode":
                for done in decode(*args, parallel=True):
                    print(done, flush=True)
                print("ok", flush=True)
            else:
                t0 = time.perf_counter()
                encode(*args, parallel=True)
                print(f"ok {time.perf_counter() - t0}", flush=True)
    except LasError as e:
        print(e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # disk full, ...: one line naming the file, as the parent reports it
        print(f"{args[3] if what == 'encode' else args[0]}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main())
