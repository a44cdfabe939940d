"""Issue 10, section 4 (last item): options are checked at construction, as the stdlib pools check
``max_workers``, with the option's name in the error -- for ``FaaSExecutor`` and ``faasx.Executor``,
before anything is started or written."""
from __future__ import annotations

import concurrent.futures
import math
import os

import pytest

import faasx

BAD_VALUES = [
    ("max_workers_per_node", 0), ("max_workers_per_node", -2), ("max_workers_per_node", 1.5),
    ("cores_per_worker", 0), ("cores_per_worker", -1.0), ("mem_per_worker", 0.0),
    ("prefetch_capacity", -1), ("heartbeat_period", 0.0), ("heartbeat_period", math.nan),
    ("heartbeat_threshold", -1.0), ("drain_period", 0.0), ("drain_margin", -5.0),
    ("max_retries_on_system_failure", -1), ("max_payload_size", 0), ("address_probe_timeout", 0.0),
    ("worker_port", 0), ("worker_port", 70000), ("worker_port_range", (55000, 54000)),
    ("interchange_port_range", (0, 10)), ("available_accelerators", -1), ("available_accelerators", ["0", "0"]),
    ("max_container_types", 0), ("container_start_timeout", 0.0), ("label", ""), ("address", ""),
    ("loopback_address", "10.0.0.1"), ("engine_cpu", -1),
]


@pytest.mark.parametrize("name,value", BAD_VALUES, ids=[f"{n}={v!r}" for n, v in BAD_VALUES])
def test_faas_executor_rejects_a_bad_value_naming_the_option(name, value):
    with pytest.raises(ValueError, match=name):
        faasx.FaaSExecutor(**{name: value})


@pytest.mark.parametrize("name,value", BAD_VALUES[:8] + [("strategy", "fastest"), ("strategy_period", 0),
                                                         ("max_idletime", -1)])
def test_executor_rejects_a_bad_value_before_starting_anything(name, value, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match=name):
        faasx.Executor(run_dir=str(run_dir), **{name: value})
    assert not run_dir.exists(), "nothing may be written for an executor that was refused"


def test_a_wrong_type_or_an_unknown_option_names_it():
    from typeguard import TypeCheckError      # FaaSExecutor's signature is typechecked, as Parsl's HTEX is
    with pytest.raises((TypeError, TypeCheckError), match="heartbeat_period"):
        faasx.FaaSExecutor(heartbeat_period="5")
    with pytest.raises(TypeError, match="max_wrokers_per_node"):
        faasx.Executor(max_wrokers_per_node=2)


def test_heartbeat_threshold_must_exceed_the_period():
    with pytest.raises(ValueError, match="heartbeat_threshold .* must exceed heartbeat_period"):
        faasx.FaaSExecutor(heartbeat_period=5.0, heartbeat_threshold=5.0)


@pytest.mark.parametrize("value", [0, -1])
def test_max_workers_of_zero_or_less_raises_as_in_the_stdlib(value):
    with pytest.raises(ValueError) as stdlib:
        concurrent.futures.ProcessPoolExecutor(max_workers=value)
    with pytest.raises(ValueError, match="max_workers must be greater than 0") as ours:
        faasx.Executor(max_workers=value)
    assert str(stdlib.value).split(",")[0] in str(ours.value)


def test_max_workers_and_max_workers_per_node_together_is_an_error():
    with pytest.raises(TypeError, match="max_workers or max_workers_per_node"):
        faasx.Executor(max_workers=2, max_workers_per_node=2)


def test_max_workers_is_the_stdlib_spelling_of_max_workers_per_node(tmp_path):
    def pid():
        import os
        return os.getpid()
    with faasx.Executor(max_workers=2, run_dir=str(tmp_path / "run"), heartbeat_period=0.5,
                        heartbeat_threshold=10) as ex:
        assert ex.executor.max_workers_per_node == 2
        pids = {f.result(timeout=60) for f in [ex.submit(pid) for _ in range(40)]}
        managers = ex.executor.connected_managers()
    assert managers and managers[0]["worker_count"] == 2, managers
    assert 1 <= len(pids) <= 2 and os.getpid() not in pids
