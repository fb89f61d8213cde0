"""The account's worker thread (client.py): one daemon thread that runs the synchronous `acme`
library's calls in order, as an Executor for asyncio's run_in_executor.

Daemon, and not one of concurrent.futures' threads (which the interpreter joins at exit):
a worker abandoned in a CA's trickled answer must not keep `run --once`, or any exit, waiting.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")


class Worker(Executor):
    """One daemon thread that runs the submitted calls in order. shutdown() never waits: the
    thread ends after the call it is in, if any (a call stuck in a read ends with its socket)."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="acme", daemon=True).start()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        self._calls.put((future, lambda: fn(*args, **kwargs)))
        return future

    def _run(self) -> None:
        while (call := self._calls.get()) is not None:
            future, fn = call
            del call
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as e:  # handed to the waiting caller, as concurrent.futures does
                future.set_exception(e)
            del future, fn

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if cancel_futures:
            while True:
                try:
                    call = self._calls.get_nowait()
                except queue.Empty:
                    break
                if call is not None:
                    call[0].cancel()
        self._calls.put(None)  # the thread ends after the call it is in, if any
