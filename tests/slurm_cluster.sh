#!/usr/bin/env bash
# A two-node Slurm cluster on this one machine, for tests/test_slurm.py: Debian's munge, slurmctld
# and two slurmd daemons (`slurmd -N node1`, `slurmd -N node2`), run as root. The nodes have their
# own addresses (127.0.0.2, 127.0.0.3, added to /etc/hosts) and ports, so a job's first node name is
# a real rendezvous address, as on a cluster. Both are in the default partition; each declares all
# CPUs of the machine and half its memory (a one-node job asks for 2 tasks on one node).
#
# Writes /etc/slurm/slurm.conf, starts the daemons, waits until both nodes are idle. Idempotent: a
# cluster that is up on this very configuration is left as it is; a slurm.conf this script did not
# write (a real cluster's) is never touched; only daemons this script started (their pid files in
# /run/slurm) are ever stopped.
#
#   bash tests/slurm_cluster.sh            # needs: apt-get install slurmctld slurmd munge
#
# Finished jobs are kept in slurmctld's memory for an hour (MinJobAge), so `scontrol show job`
# gives their final state; there is no slurmdbd (so no sacct), and jobcomp/filetxt keeps a line
# per finished job in /var/log/slurm/jobcomp.log. Logs: /var/log/slurm/slurmctld.log and
# /var/log/slurm/slurmd-<node>.log.
set -euo pipefail

controller=$(hostname -s)
conf=/etc/slurm/slurm.conf
# name, address, slurmd port
nodes=(node1 node2)
declare -A addr=([node1]=127.0.0.2 [node2]=127.0.0.3) port=([node1]=17001 [node2]=17002)
node_list=$(IFS=,; echo "${nodes[*]}")

all_in() {  # all_in REGEX: the controller answers for every node, and each one's state matches REGEX
    local shown
    shown=$(sinfo --noheader --Node --nodes="$node_list" --format='%N %t' 2>/dev/null | sort -u)
    [[ $(awk '{print $1}' <<<"$shown" | sort -u | grep -c .) == "${#nodes[@]}" ]] &&
        ! awk '{print $2}' <<<"$shown" | grep -qvE "^($1)$"
}

running() {  # running PIDFILE: the Slurm daemon that wrote it still runs
    local pid
    pid=$(cat "$1" 2>/dev/null || true)
    [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) =~ ^slurm(ctld|d)$ ]]
}

daemons_up() {  # the controller and every node's slurmd run (the controller notices a dead slurmd only minutes later)
    local n
    running /run/slurm/slurmctld.pid || return 1
    for n in "${nodes[@]}"; do
        running "/run/slurm/slurmd-$n.pid" || return 1
    done
}

for tool in munged slurmctld slurmd sinfo; do
    if ! command -v "$tool" >/dev/null; then
        echo "slurm_cluster: $tool not found (apt-get install slurmctld slurmd munge)" >&2
        exit 1
    fi
done

cpus=$(nproc)
memory_mb=$(( ($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 - 512) / ${#nodes[@]} ))
node_lines=$(for n in "${nodes[@]}"; do
    echo "NodeName=$n NodeAddr=${addr[$n]} Port=${port[$n]} CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN"
done)
wanted=$(cat <<EOF
# Written by tests/slurm_cluster.sh: a two-node test cluster on one machine (root runs everything).
ClusterName=lrpt-ci
SlurmctldHost=$controller(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
# %n: the node name, so that the two slurmd of this machine keep apart
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
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
$node_lines
PartitionName=debug Nodes=$node_list Default=YES MaxTime=INFINITE State=UP
EOF
)
if [[ -f $conf ]] && ! grep -q '^# Written by tests/slurm_cluster.sh' "$conf"; then
    echo "slurm_cluster: $conf was not written by this script; not touching a real cluster's configuration" >&2
    exit 1
fi
if [[ -f $conf && $(cat "$conf") == "$wanted" ]] && daemons_up && all_in 'idle|mix|alloc'; then
    echo "slurm_cluster: $node_list already up"
    exit 0
fi

# a job's first node name is its rendezvous address (slurm/common.sh): each name must resolve to
# its node's own address
for n in "${nodes[@]}"; do
    if ! getent hosts "$n" >/dev/null; then
        echo "${addr[$n]} $n" >> /etc/hosts
    fi
    resolved=$(getent hosts "$n" | awk '{print $1; exit}')
    if [[ $resolved != "${addr[$n]}" ]]; then
        echo "slurm_cluster: $n resolves to $resolved, not ${addr[$n]} (/etc/hosts, DNS): another host has the name" >&2
        exit 1
    fi
done
mkdir -p /etc/slurm /var/spool/slurmctld /var/log/slurm /run/slurm "${nodes[@]/#//var/spool/slurmd/}"
printf '%s\n' "$wanted" > "$conf"

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

stop() {  # stop PIDFILE: end the daemon that wrote it, if it still runs (a pid reused by another program is not)
    local pid
    pid=$(cat "$1" 2>/dev/null || true)
    if running "$1"; then
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    fi
    rm -f "$1"
}

# (re)start the Slurm daemons on this configuration: the slurmd first (an earlier configuration's
# /run/slurm/slurmd.pid too), then the controller
for pidfile in /run/slurm/slurmd*.pid /run/slurm/slurmctld.pid; do
    if [[ -e $pidfile ]]; then
        stop "$pidfile"
    fi
done
slurmctld
for n in "${nodes[@]}"; do
    slurmd -N "$n"
done

for _ in $(seq 120); do
    if all_in idle; then
        echo "slurm_cluster: $node_list up, each with $cpus CPUs and ${memory_mb} MB"
        exit 0
    fi
    # a node left DOWN/DRAIN by an earlier life of the cluster comes back
    scontrol update nodename="$node_list" state=resume >/dev/null 2>&1 || true
    sleep 0.5
done
echo "slurm_cluster: $node_list did not become idle; sinfo says:" >&2
sinfo -N -l >&2 || true
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd-*.log >&2 || true
exit 1
