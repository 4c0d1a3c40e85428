"""Overlapping reading with computing: a read-ahead thread and a pool of ordered workers.

Two ways to keep the machine busy while a checkpoint is streamed module by
module, both yielding in input order and both bounded in memory:

- ``read_ahead``: one background thread produces the next items while the
  consumer works on the current one (the GPU path, and one decomposition at
  a time on the CPU).
- ``ordered_map``: ``jobs`` threads each take the next item (reading it under
  a lock, so the source is read one item at a time and in order) and apply a
  function to it; results come back in input order. On a 2-core CPU two
  dense eigensolvers on one thread each give more throughput than one after
  another on two threads, because the tridiagonal reduction is memory-bound
  and does not scale with threads (docs/accuracy.md, "Why the fast path is
  the default").

Errors raised while producing or computing are re-raised in the consumer at
the item where a serial loop would have met them; if the consumer stops early
(an error, KeyboardInterrupt, ``break``), the threads stop after their current
item. Nothing here knows about torch or spectra's types.

A consumer that stops early without closing its iterator (a KeyboardInterrupt
whose traceback keeps the generator alive until the interpreter exits) would
leave daemon threads inside a decomposition when Python finalises: Python then
ends such a thread from under the C++ frames it is in, and the process aborts
(``terminate called without an active exception``, status 134). So every
thread started here is registered, and an ``atexit`` hook, which runs before
that point, stops them and waits for their current item.
"""

from __future__ import annotations

import atexit
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

__all__ = ["ordered_map", "read_ahead"]

Item = TypeVar("Item")
Result = TypeVar("Result")

_DONE = object()
_POLL_S = 0.1  # how often a blocked thread looks at the stop flag

# threads started here and not yet joined, each with the stop flag it obeys
_RUNNING: dict[threading.Thread, threading.Event] = {}
_RUNNING_LOCK = threading.Lock()


def _start(threads: list[threading.Thread], stop: threading.Event) -> None:
    with _RUNNING_LOCK:
        for thread in threads:
            _RUNNING[thread] = stop
    for thread in threads:
        thread.start()


def _finished(threads: list[threading.Thread]) -> None:
    with _RUNNING_LOCK:
        for thread in threads:
            _RUNNING.pop(thread, None)


@atexit.register
def _stop_at_exit() -> None:
    """Stop every thread still running and wait for its current item (see the docstring)."""
    with _RUNNING_LOCK:
        running = list(_RUNNING.items())
    for _, stop in running:
        stop.set()
    for thread, _ in running:
        thread.join()


def read_ahead(items: Iterable[Item], depth: int = 1) -> Iterator[Item]:
    """Iterate ``items`` on a background thread, keeping up to ``depth`` items ready."""
    ready: queue.Queue = queue.Queue(maxsize=max(depth, 1))
    stop = threading.Event()

    def offer(entry: tuple[object, BaseException | None]) -> bool:
        """Put ``entry`` in the queue unless told to stop first (never blocks for good)."""
        while not stop.is_set():
            try:
                ready.put(entry, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer((item, None)):
                    return
            offer((_DONE, None))
        except BaseException as exc:  # handed to the consumer, raised there
            offer((_DONE, exc))

    thread = threading.Thread(target=produce, name="spectra-read-ahead", daemon=True)
    _start([thread], stop)
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                ready.get_nowait()
            except queue.Empty:
                thread.join(timeout=_POLL_S)
        _finished([thread])


def ordered_map(
    function: Callable[[Item], Result],
    items: Iterable[Item],
    jobs: int,
    *,
    setup: Callable[[], None] | None = None,
) -> Iterator[tuple[Item, Result]]:
    """Yield ``(item, function(item))`` in input order, computed by ``jobs`` threads.

    Each worker runs ``setup()`` once (per-thread settings such as a BLAS
    thread count), then repeatedly takes the next item and computes. At most
    ``jobs`` items are taken and not yet handed to the consumer, so memory
    holds ``jobs`` items whatever the length of ``items``.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1; got {jobs}")
    source = iter(items)
    source_lock = threading.Lock()  # one reader of ``source`` at a time, in order
    slots = threading.Semaphore(jobs)  # items taken but not yet consumed
    stop = threading.Event()
    finished = threading.Condition()
    results: dict[int, tuple[object, object, BaseException | None]] = {}
    state = {"taken": 0, "end": None}  # next index to take; index where the source ended

    def take() -> tuple[int, object] | None:
        with source_lock:
            if state["end"] is not None:
                return None
            index = state["taken"]
            try:
                item = next(source)
            except StopIteration:
                state["end"] = index
                return None
            except BaseException as exc:  # the source's error, raised in order
                state["end"] = index + 1
                publish(index, None, None, exc)
                return None
            state["taken"] = index + 1
            return index, item

    def publish(index: int, item: object, result: object, error: BaseException | None) -> None:
        with finished:
            results[index] = (item, result, error)
            finished.notify_all()

    def work() -> None:
        if setup is not None:
            setup()
        while not stop.is_set():
            if not slots.acquire(timeout=_POLL_S):
                continue
            taken = take()
            if taken is None:
                slots.release()
                with finished:
                    finished.notify_all()
                return
            index, item = taken
            try:
                publish(index, item, function(item), None)
            except BaseException as exc:  # handed to the consumer, raised there
                publish(index, item, None, exc)

    threads = [
        threading.Thread(target=work, name=f"spectra-worker-{i}", daemon=True) for i in range(jobs)
    ]
    _start(threads, stop)
    try:
        index = 0
        while True:
            with finished:
                while index not in results and (state["end"] is None or index < state["end"]):
                    finished.wait(timeout=_POLL_S)
                if index not in results:
                    return  # the source ended before this index
                item, result, error = results.pop(index)
            if error is not None:
                raise error
            yield item, result
            del item, result  # let the consumer's copy be the only one
            slots.release()
            index += 1
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        _finished(threads)
