"""Clocks, percentiles, ratios and RSS sampling (no imports of the systems under test)."""
from __future__ import annotations

import math
import threading
import time
from typing import Iterable, Sequence

now = time.perf_counter


def _is_nan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return float(s[lo] + (s[hi] - s[lo]) * (k - lo))


def summarize_latencies(samples: Sequence[float]) -> dict:
    nan = float("nan")
    return {
        "n": len(samples),
        "p50": percentile(samples, 50),
        "p90": percentile(samples, 90),
        "p99": percentile(samples, 99),
        "min": min(samples) if samples else nan,
        "max": max(samples) if samples else nan,
        "mean": sum(samples) / len(samples) if samples else nan,
    }


def median(values: Iterable[float]) -> float:
    v = [x for x in values if x is not None and not _is_nan(x)]
    return percentile(v, 50) if v else float("nan")


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing, NaN or b is 0."""
    try:
        if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
            return None
        return a / b
    except TypeError:
        return None


def verdict(r: float | None, target: float, higher_is_better: bool) -> str:
    if r is None:
        return "n/a"
    ok = r >= target if higher_is_better else r <= target
    return "ok" if ok else "MISSED"


def rss_bytes() -> int:
    import psutil
    return psutil.Process().memory_info().rss


class RssSampler:
    """Samples this process's RSS in a daemon thread; ``peak`` is the highest sample seen.

    The sampler thread owns ``peak`` and ``samples`` while running; read them after ``__exit__``."""

    def __init__(self, interval: float = 0.05):
        import psutil
        self._proc = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak = self._proc.memory_info().rss
        self.samples: list[tuple[float, int]] = []
        self._t0 = now()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self):
        while not self._stop.wait(self._interval):
            rss = self._proc.memory_info().rss
            self.peak = max(self.peak, rss)
            if not self.samples or now() - self.samples[-1][0] - self._t0 >= 1.0:
                self.samples.append((now() - self._t0, rss))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=2)
        self.peak = max(self.peak, self._proc.memory_info().rss)


def malloc_trim() -> bool:
    """Ask glibc to hand free heap pages back to the OS (so RSS shows live memory, not allocator slack)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        return True
    except Exception:
        return False
