#!/usr/bin/env bash
# A real single-node SLURM cluster on localhost, for the tests and for trying the templates by hand.
#
#   slurm/local-cluster.sh install        # Debian packages (root): slurmctld slurmd slurm-client munge libpmix-dev
#   slurm/local-cluster.sh start DIR      # munged + slurmctld + slurmd, all state/logs in DIR; prints SLURM_CONF
#   SLURM_CONF=DIR/slurm.conf sbatch ...  # use it
#   slurm/local-cluster.sh stop DIR       # cancel jobs, wait for the queue to drain, stop the daemons we started
#
# As root, without systemd or cgroups (containers, CI): linuxproc process tracking, no task plugin,
# no accounting. Only the daemons whose pid files are in DIR are ever stopped.
set -euo pipefail
cmd=${1:?usage: local-cluster.sh install|start DIR|stop DIR}

if [ "$cmd" = install ]; then
    command -v slurmctld >/dev/null && command -v munged >/dev/null && [ -e /usr/lib/x86_64-linux-gnu/libpmix.so ] && exit 0
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q slurmctld slurmd slurm-client munge libpmix-dev >/dev/null
    exit 0
fi

dir=$(mkdir -p "${2:?usage: local-cluster.sh $cmd DIR}" && cd "$2" && pwd)
export SLURM_CONF=$dir/slurm.conf

if [ "$cmd" = stop ]; then
    if [ -f "$dir/slurmctld.pid" ]; then
        scancel --quiet --user="$(id -un)" 2>/dev/null || true
        for _ in $(seq 50); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
    fi
    for daemon in slurmd slurmctld munged; do
        [ -f "$dir/$daemon.pid" ] && kill "$(cat "$dir/$daemon.pid")" 2>/dev/null || true
        rm -f "$dir/$daemon.pid"
    done
    exit 0
fi

[ "$cmd" = start ] || { echo "unknown command $cmd" >&2; exit 2; }
mkdir -p "$dir/state" "$dir/spool"
host=$(hostname -s)
port=${RVAE_SLURM_PORT:-16817}

# munge with its own key and socket
[ -f "$dir/munge.key" ] || { dd if=/dev/urandom of="$dir/munge.key" bs=1024 count=1 2>/dev/null; chmod 400 "$dir/munge.key"; }
munged --force --key-file="$dir/munge.key" --socket="$dir/munge.socket" --pid-file="$dir/munged.pid" \
    --log-file="$dir/munged.log" --seed-file="$dir/munged.seed"

node=$(slurmd -C | head -n 1)
cat > "$SLURM_CONF" <<CONF
ClusterName=rvaelocal
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge.socket,cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MailProg=/bin/true
MpiDefault=none
ReturnToService=2
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=2,bf_interval=5
DependencyParameters=kill_invalid_depend
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 100); do
    sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)' && { echo "SLURM_CONF=$SLURM_CONF"; exit 0; }
    sleep 0.1
done
echo "local SLURM cluster did not come up; see $dir/slurmctld.log and $dir/slurmd.log" >&2
exit 1
