"""Site configurations: each is tested against the job script its provider really writes and submits
(only the scheduler's submission command is a stand-in, see conftest.py), and that script is then run by
bash with stand-ins of srun / mpiexec / aprun that start each task on this host -- so worker_init, the
faasx exports and the launcher line are exercised, not just read."""
from __future__ import annotations

import inspect
import os
import platform
import re
import socket
import time

import pytest

import faasx.configs as configs
from faasx.configs import SiteConfigError
from faasx.launchers import (AprunLauncher, MpiExecLauncher, ShifterLauncher, SingleNodeLauncher, SrunLauncher)

# The "manager command" submitted: it reports which task it is, when the block ends and whether
# worker_init ran, so the test sees the whole job script at work.
COMMAND = ('echo "rank=${SLURM_PROCID:-}${PMI_RANK:-}${ALPS_APP_PE:-} wt=$FAASX_WALLTIME_END '
           'init=${SITE_INIT:-missing}" >> "$OUT_FILE"')
WORKER_INIT = "export SITE_INIT=loaded"


def submit(kwargs: dict, tmp_path, tasks_per_node: int = 1) -> str:
    provider = kwargs["provider"]
    provider.script_dir = str(tmp_path / "scripts")
    os.makedirs(provider.script_dir, exist_ok=True)
    return provider.submit(COMMAND, tasks_per_node, "faasx.test")


def directives(script: str, prefix: str) -> list:
    return [line[len(prefix):].strip() for line in script.splitlines() if line.startswith(prefix)]


def launch_line(script: str, program: str) -> str:
    (line,) = [line for line in script.splitlines() if line.startswith(program + " ")]
    return line


def check_run(result, out_file, ranks, walltime_s: int):
    """The script ran every task once, after worker_init, with FAASX_WALLTIME_END = start + walltime."""
    assert result.returncode == 0, result.stdout + result.stderr
    with open(out_file) as f:
        lines = sorted(f.read().splitlines())
    assert [line.split()[0] for line in lines] == [f"rank={r}" for r in ranks]
    assert all(line.split()[2] == "init=loaded" for line in lines)
    for line in lines:
        end = int(line.split()[1][len("wt="):])
        assert abs(end - (time.time() + walltime_s)) < 60


# -- Polaris -------------------------------------------------------------------------------------------------

def test_polaris_script_and_run(tmp_path, schedulers, shims, run_script):
    kwargs = configs.polaris_executor_kwargs("MyProj", "debug-scaling", walltime="00:30:00", nodes_per_block=2,
                                             worker_init=WORKER_INIT, interface="lo")
    assert kwargs["address"] == "127.0.0.1", "the address of the named interface"
    assert kwargs["available_accelerators"] == 4 and kwargs["max_workers_per_node"] == 4
    provider = kwargs["provider"]
    assert type(provider).__module__.startswith("faasx.providers")
    assert isinstance(provider.launcher, MpiExecLauncher) and provider.launcher.bind_cmd == "--cpu-bind"
    job_id = submit(kwargs, tmp_path)
    assert job_id.startswith("4242.")
    record, script, path = schedulers.only()
    pbs = directives(script, "#PBS")
    for expected in ("-l select=2:ncpus=64:ngpus=4", "-l walltime=00:30:00", "-q debug-scaling", "-A MyProj",
                     "-l filesystems=home:eagle", "-l place=scatter"):
        assert expected in pbs, (expected, pbs)
    assert script.index(WORKER_INIT) < script.index("mpiexec ")
    assert launch_line(script, "mpiexec").startswith('mpiexec --cpu-bind none --ppn 1 -n 2 --hostfile "$faasx_hostfile"')
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("x3001c0s1b0n0\nx3001c0s1b0n0\nx3001c0s7b1n0\n")
    result = run_script(path, tmp_path, env={"PBS_NODEFILE": str(nodefile), "OUT_FILE": str(tmp_path / "out")})
    check_run(result, tmp_path / "out", ranks=[0, 1], walltime_s=1800)
    assert shims.calls("mpiexec")[0]["hostfile"] == ["x3001c0s1b0n0", "x3001c0s7b1n0"]


