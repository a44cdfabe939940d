#!/usr/bin/env bash
# ci/start-multinode.sh -- start a private Slurm cluster of several "nodes" on this one machine, for
# faasx's multi-node tests (tests/multinode/).
#
# slurmctld runs on the host; every node is a network namespace fxnI with its own slurmd, its own
# hostname (a UTS namespace: nodeI) and its own address 127.20.0.1I on eth0, a veth whose other end is
# a port of the bridge fxbr0 (host end 127.20.0.1).  Jobs, srun steps and everything they start (faasx
# managers and workers, MPI ranks) live in the node's namespaces, so a manager reaches the interchange
# on the host over real TCP across the bridge, and cutting a node off (`ip -n fxn2 link set eth0 down`)
# is a real network failure.  All nodes share the host's filesystem (like a cluster's shared home),
# its CPUs (each node advertises all of them: fine for placement, not for timing) and its PID space.
#
# Runs BESIDE ci/start-slurm.sh's single-node cluster: other directory, other ports, other munged.
# Nothing under /etc is touched except lines ending in "# faasx-mn" appended to /etc/hosts (MPI and
# Slurm resolve node names), which ci/stop-multinode.sh removes; route_localnet (needed for 127.x
# addresses off `lo`) is set on our own interfaces only, never on "all" of the host.
#
# Needs root and the Debian/Ubuntu packages  slurmctld slurmd slurm-client munge iproute2 util-linux
# (nsenter, unshare).  With FAASX_SLURM_INSTALL=1 this script installs them.
#
# Environment knobs:
#   SLURM_MN_DIR        where everything goes                    (default /tmp/slurm-mn)
#   SLURM_MN_NODES      number of nodes, 1..9                    (default 4)
#   SLURM_MN_NET        first three octets of the addresses      (default 127.20.0)
#   SLURM_MN_PARTITION  name of the one partition                (default debug)
#   SLURM_MN_CTLD_PORT / SLURM_MN_SLURMD_PORT                    (default 6827 / 6828)
#   FAASX_SLURM_KEEP_ON_FAILURE=1   leave everything running when bring-up fails (for debugging)
#
# Afterwards:  source $SLURM_MN_DIR/env.sh   (SLURM_CONF, SLURM_MN_DIR); $SLURM_MN_DIR/nodes lists
# "name address namespace" per node.  Stop with ci/stop-multinode.sh.
set -euo pipefail

D=${SLURM_MN_DIR:-/tmp/slurm-mn}
N=${SLURM_MN_NODES:-4}
NET=${SLURM_MN_NET:-127.20.0}
PARTITION=${SLURM_MN_PARTITION:-debug}
CTLD_PORT=${SLURM_MN_CTLD_PORT:-6827}
SLURMD_PORT=${SLURM_MN_SLURMD_PORT:-6828}
BRIDGE=fxbr0
HOST_ADDR=$NET.1
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ME=start-multinode
PKGS="slurmctld slurmd slurm-client munge iproute2 util-linux"
STOP=(env SLURM_MN_KEEP=1 "$HERE/stop-multinode.sh")
# shellcheck source=ci/slurm-common.sh
source "$HERE/slurm-common.sh"

[[ $(id -u) == 0 ]] || die "must run as root (network namespaces, slurmd as SlurmUser=root); try: sudo -E $0"
[[ $N =~ ^[1-9]$ ]] || die "SLURM_MN_NODES must be 1..9 (addresses are $NET.1I), not '$N'"

# ---- packages -------------------------------------------------------------------------------------
install_packages_and_check sbatch srun squeue scancel sinfo scontrol munge unmunge ip nsenter unshare

# ---- already running? -----------------------------------------------------------------------------
if [[ -f $D/pids ]]; then
  alive=1
  while read -r _ pid; do kill -0 "$pid" 2>/dev/null || alive=0; done < "$D/pids"
  idle=$(SLURM_CONF=$D/etc/slurm.conf timeout 10 sinfo -h -o '%T %D' 2>/dev/null |
         awk '$1 == "idle" || $1 == "mixed" || $1 == "allocated" {s += $2} END {print s + 0}')
  if [[ $alive == 1 && $idle == "$N" ]]; then
    say "already running (PIDs in $D/pids); nothing to do"
    exit 0
  fi
  die "$D/pids exists but the cluster is not healthy ($idle of $N nodes up): run ci/stop-multinode.sh first"
fi
check_ports_free "set SLURM_MN_CTLD_PORT/SLURM_MN_SLURMD_PORT" "$CTLD_PORT" "$SLURMD_PORT"
ip link show "$BRIDGE" >/dev/null 2>&1 && die "interface $BRIDGE exists (a cluster not stopped?): run ci/stop-multinode.sh"
for i in $(seq 1 "$N"); do
  [[ -e /run/netns/fxn$i ]] && die "network namespace fxn$i exists (a cluster not stopped?): run ci/stop-multinode.sh"
done

# ---- directories and munge key ---------------------------------------------------------------------
rm -rf "$D"
make_state_dirs
make_munge_key
: > "$D/pids"

