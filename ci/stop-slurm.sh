#!/usr/bin/env bash
# ci/stop-slurm.sh -- stop the cluster that ci/start-slurm.sh started, and remove $SLURM_CI_DIR.
#
# Only the PIDs recorded in $SLURM_CI_DIR/pids are signalled (never pkill/killall: other Slurm or munge
# daemons on the machine are left alone).  Jobs are cancelled first: each job runs under a slurmstepd
# that is re-parented to PID 1 and would outlive slurmd.
#   SLURM_CI_KEEP=1  keep $SLURM_CI_DIR (logs, jobcomp.txt) e.g. for CI artifacts.
set -uo pipefail

D=${SLURM_CI_DIR:-/tmp/slurm-ci}
export SLURM_CONF=$D/etc/slurm.conf
say() { echo "stop-slurm: $*"; }

if [[ ! -f $D/pids ]]; then
  say "no cluster recorded in $D/pids; nothing to stop"
  [[ ${SLURM_CI_KEEP:-0} == 1 ]] || rm -rf "$D"
  exit 0
fi

# ---- 1. jobs --------------------------------------------------------------------------------------
if [[ -f $SLURM_CONF ]] && timeout 10 scontrol ping >/dev/null 2>&1; then
  jobs=$(timeout 10 squeue -h -o '%A' 2>/dev/null | tr '\n' ' ')
  if [[ -n ${jobs// /} ]]; then
    say "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    timeout 10 scancel $jobs 2>/dev/null || true
  fi
  for _ in $(seq 60); do  # KillWait=5: jobs are normally gone in < 7 s
    if [[ -z $(timeout 10 squeue -h -o '%A' 2>/dev/null) ]] &&
       [[ $(timeout 10 scontrol listpids 2>/dev/null | wc -l) -le 1 ]]; then
      break
    fi
    sleep 0.5
  done
  left=$(timeout 10 scontrol listpids 2>/dev/null | tail -n +2)
  [[ -z $left ]] || say "WARNING: job processes still alive after cancelling:"$'\n'"$left"
fi

# ---- 2. daemons, by recorded PID --------------------------------------------------------------------
ours() {  # pid name: true if pid is still the daemon we started (PIDs get reused)
  [[ -r /proc/$1/cmdline ]] && tr '\0' ' ' < "/proc/$1/cmdline" | grep -q -- "$2"
}
stop() {  # name... : SIGTERM them together, wait up to 5 s each, then SIGKILL
  local name pid
  for name in "$@"; do
    pid=$(awk -v n="$name" '$1 == n {print $2}' "$D/pids")
    [[ -n $pid ]] && ours "$pid" "$name" && kill -TERM "$pid" 2>/dev/null
  done
  for name in "$@"; do
    pid=$(awk -v n="$name" '$1 == n {print $2}' "$D/pids")
    [[ -n $pid ]] || continue
    for _ in $(seq 50); do ours "$pid" "$name" || break; sleep 0.1; done
    if ours "$pid" "$name"; then
      say "$name ($pid) ignored SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    say "$name ($pid) stopped"
  done
}
stop slurmd slurmctld   # together: each takes ~1.5 s to exit
stop munged             # last: Slurm talks to munge while shutting down

rm -f "$D/pids"
if [[ ${SLURM_CI_KEEP:-0} == 1 ]]; then say "kept $D"; else rm -rf "$D"; fi
