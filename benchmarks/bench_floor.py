#!/usr/bin/env python
"""The latency floor on this machine: bare ZeroMQ relays with faasx's process topology, no engine.

A round trip in faasx crosses client -> interchange -> manager -> worker and back: three processes
besides the client, TCP for the first two hops, ``ipc://`` to the worker, and in the client a hand-off
between the caller's thread and the I/O thread.  This script builds the same chain from minimal
relays (DEALER sockets forwarding 2-frame messages, no serialization, no bookkeeping) and measures p50 /
p90 of sequential round trips for:

* ``direct``  -- the caller's thread sends and receives itself
* ``thread``  -- like faasx's client: the caller appends to an outbox, wakes an I/O thread through a pipe,
                 and waits on a ``concurrent.futures.Future`` that the I/O thread resolves

* ``split``   -- a design option: the caller sends on its own socket (no hand-off on the way out), an I/O
                 thread only receives and resolves the Future (one thread hop instead of two)

with 1, 2 and 3 relay processes.  What faasx adds on top of the 3-relay ``thread`` row is the engine's
own cost; bench_engine's p50 can be read against it.  Each variant runs in a fresh child process.

    python benchmarks/bench_floor.py [--rounds 3000] [--quick]

``--wakeups`` measures instead what one hop of that relay costs at bottom: waking a sleeping thread
of another process.  Two processes ping-pong one byte over a pair of pipes (blocking reads, so each
byte wakes the other side), 5000 round trips (two wake-ups each) per variant:

* ``unpinned``        -- both may run on any allowed CPU (the scheduler decides, as without ``engine_cpu``)
* ``same CPU``        -- both pinned to the first allowed CPU: a wake-up is a plain context switch
* ``different CPUs``  -- pinned to the first and the second allowed CPU: every wake-up crosses CPUs
                         (an inter-processor interrupt, the target CPU leaving idle); needs 2+ CPUs

and prints p50 / p90 per round trip.  This is what ``engine_cpu`` (``faasx.executor.affinity``) is
about: on a 2-vCPU VM ~23 us per cross-CPU wake-up against ~3 us on the same CPU.

    python benchmarks/bench_floor.py --wakeups [--rounds 5000] [--quick]
"""
from __future__ import annotations

import argparse
import os
import sys

try:
    from benchmarks import common as C
except ImportError:  # run as a script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks import common as C


def _relay(up_addr: str, down_addr: str | None, router_up: bool = False) -> None:
    """Forward messages between ``up`` and ``down``; echo when there is no ``down``.  With ``router_up`` the
    up side is a bound ROUTER that receives from any peer and replies to the peer named ``R`` (the 'split'
    client: one socket sends, another receives)."""
    import zmq
    ctx = zmq.Context()
    if router_up:
        up = ctx.socket(zmq.ROUTER)
        up.setsockopt(zmq.LINGER, 0)
        up.bind(up_addr)
    else:
        up = ctx.socket(zmq.DEALER)
        up.setsockopt(zmq.LINGER, 0)
        up.connect(up_addr)

    def recv_up():
        m = up.recv_multipart()
        return m[1:] if router_up else m

    def send_up(m):
        up.send_multipart([b"R", *m] if router_up else m)

    if down_addr is None:  # the "worker": echo
        while True:
            if not up.poll(5000):
                return
            m = recv_up()
            if m[0] == b"stop":
                return
            send_up(m)
    down = ctx.socket(zmq.DEALER)
    down.setsockopt(zmq.LINGER, 0)
    down.bind(down_addr)
    poller = zmq.Poller()
    poller.register(up, zmq.POLLIN)
    poller.register(down, zmq.POLLIN)
    while True:
        ev = dict(poller.poll(5000))
        if not ev:
            return
        if up in ev:
            m = recv_up()
            down.send_multipart(m)
            if m[0] == b"stop":
                return
        if down in ev:
            send_up(down.recv_multipart())


def _resolve_all(sock, pending: dict) -> None:
    """Receive every reply waiting on ``sock`` and resolve the Future of each (the I/O thread's half)."""
    import zmq
    while True:
        try:
            m = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        pending.pop(int(m[1])).set_result(m)


