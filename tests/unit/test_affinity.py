"""``faasx.executor.affinity``: the engine_cpu option's values, the CPU it picks, pinning and restoring.

Affinity is per thread on Linux, so every test that pins does it in a thread of its own (or a child
process) and leaves the test process's CPUs alone.
"""
import json
import os
import subprocess
import sys
import threading

import pytest

from faasx.executor import affinity

pytestmark = pytest.mark.skipif(not affinity.supported(), reason="no sched_setaffinity on this platform")

ALLOWED = sorted(os.sched_getaffinity(0)) if affinity.supported() else []
needs_two_cpus = pytest.mark.skipif(len(ALLOWED) < 2, reason="needs at least 2 allowed CPUs")


def in_thread(fn):
    """fn() run in a fresh thread (whose affinity changes die with it); its value or its exception."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised in the test's thread
            box["error"] = e
    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    assert not t.is_alive()
    if "error" in box:
        raise box["error"]
    return box["value"]


# ---- validate ------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["auto", None, 0, 1, 63])
def test_validate_returns_accepted_values_unchanged(value):
    assert affinity.validate(value) == value


@pytest.mark.parametrize("value", ["bogus", "0", "", -1, True, False, 1.0, [0]])
def test_validate_rejects_anything_else_naming_what_is_accepted(value):
    with pytest.raises(ValueError, match="engine_cpu must be 'auto', None or a CPU number"):
        affinity.validate(value)


# ---- choose --------------------------------------------------------------------------------------
def test_choose_none_means_no_pinning():
    assert affinity.choose(None) is None
    assert affinity.choose(None, {0, 1}) is None


def test_choose_a_number_that_is_allowed_is_that_number():
    for cpu in ALLOWED:
        assert affinity.choose(cpu) == cpu
    assert affinity.choose(3, {1, 3, 5}) == 3


def test_choose_a_number_that_is_not_allowed_falls_back_to_the_highest_allowed_cpu():
    assert affinity.choose(4095) == max(ALLOWED)
    assert affinity.choose(2, {0, 1}) == 1
    assert affinity.choose(0, [5, 3]) == 5


def test_choose_with_no_allowed_cpus_pins_nothing():
    assert affinity.choose(0, set()) is None
    assert affinity.choose("auto", []) is None


def test_choose_auto_is_the_cpu_the_calling_thread_is_pinned_to():
    for cpu in ALLOWED:
        def pinned_choice(cpu=cpu):
            os.sched_setaffinity(0, {cpu})
            return affinity.choose("auto"), affinity.choose("auto", ALLOWED)
        assert in_thread(pinned_choice) == (cpu, cpu)


@needs_two_cpus
def test_choose_auto_when_the_current_cpu_is_not_allowed_is_the_highest_allowed():
    low, high = ALLOWED[0], ALLOWED[-1]

    def choice():
        os.sched_setaffinity(0, {low})
        return affinity.choose("auto", [c for c in ALLOWED if c != low])
    assert in_thread(choice) == high


# ---- current_cpu ---------------------------------------------------------------------------------
def test_current_cpu_is_the_cpu_a_pinned_thread_runs_on():
    for cpu in ALLOWED:
        def where(cpu=cpu):
            os.sched_setaffinity(0, {cpu})
            return affinity.current_cpu()
        assert in_thread(where) == cpu


def test_current_cpu_is_one_of_the_allowed_cpus():
    assert affinity.current_cpu() in ALLOWED


# ---- pin_this_thread -----------------------------------------------------------------------------
@needs_two_cpus
def test_pin_this_thread_pins_only_the_calling_thread():
    before = os.sched_getaffinity(0)
    cpu = ALLOWED[-1]

    def pin():
        return affinity.pin_this_thread(cpu, "test"), os.sched_getaffinity(0)
    assert in_thread(pin) == (True, {cpu})
    assert os.sched_getaffinity(0) == before          # the test's own thread is untouched


def test_pin_this_thread_does_nothing_for_none():
    def pin():
        return affinity.pin_this_thread(None, "test"), os.sched_getaffinity(0)
    assert in_thread(pin) == (False, set(ALLOWED))


def test_pin_this_thread_to_a_cpu_that_does_not_exist_warns_and_leaves_the_thread_unpinned(caplog):
    def pin():
        return affinity.pin_this_thread(4095, "test"), os.sched_getaffinity(0)
    with caplog.at_level("WARNING", logger="faasx.affinity"):
        assert in_thread(pin) == (False, set(ALLOWED))
    assert "could not pin to CPU 4095" in caplog.text


# ---- format_cpus / restore -----------------------------------------------------------------------
def test_format_cpus_is_a_sorted_comma_list():
    assert affinity.format_cpus({5, 0, 1}) == "0,1,5"
    assert affinity.format_cpus([7]) == "7"
    assert affinity.format_cpus(set()) == ""


@needs_two_cpus
def test_format_then_restore_gives_a_pinned_thread_its_cpus_back():
    def round_trip():
        os.sched_setaffinity(0, {ALLOWED[0]})
        affinity.restore(affinity.format_cpus(ALLOWED))
        return os.sched_getaffinity(0)
    assert in_thread(round_trip) == set(ALLOWED)


@pytest.mark.parametrize("cpus", [None, ""])
def test_restore_without_a_list_changes_nothing(cpus):
    def keep():
        os.sched_setaffinity(0, {ALLOWED[0]})
        affinity.restore(cpus)
        return os.sched_getaffinity(0)
    assert in_thread(keep) == {ALLOWED[0]}


@pytest.mark.parametrize("cpus", ["zero,one", "4095"])
def test_restore_of_a_bad_list_warns_and_leaves_the_affinity(cpus, caplog):
    def bad():
        os.sched_setaffinity(0, {ALLOWED[0]})
        affinity.restore(cpus)
        return os.sched_getaffinity(0)
    with caplog.at_level("WARNING", logger="faasx.affinity"):
        assert in_thread(bad) == {ALLOWED[0]}
    assert f"could not restore the CPU affinity {cpus}" in caplog.text


@needs_two_cpus
def test_a_process_started_pinned_restores_the_whole_process():
    """What a worker does: it inherits its manager's pin at fork and restores its CPUs at start, so
    threads it starts afterwards get the restored set too."""
    code = ("import json, os, threading; from faasx.executor import affinity; "
            "before = sorted(os.sched_getaffinity(0)); affinity.restore(os.environ['CPUS']); out = {}; "
            "t = threading.Thread(target=lambda: out.setdefault('t', sorted(os.sched_getaffinity(0)))); "
            "t.start(); t.join(); print(json.dumps([before, sorted(os.sched_getaffinity(0)), out['t']]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, CPUS=affinity.format_cpus(ALLOWED)),
                         preexec_fn=lambda: os.sched_setaffinity(0, {ALLOWED[-1]}))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [[ALLOWED[-1]], ALLOWED, ALLOWED]


# ---- Governor: engine_cpu="auto" spreads a saturated CPU and pins again when it is quiet ---------------
def _process(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code])


def _tick_until(gov, predicate, timeout: float = 20.0) -> bool:
    """Tick the governor (with the real clock: it reads real CPU times) until ``predicate()`` holds."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gov.tick(time.monotonic())
        if predicate():
            return True
        time.sleep(0.1)
    return False


