"""Shared-memory payloads (``faasx.executor.payloads``) in one process: the formats, the views, the
file modes and the refusals.  The same paths through real processes are in
tests/engine/test_shared_payloads.py; another user against them in tests/security."""
import mmap
import os
import stat

import numpy as np
import pytest

from faasx.executor import payloads as PL
from faasx.executor import protocol as P
from faasx.executor.serialization import CODEC_PICKLE, deserialize, serialize

BIG = PL.SHARED_MIN_BYTES


@pytest.fixture
def run_dir():
    d = PL.RunDir.create()
    assert d is not None, "this machine has a writable /dev/shm"
    yield d
    d.remove()


def _base(arr):
    while isinstance(arr, np.ndarray):
        arr = arr.base
    return arr


def test_the_run_directory_is_private_and_removed(run_dir):
    st = os.stat(run_dir.path)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
    ref = serialize(((np.zeros(BIG, np.uint8),), {}), shared=run_dir.writer(1 << 30))
    [name] = os.listdir(run_dir.path)
    assert stat.S_IMODE(os.stat(os.path.join(run_dir.path, name)).st_mode) == 0o600
    assert PL.payload_size(ref) > BIG > len(ref)
    run_dir.remove()
    assert not os.path.exists(run_dir.path)


@pytest.mark.parametrize("n", [0, 1000, BIG - 1, BIG, 3 * BIG + 7])
def test_numpy_arrays_round_trip_and_big_ones_are_views_of_the_mapping(run_dir, n):
    x = np.arange(n, dtype=np.uint8)
    y = np.arange(n // 8, dtype=np.float64).reshape(-1, 1)      # about as many bytes as x
    payload = serialize(((x,), {"y": y}), shared=run_dir.writer(1 << 30))
    (x2,), kw = deserialize(payload)
    assert np.array_equal(x2, x) and np.array_equal(kw["y"], y) and kw["y"].shape == y.shape
    if x.nbytes + y.nbytes >= BIG:     # the buffers add up to the threshold: all go out of band
        assert payload[:1] == PL.CODEC_SHARED
        base = _base(x2)
        assert isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)
        x2[0] = 99                   # copy-on-write: writable, and private to this reader
        assert deserialize(payload)[0][0][0] == 0
    else:
        assert payload[:1] == CODEC_PICKLE and not os.listdir(run_dir.path)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
@pytest.mark.parametrize("n", [10, BIG, 2 * BIG + 1])
def test_bytes_like_values_round_trip_with_their_type(run_dir, kind, n):
    value = kind(os.urandom(n))
    payload = serialize(((value,), {}), shared=run_dir.writer(1 << 30))
    (back,), _ = deserialize(payload)
    assert type(back) is kind and bytes(back) == bytes(value)
    big = n >= BIG or kind is memoryview and n >= BIG
    assert (payload[:1] == PL.CODEC_SHARED) == big
    if kind is memoryview and big:
        assert isinstance(back.obj, mmap.mmap)     # a view, not a copy


def test_a_shaped_memoryview_keeps_its_format_and_shape(run_dir):
    view = memoryview(np.arange(BIG, dtype=np.int32).reshape(-1, 8))
    (back,), _ = deserialize(serialize(((view,), {}), shared=run_dir.writer(1 << 30)))
    assert back.format == view.format and back.shape == view.shape and back.tolist() == view.tolist()


def test_the_inline_form_has_the_same_content_and_leaves_the_file(run_dir):
    x = np.arange(BIG * 2, dtype=np.uint8)
    ref = serialize((x, b"\0" * BIG, 5), shared=run_dir.writer(1 << 30))
    inline = PL.inline(ref)
    assert inline[:1] == PL.CODEC_BUFFERS and len(inline) >= 3 * BIG     # the buffers are in it
    x2, b2, five = deserialize(inline)
    assert np.array_equal(x2, x) and b2 == b"\0" * BIG and five == 5
    x2[0] = 1                       # writable, as the sender's array was
    assert len(os.listdir(run_dir.path)) == 1


def test_arguments_stay_until_released_and_results_go_when_read(run_dir):
    args = serialize(((np.ones(BIG, np.uint8),), {}), shared=run_dir.writer(1 << 30))
    deserialize(args)
    deserialize(args)               # a retry reads it again
    assert len(os.listdir(run_dir.path)) == 1
    result = serialize(np.ones(BIG, np.uint8), shared=PL.reply_writer(args, 1 << 30))
    assert len(os.listdir(run_dir.path)) == 2
    value = deserialize(result)
    assert len(os.listdir(run_dir.path)) == 1 and value.sum() == BIG   # still mapped after the unlink
    PL.release(args)
    assert not os.listdir(run_dir.path)
    with pytest.raises(PL.SharedPayloadError, match="is gone"):
        deserialize(args)


