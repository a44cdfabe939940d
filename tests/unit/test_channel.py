"""The framed socketpair link (``faasx.executor.channel``) on real Unix socketpairs: blocking and
non-blocking sends, messages larger than the kernel's socket buffer, empty frames, corrupt framing
and a peer that goes away."""
from __future__ import annotations

import select
import socket
import struct
import threading

import pytest

from faasx.executor.channel import Channel, ChannelClosed, ChannelError


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    ca, cb = Channel(a, max_message=64 << 20), Channel(b, max_message=64 << 20)
    yield ca, cb
    ca.close()
    cb.close()


def pump(sender: Channel, receiver: Channel, want: int, timeout: float = 10.0):
    """Flush ``sender`` and read ``receiver`` until ``want`` messages arrived (what a poll loop does)."""
    got = []
    while len(got) < want:
        got += receiver.recv_available()
        if len(got) >= want:
            break
        r, w, _ = select.select([receiver.fileno()], [sender.fileno()] if sender.wants_write() else [], [], timeout)
        assert r or w, f"stalled after {len(got)} of {want} messages"
        if w:
            sender.flush()
    return got


def test_blocking_send_and_recv_keep_frames_and_order(pair):
    a, b = pair
    msgs = [[b"h%d" % i, b"payload" * i] for i in range(50)]
    for m in msgs:
        a.send(m)
    assert [b.recv() for _ in msgs] == msgs


def test_send_nowait_queues_what_the_kernel_does_not_take_and_flush_delivers_it(pair):
    a, b = pair
    big = [b"head", b"\x01" * (8 << 20), b"", b"tail"]      # far beyond the socket buffer
    assert a.send_nowait(big) is False
    assert a.wants_write() and 0 < a.queued_bytes() <= 8 << 20
    a.send_nowait([b"after"])                                # queued behind, in order
    got = pump(a, b, 2)
    assert got[0] == big and got[1] == [b"after"]
    assert not a.wants_write() and a.queued_bytes() == 0


def test_empty_frames_and_empty_messages_parts_do_not_stall_the_queue(pair):
    a, b = pair
    msgs = [[b""], [b"", b""], [b"x", b"", b""], [b""] * 7]
    for m in msgs:
        assert a.send_nowait(m) is True
    assert pump(a, b, len(msgs)) == msgs


def test_both_ends_sending_large_messages_at_once_do_not_deadlock(pair):
    """The reason the interchange and the client's I/O thread never block on the link."""
    a, b = pair
    big = [b"\x02" * (6 << 20)]
    results = {}

    def side(me: Channel, name: str):
        me.send_nowait(big)
        got = []
        while not got or me.wants_write():
            r, w, _ = select.select([me.fileno()], [me.fileno()] if me.wants_write() else [], [], 10)
            assert r or w, f"{name} stalled"
            if w:
                me.flush()
            if r:
                got += me.recv_available()
        while not got:
            got += me.recv_available()
        results[name] = got[0]

    threads = [threading.Thread(target=side, args=(a, "a")), threading.Thread(target=side, args=(b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "deadlock"
    assert results == {"a": big, "b": big}


def test_a_closed_peer_is_reported_on_both_receive_paths(pair):
    a, b = pair
    a.close()
    with pytest.raises(ChannelClosed):
        b.recv_available()
    with pytest.raises(ChannelClosed):
        b.recv()


def test_sending_to_a_closed_peer_raises_instead_of_hanging(pair):
    a, b = pair
    b.close()
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        for _ in range(10):
            a.send_nowait([b"x" * 4096])


def test_corrupt_framing_is_an_error_not_a_hang(pair):
    a, b = pair
    a.sock.sendall(struct.pack("!I", 0))                     # a message of zero frames
    with pytest.raises(ChannelError, match="frame count"):
        b.recv_available()


def test_a_declared_size_over_the_limit_is_refused_before_reading_it():
    x, y = socket.socketpair()
    small = Channel(y, max_message=1024)
    x.sendall(struct.pack("!IQ", 1, 10 ** 12))
    with pytest.raises(ChannelError, match="exceeds the limit"):
        small.recv_available()
    x.close()
    small.close()


def test_a_half_written_message_is_kept_until_the_rest_arrives(pair):
    a, b = pair
    frames = [b"abc", b"defgh"]
    raw = struct.pack("!I2Q", 2, 3, 5) + b"abcdefgh"
    a.sock.sendall(raw[:7])
    assert b.recv_available() == [] and b.partial_since is not None
    a.sock.sendall(raw[7:])
    assert pump(a, b, 1) == [frames] and b.partial_since is None


def test_flush_until_gives_up_at_its_deadline_and_succeeds_once_the_peer_reads(pair):
    import time
    a, b = pair
    a.send_nowait([b"\x03" * (8 << 20)])                     # far more than the socket buffer
    t0 = time.monotonic()
    assert a.flush_until(t0 + 0.3) is False                  # nobody reads: bounded, not blocked
    assert 0.25 <= time.monotonic() - t0 < 5 and a.wants_write()
    got = []
    reader = threading.Thread(target=lambda: got.append(b.recv()))
    reader.start()
    assert a.flush_until(time.monotonic() + 10) is True
    reader.join(10)
    assert not reader.is_alive() and not a.wants_write()
    assert got == [[b"\x03" * (8 << 20)]]
