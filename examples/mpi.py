"""MPI applications: a C MPI_Allreduce run by faasx.Executor in MPI mode, and the same through Parsl.

On a cluster the block's nodes come from the scheduler (see the README's "MPI applications per site");
here one local block is told its one node with FAASX_MPI_NODELIST, and the program runs 4 ranks on it.
Needs MPICH (Debian: apt-get install mpich libmpich-dev).

    python examples/mpi.py
"""
import os
import shutil
import socket
import subprocess
import tempfile

import parsl
from parsl import bash_app

import faasx
from faasx.launchers import SimpleLauncher
from faasx.mpi import MPIFunction
from faasx.providers import LocalProvider

SOURCE = r"""
#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
    int rank, size, sum;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0) printf("allreduce sum over %d ranks = %d\n", size, sum);
    MPI_Finalize();
    return 0;
}
"""


def build(work: str) -> str:
    """Compile the program with MPICH; returns worker_init lines that put MPICH's mpiexec first on PATH
    (Debian's /usr/bin/mpiexec is Open MPI's when both are installed, and the prefix calls ``mpiexec``)."""
    mpicc = shutil.which("mpicc.mpich") or "mpicc"
    with open(os.path.join(work, "allreduce.c"), "w") as f:
        f.write(SOURCE)
    subprocess.run([mpicc, "-o", os.path.join(work, "allreduce"), os.path.join(work, "allreduce.c")], check=True)
    bindir = os.path.join(work, "bin")
    os.makedirs(bindir)
    with open(os.path.join(bindir, "mpiexec"), "w") as f:
        f.write(f'#!/bin/sh\nexec {shutil.which("mpiexec.mpich") or "mpiexec"} "$@"\n')
    os.chmod(os.path.join(bindir, "mpiexec"), 0o755)
    return f"export PATH={bindir}:$PATH FAASX_MPI_NODELIST={socket.gethostname()}"


def block(worker_init: str) -> LocalProvider:
    return LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1, launcher=SimpleLauncher(), worker_init=worker_init)


@bash_app
def allreduce(exe, stdout=None, parsl_resource_specification={}):
    return f"$PARSL_MPI_PREFIX {exe}"


def main():
    with tempfile.TemporaryDirectory() as work:
        worker_init = build(work)
        exe = os.path.join(work, "allreduce")

        # a plain script: an MPI command as a function; its result has the return code and the output
        with faasx.Executor(block(worker_init), mpi_launcher="mpiexec") as ex:
            result = ex.submit(MPIFunction(exe, num_nodes=1, num_ranks=4)).result()
            print("faasx.Executor:", result.stdout.strip(), f"(return code {result.returncode})")

        # Parsl: the MPIExecutor config of Parsl with the import changed; the bash_app is Parsl's as is
        config = parsl.Config(executors=[faasx.MPIExecutor(provider=block(worker_init), mpi_launcher="mpiexec")],
                              run_dir=os.path.join(work, "runinfo"))
        with parsl.load(config):
            out = os.path.join(work, "parsl.out")
            allreduce(exe, stdout=out, parsl_resource_specification={"num_nodes": 1, "ranks_per_node": 4}).result()
            with open(out) as f:
                print("Parsl bash_app:", f.read().strip())


if __name__ == "__main__":
    main()
