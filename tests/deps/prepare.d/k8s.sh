#!/usr/bin/env bash
# Builds the kube-apiserver the agent tests run against (tests/k8s/build.sh), once: ~3.5 min and
# ~2 GB the first time, nothing afterwards. On a developer's machine a failed build is not fatal
# (those tests then skip and say why); in CI it is, so the agent tests can never skip silently.
set -uo pipefail
cd "$(dirname "$0")/../../.."  # the repository root
[ -x tests/k8s/.bin/kube-apiserver ] && exit 0
# A machine that built it once (for another checkout) keeps a copy outside the work tree.
cache="${XDG_CACHE_HOME:-$HOME/.cache}/modeldepot/kube-apiserver-v1.20.2"
if [ -x "$cache" ]; then mkdir -p tests/k8s/.bin && cp "$cache" tests/k8s/.bin/kube-apiserver && exit 0; fi
echo "tests/deps/prepare.d/k8s.sh: building kube-apiserver into tests/k8s/.bin (once, a few minutes)"
mkdir -p tests/k8s/.bin
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
log=$(mktemp)
if ! $SUDO bash tests/k8s/build.sh tests/k8s/.bin >"$log" 2>&1; then
  cp "$log" tests/k8s/.bin/build.log 2>/dev/null || true
  if [ -n "${CI:-}" ]; then
    echo "tests/deps/prepare.d/k8s.sh: kube-apiserver build failed:"; tail -40 "$log"; exit 1
  fi
  echo "tests/deps/prepare.d/k8s.sh: build failed (see tests/k8s/.bin/build.log); Kubernetes tests will skip"
fi
cp "$log" tests/k8s/.bin/build.log 2>/dev/null || true
rm -f "$log"
if [ -x tests/k8s/.bin/kube-apiserver ]; then
  mkdir -p "$(dirname "$cache")" && cp tests/k8s/.bin/kube-apiserver "$cache" || true
fi
exit 0