@needs_two_cpus
def test_governor_spreads_threads_that_saturate_their_cpu_and_pins_them_again_once_quiet():
    """Two busy processes pinned to one CPU want two CPUs' worth (running + waiting): they are spread
    over every allowed CPU; once they stop (SIGSTOP: no demand at all) and stay quiet for the hold
    time, they are pinned back.  Real processes, real schedstat."""
    import signal
    import time
    cpu = ALLOWED[0]
    busy = [_process("while True: pass") for _ in range(2)]
    try:
        for p in busy:
            os.sched_setaffinity(p.pid, {cpu})
        members = lambda: [(p.pid, p.pid) for p in busy]  # noqa: E731  (single-threaded processes)
        gov = affinity.Governor(cpu, members, "test", time.monotonic(), ALLOWED)
        gov.HOLD = 0.5
        assert _tick_until(gov, lambda: not gov.pinned), f"not spread; demand {gov.demand:.2f}"
        assert gov.demand > gov.SPREAD_AT
        assert all(os.sched_getaffinity(p.pid) == set(ALLOWED) for p in busy)
        for p in busy:
            os.kill(p.pid, signal.SIGSTOP)
        assert _tick_until(gov, lambda: gov.pinned), f"not pinned again; demand {gov.demand:.2f}"
        assert all(os.sched_getaffinity(p.pid) == {cpu} for p in busy)
    finally:
        for p in busy:
            p.kill()
            p.wait()


