#!/usr/bin/env bash
# ci/stop-multinode.sh -- stop the cluster that ci/start-multinode.sh started and remove every trace of
# it: jobs, daemons (by recorded PID only, never pkill/killall), the nodes' network namespaces and
# veths, the bridge, the "# faasx-mn" lines in /etc/hosts, and $SLURM_MN_DIR.
#   SLURM_MN_KEEP=1  keep $SLURM_MN_DIR (logs) e.g. for CI artifacts.
set -uo pipefail

D=${SLURM_MN_DIR:-/tmp/slurm-mn}
BRIDGE=fxbr0
export SLURM_CONF=$D/etc/slurm.conf
say() { echo "stop-multinode: $*"; }

# ---- 1. jobs --------------------------------------------------------------------------------------
# Each job runs under a slurmstepd re-parented to PID 1 that would outlive its slurmd.  Every node is
# brought back onto the bridge first: a test that cut one off may have failed before healing it.
if [[ -f $D/nodes ]]; then
  while read -r _ _ ns; do ip -n "$ns" link set eth0 up 2>/dev/null; done < "$D/nodes"
fi
if [[ -f $D/pids && -f $SLURM_CONF ]] && timeout 10 scontrol ping >/dev/null 2>&1; then
  jobs=$(timeout 10 squeue -h -o '%A' 2>/dev/null | tr '\n' ' ')
  if [[ -n ${jobs// /} ]]; then
    say "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    timeout 10 scancel $jobs 2>/dev/null || true
  fi
  for _ in $(seq 60); do  # KillWait=5: jobs are normally gone in < 7 s
    [[ -z $(timeout 10 squeue -h -o '%A' 2>/dev/null) ]] && break
    sleep 0.5
  done
fi

# ---- 2. daemons, by recorded PID --------------------------------------------------------------------
ours() {  # pid word: true if pid is still the daemon we started (PIDs get reused)
  [[ -r /proc/$1/cmdline ]] && tr '\0' ' ' < "/proc/$1/cmdline" | grep -q -- "$2"
}
stop() {  # pattern word: SIGTERM every recorded daemon whose name matches, wait up to 5 s, then SIGKILL
  local pattern=$1 word=$2 name pid
  local -a pids=()
  while read -r name pid; do
    [[ $name =~ $pattern ]] && ours "$pid" "$word" && kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
  done < "$D/pids"
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do ours "$pid" "$word" || break; sleep 0.1; done
    if ours "$pid" "$word"; then
      say "$pid ($word) ignored SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  [[ ${#pids[@]} -eq 0 ]] || say "stopped $word (${pids[*]})"
}
if [[ -f $D/pids ]]; then
  stop '^slurmd[0-9]+$' slurmd
  stop '^slurmctld$' slurmctld
  stop '^munged$' munged   # last: Slurm talks to munge while shutting down
  rm -f "$D/pids"
else
  say "no daemons recorded in $D/pids"
fi

# ---- 3. network and names ---------------------------------------------------------------------------
if [[ -f $D/nodes ]]; then
  while read -r _ _ ns; do
    # a process still in the namespace (a job step that escaped) would keep it alive: report it
    left=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
    [[ -z ${left// /} ]] || say "WARNING: processes still in $ns: $left"
    ip netns del "$ns" 2>/dev/null
  done < "$D/nodes"
  i=0
  while read -r _; do i=$((i + 1)); ip link del "fxv$i" 2>/dev/null; done < "$D/nodes"
  # only the cluster recorded here made the bridge and the names: another $SLURM_MN_DIR's stop
  # (e.g. of a start that failed because this one runs) must leave them alone
  ip link del "$BRIDGE" 2>/dev/null
  sed -i '/# faasx-mn$/d' /etc/hosts
fi

if [[ ${SLURM_MN_KEEP:-0} == 1 ]]; then say "kept $D"; else rm -rf "$D"; fi
say "stopped"
