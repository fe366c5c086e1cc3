"""One worker thread with cheap hand-offs: the Raft log's persist path.

``ThreadPoolExecutor`` costs about twice a bare hand-off per call on this 2-core VM
(~20 µs vs ~11 µs for a submit-and-wait round trip, docs/design/raft-io.md): its submit
takes a Python-level semaphore, and its future notifies through a Python ``Condition``.
A ``Lane`` queues jobs on a ``SimpleQueue`` (C) and signals each job's completion with
one raw lock, so a thread blocked in ``Job.wait`` is woken by a single futex.

Jobs run strictly in submission order, one at a time, on one thread, whatever way they
were submitted: ``call`` (hot path: a ``Job`` the caller waits for, blocked, and/or gets
a callback from), ``submit`` (``concurrent.futures.Executor`` API, so
``loop.run_in_executor`` works for the cold paths).
"""
import _thread
import logging
import queue
import threading
from concurrent.futures import Executor, Future

log = logging.getLogger(__name__)
_STOP = object()


class Job:
    __slots__ = ("fn", "args", "result", "exc", "_done", "_lock", "_cb")

    def __init__(self, fn, args):
        self.fn = fn
        self.args = args
        self.result = None
        self.exc = None
        self._lock = _thread.allocate_lock()
        self._lock.acquire()
        self._done = False
        self._cb = None

    @property
    def done(self):
        return self._done

    def wait(self, timeout=None):
        """Block until the job is done (True) or ``timeout`` seconds pass (False)."""
        if self._done:
            return True
        if self._lock.acquire(True, -1 if timeout is None else timeout):
            self._lock.release()
            return True
        return False

    def add_done_callback(self, cb):
        """``cb(job)`` once done: at once if it already is, else on the worker thread."""
        with _mu:
            if not self._done:
                self._cb = cb
                return
        cb(self)

    def value(self):
        if self.exc is not None:
            raise self.exc
        return self.result


# One lock for the done/callback race of every job (held for a few bytecodes).
_mu = threading.Lock()


class Lane(Executor):
    def __init__(self, name):
        self._q = queue.SimpleQueue()
        self._shutdown = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def call(self, fn, *args):
        if self._shutdown:
            raise RuntimeError("lane is shut down")
        job = Job(fn, args)
        self._q.put(job)
        return job

    def submit(self, fn, /, *args, **kwargs):
        if self._shutdown:
            raise RuntimeError("lane is shut down")
        fut = Future()

        def run():
            if not fut.set_running_or_notify_cancel():
                return
            try:
                fut.set_result(fn(*args, **kwargs))
            except BaseException as e:  # noqa: BLE001 - handed to the future's owner
                fut.set_exception(e)
        self._q.put(Job(run, ()))
        return fut

    def shutdown(self, wait=True, *, cancel_futures=False):
        if not self._shutdown:
            self._shutdown = True
            self._q.put(_STOP)
        if wait and self._thread is not threading.current_thread():
            self._thread.join()

    def _work(self):
        get = self._q.get
        while True:
            job = get()
            if job is _STOP:
                return
            try:
                job.result = job.fn(*job.args)
            except BaseException as e:  # noqa: BLE001 - the waiter re-raises it
                job.exc = e
            with _mu:
                job._done = True
                cb = job._cb
            job._lock.release()
            if cb is not None:
                try:
                    cb(job)
                except Exception:  # noqa: BLE001 - e.g. the loop closed meanwhile
                    log.debug("lane %s: done callback failed", self._thread.name, exc_info=True)
