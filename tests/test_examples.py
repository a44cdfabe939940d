"""Every example in examples/ runs as written (a fresh process each, in a scratch directory)."""
import os
import subprocess
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
EXPECTED = {
    "quickstart.py": "2 ** 10 = 1024",
    "parsl_apps.py": "sum of squares 0..9 = 285",
    "registered_and_batched.py": "grid minimum 0.000 at (1.0, 1.0)",
    "memoization.py": "'hits': 4",
    "accelerators.py": "GPU task ran with device",
    "mpi.py": "Parsl bash_app: allreduce sum over 4 ranks = 6",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name, tmp_path):
    out = subprocess.run([sys.executable, os.path.join(EXAMPLES, name)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert EXPECTED[name] in out.stdout, out.stdout


def test_every_example_is_tested():
    on_disk = {n for n in os.listdir(EXAMPLES) if n.endswith(".py")}
    assert on_disk <= set(EXPECTED) | {"containers.py"}, on_disk - set(EXPECTED)


@pytest.mark.podman
def test_containers_example_runs_its_demo_image(tmp_path):
    import shutil
    if shutil.which("podman") is None or shutil.which("busybox") is None:
        if os.environ.get("FAASX_REQUIRE_PODMAN") == "1":
            pytest.fail("FAASX_REQUIRE_PODMAN=1 but podman or busybox is missing")
        pytest.skip("podman or busybox not installed")
    conf = tmp_path / "containers.conf"   # runc and lowered ulimits, as this machine kind needs
    conf.write_text('[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n'
                    '[engine]\nruntime = "runc"\n')
    out = subprocess.run([sys.executable, os.path.join(EXAMPLES, "containers.py"), "--demo"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, CONTAINERS_CONF=str(conf)))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "inside the container: faasx demo image" in out.stdout and "on the host" in out.stdout, out.stdout
