"""FaaSExecutor as a Parsl config object, and a plain Parsl script.

* RepresentationMixin: every ``__init__`` argument is stored under its own name, so ``repr`` of the
  executor and of a ``parsl.Config`` holding it work (with Parsl's strict ``_validate_repr`` on).
* ``working_dir`` is assignable.
* A Parsl *script* (functions, lambdas, closures, classes and exceptions defined in ``__main__``)
  runs unchanged with ``faasx.FaaSExecutor`` in place of ``HighThroughputExecutor``.
"""
from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap

import parsl
from parsl.utils import RepresentationMixin

import faasx
from faasx.providers import LocalProvider

from parsl_support import faasx_processes, wait_until

T = 60


# ---- RepresentationMixin -----------------------------------------------------------------------

NON_DEFAULTS = dict(
    label="fx_repr", launch_cmd="faasx-manager --block-id {block_id}", address="127.0.0.1", loopback_address="127.0.0.1", worker_port=54321,
    worker_port_range=(54100, 54200), interchange_port_range=(55100, 55200), storage_access=[],
    working_dir="/tmp/somewhere", worker_debug=True, cores_per_worker=0.5, mem_per_worker=1.5,
    max_workers_per_node=3, available_accelerators=["0", "1", "2"], prefetch_capacity=7,
    heartbeat_period=2.0, heartbeat_threshold=9.0, drain_period=3600.0, drain_margin=30.0,
    max_retries_on_system_failure=4, max_payload_size=1 << 20, encrypted=False, block_error_handler=False,
    address_probe_timeout=12.0, worker_logdir_root="/tmp/wlogs", memo_store="/tmp/memo.sqlite",
    max_container_types=3, container_python="/opt/py/bin/python3", container_start_timeout=60.0, engine_cpu=1,
    shared_memory=False,
)


def test_every_init_argument_is_an_attribute_of_the_same_name():
    params = [p for p in inspect.signature(faasx.FaaSExecutor.__init__).parameters if p != "self"]
    missing = set(params) - set(NON_DEFAULTS) - {"provider", "remote_monitoring_radio"}
    assert not missing, f"extend NON_DEFAULTS with {missing}"
    provider = LocalProvider(init_blocks=0, max_blocks=3)
    ex = faasx.FaaSExecutor(provider=provider, **NON_DEFAULTS)
    for name in params:
        assert hasattr(ex, name), f"FaaSExecutor does not store __init__ argument {name!r}"
    for name, value in NON_DEFAULTS.items():
        if name == "block_error_handler":   # Parsl's base class turns the bool into its handler (as for HTEX)
            assert callable(ex.block_error_handler)
            continue
        assert getattr(ex, name) == value, f"{name}: stored {getattr(ex, name)!r}, given {value!r}"
    assert ex.provider is provider


def test_repr_of_executor_and_config(monkeypatch):
    monkeypatch.setattr(RepresentationMixin, "_validate_repr", True)   # Parsl's strict mode
    ex = faasx.FaaSExecutor(provider=LocalProvider(init_blocks=0, max_blocks=3), **NON_DEFAULTS)
    text = repr(ex)
    assert text.startswith("FaaSExecutor(") and "<unrecorded>" not in text
    for name in inspect.signature(faasx.FaaSExecutor.__init__).parameters:
        if name != "self":
            assert f"{name}=" in text, f"{name} missing from repr"
    assert "max_workers_per_node=3" in text and "prefetch_capacity=7" in text and "max_blocks=3" in text
    config_text = repr(parsl.Config(executors=[ex], strategy="htex_auto_scale", max_idletime=5))
    assert "FaaSExecutor(" in config_text and "label='fx_repr'" in config_text
    assert "<unrecorded>" not in config_text
    # the default executor (default provider) too
    assert repr(faasx.FaaSExecutor()).startswith("FaaSExecutor(")


def test_working_dir_is_assignable():
    ex = faasx.FaaSExecutor(label="wd")
    assert ex.working_dir is None
    ex.working_dir = "/tmp/a"
    assert ex.working_dir == "/tmp/a"
    assert "working_dir='/tmp/a'" in repr(ex)


# ---- a plain Parsl script: everything defined in __main__ -------------------------------------------

SCRIPT = textwrap.dedent('''
    import json, re, sys, traceback
    import psutil
    import parsl
    from parsl import python_app, bash_app, join_app
    import faasx

    class Box:
        def __init__(self, v):
            self.v = v

    class ScriptError(Exception):
        pass

    @python_app
    def box(v):
        return Box(v)

    @python_app
    def unbox(b, k=1):
        return b.v * k

    @python_app
    def fail(msg):
        raise ScriptError(msg)

    @bash_app
    def shout(word, stdout=None):
        return "echo " + word.upper()

    @join_app
    def twice(v):
        return unbox(box(v), k=2)

    def main(run_dir, out_file):
        config = parsl.Config(executors=[faasx.FaaSExecutor(label="fx", max_workers_per_node=2,
                                                            heartbeat_period=1, heartbeat_threshold=5)],
                              run_dir=run_dir, strategy_period=0.5)
        with parsl.load(config):
            factor = 3
            closure = python_app(lambda x: x * factor)
            results = {
                "unbox": unbox(box(21)).result(timeout=60),
                "lambda": closure(5).result(timeout=60),
                "join": twice(4).result(timeout=60),
                "bash": shout("hi", stdout=out_file).result(timeout=60),
            }
            try:
                fail("from main").result(timeout=60)
            except ScriptError as e:
                results["exception"] = [type(e).__name__, str(e), "fail" in "".join(traceback.format_exception(e))]
            pids = [p.pid for p in psutil.Process().children(recursive=True)
                    if re.search(r"(?<![\\w-])faasx-(interchange|manager|worker)(?![\\w-])", " ".join(p.cmdline()))]
        parsl.clear()
        with open(out_file) as f:
            results["bash_stdout"] = f.read()
        print(json.dumps(results))
        print(json.dumps(pids))

    if __name__ == "__main__":
        main(sys.argv[1], sys.argv[2])
''')


def test_parsl_script_with_main_module_functions_and_classes(tmp_path):
    script = tmp_path / "workflow.py"
    script.write_text(SCRIPT)
    run_dir = str(tmp_path / "script_run")
    proc = subprocess.run([sys.executable, str(script), run_dir, str(tmp_path / "shout.out")],
                          capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-2])
    pids = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(pids) >= 4, f"expected interchange, manager and two workers, got {pids}"
    assert results == {"unbox": 21, "lambda": 15, "join": 8, "bash": 0,
                       "exception": ["ScriptError", "from main", True], "bash_stdout": "HI\n"}, results
    wait_until(lambda: not faasx_processes(run_dir, pids), 20,
               lambda: f"no faasx process of the script's run left: {faasx_processes(run_dir, pids)}")
