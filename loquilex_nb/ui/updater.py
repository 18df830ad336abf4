"""The updater thread behind each loquilex widget, and the registry that stops them at exit.

A widget starts at most one updater thread of its own (non-daemon, named; none at all for
a caption view of a session that already ended). `close()` stops and joins it and leaves the
last rendering in the notebook (`remove()` also closes the widgets); a wait on the private
loop is cancelled at once, so close is prompt without the thread polling its stop event.
Interpreter exit stops every updater too (the runtime's exit hook, which runs before Python
joins non-daemon threads, so a kernel with a widget left open still shuts down). The
registry holds the open widgets in a WeakSet only; nothing happens in `__del__`. Values are
set on `ipywidgets.HTML` traits from the updater thread, which ipykernel >= 6 allows.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import threading
import weakref
from typing import Any, Coroutine, TypeVar

try:
    import ipywidgets as W
except ImportError as exc:  # the `lab` extra
    raise ImportError("loquilex_nb.widgets needs ipywidgets: pip install 'loquilex-nb[lab]'") from exc

from ..supervisor.runtime import RUNTIME, at_exit, wait_future

log = logging.getLogger("loquilex_nb")
T = TypeVar("T")

JOIN_TIMEOUT = 10.0  # close() never waits longer than this for an updater thread
_ids = itertools.count(1)

# -- open widgets, stopped at interpreter exit -------------------------------------------------
_live: "weakref.WeakSet[Any]" = weakref.WeakSet()
_live_lock = threading.Lock()
_hooked = False


def _track(widget: Any) -> None:
    global _hooked
    with _live_lock:
        _live.add(widget)
        if not _hooked:
            _hooked = at_exit(_stop_all_at_exit)


def _untrack(widget: Any) -> None:
    with _live_lock:
        _live.discard(widget)


def _stop_all_at_exit() -> None:
    # only the threads: the kernel's channels may be gone, so no comm messages now
    with _live_lock:
        widgets = list(_live)
    for w in widgets:
        try:
            w._stop_updater()
        except Exception as exc:
            log.error("stopping %r at exit failed: %r", w, exc)


def close_all() -> None:
    """Close every loquilex widget of this process whose updater thread still runs."""
    with _live_lock:
        widgets = list(_live)
    for w in widgets:
        w.close()


class Stopped(Exception):
    """The widget was closed while its updater waited."""


class Updater:
    """Mixed into an ipywidgets box: its one updater thread (`_run`), owned and joined by `close()`."""

    _thread: threading.Thread | None = None

    def _init_updater(self) -> None:
        self.n = next(_ids)
        self._stop = threading.Event()
        self._close_lock = threading.Lock()
        self._closed = False
        self._pending: concurrent.futures.Future | None = None

    def _start_updater(self, kind: str) -> None:
        self._thread = threading.Thread(target=self._run, name=f"loquilex-{kind}-{self.n}")
        _track(self)
        try:
            self._thread.start()
        except BaseException:
            self.close()
            raise

    def _run(self) -> None:
        raise NotImplementedError

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop and join the updater thread (promptly); the last rendering stays. Idempotent."""
        if "_stop" not in self.__dict__:  # __init__ failed early (ipywidgets' __del__ calls close)
            return W.VBox.close(self)
        self._stop_updater()
        self._draw_closed()

    def remove(self) -> None:
        """close(), then close the widgets themselves: the view leaves the notebook."""
        self.close()
        for w in self.children:  # type: ignore[attr-defined]
            w.close()
        W.VBox.close(self)

    def _draw_closed(self) -> None:
        """The rendering a closed widget keeps."""

    def _stopped(self) -> None:
        """Release what the widget holds; runs once, after the thread has ended."""

    def _stop_updater(self) -> None:
        with self._close_lock:
            first = not self._closed
            self._closed = True
        self._stop.set()
        pending = self._pending
        if pending is not None:
            pending.cancel()  # a wait on the private loop ends now, not at its timeout
        t = self._thread
        if t is not None and t is not threading.current_thread() and t.ident is not None:
            t.join(JOIN_TIMEOUT)
            if t.is_alive():
                log.error("%s did not stop within %.0f s", t.name, JOIN_TIMEOUT)
        if first:
            _untrack(self)
            self._stopped()

    def _on_loop(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """`coro` run on the private loop, waited for; close() cancels the wait (raises `Stopped`).

        RuntimeError: the private loop is not running; CancelledError: it stopped meanwhile.
        """
        return self._wait_for(RUNTIME.submit(coro), timeout)

    def _wait_for(self, fut: concurrent.futures.Future, timeout: float | None = None) -> Any:
        """`fut`'s result; close() cancels it and the wait raises `Stopped`. Only this widget's
        own futures: a shared one would be cancelled for everyone."""
        self._pending = fut
        try:
            if self._stop.is_set():  # close() came between the submit and the line above
                fut.cancel()
            return wait_future(fut, timeout)
        except concurrent.futures.CancelledError:
            if self._stop.is_set():
                raise Stopped() from None
            raise
        finally:
            self._pending = None