# -- Aurora --------------------------------------------------------------------------------------------------

def test_aurora_gives_each_worker_one_gpu_tile(tmp_path, schedulers, shims, run_script):
    kwargs = configs.aurora_executor_kwargs("MyProj", worker_init=WORKER_INIT)
    tiles = [f"{g}.{t}" for g in range(6) for t in range(2)]
    assert kwargs["available_accelerators"] == tiles and kwargs["max_workers_per_node"] == 12
    assert kwargs["address"] is None, "by default managers probe the login node's addresses"
    submit(kwargs, tmp_path)
    _, script, path = schedulers.only()
    pbs = directives(script, "#PBS")
    assert "-l select=1:ncpus=208" in pbs and "-l filesystems=home:flare" in pbs and "-q debug" in pbs
    assert not any("ngpus" in d for d in pbs), "Aurora allocates whole nodes; no ngpus resource"
    assert launch_line(script, "mpiexec").startswith("mpiexec --cpu-bind none --ppn 1 -n 1 ")
    result = run_script(path, tmp_path, env={"PBS_NODEFILE": "", "OUT_FILE": str(tmp_path / "out")})
    check_run(result, tmp_path / "out", ranks=[0], walltime_s=3600)


# -- Perlmutter ----------------------------------------------------------------------------------------------

def test_perlmutter_gpu_nodes(tmp_path, schedulers, shims, run_script):
    kwargs = configs.perlmutter_executor_kwargs("m1234_g", "debug", nodes_per_block=3, walltime="00:10:00",
                                                worker_init=WORKER_INIT, interface="lo")
    assert kwargs["available_accelerators"] == 4 and kwargs["max_workers_per_node"] == 4
    assert isinstance(kwargs["provider"].launcher, SrunLauncher)
    assert submit(kwargs, tmp_path) == "4242"
    record, script, path = schedulers.only()
    assert record["prog"] == "sbatch"
    sbatch = directives(script, "#SBATCH")
    for expected in ("--nodes=3", "--time=00:10:00", "--account=m1234_g", "--qos=debug", "--constraint=gpu",
                     "--gpus-per-node=4", "--exclusive", "--ntasks-per-node=1"):
        assert expected in sbatch, (expected, sbatch)
    assert launch_line(script, "srun").startswith(
        "srun --nodes=3 --ntasks=3 --ntasks-per-node=1 --kill-on-bad-exit=0 --label "
        "--cpus-per-task=128 --gpus-per-node=4 /bin/bash -c ")
    result = run_script(path, tmp_path, env={"OUT_FILE": str(tmp_path / "out")})
    check_run(result, tmp_path / "out", ranks=[0, 1, 2], walltime_s=600)


def test_perlmutter_cpu_nodes(tmp_path, schedulers, shims):
    kwargs = configs.perlmutter_executor_kwargs("m1234", constraint="cpu", interface="lo")
    assert "available_accelerators" not in kwargs and kwargs["max_workers_per_node"] == 128
    submit(kwargs, tmp_path)
    _, script, _ = schedulers.only()
    assert "--constraint=cpu" in directives(script, "#SBATCH")
    assert not any("gpus" in d for d in directives(script, "#SBATCH"))
    assert "--cpus-per-task=256 /bin/bash -c" in launch_line(script, "srun")
    with pytest.raises(SiteConfigError, match="'gpu' or 'cpu'"):
        configs.perlmutter_executor_kwargs("m1234", constraint="knl", interface="lo")


def test_perlmutter_managers_in_shifter_containers(tmp_path, schedulers, shims, run_script):
    kwargs = configs.perlmutter_executor_kwargs(
        "m1234_g", worker_init=WORKER_INIT, interface="lo",
        container={"type": "shifter", "image": "me/faasx:1", "binds": ["/global/cfs/cdirs/m1234:/data"]})
    launcher = kwargs["provider"].launcher
    assert isinstance(launcher, ShifterLauncher) and isinstance(launcher.launcher, SrunLauncher)
    submit(kwargs, tmp_path)
    _, script, path = schedulers.only()
    assert "/bin/bash -c 'shifter --image=docker:me/faasx:1 --volume=/global/cfs/cdirs/m1234:/data -- " \
           in launch_line(script, "srun")
    result = run_script(path, tmp_path, env={"OUT_FILE": str(tmp_path / "out")})
    check_run(result, tmp_path / "out", ranks=[0], walltime_s=1800)
    assert len(shims.calls("shifter")) == 1


