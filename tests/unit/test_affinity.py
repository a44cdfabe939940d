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
