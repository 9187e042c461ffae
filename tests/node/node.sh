#!/usr/bin/env bash
# The node tier (tests/node): the real control plane of tests/cluster plus one real node —
# kubelet 1.20.2 driving Docker through dockershim, kube-scheduler, kube-proxy (iptables), CNI
# bridge networking and a cluster DNS — all inside one network namespace made here.
#
#   node.sh deps      install what the node needs from Debian if it is missing (root)
#   node.sh dockerd   start a Docker daemon for this machine if none answers (images and node)
#   node.sh start     netns, control plane, scheduler, DNS, kubelet, kube-proxy; wait for Ready
#   node.sh stop      stop all of it, remove the pods' containers, the netns and the run dir
#   node.sh env       print `export KUBECONFIG=...` (to use inside the netns: `node.sh exec CMD`)
#   node.sh exec CMD  run CMD inside the node's network namespace
#
# Network rule: every address of the node, its pods and its Services exists only inside the
# namespace (node 10.200.0.1, pods 10.244.0.0/24, Services 10.0.0.0/24). The DNS answers only
# Service names and never forwards. Nothing here sends traffic anywhere but loopback and the
# namespace. Docker runs with no bridge and no iptables rules of its own: pods get their network
# from CNI, inside the namespace.
#
# One departure from a real node (see runc-clamp): negative OOM scores are raised to 0.
#
# Environment:
#   SELFMOA_NODE_RUN   run dir (default /tmp/selfmoa-node-$UID)
#   SELFMOA_NODE_NETNS network namespace name (default selfmoa-node)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CP=$HERE/../cluster/controlplane.sh
RUN=${SELFMOA_NODE_RUN:-/tmp/selfmoa-node-$(id -u)}
NETNS=${SELFMOA_NODE_NETNS:-selfmoa-node}
CACHE=${SELFMOA_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/selfmoa-cluster}
BIN=$CACHE/bin
DOCKERD_DIR=/tmp/selfmoa-dockerd
ADDR=10.200.0.1
NODE=selfmoa-node
POD_CIDR=10.244.0.0/24
API_PORT=6443
PAUSE_IMAGE=selfmoa/node-pause:local
CNI_BIN=${SELFMOA_CNI_BIN:-/usr/lib/cni}
TAG=${SELFMOA_IMAGE_TAG:-dev}
GPUS=8

T0=$SECONDS
log() { printf '[node %4ds] %s\n' "$((SECONDS - T0))" "$*" >&2; }
die() { log "error: $*"; exit 1; }
# nsenter, not `ip netns exec`: that also makes a mount namespace with its own /sys, which hides
# the cgroup mounts the kubelet needs ("mountpoint for cpu not found").
in_ns() { nsenter --net="/var/run/netns/$NETNS" "$@"; }

alive() { [[ -f $RUN/$1.pid ]] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }
spawn() {  # spawn NAME CMD...: in the namespace, in the background, log and pid under $RUN
  # A simple command, not the in_ns function: `$!` is then the process itself (nsenter execs
  # it), not a subshell whose kill would leave it running.
  nsenter --net="/var/run/netns/$NETNS" "${@:2}" >"$RUN/$1.log" 2>&1 &
  echo $! >"$RUN/$1.pid"
}
wait_for() {  # wait_for WHAT SECONDS CMD...
  local what=$1 limit=$2 t=$SECONDS
  shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS - t < limit)) || die "$what not ready after ${limit}s (logs in $RUN)"
    sleep 0.5
  done
}

# ------------------------------------------------------------------------------------ deps

DEBIAN_PACKAGES=(docker.io debootstrap iptables conntrack containernetworking-plugins curl)

