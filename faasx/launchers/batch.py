"""Launchers that start copies of the manager command inside a block: on one node, or across the
nodes of an allocation through srun, aprun or mpiexec.

A provider writes ``launcher(command, tasks_per_node, nodes_per_block)`` -- a shell fragment -- at the
end of its job script.  These launchers keep Parsl's classes and constructor arguments (they subclass
them, so ``isinstance`` checks against Parsl's names still hold) but generate different fragments,
fixing what goes wrong with Parsl's in production:

- Parsl's fragments end with ``[[ "$debug" == "1" ]] && echo ...``: with ``debug=False`` that line
  fails, and the whole job exits 1 although every worker succeeded.  Here the exit status is the
  launched command's.
- Parsl's ``SingleNodeLauncher`` runs ``wait $PID`` under ``set -e``, so the first copy that fails makes
  the script exit with the other copies still running and ``fail_on_any=False`` ignored.
- Parsl's srun/aprun/mpiexec launchers copy the command into ``cmd_$JOBNAME.sh`` through an *unquoted*
  heredoc: ``$VARS``, backticks and ``$(...)`` in the command are expanded on the head node while the
  script is written (not on each node), and two blocks whose job name is equal -- or a provider that
  does not export ``JOBNAME`` -- overwrite each other's file.  Here the command travels as one quoted
  ``bash -c`` argument: no file, no early expansion.
- ``AprunLauncher`` ran ``aprun ... &`` followed by a bare ``wait``, which always returns 0.
- ``SrunLauncher`` asked for ``--ntasks`` only, so Slurm could pack several copies on one node;
  ``MpiExecLauncher`` gave no per-node count at all, so a "one manager per node" block could start
  every manager on the first node.  Both now pass the per-node count explicitly.
- Under ``mpiexec`` one manager that died (killed, out of memory, its node lost) took the whole block
  down: MPICH's Hydra, Open MPI and Cray PALS end every rank once one exits badly, so a single lost node
  cost the tasks of all the others.  Each copy now reports its failure on stderr and exits 0 to
  mpiexec, as ``srun --kill-on-bad-exit=0`` does for ``SrunLauncher``.
- ``MpiExecLauncher`` inside a Slurm allocation (no ``$PBS_NODEFILE``) ran every copy on the first
  node; it now takes the allocation's nodes from ``$SLURM_JOB_NODELIST``.
- ``SingleNodeLauncher`` forwards SIGTERM/SIGINT/SIGHUP to everything the copies started (each copy
  runs in its own process group), so cancelling a local block leaves no managers behind.

Every fragment needs bash (all providers' scripts start with ``#!/bin/bash``).
"""
from __future__ import annotations

import logging
import shlex

from parsl.launchers import launchers as _parsl

logger = logging.getLogger(__name__)

__all__ = ["SingleNodeLauncher", "SrunLauncher", "AprunLauncher", "MpiExecLauncher"]


def _count(tasks_per_node: int, nodes_per_block: int) -> int:
    tasks_per_node, nodes_per_block = int(tasks_per_node), int(nodes_per_block)
    if tasks_per_node < 1 or nodes_per_block < 1:
        raise ValueError(f"a launcher needs tasks_per_node >= 1 and nodes_per_block >= 1, got "
                         f"{tasks_per_node} and {nodes_per_block}")
    return tasks_per_node * nodes_per_block


def _join(*words: str) -> str:
    """Words of a shell line, already quoted where needed; empty ones (unset overrides) dropped."""
    return " ".join(w.strip() for w in words if w and w.strip())


def _debug_line(enabled: bool, message: str) -> str:
    # printed to the job's stdout, where a user looks first when a block never connects
    return f'echo "faasx launcher: {message}"\n' if enabled else ""


def _run_and_keep_status(command_line: str, debug: bool, cleanup: str = "") -> str:
    """Run a command, optionally report and clean up, and leave its exit status as the fragment's.

    ``(exit N)`` rather than ``exit N``: the fragment sets the script's status without ending a
    script that a provider may have appended lines to.
    """
    if not debug and not cleanup:
        return command_line + "\n"
    return (command_line + "\n"
            + "faasx_rc=$?\n"
            + cleanup
            + _debug_line(debug, "launch ended with status $faasx_rc")
            + '(exit "$faasx_rc")\n')


