"""The manager's worker processes and the channels to them: start, link, reap, kill.

``WorkerProcesses`` is the process side of the manager's workers, plain and container ones alike:
the ``Popen`` of each worker, its socketpair ``Channel`` (registered with the manager's poller) and
the fd -> worker id map the event loop reads.  What the workers *hold* is ``WorkerTable``'s job; what
runs inside a container is ``ContainerWorkers``'.

Owned by the manager's one thread (``faasx.executor.manager``); nothing here is thread-safe.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from typing import Callable, Dict, List, Optional, Tuple

import zmq

from faasx.executor import affinity
from faasx.executor import protocol as P
from faasx.executor.channel import Channel

logger = logging.getLogger("faasx.manager")

REAP_WAIT = 0.5      # seconds a worker that broke its channel gets to exit on its own before SIGKILL
KILL_WAIT = 5.0      # seconds a SIGKILLed worker gets to be reaped


class WorkerProcesses:
    """Worker processes by worker id, and the channels to them.

    Parameters
    ----------
    poller : zmq.Poller
        The manager's poller: every channel's fd is registered there while the channel is open.
    max_message : int
        The largest message a worker channel accepts.
    engine_cpu, original_cpus
        The CPU the manager is pinned to (None: not pinned) and the CPUs it started with: workers are
        forked from the original set (``unpinned``).
    """

    def __init__(self, poller: zmq.Poller, max_message: int, engine_cpu: Optional[int] = None,
                 original_cpus=None):
        self.poller = poller
        self.max_message = max_message
        self.engine_cpu = engine_cpu
        self.original_cpus = original_cpus
        self.procs: Dict[int, subprocess.Popen] = {}   # wid -> its process (the engine's, for a container)
        self.chans: Dict[int, Channel] = {}            # wid -> open channel
        self.fd_wid: Dict[int, int] = {}               # channel fd -> wid (what the event loop polls)
        self.next_wid = 0

    def new_wid(self) -> int:
        wid = self.next_wid
        self.next_wid += 1
        return wid

    # ---- starting ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def unpinned(self):
        """Fork a worker (or a container engine) with this thread's original CPUs, not the engine's pin: a
        child inherits its forking thread's affinity, and a worker's interpreter start-up and imports
        (~50 ms of CPU each) would otherwise all run on the engine's CPU, one worker after another, before
        its ``--cpus`` takes effect."""
        if self.engine_cpu is None:
            yield
            return
        try:
            os.sched_setaffinity(0, self.original_cpus)
        except OSError as e:
            logger.warning("could not unpin the manager to start a worker: %s", e)
        try:
            yield
        finally:
            affinity.pin_this_thread(self.engine_cpu, "manager")

    def spawn(self, wid: int, argv: List[str], out, **popen_args) -> subprocess.Popen:
        """Start worker ``wid``'s process, output to ``out``, in its own session: at shutdown (and on a
        kill) the worker's whole process group goes, children the function left behind included."""
        with self.unpinned():
            proc = self.procs[wid] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                                      start_new_session=True, **popen_args)
        return proc

    def add_channel(self, wid: int, sock: socket.socket) -> Channel:
        chan = self.chans[wid] = Channel(sock, max_message=self.max_message)
        self.fd_wid[chan.fileno()] = wid
        self.poller.register(chan.fileno(), zmq.POLLIN)
        return chan

    # ---- ending ------------------------------------------------------------------------------
    def close_channel(self, wid: int, say_shutdown: bool = False) -> None:
        """Close worker ``wid``'s channel (if open), after a SHUTDOWN when asked to."""
        chan = self.chans.pop(wid, None)
        if chan is None:
            return
        if say_shutdown:
            try:
                chan.send(P.pack_shutdown())
            except OSError:
                pass
        self.fd_wid.pop(chan.fileno(), None)
        self.poller.unregister(chan.fileno())
        chan.close()

    def exited(self) -> List[int]:
        """Workers whose process has ended."""
        return [wid for wid, proc in self.procs.items() if proc.poll() is not None]

    def corrupt(self, now: float, threshold: float) -> List[int]:
        """Workers whose channel has held half a message for more than ``threshold`` seconds."""
        return [wid for wid, chan in self.chans.items()
                if chan.partial_since is not None and now - chan.partial_since > threshold]

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        """SIGKILL the worker's whole process group."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    @classmethod
    def kill_and_wait(cls, proc: subprocess.Popen) -> bool:
        """Kill and reap; False if it did not die within ``KILL_WAIT``."""
        cls.kill(proc)
        try:
            proc.wait(KILL_WAIT)
            return True
        except subprocess.TimeoutExpired:
            return False

    @classmethod
    def reap(cls, proc: subprocess.Popen, detail: str = "") -> Tuple[int, str]:
        """Wait for a worker that died or broke its channel (killing it after ``REAP_WAIT``); returns its
        exit status and how it ended, in words for the log and the tasks' errors.  ``detail`` is what the
        manager saw (e.g. "closed its connection"): kept unless the exit status says more."""
        try:
            code = proc.wait(REAP_WAIT)
        except subprocess.TimeoutExpired:
            cls.kill(proc)
            code = proc.wait()
            # our SIGKILL is not the cause: keep the detail that says why
            return code, f"{detail}; the manager stopped it" if detail else describe_status(code)
        if not detail or code != 0:
            return code, describe_status(code)
        return code, detail

    def stop_all(self, grace: float, before_kill: Callable[[int], None]) -> None:
        """SHUTDOWN to every worker, ``grace`` seconds to exit, then SIGKILL the process groups of those
        left (``before_kill(wid)`` first, for clean-up a kill would leave behind) and close everything."""
        for chan in self.chans.values():
            try:
                chan.send(P.pack_shutdown())
            except OSError:
                pass
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for wid, proc in self.procs.items():
            if proc.poll() is None:
                before_kill(wid)
            if not self.kill_and_wait(proc):   # the whole group: also children the functions left behind
                logger.error("worker %d (pid %d) did not die after SIGKILL within %ss", wid, proc.pid, KILL_WAIT)
        for chan in self.chans.values():
            chan.close()
        self.procs.clear()
        self.chans.clear()
        self.fd_wid.clear()


def describe_status(code: int) -> str:
    return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
