#!/usr/bin/env bash
# ansible-test sanity on the collection exactly as it would be published:
# build the artifact (galaxy.yml's build_ignore applies), unpack it under an
# ansible_collections/hpc/burstbuffer tree (where ansible-test insists on
# running), and test that. Extra arguments go to ansible-test's first run.
#
# Target Pythons: the collection claims every Python that its oldest supported
# ansible-core runs modules with (meta/runtime.yml requires ansible-core 2.18,
# which runs modules on Python 3.8 and later; plugins/doc_fragments/attributes.py
# says so in every module's docs). All tests run once on the controller's
# Python; the tests that depend on the target's Python (compile, import) then
# run on each claimed Python installed here (pyenv's interpreters are used when
# present: its shims cannot run an interpreter that is not selected). A claimed
# Python that is not installed is skipped with a warning, or is an error with
# BB_SANITY_ALL_PYTHONS=1. BB_SANITY_PYTHONS="3.8 3.11" tests a subset.
set -euo pipefail
cd "$(dirname "$0")/.."
python_floor=3.8
export PATH="$PWD/.venv-sanity/bin:$PATH"
controller=$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
claimed=$(python - "$python_floor" <<'PY'
import sys
from ansible_test._util.target.common.constants import CONTROLLER_PYTHON_VERSIONS, REMOTE_ONLY_PYTHON_VERSIONS
floor = tuple(map(int, sys.argv[1].split(".")))
print(" ".join(v for v in REMOTE_ONLY_PYTHON_VERSIONS + CONTROLLER_PYTHON_VERSIONS
               if tuple(map(int, v.split("."))) >= floor))
PY
)
pythons=${BB_SANITY_PYTHONS:-$claimed}
# ansible-test fetches a pip bootstrap from a host we cannot reach; give it ours.
pip_version=$(python - <<'PY'
import inspect, re
from ansible_test._internal import python_requirements
print(re.search(r"pip='([0-9.]+)'", inspect.getsource(python_requirements.get_venv_packages)).group(1))
PY
)
cache=~/.ansible/test/cache/get_pip_${pip_version//./_}.py
[ -e "$cache" ] || install -D -m 0644 scripts/get_pip_offline.py "$cache"

find_python() {  # a pythonX.Y that runs (not a pyenv shim refusing to), or nothing
  local candidate
  for candidate in "$(command -v "python$1" || true)" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$1".*/bin/"python$1"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" -c '' 2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
}

work=$(mktemp -d /tmp/bb-sanity.XXXXXX)
trap 'rm -rf "$work"' EXIT
ansible-galaxy collection build --force --output-path "$work" . >/dev/null
dest="$work/ansible_collections/hpc/burstbuffer"
mkdir -p "$dest"
tar -xzf "$work"/hpc-burstbuffer-*.tar.gz -C "$dest"
cd "$dest"
echo "sanity: claimed target Pythons: $claimed; testing: $pythons"
ansible-test sanity --python "$controller" --color no "$@"
tested=$controller missing=
for version in $pythons; do
  [ "$version" = "$controller" ] && continue
  interpreter=$(find_python "$version")
  if [ -z "$interpreter" ]; then
    missing="$missing $version"
    continue
  fi
  PATH="$(dirname "$interpreter"):$PATH" \
    ansible-test sanity --python "$version" --color no --test compile --test import
  tested="$tested $version"
done
echo "sanity: target Pythons tested: $tested"
if [ -n "$missing" ]; then
  echo "WARNING: claimed target Pythons not installed here, not tested:$missing" >&2
  [ "${BB_SANITY_ALL_PYTHONS:-0}" = 1 ] && exit 1
fi
exit 0