class SingleNodeLauncher(_parsl.SingleNodeLauncher):
    """Start ``tasks_per_node * nodes_per_block`` copies of the command on the node running the script.

    Each copy runs in the background in its own process group and receives its index (1, 2, ...) as
    ``$1``; ``CORES`` is exported as in Parsl.  A SIGTERM, SIGINT or SIGHUP to the script is forwarded
    as SIGTERM to every copy's process group; the fragment then waits for all copies and ends with
    status ``128 + signal``.

    Parameters
    ----------
    debug : bool
        Print what is launched to the job's stdout.
    fail_on_any : bool
        If True the fragment's status is 1 when any copy failed; if False (the default) only when all
        copies failed.
    """

    def __init__(self, debug: bool = True, fail_on_any: bool = False):
        super().__init__(debug=debug, fail_on_any=fail_on_any)

    def __call__(self, command: str, tasks_per_node: int, nodes_per_block: int, script_dir: str = "") -> str:
        count = _count(tasks_per_node, nodes_per_block)
        if int(nodes_per_block) > 1:
            logger.warning("SingleNodeLauncher starts all %d copies on one node although the block has %d "
                           "nodes: use SrunLauncher, MpiExecLauncher or AprunLauncher to spread them",
                           count, nodes_per_block)
        verdict = ('[ "$faasx_failed" -eq 0 ]' if self.fail_on_any else '[ "$faasx_ok" -gt 0 ]')
        return (
            f"# faasx SingleNodeLauncher: {count} cop{'y' if count == 1 else 'ies'} of the command on this node\n"
            "export CORES=$(getconf _NPROCESSORS_ONLN)\n"
            + _debug_line(self.debug, f"$CORES cores, starting {count} copies")
            + "faasx_cmd() {\n"
            f"{command}\n"
            "}\n"
            "faasx_pids=()\n"
            "faasx_signal=0\n"
            "faasx_forward() {\n"
            '    faasx_signal=$1\n'
            '    for faasx_p in "${faasx_pids[@]}"; do kill -TERM -- "-$faasx_p" 2>/dev/null; done\n'
            "}\n"
            "trap 'faasx_forward 15' TERM\n"
            "trap 'faasx_forward 2' INT\n"
            "trap 'faasx_forward 1' HUP\n"
            # job control only while starting the copies: each gets its own process group (so a forwarded
            # signal reaches its children too).  Bash reports jobs that end while it is on ("[1] Done");
            # those reports go to /dev/null, the copies keep the real stderr (a saved descriptor).
            "exec {faasx_stderr}>&2\n"
            "{\n"
            "set -m\n"
            f"for faasx_i in $(seq 1 {count}); do\n"
            '    faasx_cmd "$faasx_i" 2>&"$faasx_stderr" {faasx_stderr}>&- &\n'
            '    faasx_pids+=("$!")\n'
            "done\n"
            "set +m\n"
            "} 2>/dev/null\n"
            "exec {faasx_stderr}>&-\n"
            "faasx_ok=0\n"
            "faasx_failed=0\n"
            'for faasx_pid in "${faasx_pids[@]}"; do\n'
            "    while :; do\n"
            '        wait "$faasx_pid"\n'
            "        faasx_rc=$?\n"
            # a trapped signal interrupts `wait` (status > 128) while the copy still runs: wait again
            '        if [ "$faasx_rc" -gt 128 ] && kill -0 "$faasx_pid" 2>/dev/null; then continue; fi\n'
            "        break\n"
            "    done\n"
            '    if [ "$faasx_rc" -eq 0 ]; then faasx_ok=$((faasx_ok + 1)); else faasx_failed=$((faasx_failed + 1)); fi\n'
            "done\n"
            + _debug_line(self.debug, "copies ended: $faasx_ok succeeded, $faasx_failed failed")
            + 'if [ "$faasx_signal" -ne 0 ]; then (exit $((128 + faasx_signal)))\n'
            f"elif {verdict}; then (exit 0)\n"
            "else (exit 1)\n"
            "fi\n"
        )