# ---- the network ------------------------------------------------------------------------------------
# From here on a failure must undo what was made: record it first (stop-multinode.sh reads $D/nodes).
addrs=()
for i in $(seq 1 "$N"); do
  echo "node$i $NET.1$i fxn$i" >> "$D/nodes"
  addrs+=("$NET.1$i")
done
ip link add "$BRIDGE" type bridge || fail "cannot create bridge $BRIDGE"
ip addr add "$HOST_ADDR/24" dev "$BRIDGE"
ip link set "$BRIDGE" up
# 127.x off `lo` is dropped as martian unless route_localnet is on for the interface (OR-ed with "all",
# which we leave alone: other tests save and restore it)
sysctl -qw "net.ipv4.conf.$BRIDGE.route_localnet=1"
for i in $(seq 1 "$N"); do
  ns=fxn$i
  ip netns add "$ns" || fail "cannot create network namespace $ns"
  ip link add "fxv$i" type veth peer name eth0 netns "$ns"
  ip link set "fxv$i" master "$BRIDGE"
  ip link set "fxv$i" up
  sysctl -qw "net.ipv4.conf.fxv$i.route_localnet=1"
  ip netns exec "$ns" sysctl -qw net.ipv4.conf.all.route_localnet=1 net.ipv4.conf.eth0.route_localnet=1
  ip -n "$ns" addr add "$NET.1$i/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
done
# node names resolve everywhere (Slurm, MPICH's hydra and Open MPI look them up); the host's own name
# is already in /etc/hosts
sed -i '/# faasx-mn$/d' /etc/hosts
for i in $(seq 1 "$N"); do echo "$NET.1$i node$i # faasx-mn" >> /etc/hosts; done

# ---- configuration ---------------------------------------------------------------------------------
CPUS=$(nproc)
# every node sees all of the host's memory; slurmd marks a node invalid if RealMemory exceeds it
MEM_MB=$(( $(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo) / N - 256 ))
SLURM_CONF=$D/etc/slurm.conf
{
  echo "# generated by faasx ci/start-multinode.sh -- a throw-away test cluster of $N nodes"
  # slurmctld checks that SlurmctldHost is its own host's name; the nodes reach it on the bridge.
  # PMI2: a plain `srun -n N ./mpi_app` (and Parsl's srun MPI prefix) wires up MPICH ranks
  slurm_conf_common faasxmn "$(hostname -s)($HOST_ADDR)" %n pmi2
  cat <<EOF
NodeName=node[1-$N] NodeAddr=$(IFS=,; echo "${addrs[*]}") CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=node[1-$N] Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
} > "$SLURM_CONF"
: > "$D/etc/plugstack.conf"   # read from slurm.conf's directory; none of the host's SPANK plugins
printf 'export SLURM_CONF=%q SLURM_MN_DIR=%q\n' "$SLURM_CONF" "$D" > "$D/env.sh"
export SLURM_CONF

# ---- daemons ---------------------------------------------------------------------------------------
start_munged

daemon slurmctld /usr/sbin/slurmctld -D -i -f "$SLURM_CONF"
for i in $(seq 1 "$N"); do
  mkdir -p "$D/spool/node$i"
  # nsenter --net, not `ip netns exec`: the latter remounts /sys, and slurmd then finds no cgroup fs.
  # unshare --uts gives the node its own hostname; `exec` keeps the recorded PID slurmd's.
  daemon "slurmd$i" nsenter --net="/run/netns/fxn$i" unshare --uts \
    sh -c "hostname node$i && exec /usr/sbin/slurmd -D -N node$i -f '$SLURM_CONF'"
done

up=0
for _ in $(seq 120); do
  up=$(sinfo -h -o '%T %D' 2>/dev/null | awk '$1 == "idle" {s += $2} END {print s + 0}')
  [[ $up == "$N" ]] && break      # "idle*" = registered but not responding: keep waiting
  check_daemons_alive
  sleep 0.25
done
[[ $up == "$N" ]] || fail "only $up of $N nodes became idle: $(sinfo -h -o '%N %T' 2>&1 | tr '\n' ' ')"

# Idle is not enough (spool dirs, munge, the way back to srun): run a step on every node, each of
# which must report its own hostname and address.
out=$(timeout 60 srun --immediate=30 -N "$N" --ntasks-per-node=1 -p "$PARTITION" \
      sh -c 'echo "$(hostname) $(ip -4 -o addr show dev eth0 | awk "{print \$4}")"' 2>&1) ||
  fail "test job on $N nodes failed: $out"
for i in $(seq 1 "$N"); do
  grep -qx "node$i $NET.1$i/24" <<<"$out" || fail "test job did not run on node$i with address $NET.1$i: '$out'"
done

say "cluster of $N nodes up in $D (partition $PARTITION, ctld port $CTLD_PORT, $CPUS CPUs per node)"
say "nodes: $(awk '{printf "%s=%s(%s) ", $1, $2, $3}' "$D/nodes")"
say "use it with:  source $D/env.sh"
