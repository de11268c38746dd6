#!/usr/bin/env bash
# Builds the kube-apiserver the agent tests run against (tests/k8s/build.sh), once: ~3.5 min and
# ~2 GB the first time, nothing afterwards. A failed build is not fatal: those tests then skip
# and say why.
set -uo pipefail
cd "$(dirname "$0")/../.."
[ -x tests/k8s/.bin/kube-apiserver ] && exit 0
echo "tests/deps/prepare.d/k8s.sh: building kube-apiserver into tests/k8s/.bin (once, a few minutes)"
mkdir -p tests/k8s/.bin
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
$SUDO bash tests/k8s/build.sh tests/k8s/.bin >tests/k8s/.bin/build.log 2>&1 \
  || echo "tests/deps/prepare.d/k8s.sh: build failed (see tests/k8s/.bin/build.log); Kubernetes tests will skip"
exit 0
