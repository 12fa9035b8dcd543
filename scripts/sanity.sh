#!/usr/bin/env bash
# ansible-test sanity on the collection exactly as it would be published:
# build the artifact (galaxy.yml's build_ignore applies), unpack it under an
# ansible_collections/hpc/burstbuffer tree (where ansible-test insists on
# running), and test that. Extra arguments go to ansible-test.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv-sanity/bin:$PATH"
# ansible-test fetches a pip bootstrap from a host we cannot reach; give it ours.
pip_version=$(python - <<'PY'
import inspect, re
from ansible_test._internal import python_requirements
print(re.search(r"pip='([0-9.]+)'", inspect.getsource(python_requirements.get_venv_packages)).group(1))
PY
)
cache=~/.ansible/test/cache/get_pip_${pip_version//./_}.py
[ -e "$cache" ] || install -D -m 0644 scripts/get_pip_offline.py "$cache"
work=$(mktemp -d /tmp/bb-sanity.XXXXXX)
trap 'rm -rf "$work"' EXIT
ansible-galaxy collection build --force --output-path "$work" . >/dev/null
dest="$work/ansible_collections/hpc/burstbuffer"
mkdir -p "$dest"
tar -xzf "$work"/hpc-burstbuffer-*.tar.gz -C "$dest"
cd "$dest"
ansible-test sanity --python 3.11 --color no "$@"
