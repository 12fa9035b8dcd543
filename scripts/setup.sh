#!/usr/bin/env bash
# Install everything hpc.burstbuffer needs on Debian 12, as root: the system
# packages of the test bed and a virtualenv (.venv) with the pinned Python
# tools and bbctl itself. Safe to run again; it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  glusterfs-server glusterfs-client xfsprogs util-linux mount attr
  slurm-wlm slurm-client munge lua5.1
  rsync etcd-server sqlite3 fuse-overlayfs bubblewrap
  openssh-server sudo
  python3-venv shellcheck
)

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (it installs Debian packages and builds loop devices)" >&2
  exit 1
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -e "$stamp" ]; then
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
# ansible-test sanity runs from its own virtualenv, holding exactly the
# requirement pins that this ansible-test version ships (they differ from ours).
reqs=$(.venv/bin/python -c 'import ansible_test, os; print(os.path.join(os.path.dirname(ansible_test.__file__), "_data", "requirements"))')
sanity_stamp=.venv-sanity/.installed-$(cat pyproject.toml "$reqs"/sanity.*.txt | sha256sum | cut -c1-16)
if [ ! -e "$sanity_stamp" ]; then
  [ -x .venv-sanity/bin/python ] || "$PYTHON" -m venv .venv-sanity
  .venv-sanity/bin/pip install -q --upgrade pip
  ansible_core=$(.venv/bin/pip show ansible-core | sed -n 's/^Version: //p')
  req_args=()
  for t in pylint validate-modules yamllint pep8 import runtime-metadata ansible-doc; do
    req_args+=(-r "$reqs/sanity.$t.txt")
  done
  .venv-sanity/bin/pip install -q "ansible-core==$ansible_core" "${req_args[@]}"
  rm -f .venv-sanity/.installed-*
  touch "$sanity_stamp"
fi
# The unprivileged job owner the tests and the test bed use (Slurm refuses burst
# buffers to root; the copy engine's unit tests drop privileges to it).
id bbuser >/dev/null 2>&1 || useradd --create-home --shell /bin/bash bbuser
# sed reads all of its input: `head -1` could leave ansible a broken pipe (and a traceback).
echo "setup.sh: ready ($(.venv/bin/ansible --version | sed -n 1p))"
