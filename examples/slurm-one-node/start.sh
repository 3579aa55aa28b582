#!/bin/bash
# Start a one-machine SLURM (Debian bookworm: apt-get install -y slurm-wlm munge), as root:
# munged, then slurmctld and slurmd with slurm.conf beside this script. Idempotent enough to
# run again after a reboot; stop with: kill $(cat /run/slurmd.pid /run/slurmctld.pid)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
node=$(hostname -s)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
sed -e "s/=NODE/=$node/g" -e "s/CPUs=CPUS/CPUs=$(nproc)/" "$here/slurm.conf" > /etc/slurm/slurm.conf
# munge.key: Debian's package makes one; make it if it is missing
[ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key; }
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 30); do sinfo -h -o %T 2>/dev/null | grep -q idle && break; sleep 1; done
sinfo