class SrunLauncher(_parsl.SrunLauncher):
    """Start the command with ``srun``: ``tasks_per_node`` copies on each of the block's nodes.

    The fragment is ``srun --nodes=N --ntasks=N*T --ntasks-per-node=T --kill-on-bad-exit=0 --label
    OVERRIDES /bin/bash -c 'COMMAND'``; its status is srun's.  ``--kill-on-bad-exit=0`` keeps the other
    nodes' managers running when one fails (the interchange re-dispatches the lost node's tasks).  The
    job script outlives a SIGTERM until srun has ended, so srun is never orphaned.

    Parameters
    ----------
    debug : bool
        Print what is launched to the job's stdout.
    overrides : str
        Extra srun options, inserted as written (shell syntax allowed), e.g.
        ``"--gpus-per-node=4 --cpus-per-task=64"``.  Slurm gives a step only the GPUs it asks for, so a
        GPU node's manager needs ``--gpus-per-node`` here to see its GPUs.
    """

    def __init__(self, debug: bool = True, overrides: str = ""):
        super().__init__(debug=debug, overrides=overrides)

    def __call__(self, command: str, tasks_per_node: int, nodes_per_block: int, script_dir: str = "") -> str:
        count = _count(tasks_per_node, nodes_per_block)
        srun = _join("srun", f"--nodes={int(nodes_per_block)}", f"--ntasks={count}",
                     f"--ntasks-per-node={int(tasks_per_node)}", "--kill-on-bad-exit=0", "--label", self.overrides,
                     "/bin/bash", "-c", shlex.quote(command))
        return ("# faasx SrunLauncher\n"
                "export CORES=${SLURM_CPUS_ON_NODE:-$(getconf _NPROCESSORS_ONLN)}\n"
                "export NODES=${SLURM_JOB_NUM_NODES:-1}\n"
                + _debug_line(self.debug, f"$NODES nodes x $CORES cores, srun of {count} tasks")
                # srun gets the job's SIGTERM itself; the script waits for it instead of dying first, so
                # srun stays its child: an orphaned srun escapes process tracking by ancestry
                # (proctrack/linuxproc), and one that hangs would then outlive the job
                + "trap 'faasx_signalled=1' TERM INT HUP\n"
                + _run_and_keep_status(srun, self.debug, cleanup="trap - TERM INT HUP\n"))


class AprunLauncher(_parsl.AprunLauncher):
    """Start the command with Cray's ``aprun`` (ALCF Theta, Cobalt jobs): ``tasks_per_node`` per node.

    The fragment is ``aprun -n N*T -N T OVERRIDES /bin/bash -c 'COMMAND'``; its status is aprun's.

    Parameters
    ----------
    debug : bool
        Print what is launched to the job's stdout.
    overrides : str
        Extra aprun options, inserted as written, e.g. ``"-d 64 -j 1 -cc depth"`` to give one manager
        all 64 cores of a Theta KNL node.
    """

    def __init__(self, debug: bool = True, overrides: str = ""):
        super().__init__(debug=debug, overrides=overrides)

    def __call__(self, command: str, tasks_per_node: int, nodes_per_block: int, script_dir: str = "") -> str:
        count = _count(tasks_per_node, nodes_per_block)
        aprun = _join("aprun", "-n", str(count), "-N", str(int(tasks_per_node)), self.overrides,
                      "/bin/bash", "-c", shlex.quote(command))
        return ("# faasx AprunLauncher\n"
                + _debug_line(self.debug, f"aprun of {count} tasks")
                + _run_and_keep_status(aprun, self.debug))


def _survive_for_mpiexec(command: str) -> str:
    """The script each mpiexec rank runs: ``command``, whose failure is reported and not passed on.

    MPI launchers end every rank of a job once one exits non-zero or is killed, which for a block means
    one lost manager kills the managers of all its other nodes.  So the rank is a shell that runs the
    command as its child, forwards SIGTERM/SIGINT/SIGHUP to it (mpiexec and the scheduler stop a block
    that way), says on stderr how it ended, and exits 0.
    """
    return ("faasx_cmd() {\n"
            f"{command}\n"
            "}\n"
            'faasx_cmd "$@" &\n'
            "faasx_pid=$!\n"
            "trap 'kill -TERM \"$faasx_pid\" 2>/dev/null' TERM INT HUP\n"
            "while :; do\n"
            '    wait "$faasx_pid"\n'
            "    faasx_rc=$?\n"
            # a trapped signal interrupts `wait` while the command still runs: wait again
            '    if [ "$faasx_rc" -gt 128 ] && kill -0 "$faasx_pid" 2>/dev/null; then continue; fi\n'
            "    break\n"
            "done\n"
            'if [ "$faasx_rc" -ne 0 ]; then\n'
            '    echo "faasx launcher: the copy on $(hostname) ended with status $faasx_rc;'
            ' the copies on the other nodes keep running" >&2\n'
            "fi\n"
            "exit 0")


