#!/usr/bin/env bash
# ci/test.sh -- the one command that runs faasx's whole test-suite on a fresh Debian machine:
# installs the system packages (Slurm + munge + Slurm's Torque-style qsub, podman + runc, busybox,
# iproute2) and the Python package with its test extras, starts the real single-node Slurm
# cluster, runs pytest, and stops the cluster again whatever happened.
#
# Components the tests need are REQUIRED here: a missing Slurm, podman or network-namespace
# support fails the run instead of skipping tests (FAASX_REQUIRE_*=1).
# Extra arguments go to pytest, e.g.  bash ci/test.sh tests/engine -x
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

echo "== system packages"
export DEBIAN_FRONTEND=noninteractive
as_root apt-get update -q >/dev/null
as_root apt-get install -y -q --no-install-recommends \
    slurmctld slurmd slurm-client munge slurm-wlm-torque \
    podman runc busybox-static iproute2 procps >/dev/null

echo "== python packages"
PY=${PYTHON:-python3}
"$PY" -m pip install -q --disable-pip-version-check -e "$ROOT[test]"

echo "== local Slurm cluster"
export SLURM_CI_DIR=${SLURM_CI_DIR:-/tmp/slurm-ci}
if [ -e "$SLURM_CI_DIR/pids" ]; then bash ci/stop-slurm.sh || true; fi
bash ci/start-slurm.sh
trap 'bash "$ROOT/ci/stop-slurm.sh"' EXIT
# shellcheck disable=SC1091
source "$SLURM_CI_DIR/env.sh"

echo "== tests"
export FAASX_REQUIRE_SLURM=1 FAASX_REQUIRE_PODMAN=1 FAASX_REQUIRE_NETNS=1
start=$(date +%s)
set +e
"$PY" -m pytest -q -p no:cacheprovider -o console_output_style=classic "${@:-tests}"
rc=$?
set -e
echo "== tests took $(( $(date +%s) - start ))s (pytest exit code $rc)"
exit $rc
