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
