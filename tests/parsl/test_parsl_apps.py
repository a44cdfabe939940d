"""Parsl's app features through faasx.FaaSExecutor, on one real DFK with one real local block.

Everything here runs through real processes: the DFK submits to a FaaSExecutor, whose interchange
process routes to a manager started by a LocalProvider block, which runs two faasx-worker
processes.  The module's DFK is loaded once; its teardown proves that cleanup leaves no faasx
process of the run behind.
"""
from __future__ import annotations

import dataclasses
import functools
import http.server
import os
import threading
import time
import traceback
from types import SimpleNamespace

import pytest

from parsl import AUTO_LOGNAME, File, bash_app, join_app, python_app
from parsl.app.errors import AppTimeout, BashExitFailure
from parsl.dataflow.errors import DependencyError
from parsl.dataflow.memoization import BasicMemoizer
from parsl.executors.errors import InvalidResourceSpecification as ParslInvalidResourceSpecification

import faasx
import faasx.errors
from faasx.providers import LocalProvider

from parsl_support import load_dfk, pythonpath_init, unload_dfk, wait_until

T = 60  # seconds: the most any single result may take


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("parsl_apps"))
    working_dir = os.path.join(run_dir, "staging_area")
    executor = faasx.FaaSExecutor(
        label="fx", max_workers_per_node=2, heartbeat_period=1, heartbeat_threshold=5,
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1, worker_init=pythonpath_init()))
    executor.working_dir = working_dir          # as a user (or Parsl's staging code) assigns it
    # Parsl 2026's spelling of Config(app_cache=True): an explicit memoizer with memoize=True
    dfk = load_dfk(run_dir, executor, memoizer=BasicMemoizer(memoize=True))
    try:
        yield SimpleNamespace(dfk=dfk, executor=executor, run_dir=run_dir, working_dir=working_dir)
    finally:
        unload_dfk(dfk, run_dir)


# ---- apps defined at module level (pickled by reference; importable on the workers) -------------

@dataclasses.dataclass
class Point:
    x: int
    y: int


class CustomAppError(Exception):
    def __init__(self, message, code):
        super().__init__(message, code)
        self.code = code


@python_app
def add(a, b):
    return a + b


@python_app
def make_point(x, y):
    return Point(x, y)


@python_app
def scale_point(p, k):
    return Point(p.x * k, p.y * k)


@bash_app
def write_file(path, text):
    return f'printf "%s" {text!r} > {path!r}'


@bash_app
def exit_with(code):
    return f"echo about to fail; exit {code}"


@bash_app
def bash_echo(message, stdout=None, stderr=None):
    return f"echo out:{message}; echo err:{message} 1>&2"


@python_app
def python_echo(message, stdout=None, stderr=None):
    import contextlib
    import sys
    with open(stdout, "w") as out, open(stderr, "w") as err, \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        print(f"out:{message}")
        print(f"err:{message}", file=sys.stderr)
    return message


@python_app
def spin(seconds, pid_file=None, walltime=None):
    import os
    import time
    if pid_file:
        with open(pid_file, "w") as f:
            f.write(str(os.getpid()))
    end = time.monotonic() + seconds
    while time.monotonic() < end:      # Parsl's walltime interrupts Python code between bytecodes
        time.sleep(0.01)
    return os.getpid()


@bash_app
def bash_sleep(seconds, walltime=None):
    return f"sleep {seconds}"


@python_app
def raise_custom(message):
    raise CustomAppError(message, 42)


@python_app
def raise_value_error(x):
    return int(x)          # ValueError: invalid literal for int()


@python_app
def with_spec(x, parsl_resource_specification={}):
    return x * 2


@python_app
def sum_inputs(inputs=()):
    return sum(inputs)


@join_app
def fib(n):
    if n < 2:
        return add(n, 0)
    return add(fib(n - 1), fib(n - 2))


@join_app
def fan_out(n):
    return [add(i, i) for i in range(n)]


@python_app(cache=True)
def memo_count(x, counter_file):
    with open(counter_file, "a") as f:
        f.write(f"{x}\n")
    return x * 10


@python_app
def read_staged(inputs=()):
    with open(inputs[0].filepath) as f:
        return f.read()


# ---- python apps -------------------------------------------------------------------------------

def test_python_app_results(fx):
    futures = [add(i, i) for i in range(40)]
    assert [f.result(timeout=T) for f in futures] == [2 * i for i in range(40)]
    # tasks run in the block's worker processes (not in this one), and both workers take part
    pids = set()

    def both_workers_seen():
        pids.update(f.result(timeout=T) for f in [spin(0.2) for _ in range(4)])
        return len(pids) >= 2
    wait_until(both_workers_seen, 30, lambda: f"tasks on two worker processes (saw {pids})")
    assert os.getpid() not in pids and len(pids) == 2, pids


