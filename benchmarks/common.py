"""Shared helpers for the faasx benchmarks.

Every benchmark script runs in two roles:

* the *parent* (what you start): parses flags, starts one fresh child process per system under test,
  collects each child's JSON result, prints tables and ratios, and writes ``benchmarks/results/*.json``.
  The parent never imports faasx or Parsl, so nothing leaks from one system into the next.
* the *child* (``--child SYSTEM``): imports only what one system needs, measures, writes its result as
  JSON to the path given by ``--child-out`` and exits.

Each child runs in its own session with an environment tag (``FAASX_BENCH_TAG``).  Every process it
starts (interchange, managers, workers -- also those started by a provider with ``setpgrp``) inherits
the tag, so after the child exits the parent can find anything left behind, report it as *stray* and
kill it.  Every child has a wall-clock bound; on expiry the child and everything carrying its tag is
killed and the run is reported as an error.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from typing import Any, Callable, Iterable, Sequence

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
RESULTS_DIR = os.path.join(BENCH_DIR, "results")
TAG_ENV = "FAASX_BENCH_TAG"

# ----------------------------------------------------------------------------------------------------
# timing and statistics
# ----------------------------------------------------------------------------------------------------
now = time.perf_counter


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    s = sorted(values)
    if len(s) == 1:
        return float(s[0])
    k = (len(s) - 1) * q / 100.0
    lo = math.floor(k)
    hi = math.ceil(k)
    if lo == hi:
        return float(s[lo])
    return float(s[lo] + (s[hi] - s[lo]) * (k - lo))


def summarize_latencies(samples: Sequence[float]) -> dict:
    return {
        "n": len(samples),
        "p50": percentile(samples, 50),
        "p90": percentile(samples, 90),
        "p99": percentile(samples, 99),
        "min": min(samples) if samples else float("nan"),
        "max": max(samples) if samples else float("nan"),
        "mean": sum(samples) / len(samples) if samples else float("nan"),
    }


def median(values: Iterable[float]) -> float:
    v = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return percentile(v, 50) if v else float("nan")


def rss_bytes() -> int:
    import psutil
    return psutil.Process().memory_info().rss


class RssSampler:
    """Samples this process's RSS in a daemon thread; ``peak`` is the highest sample seen."""

    def __init__(self, interval: float = 0.05):
        import threading
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
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
        return True
    except Exception:
        return False


# ----------------------------------------------------------------------------------------------------
# formatting
# ----------------------------------------------------------------------------------------------------
def fmt_rate(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:,.0f}/s"


def fmt_ms(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v * 1e3:.3f} ms"


def fmt_s(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f} s"


def fmt_us(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:,.0f} us"


def fmt_mib(v: float | None) -> str:
    return "-" if v is None else f"{v / 2**20:,.1f} MiB"


def fmt_ratio(v: float | None) -> str:
    if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))):
        return "-"
    return f"{v:.2f}x" if v >= 0.1 else f"{v:.3f}x"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None,
                file=None) -> str:
    """Print an aligned plain-text table (first column left-aligned, the rest right-aligned)."""
    file = file or sys.stdout
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        out = []
        for i, c in enumerate(r):
            out.append(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]))
        return " | ".join(out).rstrip()

    text = []
    if title:
        text.append(title)
    text.append(line(cells[0]))
    text.append("-+-".join("-" * w for w in widths))
    text.extend(line(r) for r in cells[1:])
    s = "\n".join(text)
    print(s, file=file, flush=True)
    return s


def ratio(a: float | None, b: float | None) -> float | None:
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


