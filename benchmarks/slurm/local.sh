#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for the tests of `--launcher submitit` and for trying the
# cluster path before a real cluster: munge, slurmctld, slurmd, and slurmdbd over a local MariaDB (sacct needs
# accounting). No systemd: every daemon is started directly and stopped by its recorded pid.
#
#   bash benchmarks/slurm/local.sh up        # make slurm-up: install what is missing (apt, as root), start it all
#   bash benchmarks/slurm/local.sh down      # make slurm-down: stop every daemon it started; nothing left running
#   bash benchmarks/slurm/local.sh status    # which daemons run, and `sinfo`
#   bash benchmarks/slurm/local.sh env       # the line to paste: export SLURM_CONF=...
#
# Everything (configs, munge key, sockets, spool, state, logs, pid files, the database) lives under one folder,
# $SLURM_LOCAL (default: .slurm in the checkout, git-ignored). The commands (sbatch, sacct, scancel, ...) find the
# cluster through SLURM_CONF=$SLURM_LOCAL/etc/slurm.conf; `up` writes that line to $SLURM_LOCAL/env.
# Ports (loopback only; override if they clash): SLURM_LOCAL_PORT_BASE (default 16817) -> slurmctld, slurmd,
# slurmdbd on BASE, BASE+1, BASE+2 and MariaDB on BASE+3.
# The node is this machine (its hostname, all its CPUs, its memory less 1 GiB) in one partition, `local`; jobs
# run as the submitting user; cgroups are not needed (proctrack/linuxproc, task/none).
#
# Exit status: 0 done; 1 a daemon did not start (its log is printed); 2 usage; 4 cannot run here: not root, or
# the Debian packages (slurm-wlm, slurmdbd, munge, mariadb-server) are missing and cannot be installed: the
# message says which, and the tests that need the cluster are then skipped with that reason.
set -euo pipefail

usage() { sed -n '/^#   bash/p' "$0" | sed 's/^# \{0,1\}//' >&2; }
[[ $# -eq 1 ]] || { usage; exit 2; }
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
DIR=${SLURM_LOCAL:-$PWD/.slurm}
DIR=$(mkdir -p "$DIR" && cd "$DIR" && pwd)
BASE=${SLURM_LOCAL_PORT_BASE:-16817}
CTLD_PORT=$BASE SLURMD_PORT=$((BASE + 1)) DBD_PORT=$((BASE + 2)) DB_PORT=$((BASE + 3))
CONF=$DIR/etc/slurm.conf
NODE=$(hostname -s)
DAEMONS=(slurmd slurmctld slurmdbd mariadb munged)  # the order `down` stops them in (`up` starts them reversed)
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)
BINARIES=(slurmctld slurmd slurmdbd munged mariadbd mariadb-install-db sbatch sacct sacctmgr scontrol)

cannot() { echo "slurm-local: cannot start a local SLURM cluster here: $*" >&2; exit 4; }
pidfile() { echo "$DIR/run/$1.pid"; }
running() { local f; f=$(pidfile "$1"); [[ -f $f ]] && kill -0 "$(cat "$f")" 2>/dev/null; }

missing_binaries() { local b; for b in "${BINARIES[@]}"; do command -v "$b" >/dev/null || echo "$b"; done; }

install_packages() {
  local missing; missing=$(missing_binaries)
  [[ -z $missing ]] && return 0
  [[ $(id -u) == 0 ]] || cannot "not root, and these commands are missing: $(echo $missing)"
  command -v apt-get >/dev/null || cannot "no apt-get to install ${PACKAGES[*]} (missing: $(echo $missing))"
  echo "slurm-local: installing ${PACKAGES[*]} with apt-get (missing: $(echo $missing))"
  # The packages' own services must not start (they would be system-wide, outside $DIR): deny them while installing.
  local policy=/usr/sbin/policy-rc.d added=0
  if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' > $policy && chmod +x $policy && added=1; fi
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" \
    > "$DIR/apt.log" 2>&1 || rc=$?
  if ((added)); then rm -f $policy; fi
  if ((rc)); then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >> "$DIR/apt.log" 2>&1 && \
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >> "$DIR/apt.log" 2>&1 \
      || { tail -5 "$DIR/apt.log" >&2; cannot "apt-get install ${PACKAGES[*]} failed (log: $DIR/apt.log)"; }
  fi
  missing=$(missing_binaries)
  [[ -z $missing ]] || cannot "still missing after installing: $(echo $missing)"
}

write_configs() {
  mkdir -p "$DIR"/{etc,munge,run,log,spool,state,mysql}
  chmod 700 "$DIR/munge"
  if [[ ! -s $DIR/munge/munge.key ]]; then
    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
  fi
  chmod 400 "$DIR/munge/munge.key"
  local cpus mem_mb
  cpus=$(nproc)
  mem_mb=$(($(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024))
  cat > "$CONF" <<EOF
# Written by benchmarks/slurm/local.sh: a one-node cluster whose every file is under $DIR.
ClusterName=reptilebench
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=$(id -un)
SlurmdUser=root
AuthType=auth/munge
# cred_expire: a requeued job may start again after 10 s (Slurm's default holds it 120 s).
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=10
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$(pidfile slurmctld)
SlurmdPidFile=$(pidfile slurmd)
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups needed: processes are tracked through /proc, tasks are not confined.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
# Time limits: checked promptly, SIGTERM then SIGKILL 5 s later.
KillWait=5
OverTimeLimit=0
MinJobAge=300
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# For slurmdbd connections Slurm takes the munge socket from here, not from AuthInfo.
AccountingStoragePass=$DIR/munge/munge.socket
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  cat > "$DIR/etc/slurmdbd.conf" <<EOF
# Written by benchmarks/slurm/local.sh.
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=$(id -un)
PidFile=$(pidfile slurmdbd)
LogFile=$DIR/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=local
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$DIR/etc/slurmdbd.conf"
  echo "export SLURM_CONF=$CONF" > "$DIR/env"
}

# wait_for NAME SECONDS CHECK...: poll CHECK until it succeeds; on timeout print NAME's log and exit 1.
wait_for() {
  local name=$1 seconds=$2; shift 2
  local end=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= end)); then
      echo "slurm-local: $name did not come up within $seconds s; the end of its log:" >&2
      tail -20 "$DIR/log/$name.log" >&2 2>/dev/null || true
      exit 1
    fi
    sleep 0.5
  done
}

