"""Batches of windows through the network on several threads, results committed in submission order.

Each worker thread runs whole batches (features, voxels, network) with its own torch threads: on the 2-core VM
two workers with one thread each ran 4 batches in 0.86-0.95 s, one network with two threads in 0.88-1.04 s
using 8-16% more CPU (its threads wait at every operator's barrier), one thread in 1.48-1.51 s.
Results are committed (summed into the scores) strictly in submission order, by whichever worker finished, so
the sums, and so the labels, are bit for bit those of one thread. Torch and NumPy release the GIL while they
compute, so the workers run in parallel.
"""
import contextlib
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial

import torch


class OrderedRunner:
    """workers == 0: every task runs at once on the calling thread (one thread in all). Otherwise `workers`
    threads with `torch_threads` torch threads each; the caller's own torch threads are set alike meanwhile
    (it prepares the next batches beside them) and restored by close()."""

    def __init__(self, workers, torch_threads):
        self.pool, self.saved, self.workers, self.torch_threads = None, torch.get_num_threads(), workers, torch_threads
        torch.set_num_threads(torch_threads)
        if workers:
            self.pool = ThreadPoolExecutor(workers, "sparseconv-batch", torch.set_num_threads, (torch_threads,))
        self.turn, self.submitted, self.cond = 0, 0, threading.Condition()
        self.running, self.limit, self.slots = 0, workers, threading.Condition()

    def submit(self, compute, commit):
        """Runs commit(compute()) with compute on a worker; commits happen in the order of the submit calls
        (a failed compute passes its turn; its future raises). Returns a future of the commit."""
        seq, self.submitted = self.submitted, self.submitted + 1
        if self.pool is not None:
            return self.pool.submit(self._run, seq, partial(self._in_slot, compute), commit)
        done = Future()
        try:
            done.set_result(self._run(seq, compute, commit))
        except Exception as e:
            done.set_exception(e)
        return done

    def _run(self, seq, compute, commit):
        try:
            out = compute()
        except BaseException:
            self._commit(seq, None, None)
            raise
        return self._commit(seq, out, commit)

    def _in_slot(self, compute):
        # A slot is held only while computing, never while waiting for a turn: no deadlock with the turns.
        with self.slots:
            self.slots.wait_for(lambda: self.running < self.limit)
            self.running += 1
        try:
            return compute()
        finally:
            with self.slots:
                self.running -= 1
                self.slots.notify()

    @contextlib.contextmanager
    def beside(self):
        """While the caller works on its own thread, one worker fewer computes: a core stays for the caller and
        a batch fewer is in memory (the caller's work holds a block's worth of arrays)."""
        with self.slots:
            self.limit = max(1, self.workers - 1)
        try:
            yield
        finally:
            with self.slots:
                self.limit = self.workers
                self.slots.notify_all()

    def aside(self, fn):
        """fn() on a thread of its own with the workers' torch threads (its results are those of the caller's
        thread); returns its Future. For the caller's kind of work while no batch runs beside it."""
        pool = ThreadPoolExecutor(1, "sparseconv-aside", torch.set_num_threads, (self.torch_threads,))
        try:
            return pool.submit(fn)
        finally:
            pool.shutdown(wait=False)  # the thread ends after fn

    def _commit(self, seq, out, commit):
        # The pool takes tasks first in, first out, so every earlier task is running or done: waiting here for
        # their turns cannot deadlock.
        with self.cond:
            while self.turn != seq:
                self.cond.wait()
            try:
                return None if commit is None else commit(out)
            finally:
                self.turn += 1
                self.cond.notify_all()

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(self.saved)
