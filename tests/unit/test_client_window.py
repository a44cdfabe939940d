"""The client's window follows the workers' capacity (issue 12): the larger of the configured window and
WINDOW_PER_WORKER tasks per connected worker.  Drives EngineClient's event handler with the EVENT bodies
the interchange sends (protocol.pack_event_registered / pack_event_lost), decoded by the real protocol."""
from faasx.executor import protocol as P
from faasx.executor.client import WINDOW_PER_WORKER, EngineClient


def client(window):
    return EngineClient(label="t", logdir="/nonexistent", token="x", heartbeat_period=1.0,
                        heartbeat_threshold=5.0, max_payload_size=1 << 20, window=window)


def event(frames):
    msg_type, body, _ = P.unpack(frames)
    assert msg_type == P.EVENT
    return P.parse_event(body)


def test_window_grows_with_the_workers_and_shrinks_back():
    c = client(1000)
    c._event(event(P.pack_event_registered("m1", "0", 64)))
    assert c.window == 1000                                  # 128 < the configured 1,000
    for i in range(2, 12):
        c._event(event(P.pack_event_registered(f"m{i}", "0", 64)))
    assert c.window == WINDOW_PER_WORKER * 64 * 11
    c._event(event(P.pack_event_registered("m1", "0", 64)))   # a repeated registration counts once
    assert c.window == WINDOW_PER_WORKER * 64 * 11
    for i in range(1, 12):
        c._event(event(P.pack_event_lost(f"m{i}", "0", "scale-in", 0, 0)))
    assert c.window == 1000 and c._total_workers == 0
    c._event(event(P.pack_event_lost("never-seen", "0", "x", 0, 0)))
    assert c.window == 1000 and c._total_workers == 0
