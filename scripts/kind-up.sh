#!/usr/bin/env bash
# servelab on a local kind cluster (simulator backends), reachable on 127.0.0.1.
#   scripts/kind-up.sh            (make kind-up)
#   scripts/kind-up.sh --check    only check the prerequisites
# Creates the cluster from k8s/overlays/kind/cluster.yaml (unless it exists), builds the servelab
# image and loads it into the cluster, applies the kind overlay, waits for every rollout, creates
# one API key per demo tenant (stored in the Secret servelab-demo-keys) and prints URL and keys.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/prereqs.sh
source scripts/prereqs.sh

CLUSTER=servelab
IMAGE=${SERVELAB_IMAGE:-servelab:0.1.0}
NS=servelab
CHECK_ONLY=0
[ "${1:-}" = "--check" ] && CHECK_ONLY=1

need_cmd curl "install curl (apt-get install curl)"
need_cmd python3 "install Python 3 (apt-get install python3)"
need_docker
need_cmd kind "install kind: https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
need_cmd kubectl "install kubectl: https://kubernetes.io/docs/tasks/tools/"
check_or_exit
[ "$CHECK_ONLY" = 1 ] && { echo "prerequisites for kind-up: ok"; exit 0; }

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  echo "kind cluster $CLUSTER exists; reusing it"
else
  kind create cluster --config k8s/overlays/kind/cluster.yaml --wait 120s
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null

echo "building $IMAGE and loading it into the cluster"
docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

kubectl apply -k k8s/overlays/kind
for workload in statefulset/redis deployment/simulator deployment/gateway deployment/prometheus deployment/grafana; do
  kubectl -n "$NS" rollout status "$workload" --timeout=300s
done

URL=http://127.0.0.1:8080
wait_http "$URL/readyz" 60
TOKEN=$(kubectl -n "$NS" get secret -l app.kubernetes.io/part-of=servelab -o json \
  | python3 -c 'import base64, json, sys
for s in json.load(sys.stdin)["items"]:
    if s["metadata"]["name"].startswith("servelab-admin-"):
        print(base64.b64decode(s["data"]["admin-token"]).decode())')
mkdir -p runs/kind
create_demo_keys "$URL" "$TOKEN" runs/kind/keys.json acme tiny noisy steady
kubectl -n "$NS" create secret generic servelab-demo-keys --from-file=keys.json=runs/kind/keys.json \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
cat <<MSG

servelab is up on kind (simulator backends):
  gateway     $URL/v1
  grafana     http://127.0.0.1:3000   (anonymous viewer)
  prometheus  http://127.0.0.1:9090
  keys        runs/kind/keys.json and Secret $NS/servelab-demo-keys
note: the HPA needs metrics-server, which kind does not install (kubectl get hpa shows <unknown>).
tear down: make kind-down
MSG