def test_governor_leaves_a_quiet_engine_on_its_cpu():
    import time
    # measured only once it sleeps: its interpreter's start-up (under load, waiting for the CPU)
    # would count as demand
    idle = subprocess.Popen([sys.executable, "-c", "import time; print('asleep', flush=True); time.sleep(30)"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert idle.stdout.readline().strip() == "asleep"
        cpu = ALLOWED[-1]
        os.sched_setaffinity(idle.pid, {cpu})
        gov = affinity.Governor(cpu, lambda: [(idle.pid, idle.pid)], "test", time.monotonic(), ALLOWED)
        for _ in range(3):
            time.sleep(gov.PERIOD + 0.05)
            gov.tick(time.monotonic())
        assert gov.pinned and gov.demand < gov.PIN_AT
        assert os.sched_getaffinity(idle.pid) == {cpu}
    finally:
        idle.kill()
        idle.wait()


def test_governor_backs_off_when_it_has_to_spread_again_soon_after_pinning():
    """A load that comes and goes: each quick re-spread doubles the hold time before pinning again."""
    gov = affinity.Governor(0, lambda: [], "test", 0.0, ALLOWED)
    gov._apply = lambda cpus: True      # no threads to move: the timing rule alone
    gov._spread(10.0)
    assert gov.hold == gov.HOLD          # the first spread: no back-off
    gov._pin(13.0)
    gov._spread(14.0)                    # spread again 1 s after pinning
    assert gov.hold == 2 * gov.HOLD
    gov._pin(20.0)
    gov._spread(1000.0)                  # a long quiet stretch resets it
    assert gov.hold == gov.HOLD


def test_thread_times_of_a_gone_thread_are_zero():
    assert affinity.thread_times_ns(2 ** 22 + 12345, 2 ** 22 + 12345) == (0, 0)
    assert affinity.thread_ids(2 ** 22 + 12345) == []


def test_governor_spreads_threads_that_wait_for_their_cpu_even_when_they_use_little_of_it():
    """Other processes keep the CPU busy: the engine uses 0.1 CPU but waits 0.4 for it -> spread; once
    its wait and demand are low for the hold time -> pinned again.  The rule alone: CPU and wait times
    are fed in (ns, cumulative), nothing is moved."""
    times = {"cpu": 0, "wait": 0}
    gov = affinity.Governor(0, lambda: [], "test", 0.0, ALLOWED)
    gov._totals = lambda: (times["cpu"], times["wait"])
    gov._last_ns = (0, 0)
    gov._apply = lambda cpus: True
    times.update(cpu=int(0.05e9), wait=int(0.2e9))          # 0.1 CPU used, 0.4 waiting, over 0.5 s
    gov.tick(0.5)
    assert not gov.pinned and abs(gov.wait - 0.4) < 1e-9
    for i in range(2, 12):                                   # quiet: 0.1 CPU, 0.02 waiting
        times.update(cpu=times["cpu"] + int(0.05e9), wait=times["wait"] + int(0.01e9))
        gov.tick(i * 0.5)
    assert gov.pinned


def test_governor_starts_spread_on_a_machine_busier_than_its_cpus(monkeypatch):
    gov = affinity.Governor(0, lambda: [], "test", 0.0, ALLOWED)
    gov._apply = lambda cpus: True
    monkeypatch.setattr(affinity, "_load_average", lambda: len(ALLOWED) - 0.5)
    gov.spread_if_busy(0.0)
    assert gov.pinned
    monkeypatch.setattr(affinity, "_load_average", lambda: len(ALLOWED) + 0.5)
    gov.spread_if_busy(0.0)
    assert not gov.pinned
