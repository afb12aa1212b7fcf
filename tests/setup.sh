#!/usr/bin/env bash
# Sets up everything loopspy's tests need, idempotently (a second run takes seconds):
#   - uvloop in each pyenv CPython 3.8-3.13 (the interpreters themselves must be in pyenv);
#   - pytest, pytest-asyncio, uvicorn[standard] (uvloop, httptools), maturin, ziglang, protobuf
#     and grpcio-tools in 3.12 (the CI-gate, fleet, saturated-service and wheel tests; zig links
#     the manylinux2014 wheel; protobuf reads pprof);
#   - tmux (the live view's tests), chromium (the report.html tests), prometheus (the agent
#     test) and debootstrap;
#   - a Debian sid userland with CPython 3.13.18, 3.14 and 3.15 and uvloop, which pyenv cannot
#     build here: debootstrapped once into $LOOPSPY_SID_ROOT (default ~/.cache/loopspy/sid-root,
#     about 40 s and 330 MB), reused after.
# Anything that cannot be set up fails the script with the command that would fix it.
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore

PYENV_ROOT="${PYENV_ROOT:-$HOME/.pyenv}"
SID_ROOT="${LOOPSPY_SID_ROOT:-$HOME/.cache/loopspy/sid-root}"
MIRROR="${LOOPSPY_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

say() { echo "setup: $*" >&2; }
die() { echo "setup: error: $*" >&2; exit 1; }

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]} (apt-get)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; } ||
    die "could not install ${missing[*]}; run: apt-get install -y ${missing[*]}"
}

for minor in 3.8 3.9 3.10 3.11 3.12 3.13; do
  py=$(ls -d "$PYENV_ROOT"/versions/"$minor".*/bin/python"$minor" 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$py" ] || die "CPython $minor is missing from pyenv ($PYENV_ROOT/versions); run: pyenv install $minor"
  "$py" -c "import uvloop" 2>/dev/null ||
    "$py" -m pip install --quiet --disable-pip-version-check uvloop ||
    die "could not install uvloop for $py; run: $py -m pip install uvloop"
done
py312=$(ls -d "$PYENV_ROOT"/versions/3.12.*/bin/python3.12 | sort -V | tail -n 1)
"$py312" -c "import pytest, pytest_asyncio, uvicorn, uvloop, httptools, maturin, ziglang, google.protobuf, grpc_tools" 2>/dev/null ||
  "$py312" -m pip install --quiet --disable-pip-version-check pytest pytest-asyncio 'uvicorn[standard]' 'maturin>=1.5,<2' ziglang protobuf grpcio-tools ||
  die "could not install the 3.12 test packages; run: $py312 -m pip install pytest pytest-asyncio 'uvicorn[standard]' 'maturin>=1.5,<2' ziglang protobuf grpcio-tools"
"$py312" -m ziglang version >/dev/null || die "zig (PyPI's ziglang) does not run; run: $py312 -m pip install --force-reinstall ziglang"

# chromium: the report.html tests open the page in headless Chromium; prometheus: the agent test
# has a real Prometheus scrape it.
apt_install tmux debootstrap util-linux chromium prometheus

if [ ! -x "$SID_ROOT/usr/bin/python3.15" ] || ! chroot "$SID_ROOT" /usr/bin/python3.14 -c "import uvloop" 2>/dev/null; then
  say "debootstrapping Debian sid with CPython 3.13-3.15 and uvloop into $SID_ROOT (about a minute)"
  rm -rf "$SID_ROOT.tmp"
  mkdir -p "$(dirname "$SID_ROOT")"
  /usr/sbin/debootstrap --variant=minbase \
      --include=python3.13,python3.14,python3.15,python3-uvloop sid "$SID_ROOT.tmp" "$MIRROR" >"$SID_ROOT.log" 2>&1 ||
    die "debootstrap failed (log: $SID_ROOT.log); run: debootstrap --variant=minbase --include=python3.13,python3.14,python3.15,python3-uvloop sid $SID_ROOT $MIRROR"
  rm -rf "$SID_ROOT"
  mv "$SID_ROOT.tmp" "$SID_ROOT"
fi
for minor in 3.13 3.14 3.15; do
  chroot "$SID_ROOT" "/usr/bin/python$minor" -c "import asyncio" ||
    die "python$minor in $SID_ROOT does not start; remove $SID_ROOT and run tests/setup.sh again"
done
chroot "$SID_ROOT" /usr/bin/python3.14 -c "import uvloop" || die "uvloop for 3.14 missing in $SID_ROOT"
say "ready: pyenv 3.8-3.13, $(chroot "$SID_ROOT" /usr/bin/python3.14 --version), $(chroot "$SID_ROOT" /usr/bin/python3.15 --version) in $SID_ROOT"