# -- Frontier -------------------------------------------------------------------------------------------------

def test_frontier(tmp_path, schedulers, shims, run_script):
    kwargs = configs.frontier_executor_kwargs("abc123", nodes_per_block=2, worker_init=WORKER_INIT, interface="lo")
    assert kwargs["available_accelerators"] == 8 and kwargs["max_workers_per_node"] == 8
    submit(kwargs, tmp_path)
    _, script, path = schedulers.only()
    sbatch = directives(script, "#SBATCH")
    for expected in ("--account=abc123", "--partition=batch", "--nodes=2", "--time=00:30:00"):
        assert expected in sbatch, (expected, sbatch)
    assert "--cpus-per-task=56 --gpus-per-node=8 /bin/bash -c " in launch_line(script, "srun")
    result = run_script(path, tmp_path, env={"OUT_FILE": str(tmp_path / "out")})
    check_run(result, tmp_path / "out", ranks=[0, 1], walltime_s=1800)


# -- Theta (Cobalt) -------------------------------------------------------------------------------------------

def test_theta(tmp_path, schedulers, shims, run_script):
    schedulers.flavor = "cobalt"
    kwargs = configs.theta_executor_kwargs("FuncX", nodes_per_block=2, walltime="01:00:00", worker_init=WORKER_INIT)
    # managers reach Theta's login node through its host name (resolved there, as Parsl's Theta config did)
    assert kwargs["address"] == socket.gethostbyname(platform.node())
    assert kwargs["max_workers_per_node"] == 64 and "available_accelerators" not in kwargs
    assert isinstance(kwargs["provider"].launcher, AprunLauncher)
    assert submit(kwargs, tmp_path) == "4242"
    record, script, path = schedulers.only()
    argv = record["argv"]
    assert argv[:8] == ["-n", "2", "-t", "60", "-q", "debug-cache-quad", "-A", "FuncX"] and argv[8] == "-O"
    assert launch_line(script, "aprun").startswith("aprun -n 2 -N 1 -d 64 -j 1 -cc depth /bin/bash -c ")
    result = run_script(path, tmp_path, env={"OUT_FILE": str(tmp_path / "out")})
    check_run(result, tmp_path / "out", ranks=[0, 1], walltime_s=3600)


# -- generic Slurm and PBS ------------------------------------------------------------------------------------

def test_generic_slurm_cluster(tmp_path, schedulers, shims, run_script):
    kwargs = configs.slurm_cluster_executor_kwargs("gpu-a100", "proj7", qos="normal", cores_per_node=48,
                                                   mem_per_node=256, gpus_per_node=2, nodes_per_block=2,
                                                   walltime="02:00:00", worker_init=WORKER_INIT)
    assert kwargs["address"] is None and kwargs["available_accelerators"] == 2
    submit(kwargs, tmp_path)
    _, script, path = schedulers.only()
    sbatch = directives(script, "#SBATCH")
    for expected in ("--partition=gpu-a100", "--account=proj7", "--qos=normal", "--mem=256G", "--gpus-per-node=2",
                     "--cpus-per-task=48", "--nodes=2", "--time=02:00:00", "--exclusive"):
        assert expected in sbatch, (expected, sbatch)
    assert "--label --cpus-per-task=48 --gpus-per-node=2 /bin/bash -c " in launch_line(script, "srun")
    result = run_script(path, tmp_path, env={"OUT_FILE": str(tmp_path / "out")})
    check_run(result, tmp_path / "out", ranks=[0, 1], walltime_s=7200)


