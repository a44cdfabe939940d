# ci/slurm-common.sh -- what ci/start-slurm.sh and ci/start-multinode.sh share; sourced by both, not run.
#
# The caller sets, before sourcing:
#   ME        its name for messages (start-slurm, start-multinode)
#   D         the cluster's directory
#   PKGS      the Debian/Ubuntu packages it needs
# and, before calling fail():
#   STOP      the command (an array) that tears a half-started cluster down
# The functions set KEY and SOCK (make_munge_key) and append "name pid" lines to $D/pids (daemon).

die() { echo "$ME: ERROR: $*" >&2; exit 1; }
say() { echo "$ME: $*"; }

# install_packages_and_check EXE... -- with FAASX_SLURM_INSTALL=1 install $PKGS first; then the daemons
# and every EXE must be there
install_packages_and_check() {
  if [[ ${FAASX_SLURM_INSTALL:-0} == 1 ]]; then
    command -v apt-get >/dev/null || die "FAASX_SLURM_INSTALL=1 needs apt-get (Debian/Ubuntu)"
    say "installing $PKGS"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q || die "apt-get update failed"
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $PKGS || die "apt-get install $PKGS failed"
  fi
  local exe
  for exe in /usr/sbin/slurmctld /usr/sbin/slurmd /usr/sbin/munged; do
    [[ -x $exe ]] || die "$exe is missing: install the packages ($PKGS) or rerun with FAASX_SLURM_INSTALL=1"
  done
  for exe in "$@"; do
    command -v "$exe" >/dev/null ||
      die "$exe is not on PATH: install the packages ($PKGS) or rerun with FAASX_SLURM_INSTALL=1"
  done
}

# check_ports_free HINT PORT... -- nobody listens on the PORTs yet (else die, saying HINT)
check_ports_free() {
  local hint=$1 port; shift
  for port in "$@"; do
    # bash's /dev/tcp: a successful connect means someone else already listens there
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      die "port $port is already in use (another Slurm?); $hint"
    fi
  done
}

# make_state_dirs -- $D's subdirectories, as munged and the daemons want them
make_state_dirs() {
  mkdir -p "$D"/{etc,state,spool,log,run,munge}
  # munged rejects a socket directory writable by group/others; clients need to traverse it.
  chmod 0755 "$D" "$D"/{etc,state,spool,log,run,munge}
}

# make_munge_key -- the cluster's own munge key (kept if there is one); sets KEY and SOCK
make_munge_key() {
  KEY=$D/munge/munge.key
  if [[ ! -s $KEY ]]; then
    if command -v mungekey >/dev/null; then mungekey --create --keyfile="$KEY"
    else head -c 1024 /dev/urandom > "$KEY"; fi
  fi
  chmod 0400 "$KEY"
  SOCK=$D/munge/munge.socket.2
}

# fail MESSAGE -- print what the daemons said, tear down with $STOP (unless asked not to), exit 1
fail() {
  echo "$ME: ERROR: $*" >&2
  local f
  for f in "$D"/log/*; do [[ -f $f ]] && { echo "---- $f" >&2; tail -n 25 "$f" >&2; }; done
  if [[ ${FAASX_SLURM_KEEP_ON_FAILURE:-0} != 1 ]]; then
    "${STOP[@]}" >&2 || true
  fi
  exit 1
}

# daemon NAME CMD... -- run the daemon in its foreground mode, detached, so $! is its PID
daemon() {
  local name=$1; shift
  setsid "$@" </dev/null >"$D/log/$name.out" 2>&1 &
  echo "$name $!" >> "$D/pids"
}

# check_daemons_alive -- a daemon that died during start-up (bad config, port taken) will not come back
check_daemons_alive() {
  local name pid
  while read -r name pid; do
    kill -0 "$pid" 2>/dev/null || fail "$name exited during start-up (see $D/log/$name.out)"
  done < "$D/pids"
}

# start_munged -- the cluster's private munged, checked with a credential round trip
start_munged() {
  daemon munged /usr/sbin/munged --foreground --force --socket="$SOCK" --key-file="$KEY" \
    --pid-file="$D/run/munged.pid" --seed-file="$D/munge/munged.seed"
  for _ in $(seq 50); do [[ -S $SOCK ]] && break; sleep 0.1; done
  [[ -S $SOCK ]] || fail "munged did not create its socket $SOCK"
  munge -n --socket="$SOCK" | unmunge --socket="$SOCK" >/dev/null || fail "munge credential round trip failed"
}

# slurm_conf_common CLUSTER CTLD_HOST PER_NODE MPI -- the slurm.conf lines both clusters share, on stdout.
# PER_NODE is "" for one slurmd, "%n" for one per node (their spool, pid and log files then carry the
# node's name); MPI is MpiDefault.  Uses CTLD_PORT, SLURMD_PORT, SOCK and D.
slurm_conf_common() {
  local cluster=$1 ctld_host=$2 per_node=$3 mpi=$4
  cat <<EOF
ClusterName=$cluster
SlurmctldHost=$ctld_host
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool${per_node:+/$per_node}
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd${per_node:+-$per_node}.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd${per_node:+-$per_node}.log
SlurmctldDebug=info
SlurmdDebug=info
# Containers and small VMs have no delegated cgroup tree.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# No slurmdbd: sacct is disabled, like on many small clusters; providers must fall back to squeue.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$D/log/jobcomp.txt
MpiDefault=$mpi
SwitchType=switch/none
SchedulerType=sched/backfill
# The default batch_sched_delay keeps new jobs pending for ~3 s; tests want them running at once.
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
EOF
}
