#!/usr/bin/env bash
# The whole test suite, as CI runs it (as root, after scripts/setup.sh):
# lint, ansible-test sanity, unit tests, then the real loopback test bed for
# integration and molecule tests, torn down afterwards whatever happened.
# Set BB_TEST_STAGES to a subset of "lint sanity unit integration molecule demo".
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export ANSIBLE_CONFIG="$PWD/ansible.cfg"
stages=${BB_TEST_STAGES:-lint sanity unit integration molecule demo}
want() { [[ " $stages " == *" $1 "* ]]; }
step() { printf '\n=== %s\n' "$*"; }

# A copy of this collection installed into ~/.ansible/collections by an earlier
# tool run would shadow the checkout for ansible-lint and molecule: remove it.
stale=${HOME}/.ansible/collections/ansible_collections/hpc/burstbuffer
if [ -d "$stale" ] && [ ! -L "$stale" ]; then
  echo "removing a stale installed copy of hpc.burstbuffer: $stale"
  rm -rf "$stale"
fi

if want lint; then
  step "lint: ruff, yamllint, ansible-lint, shellcheck"
  ruff check src tests plugins benchmarks
  yamllint --strict .
  ansible-lint --offline
  shellcheck scripts/*.sh .ci/run
fi

if want sanity; then
  step "ansible-test sanity"
  scripts/sanity.sh
fi

if want unit; then
  step "unit tests"
  pytest -q tests/unit
fi

if want integration || want molecule; then
  step "test bed up"
  trap 'step "test bed down"; bbctl testbed down' EXIT
  bbctl testbed up --slurm-cpus 16  # jobs wait for buffers, not for the two CPUs (tests/integration/bbctl/test_load.py)
  if want integration; then
    step "integration tests on the test bed"
    pytest -q tests/integration
  fi
  if want molecule; then
    step "molecule"
    for scenario in molecule/*/; do
      name=$(basename "$scenario")
      [ "$name" = "resources" ] || molecule test -s "$name"
    done
  fi
  step "test bed down"
  trap - EXIT
  bbctl testbed down
  scripts/check-clean.sh
fi

if want demo; then
  # README's other command: it builds and removes a test bed of its own, and must keep working.
  step "demo"
  scripts/demo.sh
  scripts/check-clean.sh
fi
echo "ALL TESTS PASSED"
