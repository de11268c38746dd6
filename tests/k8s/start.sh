#!/usr/bin/env bash
# Starts etcd and the kube-apiserver built by build.sh on 127.0.0.1 and writes a kubeconfig.
# usage: start.sh APISERVER_BINARY RUNDIR [ETCD_PORT=22379] [API_PORT=26443]
# Prints the PIDs of etcd and the apiserver (stop both with kill); RUNDIR/kubeconfig.yaml is ready when it returns.
# START_ETCD=0 starts only the apiserver against an etcd already running on ETCD_PORT (prints "- PID"), for
# tests that restart the apiserver. The token is kept across restarts, so clients keep working.
set -euo pipefail
BIN=${1:?binary}; R=$(mkdir -p "${2:?rundir}" && cd "$2" && pwd); EP=${3:-22379}; AP=${4:-26443}
mkdir -p "$R/certs" "$R/etcd"
[ -f "$R/sa.key" ] || { openssl genrsa -out "$R/sa.key" 2048 2>/dev/null; openssl rsa -in "$R/sa.key" -pubout -out "$R/sa.pub" 2>/dev/null; }
if [ -s "$R/tokens.csv" ]; then TOKEN=$(cut -d, -f1 "$R/tokens.csv"); else
  TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
  echo "$TOKEN,admin,admin,system:masters" >"$R/tokens.csv"
fi
EPID=-
[ "${START_ETCD:-1}" = 0 ] || { etcd --name t --data-dir "$R/etcd" --listen-client-urls "http://127.0.0.1:$EP" --advertise-client-urls "http://127.0.0.1:$EP" \
  --listen-peer-urls "http://127.0.0.1:$((EP+1))" --initial-advertise-peer-urls "http://127.0.0.1:$((EP+1))" \
  --initial-cluster "t=http://127.0.0.1:$((EP+1))" --listen-metrics-urls "http://127.0.0.1:$((EP+2))" >>"$R/etcd.log" 2>&1 &
EPID=$!; }
"$BIN" --etcd-servers="http://127.0.0.1:$EP" --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$AP" \
  --cert-dir="$R/certs" --service-account-key-file="$R/sa.pub" --service-account-signing-key-file="$R/sa.key" \
  --service-account-issuer=https://kubernetes.default.svc --service-cluster-ip-range=10.96.0.0/24 \
  --token-auth-file="$R/tokens.csv" --authorization-mode=RBAC --endpoint-reconciler-type=none \
  --disable-admission-plugins=ServiceAccount --enable-priority-and-fairness=false --insecure-port=0 >>"$R/apiserver.log" 2>&1 &
APID=$!
cat >"$R/kubeconfig.yaml" <<K
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "https://127.0.0.1:$AP", insecure-skip-tls-verify: true}}]
users: [{name: admin, user: {token: "$TOKEN"}}]
contexts: [{name: local, context: {cluster: local, user: admin}}]
current-context: local
K
for _ in $(seq 300); do
  curl -sk -H "Authorization: Bearer $TOKEN" "https://127.0.0.1:$AP/readyz" 2>/dev/null | grep -q '^ok' && { echo "$EPID $APID"; exit 0; }
  sleep 0.2
done
echo "apiserver not ready; see $R/apiserver.log" >&2; kill $APID 2>/dev/null; [ "$EPID" = - ] || kill $EPID 2>/dev/null; exit 1
