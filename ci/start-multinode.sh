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

die() { echo "start-multinode: ERROR: $*" >&2; exit 1; }
say() { echo "start-multinode: $*"; }

[[ $(id -u) == 0 ]] || die "must run as root (network namespaces, slurmd as SlurmUser=root); try: sudo -E $0"
[[ $N =~ ^[1-9]$ ]] || die "SLURM_MN_NODES must be 1..9 (addresses are $NET.1I), not '$N'"

# ---- packages -------------------------------------------------------------------------------------
PKGS="slurmctld slurmd slurm-client munge iproute2 util-linux"
if [[ ${FAASX_SLURM_INSTALL:-0} == 1 ]]; then
  command -v apt-get >/dev/null || die "FAASX_SLURM_INSTALL=1 needs apt-get (Debian/Ubuntu)"
  say "installing $PKGS"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q || die "apt-get update failed"
  # shellcheck disable=SC2086
  apt-get install -y -q --no-install-recommends $PKGS || die "apt-get install $PKGS failed"
fi
for exe in /usr/sbin/slurmctld /usr/sbin/slurmd /usr/sbin/munged; do
  [[ -x $exe ]] || die "$exe is missing: install the packages ($PKGS) or rerun with FAASX_SLURM_INSTALL=1"
done
for exe in sbatch srun squeue scancel sinfo scontrol munge unmunge ip nsenter unshare; do
  command -v "$exe" >/dev/null || die "$exe is not on PATH: install the packages ($PKGS)"
done

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
for port in "$CTLD_PORT" "$SLURMD_PORT"; do
  # bash's /dev/tcp: a successful connect means someone else already listens there
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port is already in use (another Slurm?); set SLURM_MN_CTLD_PORT/SLURM_MN_SLURMD_PORT"
  fi
done
ip link show "$BRIDGE" >/dev/null 2>&1 && die "interface $BRIDGE exists (a cluster not stopped?): run ci/stop-multinode.sh"
for i in $(seq 1 "$N"); do
  [[ -e /run/netns/fxn$i ]] && die "network namespace fxn$i exists (a cluster not stopped?): run ci/stop-multinode.sh"
done

# ---- directories and munge key ---------------------------------------------------------------------
rm -rf "$D"
mkdir -p "$D"/{etc,state,spool,log,run,munge}
chmod 0755 "$D" "$D"/{etc,state,spool,log,run,munge}   # munged rejects group/other-writable dirs
KEY=$D/munge/munge.key
if command -v mungekey >/dev/null; then mungekey --create --keyfile="$KEY"
else head -c 1024 /dev/urandom > "$KEY"; fi
chmod 0400 "$KEY"
SOCK=$D/munge/munge.socket.2
: > "$D/pids"

fail() {  # print what the daemons said, tear down (unless asked not to), exit non-zero
  echo "start-multinode: ERROR: $*" >&2
  for f in "$D"/log/*; do [[ -f $f ]] && { echo "---- $f" >&2; tail -n 25 "$f" >&2; }; done
  if [[ ${FAASX_SLURM_KEEP_ON_FAILURE:-0} != 1 ]]; then
    SLURM_MN_KEEP=1 "$HERE/stop-multinode.sh" >&2 || true
  fi
  exit 1
}

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
cat > "$SLURM_CONF" <<EOF
# generated by faasx ci/start-multinode.sh -- a throw-away test cluster of $N nodes
ClusterName=faasxmn
# slurmctld checks that this is its own host's name; the nodes reach it on the bridge
SlurmctldHost=$(hostname -s)($HOST_ADDR)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool/%n
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd-%n.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# no delegated cgroup tree here
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$D/log/jobcomp.txt
# PMI2: a plain \`srun -n N ./mpi_app\` (and Parsl's srun MPI prefix) wires up MPICH ranks
MpiDefault=pmi2
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MailProg=/bin/true
MinJobAge=300
KillWait=5
InactiveLimit=0
Waittime=0
SlurmctldTimeout=30
# a node cut off for less than this stays in its job (tests cut links for a few seconds)
SlurmdTimeout=60
NodeName=node[1-$N] NodeAddr=$(IFS=,; echo "${addrs[*]}") CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=node[1-$N] Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
: > "$D/etc/plugstack.conf"   # read from slurm.conf's directory; none of the host's SPANK plugins
printf 'export SLURM_CONF=%q SLURM_MN_DIR=%q\n' "$SLURM_CONF" "$D" > "$D/env.sh"
export SLURM_CONF

# ---- daemons ---------------------------------------------------------------------------------------
daemon() {  # name cmd... -- the daemon in its foreground mode, detached, so $! is its PID
  local name=$1; shift
  setsid "$@" </dev/null >"$D/log/$name.out" 2>&1 &
  echo "$name $!" >> "$D/pids"
}

daemon munged /usr/sbin/munged --foreground --force --socket="$SOCK" --key-file="$KEY" \
  --pid-file="$D/run/munged.pid" --seed-file="$D/munge/munged.seed"
for _ in $(seq 50); do [[ -S $SOCK ]] && break; sleep 0.1; done
[[ -S $SOCK ]] || fail "munged did not create its socket $SOCK"
munge -n --socket="$SOCK" | unmunge --socket="$SOCK" >/dev/null || fail "munge credential round trip failed"

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
  while read -r name pid; do      # a daemon that died (bad config, port taken) will not come back
    kill -0 "$pid" 2>/dev/null || fail "$name exited during start-up (see $D/log/$name.out)"
  done < "$D/pids"
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