def test_generic_slurm_cluster_defaults_leave_slurm_defaults(tmp_path, schedulers):
    kwargs = configs.slurm_cluster_executor_kwargs()
    submit(kwargs, tmp_path)
    _, script, _ = schedulers.only()
    sbatch = " ".join(directives(script, "#SBATCH"))
    for absent in ("--partition", "--account", "--qos", "--gpus", "--cpus-per-task", "--mem"):
        assert absent not in sbatch
    assert launch_line(script, "srun").startswith("srun --nodes=1 --ntasks=1 --ntasks-per-node=1 --kill-on-bad-exit=0 "
                                                  "--label /bin/bash -c ")


def test_generic_pbs_pro_cluster_multi_node(tmp_path, schedulers, shims, run_script):
    kwargs = configs.pbs_cluster_executor_kwargs("proj", "workq", cpus_per_node=36, select_options="ngpus=2",
                                                 gpus_per_node=2, nodes_per_block=2, dialect="pbspro",
                                                 worker_init=WORKER_INIT)
    assert isinstance(kwargs["provider"].launcher, MpiExecLauncher)
    assert kwargs["available_accelerators"] == 2
    submit(kwargs, tmp_path)
    _, script, path = schedulers.only()
    assert "-l select=2:ncpus=36:ngpus=2" in directives(script, "#PBS")
    nodefile = tmp_path / "nodes"
    nodefile.write_text("n1\nn2\n")
    result = run_script(path, tmp_path, env={"PBS_NODEFILE": str(nodefile), "OUT_FILE": str(tmp_path / "out")})
    check_run(result, tmp_path / "out", ranks=[0, 1], walltime_s=3600)


def test_generic_torque_cluster_single_node(tmp_path, schedulers, shims, run_script):
    schedulers.flavor = "torque"  # qstat --version is refused: the provider detects Torque
    kwargs = configs.pbs_cluster_executor_kwargs(queue="batch", cpus_per_node=16, worker_init=WORKER_INIT)
    assert isinstance(kwargs["provider"].launcher, SingleNodeLauncher)
    submit(kwargs, tmp_path)
    _, script, path = schedulers.only()
    assert "-l nodes=1:ppn=16,walltime=01:00:00" in directives(script, "#PBS")
    result = run_script(path, tmp_path, env={"OUT_FILE": str(tmp_path / "out")})
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "out") as f:
        (line,) = f.read().splitlines()
    assert line.startswith("rank= wt=") and line.endswith("init=loaded")


@pytest.mark.parametrize("bad", [None, 0, "36"])
def test_generic_pbs_cluster_needs_the_cores_per_node(bad):
    with pytest.raises(SiteConfigError, match="cpus_per_node"):
        configs.pbs_cluster_executor_kwargs(cpus_per_node=bad)
    with pytest.raises(TypeError):
        configs.pbs_cluster_executor_kwargs()


# -- Kubernetes ------------------------------------------------------------------------------------------------

def test_kubernetes_pod(tmp_path):
    kwargs = configs.kubernetes_executor_kwargs("ghcr.io/me/faasx:1", namespace="science", cpu=4, memory="8Gi",
                                                gpus=1, max_blocks=10, worker_init=WORKER_INIT,
                                                image_pull_secrets=["regcred"], kubeconfig=str(tmp_path / "none"))
    assert kwargs["available_accelerators"] == 1 and kwargs["max_workers_per_node"] == 1
    assert kwargs["address"] is None
    provider = kwargs["provider"]
    assert (provider.init_blocks, provider.min_blocks, provider.max_blocks) == (0, 0, 10)
    # the manifest the provider would POST (built without contacting any API server)
    pod = provider._pod_manifest("faasx-test-0", COMMAND, 1)
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "ghcr.io/me/faasx:1"
    resources = container["resources"]
    assert resources["requests"]["cpu"] in ("4", 4, "4.0", 4.0) and resources["limits"]["memory"] == "8Gi"
    assert resources["limits"]["nvidia.com/gpu"] == "1"
    script = container["command"][-1]
    assert script.index(WORKER_INIT) < script.index("$OUT_FILE")
    assert pod["spec"].get("imagePullSecrets") == [{"name": "regcred"}]
    assert configs.kubernetes_executor_kwargs("img", cpu=0.5, kubeconfig=str(tmp_path / "none"))[
        "max_workers_per_node"] == 1


