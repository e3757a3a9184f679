#!/usr/bin/env bash
# Starts a one-node Slurm cluster on this machine for tests/slurm_provider.rs: munged,
# slurmctld and slurmd as root on loopback (proctrack/linuxproc, no cgroups), the node
# `localhost` with this machine's CPUs and 4 GPU gres on stand-in device files (for
# `--gres=gpu:N` jobs of logical GPUs). Idempotent: daemons already up are kept. Every wait is bounded.
# Installs slurm-wlm and munge with apt-get when they are missing (needs root).
#
# Exit status: 0 once `sinfo` shows the node idle and `sbatch --wrap true` has run to the
# end; 1, with the reason on stderr, when it cannot get there.
set -euo pipefail

conf_dir=/etc/slurm
state=/var/spool/ember-slurm
logs=/var/log/ember-slurm
run=/run/ember-slurm
marker="# Written by Ember's tests/slurm/start.sh"

fail() {
  echo "slurm: $*" >&2
  for f in "$logs/slurmctld.log" "$logs/slurmd.log"; do
    if [ -e "$f" ]; then
      echo "--- last lines of $f" >&2
      tail -n 15 "$f" >&2
    fi
  done
  exit 1
}

# Polls `$@` every 0.2 s until it succeeds, for at most $1 seconds.
wait_for() {
  local limit=$1
  shift
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

[ "$(id -u)" = 0 ] || fail "must run as root (the daemons run as root here)"

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || fail "slurm-wlm and munge are not installed and there is no apt-get"
  echo "slurm: installing slurm-wlm and munge with apt-get"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge) \
    >/dev/null || fail "apt-get install slurm-wlm munge failed"
fi

# munge: the key, then the daemon (as the munge user, as its service would).
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
chown munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge
chmod 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
munge_works() { munge -n | unmunge; }
if ! munge_works >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged || fail "munged did not start"
  wait_for 20 munge_works || fail "munge does not answer (munge -n | unmunge) within 20 s"
fi

# The configuration: written afresh unless another (not ours) is there.
mkdir -p "$conf_dir" "$state/ctld" "$state/d" "$logs" "$run"
if [ -e "$conf_dir/slurm.conf" ] && ! grep -qF "$marker" "$conf_dir/slurm.conf"; then
  fail "$conf_dir/slurm.conf exists and was not written by this script: not touching it"
fi
cpus=$(nproc)
memory=$(awk '/^MemTotal:/ { m = int($2 / 1024 / 2); print (m > 512 ? 512 : m) }' /proc/meminfo)
new_conf=$(cat <<CONF
$marker
ClusterName=ember
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
GresTypes=gpu
ReturnToService=2
KillWait=5
MinJobAge=5
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/d
SlurmctldPidFile=$run/slurmctld.pid
SlurmdPidFile=$run/slurmd.pid
SlurmctldLogFile=$logs/slurmctld.log
SlurmdLogFile=$logs/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory Gres=gpu:4 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
)
# Slurm counts a GPU gres only with a device file: four stand-ins for /dev/null.
mkdir -p "$state/dev"
for i in 0 1 2 3; do
  if [ ! -c "$state/dev/gpu$i" ]; then
    rm -f "$state/dev/gpu$i"
    mknod "$state/dev/gpu$i" c 1 3 || fail "cannot make the stand-in GPU device $state/dev/gpu$i (mknod)"
  fi
done
new_gres="$marker
NodeName=localhost Name=gpu File=$state/dev/gpu[0-3]"
changed=0
if [ "$(cat "$conf_dir/slurm.conf" 2>/dev/null)" != "$new_conf" ]; then
  printf '%s\n' "$new_conf" >"$conf_dir/slurm.conf"
  changed=1
fi
if [ "$(cat "$conf_dir/gres.conf" 2>/dev/null)" != "$new_gres" ]; then
  printf '%s\n' "$new_gres" >"$conf_dir/gres.conf"
  changed=1
fi

running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if running "$run/slurmctld.pid" && [ "$changed" = 1 ]; then
  scontrol reconfigure || fail "scontrol reconfigure failed"
fi
if ! running "$run/slurmctld.pid"; then
  slurmctld || fail "slurmctld did not start"
fi
wait_for 30 scontrol ping || fail "slurmctld does not answer (scontrol ping) within 30 s"
if ! running "$run/slurmd.pid"; then
  slurmd -N localhost || fail "slurmd did not start"
fi

node_idle() { [ "$(sinfo -h -N -n localhost -o '%t')" = idle ]; }
if ! wait_for 30 node_idle; then
  # A node that was down (an earlier run's daemons killed) comes back on request.
  scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
  wait_for 30 node_idle ||
    fail "the node is not idle within 60 s: $(sinfo -h -N -n localhost -o '%t %E' 2>&1)"
fi

# A job runs to the end.
out=$(timeout 60 sbatch --parsable --wait --job-name=ember-probe --output=/dev/null --wrap true 2>&1) ||
  fail "sbatch --wait --wrap true did not complete within 60 s: $out"
echo "slurm: ready (node localhost idle, $cpus CPUs, 4 GPU gres; probe job ${out%%;*} completed)"
