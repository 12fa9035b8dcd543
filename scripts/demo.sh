#!/usr/bin/env bash
# The demo: a real loopback storage cluster and Slurm on this machine, and one
# job of the unprivileged user that asks for a burst buffer with stage-in and
# stage-out. Slurm calls burst_buffer.lua, which calls bbctl for each stage;
# this script only submits the job and shows bbctl's log as it happens.
# Leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
root=/var/lib/bbctl-testbed
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
tail_pid=""
cleanup() {
  [ -n "$tail_pid" ] && kill "$tail_pid" 2>/dev/null
  say "tearing the test bed down"
  bbctl testbed down >/dev/null
  [ -n "${pfs:-}" ] && rm -rf "$pfs"
  scripts/check-clean.sh
}
trap cleanup EXIT

say "test bed: 3 GlusterFS servers on 127.1.1.1-3, 2 XFS 'NVMe' bricks each, one-node Slurm (burst_buffer/lua)"
bbctl testbed up | sed 's/^/  /'
export SLURM_CONF=$root/slurm/etc/slurm.conf BBCTL_CONFIG=$root/bbctl.yml

say "the user's data on the 'parallel file system' ($(id -un bbuser)'s directory)"
pfs=$(mktemp -d /tmp/bb-demo-pfs.XXXXXX)
mkdir -p "$pfs/input/run1"
for i in $(seq 1 200); do printf 'sample %d\n' "$i" > "$pfs/input/run1/sample$i.txt"; done
head -c 64M /dev/urandom > "$pfs/input/matrix.bin"
chown -R bbuser: "$pfs"
echo "  $pfs/input: $(find "$pfs/input" -type f | wc -l) files, $(du -sh "$pfs/input" | cut -f1)"

cat > "$pfs/job.sh" <<JOB
#!/bin/bash
#BB_LUA jobdw capacity=8GiB pool=nvme
#BB_LUA stage_in type=directory source=$pfs/input destination=\$DW_JOB_STRIPED/input
#BB_LUA stage_out type=directory source=\$DW_JOB_STRIPED/results destination=$pfs/results
set -e
echo "running on \$(hostname) with the buffer at \$DW_JOB_STRIPED"
mkdir "\$DW_JOB_STRIPED/results"
cat "\$DW_JOB_STRIPED"/input/run1/*.txt | wc -l > "\$DW_JOB_STRIPED/results/count.txt"
sha256sum "\$DW_JOB_STRIPED/input/matrix.bin" | cut -d' ' -f1 > "\$DW_JOB_STRIPED/results/matrix.sha256"
sleep 3
JOB
chown bbuser: "$pfs/job.sh"
say "the job script"
sed 's/^/  /' "$pfs/job.sh"

say "submitting as bbuser; each stage as bbctl logs it"
touch "$root/bbctl/bbctl.log"
# tail ends with this script (--pid); the pipeline behind it then sees end of file.
tail -n 0 -F --pid=$$ "$root/bbctl/bbctl.log" 2>/dev/null | grep --line-buffered -v ': task: ' \
  | sed -u 's/^[0-9-]* \([0-9:]*\),[0-9]* /  \1 /' &
tail_pid=$!
job=$(cd "$pfs" && runuser -u bbuser -- env SLURM_CONF="$SLURM_CONF" sbatch --parsable -o "$pfs/slurm-%j.out" job.sh)
echo "  submitted job $job"
shown_burst=""
for _ in $(seq 1 300); do
  state=$(scontrol show job "$job" | grep -o 'JobState=[A-Z_]*' | cut -d= -f2)
  if [ "$state" = RUNNING ] && [ -z "$shown_burst" ]; then
    echo "  -- scontrol show burst while the job runs:"
    scontrol show burst | sed 's/^/     /'
    shown_burst=1
  fi
  case "$state" in COMPLETED|CANCELLED|FAILED|TIMEOUT) break ;; esac
  sleep 1
done
for _ in $(seq 1 120); do bbctl show "$job" >/dev/null 2>&1 || break; sleep 1; done
sleep 1
kill "$tail_pid" 2>/dev/null; tail_pid=""

say "job $job: $state; its output"
sed 's/^/  /' "$pfs/slurm-$job.out"
say "results staged out to $pfs/results (owner, content)"
find "$pfs/results" -type f -printf '  %u %M %6s %p\n'
matches=NO
[ "$(cat "$pfs/results/matrix.sha256")" = "$(sha256sum "$pfs/input/matrix.bin" | cut -d' ' -f1)" ] && matches=yes
echo "  count.txt: $(cat "$pfs/results/count.txt") lines read; matrix.sha256 matches the input: $matches"
say "after teardown"
bbctl status | sed 's/^/  /'
# test.sh runs the demo too: it fails unless the job completed and its results came back intact.
[ "$state" = COMPLETED ] && [ "$matches" = yes ] && [ "$(cat "$pfs/results/count.txt")" = 200 ] \
  && [ "$(stat -c %U "$pfs/results/count.txt")" = bbuser ]