def test_lambda_app(fx):
    triple = python_app(lambda x: x * 3)
    assert [triple(i).result(timeout=T) for i in range(3)] == [0, 3, 6]


def test_closure_app(fx):
    def make_adder(n):
        offset = {"n": n}

        @python_app
        def adder(x):
            return x + offset["n"]
        return adder

    add5, add7 = make_adder(5), make_adder(7)
    assert add5(1).result(timeout=T) == 6
    assert add7(1).result(timeout=T) == 8


def test_partial_and_nested_function_apps(fx):
    def power(base, exp):
        return base ** exp

    square = python_app(functools.partial(power, exp=2), executors=["fx"])
    assert square(9).result(timeout=T) == 81


def test_module_level_functions_and_classes(fx):
    p = make_point(2, 3)
    q = scale_point(p, 10)             # a future of a module-level class instance as an argument
    result = q.result(timeout=T)
    assert isinstance(result, Point) and result == Point(20, 30)


# ---- bash apps ---------------------------------------------------------------------------------

def test_bash_app_return_code_zero(fx, tmp_path):
    target = tmp_path / "bash_out.txt"
    assert write_file(str(target), "hello from bash").result(timeout=T) == 0
    assert target.read_text() == "hello from bash"


def test_bash_app_failure_raises_bash_exit_failure(fx):
    fut = exit_with(3)
    with pytest.raises(BashExitFailure) as info:
        fut.result(timeout=T)
    assert info.value.exitcode == 3
    assert "exit code 3" in str(info.value)


# ---- join apps and dependencies ----------------------------------------------------------------

def test_join_app_returning_a_future(fx):
    assert fib(8).result(timeout=T) == 21


def test_join_app_returning_a_list_of_futures(fx):
    assert fan_out(5).result(timeout=T) == [0, 2, 4, 6, 8]


def test_dag_of_dependencies_and_futures_as_arguments(fx):
    # diamond: a -> (b, c) -> d, plus futures inside inputs=[...]
    a = add(1, 2)
    b = add(a, 10)
    c = add(a, 100)
    d = add(b, c)
    total = sum_inputs(inputs=[a, b, c, d])
    assert d.result(timeout=T) == 116
    assert total.result(timeout=T) == 3 + 13 + 103 + 116
    # a plain concurrent.futures Future is a dependency too
    from concurrent.futures import Future
    external: Future = Future()
    waiting = add(external, 1)
    time.sleep(0.2)
    assert not waiting.done()
    external.set_result(41)
    assert waiting.result(timeout=T) == 42


def test_failed_dependency_propagates(fx):
    bad = raise_value_error("not a number")
    child = add(bad, 1)
    with pytest.raises(DependencyError):
        child.result(timeout=T)


# ---- stdout / stderr ---------------------------------------------------------------------------

def test_bash_app_stdout_stderr_redirection(fx, tmp_path):
    out, err = tmp_path / "b.out", tmp_path / "b.err"
    fut = bash_echo("hi", stdout=str(out), stderr=str(err))
    assert fut.result(timeout=T) == 0
    assert out.read_text() == "out:hi\n"
    # Parsl's bash runner writes the command between markers to stderr first (with HTEX too)
    assert err.read_text().endswith("--> end executable <--\nerr:hi\n"), err.read_text()
    # append mode, given as (path, mode)
    assert bash_echo("again", stdout=(str(out), "a"), stderr=(str(err), "a")).result(timeout=T) == 0
    assert out.read_text() == "out:hi\nout:again\n"
    lines = err.read_text().splitlines()
    assert [l for l in lines if l.startswith("err:")] == ["err:hi", "err:again"], lines


def test_bash_app_auto_logname(fx):
    fut = bash_echo("auto", stdout=AUTO_LOGNAME, stderr=AUTO_LOGNAME)
    assert fut.result(timeout=T) == 0
    assert fut.stdout.startswith(fx.dfk.run_dir) and fut.stdout != fut.stderr
    with open(fut.stdout) as f:
        assert f.read() == "out:auto\n"
    with open(fut.stderr) as f:
        assert f.read().endswith("\nerr:auto\n")


def test_python_app_stdout_stderr_files(fx, tmp_path):
    # Parsl hands a python app its stdout/stderr paths (it does not redirect Python apps itself,
    # with HTEX either); AUTO_LOGNAME is resolved by the DFK before the task reaches faasx.
    out, err = tmp_path / "p.out", tmp_path / "p.err"
    fut = python_echo("py", stdout=str(out), stderr=str(err))
    assert fut.result(timeout=T) == "py"
    assert fut.stdout == str(out) and fut.stderr == str(err)
    assert out.read_text() == "out:py\n"
    assert err.read_text() == "err:py\n"
    auto = python_echo("auto", stdout=AUTO_LOGNAME, stderr=AUTO_LOGNAME)
    assert auto.result(timeout=T) == "auto"
    with open(auto.stdout) as f:
        assert f.read() == "out:auto\n"
    with open(auto.stderr) as f:
        assert f.read() == "err:auto\n"