class MpiExecLauncher(_parsl.MpiExecLauncher):
    """Start the command with ``mpiexec`` on the job's nodes (PBS Pro: ALCF Polaris and Aurora).

    The node list is ``$PBS_NODEFILE`` (or ``$COBALT_NODEFILE``) with duplicate lines removed, order
    kept, or inside a Slurm allocation the nodes of ``$SLURM_JOB_NODELIST``; it is written to a private
    temporary file that is deleted afterwards.  Without any of these the command runs on ``localhost``.
    The fragment is ``mpiexec BIND_CMD none PPN_FLAG T -n N*T --hostfile FILE OVERRIDES /bin/bash -c
    'SCRIPT'``, where SCRIPT runs the command and exits 0 whatever it did (a failure is reported on
    stderr): MPI launchers end every rank once one fails, and one lost manager must not stop the other
    nodes' (the interchange re-dispatches the lost one's tasks).  The fragment's status is mpiexec's.

    Parameters
    ----------
    debug : bool
        Print what is launched to the job's stdout.
    bind_cmd : str
        The option that disables rank binding, given the value ``none``: ``"--bind-to"`` (MPICH Hydra,
        Open MPI; Parsl's default) or ``"--cpu-bind"`` (Cray PALS on Polaris/Aurora).  Empty: no binding
        option.
    overrides : str
        Extra mpiexec options, inserted as written.
    ppn_flag : str
        The option giving copies per node: ``"--ppn"`` (PALS, MPICH, Intel MPI) or ``"--npernode"``
        (Open MPI).  Empty: none (then put it in ``overrides``).
    """

    def __init__(self, debug: bool = True, bind_cmd: str = "--bind-to", overrides: str = "",
                 ppn_flag: str = "--ppn"):
        super().__init__(debug=debug, bind_cmd=bind_cmd, overrides=overrides)
        self.ppn_flag = ppn_flag

    def __call__(self, command: str, tasks_per_node: int, nodes_per_block: int, script_dir: str = "") -> str:
        count = _count(tasks_per_node, nodes_per_block)
        words = ["mpiexec"]
        if self.bind_cmd:
            words += [self.bind_cmd, "none"]
        if self.ppn_flag:
            words += [self.ppn_flag, str(int(tasks_per_node))]
        words += ["-n", str(count), "--hostfile", '"$faasx_hostfile"']
        if self.overrides:
            words.append(self.overrides)
        words += ["/bin/bash", "-c", shlex.quote(_survive_for_mpiexec(command))]
        return ("# faasx MpiExecLauncher\n"
                'faasx_hostfile=$(mktemp "${TMPDIR:-/tmp}/faasx-hosts.XXXXXX")\n'
                "faasx_nodefile=${PBS_NODEFILE:-${COBALT_NODEFILE:-}}\n"
                'if [ -n "$faasx_nodefile" ] && [ -r "$faasx_nodefile" ]; then\n'
                "    awk '!seen[$0]++' \"$faasx_nodefile\" > \"$faasx_hostfile\"\n"
                'elif [ -n "${SLURM_JOB_NODELIST:-}" ] && scontrol show hostnames "$SLURM_JOB_NODELIST" '
                '> "$faasx_hostfile" 2>/dev/null && [ -s "$faasx_hostfile" ]; then\n'
                "    :\n"
                "else\n"
                '    echo localhost > "$faasx_hostfile"\n'
                "fi\n"
                + _debug_line(self.debug, f"mpiexec of {count} tasks on $(wc -l < \"$faasx_hostfile\") node(s)")
                + _run_and_keep_status(_join(*words), self.debug, cleanup='rm -f "$faasx_hostfile"\n'))