# ----------------------------------------------------------------------------------------------------
# environment / results files
# ----------------------------------------------------------------------------------------------------
def git_rev() -> str | None:
    try:
        out = subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        rev = out.stdout.strip() or None
        dirty = subprocess.run(["git", "-C", REPO_ROOT, "status", "--porcelain", "--", "faasx"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{rev}{'+dirty' if dirty else ''}" if rev else None
    except Exception:
        return None


def machine_info() -> dict:
    info = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "git": git_rev(),
    }
    try:
        import psutil
        info["mem_total_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
        info["cpus_affinity"] = len(os.sched_getaffinity(0))
    except Exception:
        pass
    try:
        from importlib.metadata import version
        info["parsl"] = version("parsl")
        info["pyzmq"] = version("pyzmq")
        info["dill"] = version("dill")
    except Exception:
        pass
    try:
        sys.path.insert(0, REPO_ROOT)
        from faasx.version import VERSION  # tiny module, imports nothing else
        info["faasx"] = VERSION
    except Exception:
        info["faasx"] = None
    finally:
        if sys.path and sys.path[0] == REPO_ROOT:
            sys.path.pop(0)
    return info


def write_results(name: str, payload: dict) -> str:
    os.makedirs(RESULTS_DIR, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(RESULTS_DIR, f"{name}-{stamp}.json")
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True, default=str)
    return path


def finish(name: str, args, payload: dict, errors: list) -> int:
    """The end of every benchmark: print the errors, save the results unless ``--no-save`` (with the
    machine facts, the arguments and the errors), and return the exit status (non-zero on errors)."""
    for e in errors:
        print(f"ERROR: {e}")
    if not args.no_save:
        path = write_results(name, dict(payload, args=vars(args), errors=errors))
        print(f"results written to {os.path.relpath(path)}")
    return 1 if errors else 0


# ----------------------------------------------------------------------------------------------------
# child processes
# ----------------------------------------------------------------------------------------------------
def _tagged_processes(tag: str) -> list:
    import psutil
    found = []
    me = os.getpid()
    for p in psutil.process_iter(["pid"]):
        if p.pid == me:
            continue
        try:
            env = p.environ()
        except (psutil.Error, OSError):
            continue
        if env.get(TAG_ENV) == tag:
            found.append(p)
    return found


def _describe(p) -> str:
    try:
        cmd = " ".join(p.cmdline())[:160]
    except Exception:
        cmd = "?"
    return f"pid {p.pid}: {cmd}"


def _kill_all(procs: list, grace: float = 3.0) -> None:
    import psutil
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace)


BUSY_CPU_PERCENT = 25.0
WAIT_QUIET = 0.0  # set from --wait-quiet by parse_common()
KEEP_LOGS = False  # set from --keep-logs by parse_common()


def machine_load(interval: float = 1.0) -> dict:
    """Whole-machine CPU use over ``interval`` seconds, and the busiest processes (other benchmarks, tests
    running on the same 2 cores make every number here noisy)."""
    try:
        import psutil
    except ImportError:
        return {"cpu_percent": None}
    procs = []
    for p in psutil.process_iter(["pid"]):
        try:
            p.cpu_percent(None)
            procs.append(p)
        except psutil.Error:
            pass
    cpu = psutil.cpu_percent(interval=interval)
    top = []
    for p in procs:
        try:
            c = p.cpu_percent(None)
            if c >= 5.0:
                top.append((c, p.pid, " ".join(p.cmdline())[:80] or p.name()))
        except psutil.Error:
            pass
    top.sort(reverse=True)
    return {"cpu_percent": cpu, "loadavg": os.getloadavg(), "top": top[:5]}


def _machine_busy_cpu_s() -> float | None:
    try:
        import psutil
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
    except Exception:
        return None


def _wait_with_rusage(proc: subprocess.Popen, timeout: float):
    """Wait for ``proc`` up to ``timeout`` s; returns (returncode, rusage) or (None, None) on timeout."""
    deadline = now() + timeout
    delay = 0.005
    while True:
        try:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:
            return proc.returncode, None
        if pid:
            rc = os.waitstatus_to_exitcode(status)
            proc.returncode = rc
            return rc, rusage
        if now() >= deadline:
            return None, None
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def wait_for_quiet(max_wait: float, label: str = "", verbose: bool = True) -> dict:
    """Sample the machine's CPU use; if it is busy, wait (up to ``max_wait`` s) for it to calm down.
    Returns the last sample, with ``busy`` set when it is still above ``BUSY_CPU_PERCENT``."""
    deadline = now() + max_wait
    load = machine_load()
    quiet_streak = 0
    while now() < deadline:  # with --wait-quiet: 3 quiet seconds in a row
        if (load.get("cpu_percent") or 0) <= BUSY_CPU_PERCENT:
            quiet_streak += 1
            if quiet_streak >= 3:
                break
        else:
            quiet_streak = 0
        load = machine_load()
    load["busy"] = (load.get("cpu_percent") or 0) > BUSY_CPU_PERCENT
    if load["busy"] and verbose:
        tops = "; ".join(f"{c:.0f}% {cmd}" for c, _, cmd in load.get("top", [])[:3]) or "short-lived processes"
        print(f"  [{label}] WARNING: machine busy before this run ({load['cpu_percent']:.0f}% CPU in use, "
              f"load {load['loadavg'][0]:.1f}): numbers will be noisy. Busiest: {tops}", flush=True)
    return load


def run_child(script: str, child_args: Sequence[str], timeout: float, label: str,
              settle: float = 5.0, verbose: bool = True, extra_env: dict | None = None) -> dict:
    """Run ``python script --child ... --child-out FILE`` in a fresh process and return its result.

    Returns ``{"ok": bool, "result": ..., "error": str|None, "wall": s, "strays": [...],
    "stderr_tail": str}``.  Processes left behind (tagged, still alive ``settle`` seconds after the child
    exited) are listed in ``strays`` and killed.
    """
    tag = uuid.uuid4().hex
    tmpdir = tempfile.mkdtemp(prefix="faasx-bench-")
    out_path = os.path.join(tmpdir, "result.json")
    log_path = os.path.join(tmpdir, "child.log")
    env = dict(os.environ)
    env[TAG_ENV] = tag
    env["FAASX_BENCH_TMP"] = tmpdir
    # run against the working tree (no install needed), and let workers import it too
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONHASHSEED", "0")
    if extra_env:
        env.update(extra_env)
    cmd = [sys.executable, script, "--child-out", out_path, *child_args]
    load_before = wait_for_quiet(WAIT_QUIET, label, verbose)
    if verbose:
        print(f"  [{label}] starting child: {' '.join(cmd[1:])}", flush=True)
    t0 = now()
    timed_out = False
    with open(log_path, "wb") as log:
        busy0 = _machine_busy_cpu_s()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=tmpdir, start_new_session=True)
        rc, rusage = _wait_with_rusage(proc, timeout)
        if rc is None:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            rc, rusage = _wait_with_rusage(proc, 30)
        busy1 = _machine_busy_cpu_s()
    wall = now() - t0
    # CPU used by everything else on the machine while the child ran: the machine's busy CPU time minus
    # the child tree's own (its rusage includes the descendants it reaped: interchange, workers, ...)
    other = None
    if busy0 is not None and busy1 is not None and rusage is not None:
        child_cpu = rusage.ru_utime + rusage.ru_stime
        ncpu = os.cpu_count() or 1
        other = max(0.0, (busy1 - busy0) - child_cpu) / (wall * ncpu) * 100.0

    # anything still alive with our tag: give it `settle` seconds to exit by itself, then it is a stray
    strays: list[str] = []
    try:
        deadline = now() + (0 if timed_out else settle)
        left = _tagged_processes(tag)
        while left and now() < deadline:
            time.sleep(0.2)
            left = _tagged_processes(tag)
        if left:
            strays = [_describe(p) for p in left]
            _kill_all(left)
    except ImportError:
        strays = ["(psutil missing: stray check skipped)"]

    try:
        with open(log_path, "rb") as f:
            log_text = f.read().decode("utf-8", "replace")
    except OSError:
        log_text = ""
    result: dict = {"ok": False, "result": None, "error": None}
    if os.path.exists(out_path):
        try:
            with open(out_path) as f:
                result = json.load(f)
        except Exception as e:  # noqa: BLE001
            result = {"ok": False, "result": None, "error": f"unreadable child result: {e!r}"}
    if timed_out:
        result["ok"] = False
        result["error"] = ((result.get("error") or "") +
                           f"\ntimed out after {timeout:.0f}s (child killed)"
                           + (" after writing its result: hung at exit/shutdown" if result.get("result") else ""))
    elif rc != 0 and result.get("ok"):
        result["ok"] = False
        result["error"] = f"child exited with code {rc} after writing its result"
    elif rc != 0 and not result.get("error"):
        result["error"] = f"child exited with code {rc} and wrote no result"
    result["wall"] = wall
    result["load_before"] = load_before
    result["other_cpu_percent"] = other
    if other is not None and other > BUSY_CPU_PERCENT:
        result.setdefault("load_before", {})["busy"] = True
    result["returncode"] = rc
    result["strays"] = strays
    result["log_tail"] = log_text[-4000:]
    if verbose:
        status = "ok" if result.get("ok") else "ERROR"
        print(f"  [{label}] {status} in {wall:.1f}s" + (f"; {len(strays)} STRAY process(es) killed" if strays
                                                         else "")
              + (f"; other processes used {other:.0f}% of the machine meanwhile" if other is not None else ""),
              flush=True)
        if not result.get("ok"):
            print(_indent(str(result.get("error")), "    | "), flush=True)
            if log_text.strip():
                print("    | --- child output (tail) ---", flush=True)
                print(_indent(log_text[-2500:], "    | "), flush=True)
        for s in strays:
            print(f"    STRAY: {s}", flush=True)
    anomaly = (result.get("result") or {}).get("anomaly") if isinstance(result.get("result"), dict) else None
    if anomaly and verbose:
        print(f"  [{label}] ANOMALY: {anomaly}", flush=True)
    if result.get("ok") and not strays and not KEEP_LOGS and not anomaly:
        shutil.rmtree(tmpdir, ignore_errors=True)
    else:  # keep the child's run directory (engine logs) for diagnosis
        result["kept_dir"] = tmpdir
        if verbose and not (result.get("ok") and not strays and not anomaly):
            print(f"    (child's directory with its logs kept: {tmpdir})", flush=True)
    return result