# ---- walltime ----------------------------------------------------------------------------------

def test_python_walltime_raises_app_timeout_and_worker_survives(fx, tmp_path):
    pid_file = tmp_path / "timed_out_worker.pid"
    t0 = time.monotonic()
    fut = spin(30, pid_file=str(pid_file), walltime=0.5)
    with pytest.raises(AppTimeout):
        fut.result(timeout=T)
    assert time.monotonic() - t0 < 15, "the walltime did not cut the 30 s app short"
    timed_out_pid = int(pid_file.read_text())
    # The very worker process that was interrupted runs further tasks (it was not replaced).
    seen = set()

    def worker_answered():
        seen.update(f.result(timeout=T) for f in [spin(0.2) for _ in range(2)])
        return timed_out_pid in seen
    wait_until(worker_answered, 30, lambda: f"worker {timed_out_pid} to run a task again (saw {seen})")
    # and a walltime long enough lets the app finish
    assert isinstance(spin(0.05, walltime=10).result(timeout=T), int)


def test_bash_walltime_raises_app_timeout(fx):
    t0 = time.monotonic()
    with pytest.raises(AppTimeout):
        bash_sleep(10, walltime=0.5).result(timeout=T)
    assert time.monotonic() - t0 < 15
    assert add(1, 1).result(timeout=T) == 2


# ---- exceptions --------------------------------------------------------------------------------

def test_custom_exception_keeps_type_and_remote_traceback(fx):
    fut = raise_custom("custom failure")
    with pytest.raises(CustomAppError) as info:
        fut.result(timeout=T)
    exc = info.value
    assert type(exc) is CustomAppError
    assert exc.code == 42 and exc.args == ("custom failure", 42)
    text = "".join(traceback.format_exception(exc))
    assert "raise_custom" in text, text                       # the remote frame
    assert 'raise CustomAppError(message, 42)' in text, text   # its source line
    assert fut.exception(timeout=T) is exc


def test_value_error_keeps_type_and_remote_traceback(fx):
    with pytest.raises(ValueError, match="invalid literal for int") as info:
        raise_value_error("abc").result(timeout=T)
    assert type(info.value) is ValueError
    text = "".join(traceback.format_exception(info.value))
    assert "raise_value_error" in text and "return int(x)" in text, text


# ---- resource specification --------------------------------------------------------------------

def test_resource_specification_priority_accepted(fx):
    futs = [with_spec(i, parsl_resource_specification={"priority": 1}) for i in range(3)]
    assert [f.result(timeout=T) for f in futs] == [0, 2, 4]


def test_resource_specification_unknown_key_is_a_clear_error(fx):
    fut = with_spec(1, parsl_resource_specification={"foo": 1})
    with pytest.raises(ParslInvalidResourceSpecification) as info:
        fut.result(timeout=T)
    assert isinstance(info.value, faasx.errors.InvalidResourceSpecification)
    assert "foo" in str(info.value)
    assert "priority" in str(info.value), "the message should list the accepted keys"
    assert info.value.invalid_keys == {"foo"}
    # the executor is fine afterwards
    assert with_spec(2).result(timeout=T) == 4


# ---- memoization -------------------------------------------------------------------------------

def test_parsl_app_cache_memoizes(fx, tmp_path):
    counter = tmp_path / "memo_calls.txt"
    first = memo_count(7, str(counter))
    assert first.result(timeout=T) == 70
    second = memo_count(7, str(counter))
    assert second.result(timeout=T) == 70
    assert second.task_record["from_memo"] is True
    other = memo_count(8, str(counter))
    assert other.result(timeout=T) == 80
    assert counter.read_text().split() == ["7", "8"], "the memoized call must not run again"


# ---- working_dir -------------------------------------------------------------------------------

def test_working_dir_assigned_is_used_by_parsl_staging(fx, tmp_path):
    executor = fx.dfk.executors["fx"]
    assert executor.working_dir == fx.working_dir
    served = tmp_path / "served"
    served.mkdir()
    (served / "payload.txt").write_text("staged through working_dir")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))

    class Quiet(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass

    server = Quiet(("127.0.0.1", 0), lambda *a: handler(*a))
    server.RequestHandlerClass.log_message = lambda *a, **k: None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/payload.txt"
        text = read_staged(inputs=[File(url)]).result(timeout=T)
    finally:
        server.shutdown()
        server.server_close()
    assert text == "staged through working_dir"
    assert os.path.exists(os.path.join(fx.working_dir, "payload.txt"))
    # and it stays assignable while the DFK runs
    executor.working_dir = str(tmp_path / "elsewhere")
    assert executor.working_dir == str(tmp_path / "elsewhere")
    executor.working_dir = fx.working_dir