def _free_port() -> int:
    import socket as pysock
    s = pysock.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def measure(args) -> dict:
    import multiprocessing as mp
    import tempfile
    import threading
    from concurrent.futures import Future

    import zmq

    mode, _, hops_s = args.child.partition(":")
    hops = int(hops_s)
    tmp = tempfile.mkdtemp(prefix="floor-", dir=C.child_tmpdir())  # removed with the child's directory
    # hop i connects up to addrs[i]; the last hop (the "worker") is on ipc, the others on TCP
    ctx = zmq.Context()
    split = mode == "split"
    addrs = [f"ipc://{tmp}/w" if (i == hops - 1 and hops > 1) else f"tcp://127.0.0.1:{_free_port()}"
             for i in range(hops)]
    if split:  # the first relay binds a ROUTER; the client connects a sending and a receiving socket
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, b"S")
        rsock = ctx.socket(zmq.DEALER)
        rsock.setsockopt(zmq.IDENTITY, b"R")
        for x in (sock, rsock):
            x.setsockopt(zmq.LINGER, 0)
    else:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(addrs[0])
    procs = [mp.get_context("fork").Process(target=_relay, args=(addrs[i], addrs[i + 1] if i + 1 < hops else None,
                                                                 split and i == 0), daemon=True)
             for i in range(hops)]
    for p in procs:
        p.start()
    if split:
        import time
        time.sleep(0.3)
        sock.connect(addrs[0])
        rsock.connect(addrs[0])
        time.sleep(0.5)  # let the ROUTER learn both identities
    lat: list[float] = []
    try:
        if mode == "direct":
            def rt(k: int):
                sock.send_multipart([b"t", b"%d" % k])
                return sock.recv_multipart()
            stop = None
        elif split:
            # the caller sends on its own socket (no hand-off); an I/O thread only receives and resolves
            pending: dict = {}
            stop = threading.Event()
            send_lock = threading.Lock()

            def io():
                while not stop.is_set():
                    if rsock.poll(100):
                        _resolve_all(rsock, pending)

            th = threading.Thread(target=io, daemon=True)
            th.start()

            def rt(k: int):
                f: Future = Future()
                pending[k] = f
                with send_lock:
                    sock.send_multipart([b"t", b"%d" % k])
                return f.result(10)
        else:
            r, w = os.pipe()
            os.set_blocking(r, False)
            outbox: list = []
            pending: dict = {}
            stop = threading.Event()

            def io():
                poller = zmq.Poller()
                poller.register(sock, zmq.POLLIN)
                poller.register(r, zmq.POLLIN)
                while not stop.is_set():
                    ev = dict(poller.poll(100))
                    if r in ev:
                        try:
                            os.read(r, 4096)
                        except BlockingIOError:
                            pass
                    while outbox:
                        k, f = outbox.pop()
                        pending[k] = f
                        sock.send_multipart([b"t", b"%d" % k])
                    if sock in ev:
                        _resolve_all(sock, pending)

            th = threading.Thread(target=io, daemon=True)
            th.start()

            def rt(k: int):
                f: Future = Future()
                outbox.append((k, f))
                os.write(w, b"x")
                return f.result(10)
        for k in range(args.warmup):
            rt(k)
        for k in range(args.rounds):
            t = C.now()
            rt(k)
            lat.append(C.now() - t)
        if stop is not None:
            stop.set()
            th.join(2)
        sock.send_multipart([b"stop", b""])
    finally:
        for p in procs:
            p.join(3)
            if p.is_alive():
                p.kill()
        sock.close()
        if split:
            rsock.close()
        ctx.term()
    return {"mode": mode, "hops": hops, "latency": C.summarize_latencies(lat)}


def _ping_pong(rounds: int, warmup: int, ping_cpus: set | None, pong_cpus: set | None) -> list[float]:
    """Round-trip times of one byte between two fresh processes over two pipes; each child pins itself to
    its CPU set (None: left as it is)."""
    import multiprocessing as mp
    ctx = mp.get_context("fork")
    ping_r, ping_w = os.pipe()
    pong_r, pong_w = os.pipe()
    res_r, res_w = ctx.Pipe(duplex=False)

    def pong():
        if pong_cpus:
            os.sched_setaffinity(0, pong_cpus)
        os.close(ping_w)
        os.close(pong_r)
        while True:
            b = os.read(ping_r, 1)
            if not b or b == b"q":
                return
            os.write(pong_w, b)

    def ping():
        if ping_cpus:
            os.sched_setaffinity(0, ping_cpus)
        os.close(ping_r)
        os.close(pong_w)
        lat: list[float] = []
        for k in range(warmup + rounds):
            t = C.now()
            os.write(ping_w, b"x")
            if os.read(pong_r, 1) != b"x":
                res_w.send(None)   # the other side is gone
                return
            if k >= warmup:
                lat.append(C.now() - t)
        os.write(ping_w, b"q")
        res_w.send(lat)

    procs = [ctx.Process(target=pong, daemon=True), ctx.Process(target=ping, daemon=True)]
    for pr in procs:
        pr.start()
    for fd in (ping_r, ping_w, pong_r, pong_w):
        os.close(fd)
    res_w.close()
    try:
        if not res_r.poll(120):
            raise RuntimeError("the ping-pong did not finish within 120 s")
        lat = res_r.recv()
        if lat is None:
            raise RuntimeError("the echoing process died")
        return lat
    finally:
        for pr in procs:
            pr.join(5)
            if pr.is_alive():
                pr.kill()
                pr.join(5)


