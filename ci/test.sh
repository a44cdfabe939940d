#!/usr/bin/env bash
# ci/test.sh -- the one command that runs faasx's whole test-suite on a fresh Debian machine:
# installs the system packages (Slurm + munge + Slurm's Torque-style qsub, podman + runc, busybox,
# iproute2, Open MPI and MPICH for the MPI tests) and the Python package with its test extras, starts
# the real single-node Slurm cluster and, beside it, the multi-node one (ci/start-multinode.sh: one
# slurmd per network namespace), runs pytest, and stops both clusters again whatever happened.
#
# Components the tests need are REQUIRED here: a missing Slurm, multi-node cluster, podman, MPICH or
# network-namespace support fails the run instead of skipping tests (FAASX_REQUIRE_*=1).
# Without arguments: the full suite under $PYTHON (default python3), then the fast part (tests/unit,
# tests/engine, tests/parsl) under each other Python version in FAASX_OTHER_VERSIONS (default
# "3.10 3.12 3.13", from pyenv), each in its own venv; a summary gives each run's counts and time.
# Extra arguments go to pytest under $PYTHON only, e.g.  bash ci/test.sh tests/engine -x
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

echo "== system packages"
export DEBIAN_FRONTEND=noninteractive
as_root apt-get update -q >/dev/null
as_root apt-get install -y -q --no-install-recommends \
    slurmctld slurmd slurm-client munge slurm-wlm-torque \
    podman runc busybox-static iproute2 util-linux procps \
    openmpi-bin libopenmpi-dev mpich libmpich-dev \
    python3-zmq python3-msgpack >/dev/null
# python3-zmq/-msgpack: tests/security's attacker runs as user nobody with the system's /usr/bin/python3
# (the test interpreter may live under /root, which nobody cannot enter)

echo "== python packages"
PY=${PYTHON:-python3}
"$PY" -m pip install -q --disable-pip-version-check -e "$ROOT[test]"

# Every Python a site has: one venv per other version (pyenv's interpreters), faasx installed in it.
# The fast part of the suite runs under each after the full suite; the full suite's test of a manager
# under another Python uses the first of them.
PYENV_ROOT=${PYENV_ROOT:-$HOME/.pyenv}
OTHER_VERSIONS=${FAASX_OTHER_VERSIONS-3.10 3.12 3.13}
VENVS=${FAASX_VENV_DIR:-/tmp/faasx-ci-venvs}
FAST_TESTS=(tests/unit tests/engine tests/parsl)
other_pythons=()
for v in $OTHER_VERSIONS; do
    interp=$(ls -d "$PYENV_ROOT/versions/$v".* 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$interp" ] || [ ! -x "$interp/bin/python" ]; then
        echo "no Python $v under $PYENV_ROOT/versions (install it with: pyenv install $v)" >&2
        exit 1
    fi
    echo "== python $v: venv $VENVS/py$v from $interp"
    [ -x "$VENVS/py$v/bin/python" ] || "$interp/bin/python" -m venv "$VENVS/py$v"
    "$VENVS/py$v/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[test-fast]"
    other_pythons+=("$v")
done
if [ ${#other_pythons[@]} -gt 0 ]; then
    export FAASX_OTHER_PYTHON="$VENVS/py${other_pythons[0]}/bin/python" FAASX_REQUIRE_OTHER_PYTHON=1
fi

echo "== local Slurm cluster"
export SLURM_CI_DIR=${SLURM_CI_DIR:-/tmp/slurm-ci}
if [ -e "$SLURM_CI_DIR/pids" ]; then bash ci/stop-slurm.sh || true; fi
bash ci/start-slurm.sh
trap 'bash "$ROOT/ci/stop-slurm.sh"' EXIT
# shellcheck disable=SC1091
source "$SLURM_CI_DIR/env.sh"

echo "== multi-node Slurm cluster"
export SLURM_MN_DIR=${SLURM_MN_DIR:-/tmp/slurm-mn}
if [ -e "$SLURM_MN_DIR/pids" ]; then bash ci/stop-multinode.sh || true; fi
bash ci/start-multinode.sh
trap 'bash "$ROOT/ci/stop-multinode.sh"; bash "$ROOT/ci/stop-slurm.sh"' EXIT

export FAASX_REQUIRE_SLURM=1 FAASX_REQUIRE_MULTINODE=1 FAASX_REQUIRE_PODMAN=1 FAASX_REQUIRE_NETNS=1 FAASX_REQUIRE_MPI=1
summary=()
run_suite() {   # run_suite NAME PYTHON PYTEST-ARGS...: one timed pytest run; its exit code in $rc
    local name=$1 python=$2 start
    shift 2
    echo "== tests: $name ($("$python" -c 'import platform; print(platform.python_version())'))"
    start=$(date +%s)
    set +e
    "$python" -m pytest -q -p no:cacheprovider -o console_output_style=classic "$@" | tee "$VENVS/pytest-$name.log"
    rc=${PIPESTATUS[0]}
    set -e
    summary+=("$name: $(tail -n 1 "$VENVS/pytest-$name.log") -- $(( $(date +%s) - start ))s, exit code $rc")
}

mkdir -p "$VENVS"
status=0
run_suite "$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-full" "$PY" "${@:-tests}"
status=$(( status || rc ))
if [ $# -eq 0 ]; then   # with pytest arguments, only the main interpreter runs them
    for v in "${other_pythons[@]}"; do
        run_suite "$v-fast" "$VENVS/py$v/bin/python" "${FAST_TESTS[@]}"
        status=$(( status || rc ))
    done
fi
echo "== summary"
printf '%s\n' "${summary[@]}"
exit $status