# -- common behaviour --------------------------------------------------------------------------------------------

SITE_ARGS = {
    "polaris": (("P",), {"interface": "lo"}),
    "aurora": (("P",), {}),
    "theta": (("P",), {}),
    "perlmutter": (("m1_g",), {"interface": "lo"}),
    "frontier": (("abc",), {"interface": "lo"}),
    "slurm_cluster": ((), {}),
    "pbs_cluster": ((), {"cpus_per_node": 8}),
    "kubernetes": (("img:1",), {"kubeconfig": "/nonexistent/kubeconfig"}),
}


def test_every_site_is_listed_and_tested():
    assert set(configs.SITES) == set(SITE_ARGS)


@pytest.mark.parametrize("site", sorted(SITE_ARGS))
def test_executor_options_pass_through_and_override(site):
    args, kw = SITE_ARGS[site]
    kwargs = configs.executor_kwargs(site, *args, prefetch_capacity=3, max_workers_per_node=2, **kw)
    assert kwargs["prefetch_capacity"] == 3 and kwargs["max_workers_per_node"] == 2
    with pytest.raises(SiteConfigError, match="provider is set by the site"):
        configs.executor_kwargs(site, *args, provider=object(), **kw)


@pytest.mark.parametrize("site", ["polaris", "perlmutter", "frontier"])
def test_a_missing_interface_says_what_to_do(site):
    args, _ = SITE_ARGS[site]
    with pytest.raises(SiteConfigError) as info:
        configs.executor_kwargs(site, *args, interface="faasx-no-such0")
    message = str(info.value)
    assert "faasx-no-such0" in message and "login node" in message and "address=" in message


@pytest.mark.parametrize("site", ["polaris", "perlmutter", "slurm_cluster"])
def test_an_explicit_address_wins(site):
    args, kw = SITE_ARGS[site]
    kw = dict(kw, interface="faasx-no-such0")
    assert configs.executor_kwargs(site, *args, address="10.1.2.3", **kw)["address"] == "10.1.2.3"


def test_unknown_site():
    with pytest.raises(SiteConfigError, match="unknown site 'summit'"):
        configs.executor_kwargs("summit")


def test_site_functions_document_their_parameters():
    for name, (kwargs_fn, config_fn) in configs.SITES.items():
        doc = inspect.getdoc(kwargs_fn)
        assert doc and "Parameters" in doc, name
        for param in inspect.signature(kwargs_fn).parameters:
            if param in ("account", "queue", "qos", "partition", "constraint", "image", "interface"):
                assert re.search(rf"\b{param}\b", doc), (name, param)
        assert config_fn.__name__ == name


def _faasx_executor():
    try:
        from faasx import FaaSExecutor
    except ImportError as e:  # the engine is written alongside; its tests decide when it is ready
        pytest.skip(f"engine not landed: faasx.FaaSExecutor is not importable ({e})")
    return FaaSExecutor


@pytest.mark.parametrize("site", sorted(SITE_ARGS))
def test_config_holds_one_faasx_executor_built_from_the_kwargs(site, tmp_path):
    FaaSExecutor = _faasx_executor()
    from parsl.config import Config
    args, kw = SITE_ARGS[site]
    cfg = configs.config(site, *args, label=f"{site}-x", config_options={"run_dir": str(tmp_path / "runinfo")},
                         **kw)
    assert isinstance(cfg, Config) and cfg.run_dir == str(tmp_path / "runinfo")
    (executor,) = cfg.executors
    assert isinstance(executor, FaaSExecutor) and executor.label == f"{site}-x"
    expected = configs.executor_kwargs(site, *args, **kw)
    assert type(executor.provider) is type(expected["provider"])
    assert repr(executor.provider) == repr(expected["provider"])
    if "available_accelerators" in expected:
        accel = expected["available_accelerators"]
        assert executor.available_accelerators == (
            [str(i) for i in range(accel)] if isinstance(accel, int) else list(accel))
    # and the same keyword arguments are valid for faasx.Executor (which passes them on)
    inspect.signature(FaaSExecutor).bind(label="x", **expected)
