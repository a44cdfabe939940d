"""Progress bars for futures: ``faasx.progress(futures)`` and ``Executor.map(..., progress=True)``.

Built on ``tqdm`` (an optional dependency: ``pip install faasx[progress]``); ``tqdm.auto`` draws a
widget in Jupyter when ipywidgets is installed, text (in the cell's output) otherwise.  The bar counts finished futures
and shows how many succeeded and failed, and tqdm's rate.

Works with any ``concurrent.futures.Future`` -- faasx's, ``ProcessPoolExecutor``'s, Parsl's
``AppFuture``s.  Each future gets one done-callback that bumps two counters under a lock (it runs
in whichever thread resolves the future, for faasx the client's I/O thread, so it does nothing
else); the bar is redrawn from another thread: the caller's in ``progress()``, a small daemon
thread for ``map(progress=True)``.

``faasx.progress`` is this module made callable, so ``faasx.progress(futures)`` works whichever of
the module or the function one reaches.
"""
from __future__ import annotations

import sys
import threading
import time
import types
from concurrent.futures import Future
from typing import Any, Iterable, List, Optional, Sequence

REFRESH = 0.1     # seconds between redraws

__all__ = ["progress", "Progress"]


def _tqdm_class(notebook: Optional[bool]):
    if notebook is None:
        # tqdm.auto picks the Jupyter widget, which needs ipywidgets; without it tqdm warns and falls back
        # to text: choose text ourselves (it renders in a notebook's output as well)
        import importlib.util
        notebook = None if importlib.util.find_spec("ipywidgets") else False
    try:
        if notebook is None:
            from tqdm.auto import tqdm
        elif notebook:
            from tqdm.notebook import tqdm
        else:
            from tqdm import tqdm
    except ImportError:
        raise ImportError("faasx.progress needs tqdm: pip install 'faasx[progress]' (or pip install tqdm)") from None
    return tqdm


class Progress:
    """A bar over ``futures``; ``weights`` (default 1 each) counts a future as that many calls."""

    def __init__(self, futures: Sequence[Future], *, weights: Optional[Sequence[int]] = None,
                 desc: Optional[str] = None, unit: str = "task", notebook: Optional[bool] = None,
                 **tqdm_kwargs: Any):
        self.futures = list(futures)
        self.weights = list(weights) if weights is not None else None
        tqdm = _tqdm_class(notebook)
        total = sum(self.weights) if self.weights is not None else len(self.futures)
        self.bar = tqdm(total=total, desc=desc, unit=unit, **tqdm_kwargs)
        self._lock = threading.Lock()
        self.done = 0          # counts under _lock, written by the futures' callbacks
        self.failed = 0
        self._shown = 0
        self._finished = threading.Event()
        for i, fut in enumerate(self.futures):
            fut.add_done_callback(self._callback(self.weights[i] if self.weights is not None else 1))

    def _callback(self, weight: int):
        def on_done(fut: Future) -> None:
            failed = fut.cancelled() or fut.exception() is not None
            with self._lock:
                if failed:
                    self.failed += weight
                else:
                    self.done += weight
                if self.done + self.failed >= self.bar.total:
                    self._finished.set()
        return on_done

    def refresh(self) -> None:
        """Redraw with the counts so far (one thread at a time calls this)."""
        with self._lock:
            done, failed = self.done, self.failed
        bar = self.bar
        bar.set_postfix_str(f"done={done} failed={failed}", refresh=False)
        if done + failed > self._shown:
            bar.update(done + failed - self._shown)
            self._shown = done + failed
        else:
            bar.refresh()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Redraw until every future is done (True) or ``timeout`` passes (False); closes the bar when done."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._finished.is_set() and self.bar.total:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                self.refresh()
                return False
            self._finished.wait(REFRESH if left is None else min(REFRESH, left))
            self.refresh()
        self.refresh()
        self.bar.close()
        return True

    def in_background(self) -> "Progress":
        """Redraw from a daemon thread until every future is done (``map(progress=True)``)."""
        threading.Thread(target=self.wait, name="faasx-progress", daemon=True).start()
        return self


def progress(futures: Iterable[Future], *, desc: Optional[str] = None, timeout: Optional[float] = None,
             notebook: Optional[bool] = None, **tqdm_kwargs: Any) -> List[Future]:
    """Show a progress bar until every future in ``futures`` is done; returns them as a list.

    ``results = [f.result() for f in faasx.progress(futures)]``.  ``timeout`` (seconds) raises
    ``TimeoutError`` if they are not all done by then; ``notebook`` forces the Jupyter widget
    (True) or text (False) instead of tqdm's choice; other keywords go to ``tqdm`` (``file=``,
    ``leave=``, ``ncols=`` ...).
    """
    futures = list(futures)
    bar = Progress(futures, desc=desc, notebook=notebook, **tqdm_kwargs)
    if not bar.wait(timeout):
        bar.bar.close()
        raise TimeoutError(f"{bar.done + bar.failed} of {len(futures)} futures done after {timeout}s")
    return futures


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> List[Future]:
        return progress(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
