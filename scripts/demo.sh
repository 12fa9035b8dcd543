#!/usr/bin/env bash
# The demo: a real loopback storage cluster and Slurm on this machine, then a
# burst buffer built, used and destroyed with the collection's playbooks while
# a Slurm job of the unprivileged user writes into it. Leaves nothing behind.
#
# Today the demo drives the playbooks directly; once bbctl's stage commands
# land (issue 4) Slurm itself will call them for a #DW jobdw job.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" ANSIBLE_CONFIG="$PWD/ansible.cfg"
root=/var/lib/bbctl-testbed
inventory=$root/inventory.yml
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

trap 'say "tearing the test bed down"; bbctl testbed down >/dev/null; scripts/check-clean.sh' EXIT

say "test bed: 3 GlusterFS servers on 127.1.1.1-3, 2 XFS 'NVMe' bricks each, one-node Slurm"
bbctl testbed up
export SLURM_CONF=$root/slurm/etc/slurm.conf
scontrol show burst | sed 's/^/  /'

uid=$(id -u bbuser); gid=$(id -g bbuser)
vars=$(mktemp /tmp/bb-demo.XXXXXX.yml)
cat > "$vars" <<YAML
bb_buffer:
  name: demo-job
  capacity: 3GiB
  owner: $uid
  group: $gid
  mount_path: $root/mnt/demo-job
  bricks:
    - {host: bbnode1, path: $root/node1/bricks/nvme1}
    - {host: bbnode2, path: $root/node2/bricks/nvme1}
    - {host: bbnode3, path: $root/node3/bricks/nvme1}
YAML
play() { ansible-playbook -i "$inventory" -e "@$vars" "playbooks/$1.yml" | grep -E '^(TASK|changed|ok|fatal)' | sed 's/^/  /'; }

say "setup: buffer_create.yml builds a 3-brick GlusterFS volume (quota 3GiB)"
play buffer_create
say "pre_run: buffer_mount.yml mounts it for bbuser (0700)"
play buffer_mount
stat -c '  %A %U:%G %n' "$root/mnt/demo-job"

say "run: a Slurm job of bbuser writes 12 files into the buffer"
job=$(mktemp -d /tmp/bb-demo-job.XXXXXX); chown bbuser: "$job"
cat > "$job/job.sh" <<JOB
#!/bin/bash
#BB_LUA jobdw capacity=3GiB pool=nvme
for i in \$(seq 1 12); do echo "result \$i of job \$SLURM_JOB_ID" > $root/mnt/demo-job/out\$i.txt; done
JOB
chmod 0644 "$job/job.sh"
id=$(cd "$job" && runuser -u bbuser -- env SLURM_CONF="$SLURM_CONF" sbatch --parsable -o "$job/slurm-%j.out" job.sh)
echo "  submitted job $id"
for _ in $(seq 1 60); do squeue -h -j "$id" | grep -q . || break; sleep 1; done
sacct_state=$(scontrol show job "$id" 2>/dev/null | grep -o 'JobState=[A-Z]*' || echo 'JobState=?')
echo "  job $id finished: $sacct_state"
say "the files landed on the three servers' bricks"
for n in 1 2 3; do
  files=("$root/node$n/bricks/nvme1/demo-job"/out*.txt)
  echo "  bbnode$n: ${#files[@]} files"
done

say "post_run + teardown: buffer_unmount.yml, buffer_destroy.yml"
play buffer_unmount
play buffer_destroy
rm -rf "$vars" "$job"
left=$(find "$root"/node*/bricks/nvme1 -mindepth 1 -maxdepth 1 | wc -l)
echo "  brick roots after teardown: $left entries"