def busy_note(runs: Iterable[dict]) -> str | None:
    """A line to print under a table when some runs started on a busy machine (else None)."""
    runs = list(runs)
    busy = [r for r in runs if (r.get("load_before") or {}).get("busy")]
    if not busy:
        return None
    worst = max(max(r["load_before"].get("cpu_percent") or 0, r.get("other_cpu_percent") or 0) for r in busy)
    return (f"NOTE: {len(busy)} of {len(runs)} run(s) shared the machine with other busy processes (up to "
            f"{worst:.0f}% of its CPU): those numbers are noisy; rerun with --wait-quiet 600 on an idle machine.")


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in text.rstrip().splitlines())


def child_main(args: argparse.Namespace, measure: Callable[[argparse.Namespace], dict]) -> None:
    """Run ``measure(args)`` in the child role and write ``{"ok", "result", "error"}`` to ``--child-out``."""
    payload: dict = {"ok": False, "result": None, "error": None}
    code = 0
    try:
        payload["result"] = measure(args)
        payload["ok"] = True
    except BaseException as e:  # noqa: BLE001 -- report everything, including KeyboardInterrupt
        payload["error"] = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        payload["result"] = getattr(e, "partial_result", None)
        code = 1
    with open(args.child_out, "w") as f:
        json.dump(payload, f, default=str)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="fast smoke run (a few hundred tasks)")
    p.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/*.json")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each run, wait up to SECONDS for the machine to be idle (<25%% CPU); a busy "
                        "machine is always reported")
    p.add_argument("--keep-logs", action="store_true",
                   help="keep every child's directory (run dirs, engine logs) under /tmp; failed runs are always kept")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-out", default=None, help=argparse.SUPPRESS)


def parse_common(args: argparse.Namespace) -> None:
    global WAIT_QUIET, KEEP_LOGS
    WAIT_QUIET = float(getattr(args, "wait_quiet", 0.0) or 0.0)
    KEEP_LOGS = bool(getattr(args, "keep_logs", False))


def child_tmpdir() -> str:
    """A scratch directory for the child (run_dir for Parsl, working dirs); removed by the parent."""
    return os.environ.get("FAASX_BENCH_TMP") or tempfile.mkdtemp(prefix="faasx-bench-child-")


# ----------------------------------------------------------------------------------------------------
# systems under test (used in child processes only)
# ----------------------------------------------------------------------------------------------------
def parsl_load(executor, run_dir: str | None = None):
    """``parsl.load(Config(executors=[executor]))`` with a private run_dir; returns the DFK."""
    import parsl
    from parsl.config import Config
    cfg = Config(executors=[executor], run_dir=run_dir or os.path.join(child_tmpdir(), "runinfo"))
    return parsl.load(cfg)


def parsl_cleanup() -> None:
    import parsl
    try:
        parsl.dfk().cleanup()
    finally:
        parsl.clear()


def make_htex(max_workers: int = 2, label: str = "htex"):
    """Parsl's HighThroughputExecutor exactly as in BASELINES.md: one local block, 2 workers."""
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider
    return HighThroughputExecutor(label=label, max_workers_per_node=max_workers,
                                  provider=LocalProvider(init_blocks=1, max_blocks=1))


def make_faas_executor(max_workers: int = 2, label: str = "faasx", **options):
    """``faasx.FaaSExecutor`` with one local block (faasx's LocalProvider, as Parsl's)."""
    import faasx
    try:
        from faasx.providers import LocalProvider
    except ImportError:  # pragma: no cover -- engine still in progress
        from parsl.providers import LocalProvider
    return faasx.FaaSExecutor(label=label, max_workers_per_node=max_workers,
                              provider=LocalProvider(init_blocks=1, max_blocks=1), **options)


def _role(proc, parent_role: str | None) -> str:
    try:
        cmd = " ".join(proc.cmdline())
    except Exception:
        return "other"
    if "interchange" in cmd:
        return "interchange"
    if "faasx-worker" in cmd or "worker import main" in cmd:
        return "worker"
    if "faasx-manager" in cmd or "process_worker_pool" in cmd:
        return "worker" if parent_role == "manager" else "manager"
    if parent_role == "manager":
        return "worker"
    return "other"


def tree_cpu() -> dict:
    """CPU seconds (user+system) used so far by this process and by each role among the processes it
    started: ``client``, ``interchange``, ``manager``, ``worker``, ``other`` (shell wrappers).  Processes
    are found as descendants and, since a provider may detach them (HTEX's workers end up re-parented),
    by this run's environment tag.  Works for faasx and HTEX alike (roles come from command lines)."""
    import psutil
    me = psutil.Process()
    procs = {}
    try:
        for c in me.children(recursive=True):
            procs[c.pid] = c
    except psutil.Error:
        pass
    tag = os.environ.get(TAG_ENV)
    if tag:
        for c in _tagged_processes(tag):
            procs.setdefault(c.pid, c)
    procs.pop(me.pid, None)
    out = {"client": sum(me.cpu_times()[:2])}
    roles = {me.pid: "client"}
    parents = {}
    for pid, c in procs.items():
        try:
            parents[pid] = c.ppid()
        except psutil.Error:
            pass
    pending = [pid for pid in procs if pid in parents]
    for _ in range(12):  # parents before children
        rest = []
        for pid in pending:
            ppid = parents[pid]
            if ppid in procs and ppid not in roles:
                rest.append(pid)
                continue
            role = _role(procs[pid], roles.get(ppid))
            roles[pid] = role
            try:
                out[role] = out.get(role, 0.0) + sum(procs[pid].cpu_times()[:2])
            except psutil.Error:
                pass
        if len(rest) == len(pending):
            break
        pending = rest
    return out


def cpu_delta(before: dict, after: dict, per: int) -> dict:
    """Microseconds of CPU per task (``per`` tasks) for each role, and ``total``."""
    out = {k: (after.get(k, 0.0) - before.get(k, 0.0)) / per * 1e6 for k in after}
    out = {k: v for k, v in out.items() if v > 0.05}
    out["total"] = sum(out.values())
    return out


def wait_all(futures, timeout: float):
    """Wait for all futures; raise TimeoutError naming how many are still pending."""
    import concurrent.futures as cf
    done, not_done = cf.wait(futures, timeout=timeout)
    if not_done:
        raise TimeoutError(f"{len(not_done)} of {len(futures)} futures still pending after {timeout:.0f}s")
    return done
