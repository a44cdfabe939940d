"""The faasx engine with its manager started by PodmanLauncher: a real block whose manager and workers run
inside a podman container (the busybox test image, with the host's Python and this checkout bound in
read-only), connect out to the interchange over the host network, and run a task there."""
from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))


def inside_the_container():
    """The task: what only the image has, and what the manager's environment says."""
    import os
    with open("/etc/faasx-marker") as f:
        return f.read().strip(), "FAASX_WALLTIME_END" in os.environ or "FAASX_BLOCK_JOB_ID" in os.environ


@pytest.mark.podman
def test_a_block_whose_manager_runs_in_podman_serves_tasks(tmp_path, podman_image, image_marker, python_binds,
                                                           monkeypatch, wait_for, podman_containers):
    import faasx
    from faasx.launchers import PodmanLauncher, SingleNodeLauncher
    from faasx.providers import LocalProvider

    image, engine_env = podman_image
    for name, value in engine_env.items():
        monkeypatch.setenv(name, value)  # the block's job script runs podman with this environment
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    launcher = PodmanLauncher(
        image, binds=[str(run_dir), f"{ROOT}:{ROOT}:ro"] + python_binds,
        # the image has no Python of its own: the host's interpreter and console scripts, and this checkout
        env={"PATH": f"{os.path.dirname(sys.executable)}:/usr/bin:/bin",
             "PYTHONPATH": os.pathsep.join([ROOT, HERE])},
        launcher=SingleNodeLauncher(debug=False))
    provider = LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1, launcher=launcher, walltime="00:10:00")
    with faasx.Executor(provider=provider, run_dir=str(run_dir), max_workers_per_node=1, heartbeat_period=1,
                        heartbeat_threshold=5) as ex:
        marker, has_faasx_env = ex.submit(inside_the_container).result(timeout=120)
        assert marker == image_marker, "the task ran inside the image"
        assert has_faasx_env, "the job's FAASX_* variables reached the manager in the container"
        assert len(podman_containers(image, engine_env)) == 1
    wait_for(lambda: podman_containers(image, engine_env) == [], timeout=60,
             what="the block's container to be gone after shutdown")
