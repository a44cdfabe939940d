"""Argument files written again (``payloads.Recycler``), in one process on the real /dev/shm.

A reader's shared ``flock`` is per open file, so a reader in this process conflicts with the writer's
exclusive lock exactly as a worker in another process does.  The end-to-end case (a function keeping
its argument on a real worker) is ``tests/engine/test_shared_payloads.py``.
"""
import os

import numpy as np
import pytest

from faasx.executor import payloads as PL
from faasx.executor.serialization import deserialize, serialize

N = 2 * PL.SHARED_MIN_BYTES


@pytest.fixture
def writer():
    run = PL.RunDir.create()
    if run is None:
        pytest.skip("no usable /dev/shm")
    w = run.writer(1 << 30)
    yield w
    PL.release_mappings()
    run.remove()


def path_of(payload) -> str:
    header, _, _ = PL._unpack(payload)
    return header["p"]


def args_of(writer, value):
    return serialize(((np.full(N, value, np.uint8),), {}), shared=writer)


def read(payload) -> int:
    (x,), _ = deserialize(payload)
    value = int(x[0])
    del x
    return value


def test_a_released_file_is_written_again_with_a_new_nonce(writer):
    keep_one_in_flight = args_of(writer, 9)
    first = args_of(writer, 1)
    assert read(first) == 1 and PL.release_mappings() == 0
    writer.release(first)
    second = args_of(writer, 2)
    assert path_of(second) == path_of(first) and writer.recycled.reused == 1
    assert read(second) == 2
    with pytest.raises(PL.SharedPayloadError, match="holds another payload"):
        read(first)                    # a stale reader of the old payload is refused
    for p in (second, keep_one_in_flight):
        writer.release(p)


def test_a_file_a_reader_still_maps_is_unlinked_not_reused(writer):
    keep_one_in_flight = args_of(writer, 9)
    first = args_of(writer, 1)
    (x,), _ = deserialize(first)       # a function that keeps its argument
    assert PL.release_mappings() == 1
    writer.release(first)
    assert not os.path.exists(path_of(first))
    second = args_of(writer, 2)
    assert path_of(second) != path_of(first) and writer.recycled.reused == 0
    assert int(x.min()) == int(x.max()) == 1          # untouched
    del x
    assert PL.release_mappings() == 0
    for p in (second, keep_one_in_flight):
        writer.release(p)


def test_a_kept_file_is_locked_so_a_late_reader_is_told_it_is_gone(writer):
    keep_one_in_flight = args_of(writer, 9)
    first = args_of(writer, 1)
    writer.release(first)              # never read: kept, exclusively locked
    assert writer.recycled.files
    with pytest.raises(PL.SharedPayloadError, match="is gone"):
        read(first)
    writer.release(keep_one_in_flight)


def test_with_nothing_in_flight_no_file_is_kept(writer):
    payloads = [args_of(writer, i) for i in range(PL.RECYCLE_FILES + 3)]
    for i, p in enumerate(payloads):
        assert read(p) == i
    PL.release_mappings()
    for p in payloads[:-1]:
        writer.release(p)
    assert len(writer.recycled.files) == PL.RECYCLE_FILES     # bounded
    writer.release(payloads[-1])        # the last one in flight: an idle executor holds no file
    assert writer.recycled.files == [] and os.listdir(writer.directory) == []


def test_results_are_not_recycled(writer):
    """Result files have one reader, which unlinks them; their writer keeps nothing."""
    results = PL.Writer(writer.directory, consume=True, max_size=1 << 30)
    assert results.recycled is None
    payload = serialize(np.zeros(N, np.uint8), shared=results)
    assert int(deserialize(payload)[0]) == 0
    assert not os.path.exists(path_of(payload))