start_mariadb() {
  if [[ ! -d $DIR/mysql/data/mysql ]]; then
    mariadb-install-db --user="$(id -un)" --datadir="$DIR/mysql/data" --auth-root-authentication-method=socket \
      --skip-test-db > "$DIR/log/mariadb-install.log" 2>&1 || { tail -20 "$DIR/log/mariadb-install.log" >&2; exit 1; }
  fi
  mariadbd --no-defaults --user="$(id -un)" --datadir="$DIR/mysql/data" --socket="$DIR/mysql/mysqld.sock" \
    --port="$DB_PORT" --bind-address=127.0.0.1 --pid-file="$(pidfile mariadb)" --log-error="$DIR/log/mariadb.log" \
    --innodb-buffer-pool-size=64M > /dev/null 2>&1 &
  wait_for mariadb 60 mariadb --no-defaults --socket="$DIR/mysql/mysqld.sock" -uroot -e "SELECT 1"
  mariadb --no-defaults --socket="$DIR/mysql/mysqld.sock" -uroot -e "
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'local';
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'local';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
}

up() {
  install_packages
  write_configs
  export SLURM_CONF=$CONF
  if ! running munged; then
    munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
      --pid-file="$(pidfile munged)" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
    wait_for munged 20 munge --socket="$DIR/munge/munge.socket" -n
  fi
  running mariadb || start_mariadb
  if ! running slurmdbd; then
    slurmdbd
    wait_for slurmdbd 60 sacctmgr -n show cluster
  fi
  if [[ -z $(sacctmgr -n -P show cluster format=cluster reptilebench 2>/dev/null) ]]; then
    sacctmgr -i add cluster reptilebench > /dev/null
  fi
  running slurmctld || { slurmctld; wait_for slurmctld 60 scontrol ping; }
  running slurmd || slurmd
  wait_for slurmd 60 bash -c "sinfo -h -N -o '%T' | grep -qE '^(idle|mixed|allocated)'"
  echo "slurm-local: up. Use it with:  source $DIR/env   (SLURM_CONF=$CONF)"
  sinfo
}

# Processes of this cluster's jobs: slurmstepd and the jobs' own processes carry its SLURM_CONF in their
# environment (slurmd and sbatch pass it on), and the jobs' a SLURM_JOB_ID; a shell that merely sourced the env
# file has no SLURM_JOB_ID and is left alone.
job_processes() {
  local p env comm
  for p in /proc/[0-9]*; do
    env=$({ tr '\0' '\n' < "$p/environ"; } 2>/dev/null) || continue
    grep -qxF "SLURM_CONF=$CONF" <<< "$env" || continue
    comm=$(cat "$p/comm" 2>/dev/null) || continue
    if [[ $comm == slurmstepd ]] || grep -q '^SLURM_JOB_ID=' <<< "$env"; then echo "${p#/proc/}"; fi
  done
}

down() {
  local name pid stopped=() left
  export SLURM_CONF=$CONF
  if running slurmctld && [[ -n $(squeue -h -o %i 2>/dev/null) ]]; then
    scancel --partition=local 2>/dev/null || true  # every job of the cluster: none may outlive it
    for _ in $(seq 60); do [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break; sleep 0.5; done
  fi
  for name in "${DAEMONS[@]}"; do
    running "$name" || { rm -f "$(pidfile "$name")"; continue; }
    pid=$(cat "$(pidfile "$name")")
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
    rm -f "$(pidfile "$name")"
    stopped+=("$name")
  done
  left=$(job_processes)
  if [[ -n $left ]]; then
    echo "slurm-local: killing job processes the daemons left: $(echo $left)"
    kill -9 $left 2>/dev/null || true
  fi
  echo "slurm-local: stopped ${stopped[*]:-nothing (nothing was running)}; files kept in $DIR"
}

status() {
  local name rc=0
  for name in "${DAEMONS[@]}"; do
    if running "$name"; then echo "$name: running (pid $(cat "$(pidfile "$name")"))"; else echo "$name: not running"; rc=3; fi
  done
  if ((rc == 0)); then SLURM_CONF=$CONF sinfo; fi
  return $rc
}

case "$1" in
  up) up ;;
  down) down ;;
  status) status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  -h|--help) usage ;;
  *) usage; exit 2 ;;
esac
