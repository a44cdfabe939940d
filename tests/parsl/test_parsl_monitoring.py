"""Parsl monitoring (MonitoringHub with resource monitoring) through faasx.FaaSExecutor.

Needs Parsl's monitoring extra (sqlalchemy); skipped without it.  Task, try and resource rows must
reach the database: the DFK's task records, and the per-task resource samples that Parsl's
monitor_wrapper takes on the faasx worker and sends back through the executor's
``remote_monitoring_radio`` (Parsl's filesystem radio by default).
"""
from __future__ import annotations

import sqlite3

import pytest

pytest.importorskip("sqlalchemy", reason="Parsl monitoring needs sqlalchemy (pip install 'parsl[monitoring]')")

from parsl import python_app
from parsl.monitoring import MonitoringHub

import faasx
from faasx.providers import LocalProvider

from parsl_support import load_dfk, pythonpath_init, unload_dfk

T = 60


@python_app
def busy(seconds):
    import time
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end:
        x += 1
    return x > 0


def test_monitoring_hub_records_tasks_and_resources(tmp_path):
    run_dir = str(tmp_path / "mon_run")
    db = tmp_path / "monitoring.db"
    ex = faasx.FaaSExecutor(label="fx", max_workers_per_node=2, heartbeat_period=1, heartbeat_threshold=5,
                            provider=LocalProvider(worker_init=pythonpath_init()))
    hub = MonitoringHub(logging_endpoint=f"sqlite:///{db}", resource_monitoring_enabled=True,
                        resource_monitoring_interval=0.2)
    dfk = load_dfk(run_dir, ex, monitoring=hub)
    try:
        futs = [busy(1.0) for _ in range(2)]
        assert [f.result(timeout=T) for f in futs] == [True, True]
        run_id = dfk.run_id
    finally:
        unload_dfk(dfk, run_dir)
    con = sqlite3.connect(str(db))
    try:
        tasks = con.execute("select task_func_name from task where run_id = ?", (run_id,)).fetchall()
        assert [t[0] for t in tasks] == ["busy", "busy"], tasks
        tries = con.execute("select task_executor, task_try_time_running, task_try_time_returned from try "
                            "where run_id = ?", (run_id,)).fetchall()
        assert len(tries) == 2 and all(t[0] == "fx" and t[1] and t[2] for t in tries), tries
        samples = con.execute("select count(*), count(distinct task_id) from resource where run_id = ?",
                              (run_id,)).fetchone()
        assert samples[0] >= 2 and samples[1] == 2, f"resource samples (rows, tasks): {samples}"
        blocks = con.execute("select distinct executor_label from block where run_id = ?", (run_id,)).fetchall()
        assert blocks == [("fx",)], blocks
    finally:
        con.close()
