#!/usr/bin/env bash
# Fail if the test bed left anything behind: loop devices, gluster mounts,
# or gluster/Slurm daemons (zombies awaiting reaping by PID 1 do not count).
set -euo pipefail
root=${BB_TESTBED_ROOT:-/var/lib/bbctl-testbed}
problems=()
loops=$(losetup --list --noheadings --output BACK-FILE | grep -c "^$root/" || true)
[ "$loops" -eq 0 ] || problems+=("$loops loop devices backed under $root")
mounts=$(grep -cE " fuse.glusterfs | $root/" /proc/mounts || true)
[ "$mounts" -eq 0 ] || problems+=("$mounts gluster or test-bed mounts")
for name in glusterd glusterfsd glusterfs slurmctld slurmd; do
  for pid in $(pgrep -x "$name" || true); do
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo X)
    [ "$state" = Z ] || [ "$state" = X ] || problems+=("$name pid $pid still runs")
  done
done
# the test bed's bbctl sweep service (bbctl.testbed.slurm.start_sweeper), known by its configuration
for pid in $(pgrep -f -- "--config $root/bbctl.yml sweep" || true); do
  problems+=("bbctl sweep pid $pid still runs")
done
[ ! -e "$root" ] || problems+=("$root still exists")
sudoers=/etc/sudoers.d/bbctl-testbed-bbops  # bbctl.testbed.ssh: the SSH user's become rights
[ ! -e "$sudoers" ] || problems+=("$sudoers still exists")
if [ "${#problems[@]}" -gt 0 ]; then
  printf 'check-clean: left behind: %s\n' "${problems[@]}" >&2
  exit 1
fi
echo "check-clean: nothing left behind"
