"""sys.path for the whole test suite, set up here once (no test directory touches it):

* the repository root, so that every test directory imports ``tests.support`` (and the benchmark
  smoke test imports ``benchmarks``);
* ``tests/launchers``, for ``launch_shims`` (the launcher tests and the site-config tests use it);
* ``tests/fakes`` and ``tests/fakes/cobalt``, for the fake Kubernetes API and Cobalt commands;
* ``tests/multinode``, for ``mn_support`` (the multi-node modules' shared helpers).

The helper directories go at the end of the path, so that nothing there can shadow a real module.
"""
import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
for _path in (os.path.join(ROOT, "tests", "launchers"), os.path.join(ROOT, "tests", "fakes"),
              os.path.join(ROOT, "tests", "fakes", "cobalt"), os.path.join(ROOT, "tests", "multinode")):
    if _path not in sys.path:
        sys.path.append(_path)
