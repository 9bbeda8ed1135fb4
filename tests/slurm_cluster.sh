#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for tests/test_slurm.py: Debian's munge, slurmctld and
# slurmd, run as root. Writes /etc/slurm/slurm.conf, starts the daemons, waits until the node is
# idle. Idempotent: a cluster that is up on this very configuration is left as it is; a
# slurm.conf this script did not write (a real cluster's) is never touched.
#
#   bash tests/slurm_cluster.sh            # needs: apt-get install slurmctld slurmd munge
#
# Finished jobs are kept in slurmctld's memory for an hour (MinJobAge), so `scontrol show job`
# gives their final state; there is no slurmdbd (so no sacct), and jobcomp/filetxt keeps a line
# per finished job in /var/log/slurm/jobcomp.log.
set -euo pipefail

node=$(hostname -s)
conf=/etc/slurm/slurm.conf

state() {
    sinfo --noheader --nodes="$node" --format=%t 2>/dev/null
}

for tool in munged slurmctld slurmd sinfo; do
    command -v "$tool" >/dev/null || { echo "slurm_cluster: $tool not found (apt-get install slurmctld slurmd munge)" >&2; exit 1; }
done

cpus=$(nproc)
memory_mb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 - 512 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
wanted=$(cat <<EOF
# Written by tests/slurm_cluster.sh: a one-node test cluster (root runs everything).
ClusterName=lrpt-ci
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
MinJobAge=3600
# a requeued job may start again after the step credentials' lifetime (default 120 s)
AuthInfo=cred_expire=5
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MaxArraySize=1001
KillWait=10
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
)
if [[ -f $conf ]] && ! grep -q '^# Written by tests/slurm_cluster.sh' "$conf"; then
    echo "slurm_cluster: $conf was not written by this script; not touching a real cluster's configuration" >&2
    exit 1
fi
if [[ $(state) =~ ^(idle|mix|alloc)$ && -f $conf && $(cat "$conf") == "$wanted" ]]; then
    echo "slurm_cluster: $node is already up"
    exit 0
fi
printf '%s\n' "$wanted" > "$conf"

# the job's first host is the rendezvous address (slurm/common.sh): the name must resolve
if ! getent hosts "$node" >/dev/null; then
    echo "127.0.0.1 $node" >> /etc/hosts
fi

# munged runs as its own user; a stale socket or pid from an earlier container life is removed
if ! munge -n >/dev/null 2>&1 </dev/null; then
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key && chmod 0600 /etc/munge/munge.key
    fi
    mkdir -p /run/munge && chown munge:munge /run/munge && chmod 0755 /run/munge
    rm -f /run/munge/munged.pid /run/munge/munge.socket.2*
    runuser -u munge -- /usr/sbin/munged
fi
munge -n </dev/null | unmunge >/dev/null

# (re)start the Slurm daemons on this configuration: stop only the pids they wrote
for daemon in slurmd slurmctld; do
    pid=$(cat "/run/slurm/$daemon.pid" 2>/dev/null || true)
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    fi
done
slurmctld
slurmd

for _ in $(seq 120); do
    if [[ $(state) == idle ]]; then
        echo "slurm_cluster: $node up with $cpus CPUs, ${memory_mb} MB"
        exit 0
    fi
    # a node left DOWN/DRAIN by an earlier life of the cluster comes back
    scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
    sleep 0.5
done
echo "slurm_cluster: $node did not become idle; sinfo says:" >&2
sinfo -N -l >&2 || true
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
