"""Parsl ``retries`` through faasx.FaaSExecutor.

* An app that fails on its first try (a file counts the tries) succeeds on Parsl's retry.
* When retries run out, the app's own exception type is raised.
* A worker that dies under a task is a faasx system failure (``faasx.errors.WorkerLost``, with
  ``max_retries_on_system_failure=0``); Parsl's retry handler sees that exception and the retry,
  on the manager's replacement worker, succeeds.
"""
from __future__ import annotations

import pytest

from parsl import python_app

import faasx
from faasx.errors import WorkerLost
from faasx.providers import LocalProvider

from parsl_support import load_dfk, pythonpath_init, unload_dfk

T = 60
SEEN_FAILURES = []      # every exception Parsl's retry handler was given, in order


def record_failure(exc, task_record):
    SEEN_FAILURES.append((task_record["id"], exc))
    return 1            # each failure costs one retry, as without a handler


@python_app
def fails_on_first_try(counter_file):
    with open(counter_file, "a") as f:
        f.write("try\n")
    with open(counter_file) as f:
        tries = len(f.read().split())
    if tries == 1:
        raise RuntimeError("first try fails on purpose")
    return tries


@python_app
def always_fails(counter_file):
    with open(counter_file, "a") as f:
        f.write("try\n")
    raise KeyError("always")


@python_app
def dies_on_first_try(counter_file):
    import os
    with open(counter_file, "a") as f:
        f.write("try\n")
    with open(counter_file) as f:
        if len(f.read().split()) == 1:
            os._exit(7)           # the worker process dies under the task
    return os.getpid()


@pytest.fixture(scope="module")
def retry_dfk(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("parsl_retries"))
    ex = faasx.FaaSExecutor(label="fx", max_workers_per_node=2, heartbeat_period=1, heartbeat_threshold=5,
                            max_retries_on_system_failure=0,
                            provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1,
                                                   worker_init=pythonpath_init()))
    dfk = load_dfk(run_dir, ex, retries=1, retry_handler=record_failure)
    try:
        yield dfk
    finally:
        unload_dfk(dfk, run_dir)


def test_parsl_retries_rerun_a_failed_app(retry_dfk, tmp_path):
    counter = tmp_path / "tries.txt"
    fut = fails_on_first_try(str(counter))
    assert fut.result(timeout=T) == 2
    assert fut.task_record["try_id"] == 1 and fut.task_record["fail_count"] == 1
    failures = [e for tid, e in SEEN_FAILURES if tid == fut.tid]
    assert len(failures) == 1 and type(failures[0]) is RuntimeError and "first try" in str(failures[0])


def test_parsl_retries_exhausted_raise_original_type(retry_dfk, tmp_path):
    counter = tmp_path / "tries.txt"
    fut = always_fails(str(counter))
    with pytest.raises(KeyError, match="always"):
        fut.result(timeout=T)
    assert counter.read_text().split() == ["try", "try"]      # retries=1: two tries in all
    assert [type(e) for tid, e in SEEN_FAILURES if tid == fut.tid] == [KeyError, KeyError]


def test_lost_worker_surfaces_as_worker_lost_and_parsl_retry_recovers(retry_dfk, tmp_path):
    counter = tmp_path / "tries.txt"
    fut = dies_on_first_try(str(counter))
    assert isinstance(fut.result(timeout=T), int)
    assert counter.read_text().split() == ["try", "try"]
    failures = [e for tid, e in SEEN_FAILURES if tid == fut.tid]
    assert len(failures) == 1 and isinstance(failures[0], WorkerLost), failures
    assert fut.task_record["try_id"] == 1


