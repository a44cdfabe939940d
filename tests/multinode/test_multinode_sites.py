"""The site configurations' multi-node launchers on the real multi-node Slurm cluster.

Perlmutter and Frontier start managers with ``srun``, Polaris and Aurora with Cray PALS' ``mpiexec``.
Each test builds the site's executor keyword arguments (``faasx.configs``) for 2-node blocks and runs
them here unchanged -- the site's launcher object, its accelerator list, its workers per node -- with
one substitution, because this cluster is not those machines:

- the provider: the site's own (``#SBATCH --constraint=gpu``, a QOS, ``#PBS -l select=...``) asks for
  what these nodes do not have, so a ``SlurmProvider`` on this cluster submits the block instead;
- the resource options only the real machine can satisfy: the command the site's launcher produces
  is run through a stand-in first on ``PATH`` that records its arguments exactly, then runs it for real
  -- ``srun`` without ``--gpus-per-node``/``--cpus-per-task`` (these nodes have no GPUs and 2 CPUs), and
  PALS' ``mpiexec`` as MPICH's Hydra (the same ``--ppn``/``-n``/``--hostfile``; PALS' ``--cpu-bind none``
  is Hydra's ``--bind-to none``).

So what runs across the nodes is the site's command, and the tests check both: the recorded command
line is exactly the site's, and one manager per node serves tasks with the site's devices per worker.
(``tests/configs`` checks each site's whole job script against stand-ins of the schedulers.)
"""
from __future__ import annotations

import os
import shutil

import pytest

from tests.support import wait_until

from mn_support import WORKER_INIT, serve_every_node, wait_for_managers


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEVICE_VARIABLE = {"perlmutter": "CUDA_VISIBLE_DEVICES", "frontier": "ROCR_VISIBLE_DEVICES",
                   "polaris": "CUDA_VISIBLE_DEVICES", "aurora": "ZE_AFFINITY_MASK"}


def device(seconds: float = 0.0) -> dict:
    """Which node ran this, and the accelerator its worker was given."""
    import os
    import socket
    import time
    time.sleep(seconds)
    return dict({k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "ZE_AFFINITY_MASK")},
                host=socket.gethostname())


SRUN_STANDIN = """#!/bin/bash
# records the site's srun command line, runs it without the options these nodes cannot satisfy
printf '%s\\0' "$@" > {log}
args=()
for a in "$@"; do case $a in --gpus-per-node=*|--cpus-per-task=*) ;; *) args+=("$a") ;; esac; done
exec {exe} "${{args[@]}}"
"""

PALS_STANDIN = """#!/bin/bash
# records the site's PALS mpiexec command line, runs it with MPICH's Hydra (--cpu-bind is --bind-to)
printf '%s\\0' "$@" > {log}
args=()
for a in "$@"; do if [ "$a" = --cpu-bind ]; then args+=(--bind-to); else args+=("$a"); fi; done
exec {exe} "${{args[@]}}"
"""


def standin(tmp_path, name: str, template: str, exe: str) -> tuple:
    """(worker_init putting the stand-in first on PATH, path of its record)."""
    real = shutil.which(exe)
    if real is None:
        pytest.fail(f"{exe} is not installed")
    bin_dir = tmp_path / "site-bin"
    bin_dir.mkdir()
    log = tmp_path / f"{name}.argv"
    (bin_dir / name).write_text(template.format(log=log, exe=real))
    (bin_dir / name).chmod(0o755)
    return f"{WORKER_INIT}\nexport PATH={bin_dir}:$PATH", log


def recorded(log) -> list:
    with open(log, "rb") as f:
        return f.read().decode().split("\0")[:-1]


SITES = {
    # site: (kwargs function arguments, launch program, the site's options the record must show)
    "perlmutter": (("m1234_g",), dict(qos="debug"), "srun",
                   ["--cpus-per-task=128", "--gpus-per-node=4"]),
    "frontier": (("ABC123",), {}, "srun", ["--cpus-per-task=56", "--gpus-per-node=8"]),
    "polaris": (("MyProject", "debug"), {}, "mpiexec", ["--cpu-bind", "none", "--ppn", "1", "-n", "2"]),
    "aurora": (("MyProject", "debug"), {}, "mpiexec", ["--cpu-bind", "none", "--ppn", "1", "-n", "2"]),
}


