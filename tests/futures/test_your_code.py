"""Your own code runs where you run it (issue 10, section 5).  Each test runs a real script, started
the way users start them (``python /path/to/main.py`` from another directory), against a local block."""
import os
import subprocess
import sys
import textwrap

HELPERS = "def square(x):\n    return x * x\n"

MAIN = textwrap.dedent("""
    import socket, sys
    import faasx
    from faasx.errors import SerializationError
    from helpers import square

    FACTOR = 3
    SOCK = socket.socket()

    def scaled(x):
        return FACTOR * x                 # an ordinary global of the script

    def scaled_or_fd(x, use_sock=False):
        if use_sock:                      # never taken, but SOCK cannot travel
            return SOCK.fileno()
        return FACTOR * x

    if __name__ == "__main__":
        with faasx.Executor(max_workers_per_node=1, run_dir=sys.argv[1],
                            heartbeat_period=0.5, heartbeat_threshold=3.0) as ex:
            def resubmit(x):
                return ex.submit(square, x).result()
            print("square", ex.submit(square, 7).result(timeout=60))
            print("scaled", ex.submit(scaled, 2).result(timeout=60))
            for fn in (scaled_or_fd, resubmit):
                try:
                    ex.submit(fn, 2)
                    print(fn.__name__, "submitted")
                except SerializationError as e:
                    print(fn.__name__, "SerializationError", e)
""")


def run(tmp_path):
    code = tmp_path / "project"
    code.mkdir()
    (code / "helpers.py").write_text(HELPERS)
    (code / "main.py").write_text(MAIN)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p and "project" not in p))
    out = subprocess.run([sys.executable, str(code / "main.py"), str(tmp_path / "run")], cwd="/", env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)


def test_a_module_next_to_the_script_and_the_scripts_globals_reach_the_workers(tmp_path):
    got = run(tmp_path)
    assert got["square"] == "49"
    assert got["scaled"] == "6"


def test_an_unpicklable_global_or_the_executor_itself_fails_at_submit_naming_it(tmp_path):
    got = run(tmp_path)
    assert got["scaled_or_fd"].startswith("SerializationError") and "'SOCK'" in got["scaled_or_fd"], got
    assert got["resubmit"].startswith("SerializationError") and "cannot submit to the executor" in got["resubmit"], got