def test_a_payload_over_the_writers_limit_is_not_written(run_dir):
    payload = serialize(((np.ones(3 * BIG, np.uint8),), {}), shared=run_dir.writer(2 * BIG))
    assert payload[:1] == PL.CODEC_BUFFERS and PL.payload_size(payload) > 3 * BIG
    assert not os.listdir(run_dir.path)


def test_a_reader_refuses_foreign_paths_links_and_open_modes(run_dir, tmp_path):
    ref = serialize(((np.ones(BIG, np.uint8),), {}), shared=run_dir.writer(1 << 30))
    header, _, _ = PL._unpack(ref)
    path = header["p"]
    os.chmod(path, 0o644)
    with pytest.raises(PL.SharedPayloadError, match="not a private file"):
        deserialize(ref)
    os.chmod(path, 0o600)
    target = os.path.join(run_dir.path, "0" * 32)
    os.rename(path, target)
    os.symlink(target, path)
    with pytest.raises(OSError):
        deserialize(ref)            # O_NOFOLLOW
    for bad in (str(tmp_path / ("a" * 32)), "/etc/passwd"):
        forged = PL._pack(PL.CODEC_SHARED, dict(header, p=bad), b"")
        with pytest.raises(PL.SharedPayloadError, match="not a faasx payload file"):
            deserialize(forged)


def test_a_dead_runs_directory_is_removed_and_a_live_ones_kept(tmp_path):
    import subprocess
    import sys
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    gone = tmp_path / f"faasx-{os.geteuid()}-{dead}-{'a' * 16}"
    live = tmp_path / f"faasx-{os.geteuid()}-{os.getpid()}-{'b' * 16}"
    other = tmp_path / f"faasx-{os.geteuid() + 1}-{dead}-{'c' * 16}"     # another user's: never ours to remove
    for d in (gone, live, other):
        d.mkdir(mode=0o700)
        (d / ("0" * 32)).write_bytes(b"x")
    new = PL.RunDir.create(str(tmp_path))
    assert not gone.exists() and live.exists() and other.exists() and os.path.isdir(new.path)
    assert os.path.basename(new.path).startswith(f"faasx-{os.geteuid()}-{os.getpid()}-")


def test_no_shared_memory_where_the_root_is_not_writable(tmp_path):
    os.chmod(tmp_path, 0o500)
    try:
        if os.geteuid() == 0:       # root writes anywhere: a missing root is the case to show
            assert PL.RunDir.create(str(tmp_path / "missing")) is None
        else:
            assert PL.RunDir.create(str(tmp_path)) is None
    finally:
        os.chmod(tmp_path, 0o700)


def test_inline_tasks_replaces_only_references(run_dir):
    ref = serialize(((np.ones(BIG, np.uint8),), {}), shared=run_dir.writer(1 << 30))
    plain = serialize(((1,), {}))
    tasks = [P.Task(1, b"f" * 16, P.KIND_CALL, None, ref), P.Task(2, b"f" * 16, P.KIND_CALL, None, plain)]
    out = PL.inline_tasks(tasks)
    assert out[0].payload[:1] == PL.CODEC_BUFFERS and out[0].tid == 1 and out[1] is tasks[1]
    assert tasks[0].payload is ref            # the interchange keeps the reference for a retry
    PL.release(ref)
    assert PL.inline_tasks(tasks)[0] is tasks[0]   # gone: sent as it is, its worker says so


def test_host_identity_and_registration_field():
    boot = open("/proc/sys/kernel/random/boot_id").read().strip()
    assert PL.host_id() == f"{boot}/{os.uname().nodename}/{os.stat('/dev/shm').st_dev}"
    body = dict(manager_id="m", block_id="0", hostname="h", pid=1, workers=1, prefetch=0, versions={},
                token="t", accelerators=[], containers=False, container_runtimes=[])
    assert P.parse_register(dict(body, host_id="x")).host_id == "x"
    assert P.parse_register(body).host_id is None
    assert P.parse_register(dict(body, host_id=5)).host_id is None


def test_modes_are_exact_whatever_the_umask():
    old = os.umask(0o777)
    try:
        d = PL.RunDir.create()
        serialize(((np.ones(BIG, np.uint8),), {}), shared=d.writer(1 << 30))
    finally:
        os.umask(old)
    try:
        [name] = os.listdir(d.path)
        assert stat.S_IMODE(os.stat(d.path).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(os.path.join(d.path, name)).st_mode) == 0o600
    finally:
        d.remove()