deps() {
  local missing=() p
  for p in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return
  [[ $(id -u) == 0 ]] || die "missing Debian packages: ${missing[*]} (apt-get install them as root)"
  log "deps: apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
    || { apt-get update -q >/dev/null \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
}

# ------------------------------------------------------------------------------------ docker

dockerd_() {
  if docker info >/dev/null 2>&1; then return; fi
  command -v dockerd >/dev/null || die "no Docker: apt-get install docker.io (Debian's 20.10 runs here)"
  mkdir -p "$DOCKERD_DIR"
  # A copy, so the daemon does not depend on this checkout staying where it is.
  install -m 0755 "$HERE/runc-clamp" "$DOCKERD_DIR/runc-clamp"
  log "dockerd: starting (cgroupfs, no bridge, no iptables; runtime runc-clamp)"
  dockerd --iptables=false --ip-forward=false --ip-masq=false --bridge=none \
    --exec-opt native.cgroupdriver=cgroupfs \
    --add-runtime "clamp=$DOCKERD_DIR/runc-clamp" --default-runtime=clamp \
    >"$DOCKERD_DIR/dockerd.log" 2>&1 &
  echo $! >"$DOCKERD_DIR/dockerd.pid"
  local t=$SECONDS
  until docker info >/dev/null 2>&1; do
    ((SECONDS - t < 60)) || die "dockerd did not answer in 60s (log: $DOCKERD_DIR/dockerd.log)"
    sleep 0.5
  done
  log "dockerd: ready"
}

# ------------------------------------------------------------------------------------ start

token() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

kubeconfig() {  # kubeconfig FILE TOKEN: a token-only kubeconfig on the node's address
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: selfmoa-node
  cluster: {server: "https://$ADDR:$API_PORT", certificate-authority: $RUN/cp/pki/ca.crt}
users:
- name: u
  user: {token: $2}
contexts:
- name: selfmoa-node
  context: {cluster: selfmoa-node, user: u}
current-context: selfmoa-node
EOF
}

netns() {
  ip netns del "$NETNS" 2>/dev/null || true
  ip netns add "$NETNS"
  in_ns ip link set lo up
  # The node's own address, on the namespace's loopback link (this kernel has no dummy links):
  # it exists only inside the namespace, and pods reach it through their bridge's gateway.
  in_ns ip addr add "$ADDR/32" dev lo
  # Pods reach Services through kube-proxy's rules on the bridge: let bridged packets see them.
  in_ns sysctl -qw net.ipv4.ip_forward=1
}

quiet_build() {  # quiet_build DOCKER-BUILD-ARGS...: legacy builder, offline; its output only on failure
  local out
  out=$(DOCKER_BUILDKIT=0 docker build --network none "$@" 2>&1) || { printf '%s\n' "$out" >&2; die "docker build $* failed"; }
}

standin_image() {
  # vLLM's command played by `selfmoa serve` in the worker image (tests/node/vllm_standin);
  # rebuilt each start, so it is always the current worker image plus the stand-in (seconds).
  log "vLLM stand-in image: selfmoa/vllm-standin:$TAG (from selfmoa/worker:$TAG)"
  quiet_build --build-arg "WORKER_IMAGE=selfmoa/worker:$TAG" -t "selfmoa/vllm-standin:$TAG" "$HERE/vllm_standin"
}

advertise_gpus() {
  # An extended resource on the node's status, as the Kubernetes docs' "advertise extended
  # resources for a node" does: the scheduler places GPU Pods here, and they run on the CPU.
  # No device plugin: nothing checks the devices exist.
  in_ns curl -sf --cacert "$RUN/cp/pki/ca.crt" -H "Authorization: Bearer $(cat "$RUN/cp/pki/admin.token")" \
    -H 'Content-Type: application/json-patch+json' -X PATCH \
    "https://127.0.0.1:$API_PORT/api/v1/nodes/$NODE/status" \
    -d "[{\"op\": \"add\", \"path\": \"/status/capacity/nvidia.com~1gpu\", \"value\": \"$GPUS\"}]" >/dev/null
}

pause_image() {
  docker image inspect "$PAUSE_IMAGE" >/dev/null 2>&1 && return
  # The pod sandbox: sleeps, and exits at once on SIGTERM/SIGINT (like k8s.gcr.io/pause). Made
  # from the operator image, the smallest image here that has an interpreter.
  log "pause image: $PAUSE_IMAGE (from selfmoa/operator:$TAG)"
  printf '%s\n' "FROM selfmoa/operator:$TAG" \
    'ENTRYPOINT ["python3", "-c", "import signal, sys\nfor s in (signal.SIGTERM, signal.SIGINT):\n    signal.signal(s, lambda *_: sys.exit(0))\nwhile True:\n    signal.pause()"]' \
    | quiet_build -t "$PAUSE_IMAGE" -
}

cni_config() {
  mkdir -p "$RUN/cni/net.d" "$RUN/cni/cache"
  cat >"$RUN/cni/net.d/10-selfmoa.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "selfmoa-pods",
  "plugins": [
    {
      "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$RUN/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

start() {
  [[ $(id -u) == 0 ]] || die "the node tier needs root (network namespace, kubelet mounts)"
  bash "$CP" built || die "control plane not built: bash $CP build"
  local b
  for b in kubelet kube-proxy kube-scheduler; do
    [[ -x $BIN/$b ]] || die "$b not built: bash $CP build-node"
  done
  [[ -x $CNI_BIN/bridge ]] || die "no CNI plugins in $CNI_BIN: apt-get install containernetworking-plugins"
  command -v iptables >/dev/null || die "kube-proxy needs iptables: apt-get install iptables"
  if alive kubelet; then log "already running (run dir $RUN)"; return; fi
  dockerd_
  local image
  for image in operator worker; do
    docker image inspect "selfmoa/$image:$TAG" >/dev/null 2>&1 || die "no image selfmoa/$image:$TAG: make images"
  done
  stop_ quiet
  mkdir -p "$RUN"
  netns
  log "netns $NETNS: node $ADDR, pods $POD_CIDR, Services 10.0.0.0/24"

  # Identities the API server knows from its static token file, as a kubeadm node's would be
  # from its client certificates: the kubelet as system:node:NAME (Node authorizer + RBAC), and
  # the bootstrap RBAC users of kube-proxy and kube-scheduler.
  local tk tp ts
  tk=$(token) tp=$(token) ts=$(token)
  printf '%s\n' "$tk,system:node:$NODE,node,\"system:nodes\"" "$tp,system:kube-proxy,kube-proxy," \
    "$ts,system:kube-scheduler,kube-scheduler," >"$RUN/tokens.extra"
  in_ns env SELFMOA_CLUSTER_RUN="$RUN/cp" SELFMOA_CLUSTER_ADDRESS="$ADDR" \
    SELFMOA_CLUSTER_API_PORT="$API_PORT" SELFMOA_CLUSTER_ETCD_PORT=2379 \
    SELFMOA_CLUSTER_ETCD_PEER_PORT=2380 SELFMOA_CLUSTER_EXTRA_TOKENS="$RUN/tokens.extra" \
    bash "$CP" start
  kubeconfig "$RUN/kubelet.kubeconfig" "$tk"
  kubeconfig "$RUN/proxy.kubeconfig" "$tp"
  kubeconfig "$RUN/scheduler.kubeconfig" "$ts"
  kubeconfig "$RUN/admin.kubeconfig" "$(cat "$RUN/cp/pki/admin.token")"

  pause_image
  standin_image
  cni_config
  spawn dns python3 "$HERE/dns.py" --listen "$ADDR" --server "https://$ADDR:$API_PORT" \
    --ca "$RUN/cp/pki/ca.crt" --token-file "$RUN/cp/pki/admin.token"
  spawn scheduler "$BIN/kube-scheduler" --kubeconfig "$RUN/scheduler.kubeconfig" \
    --leader-elect=false --port 0 --secure-port 0
  # --resolv-conf "": pods get only the cluster DNS, never the machine's resolvers.
  mkdir -p "$RUN/kubelet"
  spawn kubelet "$BIN/kubelet" --kubeconfig "$RUN/kubelet.kubeconfig" \
    --hostname-override "$NODE" --node-ip "$ADDR" --root-dir "$RUN/kubelet" --cert-dir "$RUN/kubelet/pki" \
    --container-runtime docker --docker-endpoint unix:///var/run/docker.sock \
    --pod-infra-container-image "$PAUSE_IMAGE" \
    --network-plugin cni --cni-bin-dir "$CNI_BIN" --cni-conf-dir "$RUN/cni/net.d" --cni-cache-dir "$RUN/cni/cache" \
    --cluster-dns "$ADDR" --cluster-domain cluster.local --resolv-conf "" \
    --fail-swap-on=false --cgroup-driver cgroupfs --cgroups-per-qos=false --enforce-node-allocatable "" \
    --read-only-port 0 --healthz-port 0 --image-gc-high-threshold 100 --image-gc-low-threshold 99 \
    --eviction-hard "memory.available<100Mi" --serialize-image-pulls=false
  # --masquerade-all: a pod calling a Service whose endpoint sits on the same bridge gets its
  # reply through the node (no br_netfilter needed). conntrack sysctls are the machine's: left.
  spawn proxy "$BIN/kube-proxy" --kubeconfig "$RUN/proxy.kubeconfig" --hostname-override "$NODE" \
    --proxy-mode iptables --masquerade-all --cluster-cidr "$POD_CIDR" \
    --conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 --conntrack-tcp-timeout-close-wait 0 \
    --metrics-bind-address 127.0.0.1:10249 --healthz-bind-address 127.0.0.1:10256
  local kc=(in_ns "$BIN/kubectl" --kubeconfig "$RUN/admin.kubeconfig")
  wait_for "node $NODE" 120 bash -c "nsenter --net=/var/run/netns/$NETNS $BIN/kubectl --kubeconfig $RUN/admin.kubeconfig get node $NODE -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
  advertise_gpus
  log "start: node $NODE Ready in $((SECONDS - T0))s (KUBECONFIG=$RUN/admin.kubeconfig, inside netns $NETNS)"
}

# ------------------------------------------------------------------------------------ stop

stop_() {
  local quiet=${1:-} name pid
  for name in proxy kubelet scheduler dns; do
    [[ -f $RUN/$name.pid ]] || continue
    pid=$(cat "$RUN/$name.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  # Whatever an interrupted start or stop left running: every process here names the run dir.
  pkill -f -- "$RUN/" 2>/dev/null || true
  # The pods' containers (dockershim names them k8s_...) outlive the kubelet.
  if docker info >/dev/null 2>&1; then
    local ids
    ids=$(docker ps -aq --filter name=k8s_)
    [[ -z $ids ]] || docker rm -f $ids >/dev/null 2>&1 || true
  fi
  if [[ -d $RUN/kubelet ]]; then
    # Secret and emptyDir tmpfs mounts under the kubelet's root, deepest first.
    awk -v r="$RUN/kubelet" '$2 ~ "^"r {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  fi
  if [[ -d $RUN/cp ]]; then SELFMOA_CLUSTER_RUN="$RUN/cp" bash "$CP" stop 2>/dev/null || true; fi
  ip netns del "$NETNS" 2>/dev/null || true
  rm -rf "$RUN"
  [[ -n $quiet ]] || log "stop: node, control plane and netns $NETNS removed"
}

env_() {
  printf 'export KUBECONFIG=%q\n' "$RUN/admin.kubeconfig"
  printf 'export PATH=%q:"$PATH"\n' "$BIN"
}

main() {
  case ${1:-} in
    deps) deps ;;
    dockerd) dockerd_ ;;
    start) start ;;
    stop) stop_ ;;
    env) env_ ;;
    exec) shift; in_ns "$@" ;;
    *) echo "usage: $0 deps|dockerd|start|stop|env|exec CMD..." >&2; exit 2 ;;
  esac
}

main "$@"; exit