@pytest.mark.multinode
@pytest.mark.parametrize("site", sorted(SITES))
def test_site_launcher_runs_one_manager_per_node_with_the_sites_devices(site, multinode, tmp_path):
    """2-node blocks of the site's configuration: the launch line is the site's (recorded), one manager
    registers from each node, tasks run on both, and every worker has one of the site's devices
    (Perlmutter/Polaris ``CUDA_VISIBLE_DEVICES``, Frontier ``ROCR_VISIBLE_DEVICES``, Aurora
    ``ZE_AFFINITY_MASK`` tiles), a different one per worker of a node."""
    from faasx import configs
    args, params, program, site_options = SITES[site]
    kwargs = configs.executor_kwargs(site, *args, nodes_per_block=2, interface=None, **params)
    site_launcher = kwargs.pop("provider").launcher
    if program == "srun":
        init, log = standin(tmp_path, "srun", SRUN_STANDIN, "srun")
    else:
        init, log = standin(tmp_path, "mpiexec", PALS_STANDIN, "mpiexec.mpich")
    provider = multinode.provider(nodes_per_block=2, init_blocks=1, launcher=site_launcher, worker_init=init)
    options = {k: v for k, v in kwargs.items() if k != "address"}   # interface=None: managers probe
    assert kwargs.get("address") is None
    with multinode.executor(provider, **options) as ex:
        managers = wait_for_managers(ex, 2, block_id=0)
        hosts = multinode.cluster.job_nodes(ex.executor.blocks_to_job_id["0"])
        assert sorted(m["hostname"] for m in managers) == sorted(hosts)

        argv = recorded(log)
        at = argv.index("/bin/bash")
        for option in site_options:
            assert option in argv[:at], f"{site}: {option} missing from the launch line {argv[:at]}"
        assert "faasx-manager" in argv[-1]

        workers = managers[0]["worker_count"]
        assert workers >= 2, "one worker per node would prove nothing about distinct devices"
        accelerators = list(ex.executor.available_accelerators)
        expected = {(h, accelerators[w]) for h in hosts for w in range(workers)}
        seen = set()

        def all_devices_seen():
            for r in serve_every_node(ex, hosts, device):
                seen.add((r["host"], r[DEVICE_VARIABLE[site]]))
            return seen >= expected
        wait_until(all_devices_seen, timeout=60, interval=0, what=lambda: f"devices {expected}, seen {seen}")
        assert seen == expected, f"{site}: workers ran with devices {seen - expected} that are not the site's"


def test_the_readme_shows_the_launch_line_each_site_writes():
    """Each ``configs.<site>(...)`` line of the README's "Multi-node blocks per site" and the comment under
    it: the comment is the launch line that site's launcher writes for that block (up to the command;
    for mpiexec up to the host file, which the job fills in).  No cluster needed."""
    import re
    from faasx import configs
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    section = readme.split("### Multi-node blocks per site", 1)[1].split("\n###", 1)[0]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    pairs = re.findall(r"^configs\.(\w+)\((.*?)\)[^\n]*\n# ((?:srun|mpiexec) [^\n]*)", block, re.M)
    assert {site for site, _, _ in pairs} == {"perlmutter", "frontier", "polaris"}, pairs
    for site, call, shown in pairs:
        kwargs = eval(f"configs.executor_kwargs({site!r}, {call}, interface=None)", {"configs": configs})
        fragment = kwargs["provider"].launcher("<manager>", 1, kwargs["provider"].nodes_per_block)
        written = next(line for line in fragment.splitlines() if line.startswith(("srun ", "mpiexec ")))
        cut = " --hostfile " if shown.startswith("mpiexec") else " /bin/bash -c "
        assert written.split(cut)[0] == shown.split(cut)[0], f"{site}: README shows {shown!r}, faasx writes {written!r}"
