#!/usr/bin/env bash
# Installs what netstack needs on a fresh Debian machine (run as root); safe to re-run.
# Leaves .venv/bin/netstack built (cffi fast path included).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(iproute2 iperf3 curl iputils-ping procps util-linux python3 python3-venv python3-dev gcc
              libffi-dev rootlesskit uidmap podman runc busybox-static slirp4netns golang-go
              etcd-server openssl)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Debian's own python3, not whatever is first on PATH: an interpreter under /root (pyenv)
# cannot be run by the unprivileged users that runtimes like rootlesskit run us as.
PY=/usr/bin/python3
if [ -x .venv/bin/python ] && [ "$(readlink -f .venv/bin/python)" != "$(readlink -f "$PY")" ]; then
  rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.netstack-installed
newer_sources=$(find pyproject.toml setup.py csrc -newer "$stamp" 2>/dev/null | head -1 || true)
# an editable install of the default kind puts a meta-path finder in site-packages that
# imports pathlib and importlib.util at every interpreter start (~9 ms of each netstack
# start); compat mode is one .pth line with the checkout's path, as a plain install costs
finder=$(ls .venv/lib/python3*/site-packages/__editable___netstack_*_finder.py 2>/dev/null || true)
if [ ! -f "$stamp" ] || [ -n "$newer_sources" ] || [ -n "$finder" ] || [ ! -x .venv/bin/netstack ]; then
  .venv/bin/pip install -q --upgrade pip 2>/dev/null || true
  .venv/bin/pip install -q -e '.[test]' --config-settings editable_mode=compat
  touch "$stamp"
fi
# bytecode now, as a wheel install does: with PYTHONDONTWRITEBYTECODE=1 in the shell,
# every start would compile each netstack module again (~35 ms of a start here)
.venv/bin/python -m compileall -q netstack
.venv/bin/python -c "import netstack._fast as f; assert f.FAST, 'C fast path not built'"