def wakeups_main(args) -> int:
    """``--wakeups``: the cost of a cross-process wake-up, unpinned, on one CPU and across two."""
    rounds = args.rounds if args.rounds is not None else 5000
    warmup = min(args.warmup, rounds)
    if args.quick:
        rounds, warmup = min(rounds, 200), min(warmup, 50)
    cpus = sorted(os.sched_getaffinity(0))
    info = C.machine_info()
    print(f"bench_floor --wakeups: one byte ping-ponged between two processes over pipes, {rounds} round trips "
          f"(two wake-ups each) per variant; allowed CPUs {cpus}", flush=True)
    variants = [("unpinned", None, None), (f"same CPU ({cpus[0]})", {cpus[0]}, {cpus[0]})]
    if len(cpus) > 1:
        variants.append((f"different CPUs ({cpus[0]}, {cpus[1]})", {cpus[0]}, {cpus[1]}))
    runs: dict[str, dict] = {}
    errors = []
    rows = []
    for name, ping_cpus, pong_cpus in variants:
        if args.wait_quiet:
            C.wait_for_quiet(args.wait_quiet, name)
        try:
            lat = C.summarize_latencies(_ping_pong(rounds, warmup, ping_cpus, pong_cpus))
        except Exception as e:
            errors.append(f"{name}: {e}")
            rows.append([name, "-", "-", "-"])
            continue
        runs[name] = lat
        rows.append([name, f"{lat['p50'] * 1e6:.1f} us", f"{lat['p90'] * 1e6:.1f} us",
                     f"{lat['p50'] * 1e6 / 2:.1f} us"])
    if len(cpus) < 2:
        rows.append(["different CPUs", "-", "-", "-"])
        print("only one allowed CPU: the cross-CPU variant cannot run here")
    print()
    table = C.print_table(["variant", "p50 round trip", "p90 round trip", "p50 / 2 (one wake-up)"], rows,
                          title="Cross-process wake-up cost (what engine_cpu saves on every hop)")
    return C.finish("bench_floor_wakeups", args, {"bench": "floor-wakeups", "machine": info, "runs": runs,
                                                  "table": table}, errors)


def _run_variants(variants: list, args) -> tuple[dict, list]:
    """Each variant in a fresh child, ``--repeat`` times, quietly (the table says it all)."""
    runs: dict[str, list] = {v: [] for v in variants}
    errors = []
    for _ in range(args.repeat):
        for v in variants:
            r = C.run_child(os.path.abspath(__file__), ["--child", v, "--rounds", str(args.rounds), "--warmup",
                                                        str(args.warmup)], timeout=120, label=v, verbose=False)
            runs[v].append(r)
            if not r.get("ok"):
                errors.append(f"{v}: {(r.get('error') or '').strip().splitlines()[-1:]}")
    return runs, errors


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p)
    p.add_argument("--rounds", type=int, default=None, help="round trips per variant (default 3000; 5000 with "
                                                               "--wakeups)")
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--wakeups", action="store_true",
                   help="measure the cost of waking a thread of another process: one byte ping-ponged over pipes, "
                        "unpinned, both on one CPU, and on two CPUs (p50/p90 per round trip)")
    args = p.parse_args(argv)
    if args.wakeups and not args.child:
        C.parse_common(args)
        return wakeups_main(args)
    if args.rounds is None:
        args.rounds = 3000
    if args.quick:
        args.rounds = min(args.rounds, 200)
        args.warmup = min(args.warmup, 50)
    if args.child:
        C.child_main(args, measure)
        return 0
    C.parse_common(args)
    info = C.machine_info()
    print(f"bench_floor: bare ZeroMQ relay chains, {args.rounds} sequential round trips; {info.get('cpus')} cpus, "
          f"pyzmq {info.get('pyzmq')}", flush=True)
    variants = [f"{m}:{h}" for h in (1, 2, 3) for m in ("direct", "thread", "split")]
    runs, errors = _run_variants(variants, args)
    rows = []
    for v in variants:
        mode, _, hops = v.partition(":")
        ok = [r["result"]["latency"] for r in runs[v] if r.get("ok")]
        rows.append([f"{mode}, {hops} relay process(es)", C.fmt_ms(C.median(x["p50"] for x in ok) if ok else None),
                     C.fmt_ms(C.median(x["p90"] for x in ok) if ok else None)])
    print()
    table = C.print_table(["variant", "p50", "p90"], rows,
                          title="Round-trip floor (all-ZeroMQ; faasx's topology before its socketpair links was 'thread, 3 relay processes')")
    note = C.busy_note(r for rs in runs.values() for r in rs)
    if note:
        print(note)
    return C.finish("bench_floor", args, {"bench": "floor", "machine": info, "runs": runs, "table": table}, errors)


if __name__ == "__main__":
    sys.exit(main())
