#!/usr/bin/env bash
# A real Kubernetes control plane for the cluster test tier: etcd + kube-apiserver +
# kube-controller-manager 1.20.2 on loopback, with RBAC on. No kubelet, no scheduler:
# tests/cluster/kubelet.py plays the node.
#
#   controlplane.sh build   fetch (pinned) + build into the cache; a warm cache returns at once
#   controlplane.sh start   start etcd, apiserver, controller-manager; wait until Pods can be made
#   controlplane.sh stop    stop what `start` started (by pid file) and remove the run dir
#   controlplane.sh env     print `export KUBECONFIG=... PATH=...` for a shell (eval "$(... env)")
#   controlplane.sh built   exit 0 when the cache holds every binary (no build, no network)
#   controlplane.sh build-node  also build kubelet, kube-proxy and kube-scheduler (the node tier,
#                          tests/node); one kube build for whatever of the five is missing
#
# Why build from source: no registry reachable from here ships kube-apiserver binaries; Debian
# bookworm's `kubernetes` source package is the newest full upstream tree (with vendor/) that
# any of them ships, and it only builds with Go < 1.18 (see shared/FINDINGS.md).
#
# Environment:
#   SELFMOA_CLUSTER_CACHE  cache dir (default ${XDG_CACHE_HOME:-$HOME/.cache}/selfmoa-cluster)
#   SELFMOA_CLUSTER_RUN    run dir: certs, data, logs, pids, kubeconfig (default /tmp/selfmoa-cluster-$UID)
#   SELFMOA_CLUSTER_API_PORT, SELFMOA_CLUSTER_ETCD_PORT, SELFMOA_CLUSTER_ETCD_PEER_PORT
#                          fixed ports; unset = free ports picked at start
#   SELFMOA_CLUSTER_JOBS   parallel compile jobs (default: nproc)
#   SELFMOA_CLUSTER_ADDRESS  an address of a network namespace the control plane runs in (the
#                          node tier, tests/node/node.sh): the apiserver listens on every address
#                          there and advertises this one, so the `kubernetes` Service has an
#                          endpoint pods can reach. Unset: loopback only, no endpoint.
#   SELFMOA_CLUSTER_KCM_FLAGS   more kube-controller-manager flags, word-split (benchmarks: e.g.
#                               "--kube-api-qps=100 --kube-api-burst=200")
#   SELFMOA_CLUSTER_EXTRA_TOKENS  a file of more static-token lines (token,user,uid,"groups"):
#                          the node tier's kubelet, kube-proxy and kube-scheduler identities
set -euo pipefail

CACHE=${SELFMOA_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/selfmoa-cluster}
RUN=${SELFMOA_CLUSTER_RUN:-/tmp/selfmoa-cluster-$(id -u)}
BIN=$CACHE/bin
DL=$CACHE/downloads
K8S_VERSION=1.20.2

# Every downloaded file, pinned by name (which carries the version) and sha256. apt checks the
# archive's signatures; these pins also make a second machine get bit-identical inputs, and let a
# filled cache rebuild with no network at all.
PINS=(
  # kubernetes source package (bookworm): only the upstream tarball is used; Debian's three patches
  # touch kubectl's printing, not the apiserver or controller-manager.
  "kubernetes_1.20.5+really1.20.2.orig.tar.gz b83c0780efb182d928dc63d46488a847f161f04e40a94b96bf5247dd671ecdfc"
  "kubernetes_1.20.5+really1.20.2-1.1+deb12u1.dsc 19fa1da5aefcef673894ac9511986bd98a14410cf8eea0b626613c30df435257"
  "kubernetes_1.20.5+really1.20.2-1.1+deb12u1.debian.tar.xz 9b6e5fd41769d2b5badf2e73b274e3bcd90f85e13d06a1a4a845ccce018127d8"
  # Go 1.15 (bullseye): the toolchain this tree was released with.
  "golang-1.15-go_1.15.15-1~deb11u4_amd64.deb 33f6680406698b60370322aa5710be199006b3d66fbb0974b44da012de3aa82a"
  "golang-1.15-src_1.15.15-1~deb11u4_amd64.deb e580f570f706d801191f9a17e55156736fc5979a6a878bab9304ca007ae29941"
  # etcd 3.4 (bookworm): the series Kubernetes 1.20 was released with; one static binary.
  "etcd-server_3.4.23-4+b4_amd64.deb 3a9445d4560ad6de1c375756b2a17d97713df44cbd20a658c871fe108af7ef5d"
  # kubectl 1.20.2 (bullseye, built with Go 1.15): inside the supported client/server skew.
  "kubernetes-client_1.20.5+really1.20.2-1_amd64.deb 62561f55823c2f08b84a007ea935a0c0c7c34cc7b228357995d0b921caa7a3ea"
)
SRC_PKG="kubernetes=1.20.5+really1.20.2-1.1+deb12u1"
DEB_PKGS=(golang-1.15-go=1.15.15-1~deb11u4 golang-1.15-src=1.15.15-1~deb11u4
          etcd-server=3.4.23-4+b4 kubernetes-client=1.20.5+really1.20.2-1)

T0=$SECONDS
log() { printf '[controlplane %4ds] %s\n' "$((SECONDS - T0))" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------- build

sha_ok() {  # sha_ok FILE SHA
  [[ -f $1 ]] && [[ $(sha256sum "$1" | cut -d' ' -f1) == "$2" ]]
}

all_downloads_ok() {
  local pin
  for pin in "${PINS[@]}"; do
    sha_ok "$DL/${pin%% *}" "${pin##* }" || return 1
  done
}

# apt with its own sources, lists, status and cache under $CACHE/apt, so the system's apt state is
# neither read nor changed (the system may list only bookworm binaries, and we need bullseye too).
private_apt() {
  local cmd=$1; shift
  local A=$CACHE/apt
  "$cmd" -q -o Dir::Etc::SourceList="$A/sources.list" -o Dir::Etc::SourceParts=/nonexistent \
    -o Dir::State::Lists="$A/lists" -o Dir::State::status="$A/status" -o Dir::Cache="$A/cache" \
    -o Debug::NoLocking=1 -o APT::Sandbox::User="$(id -un)" "$@"
}

fetch() {
  if all_downloads_ok; then return; fi
  log "fetch: private apt update (bookworm main + deb-src, bullseye main)"
  local A=$CACHE/apt keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [[ -f $keyring ]] || die "$keyring missing (package debian-archive-keyring)"
  mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$DL"
  : > "$A/status"
  cat > "$A/sources.list" <<EOF
deb [signed-by=$keyring] http://deb.debian.org/debian bookworm main
deb-src [signed-by=$keyring] http://deb.debian.org/debian bookworm main
deb [signed-by=$keyring] http://deb.debian.org/debian bullseye main
EOF
  private_apt apt-get update >/dev/null
  log "fetch: downloading ${DEB_PKGS[*]} and source $SRC_PKG"
  (cd "$DL" && private_apt apt-get download "${DEB_PKGS[@]}" >/dev/null \
            && private_apt apt-get source --download-only "$SRC_PKG" >/dev/null)
  # The lists are only needed to download; they are 100+ MB.
  rm -rf "$A"
  local pin bad=0
  for pin in "${PINS[@]}"; do
    if ! sha_ok "$DL/${pin%% *}" "${pin##* }"; then
      log "fetch: sha256 mismatch or missing: ${pin%% *}"; bad=1
      rm -f "$DL/${pin%% *}"
    fi
  done
  ((bad == 0)) || die "downloads do not match their pins (removed; re-run to retry)"
  log "fetch: all downloads match their sha256 pins"
}

unpack_deb() {  # unpack_deb DEB DIR: dpkg -x, never installed system-wide
  rm -rf "$2.tmp" && mkdir -p "$2.tmp" && dpkg -x "$1" "$2.tmp" && rm -rf "$2" && mv "$2.tmp" "$2"
}

need_rsync() {
  # kube's build copies its binaries out with rsync. CI runs as root on a fresh machine, so
  # installing it is allowed there; elsewhere say what is missing.
  command -v rsync >/dev/null && return
  [[ $(id -u) == 0 ]] || die "rsync is needed to build Kubernetes: apt-get install rsync"
  log "build: installing rsync (needed by kube's build scripts)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends rsync >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends rsync >/dev/null; }
}

# Prints a phase line every 30 s while make runs: elapsed time, the last "+++" phase the kube
# build announced, and how many compiled objects are in its Go cache (it grows to ~9k).
progress() {  # progress PID LOG GOCACHE
  local pid=$1 mlog=$2 gocache=$3 last="" phase n
  while kill -0 "$pid" 2>/dev/null; do
    sleep 30
    kill -0 "$pid" 2>/dev/null || break
    # "+++ [date] Building go targets for linux/amd64:" is followed by the targets, one a line.
    phase=$(awk '/^\+\+\+/ {p = substr($0, 20); getline t; sub(/^ +/, "", t); p = p " " t} END {print p}' "$mlog" 2>/dev/null || true)
    n=$(find "$gocache" -type f 2>/dev/null | wc -l)
    if [[ $phase != "$last" ]]; then log "build: $phase"; last=$phase; fi
    log "build: compiling ... ($n objects in the Go cache)"
  done
}

make_kube() {  # make_kube GOROOT_PKG SRC LOG WHAT: the kube build, with a progress line every 30 s
  local go=$1 src=$2 mlog=$3 what=$4
  # GOPROXY=off: everything comes from vendor/ (1.20 builds in GOPATH mode). GOFLAGS must be unset:
  # its value leaks into kube's build tags. GOROOT points at the unpacked toolchain.
  (
    cd "$src"
    unset GOFLAGS GOPATH GOBIN
    export GOROOT=$go/usr/lib/go-1.15 PATH=$go/usr/lib/go-1.15/bin:$PATH
    export GOPROXY=off GO111MODULE=off CGO_ENABLED=0 KUBE_BUILD_PLATFORMS=linux/amd64
    export MAKEFLAGS="-j${SELFMOA_CLUSTER_JOBS:-$(nproc)}"
    exec make WHAT="$what"
  ) >"$mlog" 2>&1 &
  local pid=$!
  progress "$pid" "$mlog" "$src/_output/local/go/cache" &
  local ppid=$!
  local rc=0
  wait "$pid" || rc=$?
  kill "$ppid" 2>/dev/null || true
  wait "$ppid" 2>/dev/null || true
  return "$rc"
}

build_kube() {  # build_kube BINARY...: one kube build of the named cmd/ binaries
  local B=$CACHE/build src go what="" b
  for b in "$@"; do what+="${what:+ }cmd/$b"; done
  need_rsync
  rm -rf "$B" && mkdir -p "$B"
  log "build: unpacking Go 1.15 and the kubernetes $K8S_VERSION source (~35 MB) into $B"
  go=$B/go
  mkdir -p "$go"
  dpkg -x "$DL/golang-1.15-go_1.15.15-1~deb11u4_amd64.deb" "$go"
  dpkg -x "$DL/golang-1.15-src_1.15.15-1~deb11u4_amd64.deb" "$go"
  tar -xzf "$DL/kubernetes_1.20.5+really1.20.2.orig.tar.gz" -C "$B"
  src=$B/kubernetes-$K8S_VERSION
  local mlog=$B/make.log rc=0
  log "build: make WHAT=\"$what\" (~8 min for the control plane, ~4 for the node, on 2 quiet cores; log: $mlog)"
  make_kube "$go" "$src" "$mlog" "$what" || rc=$?
  if ((rc != 0)); then
    # Kube 1.20's code generators (defaulter-gen: gengo's AddDirectoryTo) now and then segfault
    # on a cold tree under load; make is incremental, so one more pass finishes the build.
    tail -n 20 "$mlog" >&2
    log "build: make failed (rc=$rc); retrying once (log: $mlog.retry)"
    rc=0
    make_kube "$go" "$src" "$mlog.retry" "$what" || rc=$?
    mlog=$mlog.retry
  fi
  if ((rc != 0)); then
    tail -n 40 "$mlog" >&2
    die "kube build failed (rc=$rc); full log: $mlog"
  fi
  local out=$src/_output/local/bin/linux/amd64
  mkdir -p "$BIN"
  for b in "$@"; do
    install -m 0755 "$out/$b" "$BIN/$b.tmp" && mv "$BIN/$b.tmp" "$BIN/$b"
  done
  # Only the binaries are kept: the tree, Go cache and toolchain are ~2.3 GB and rebuildable
  # offline from $DL. Deleting ~100k files takes minutes on a busy disk: do it in the background
  # (a later build removes what an interrupted delete left).
  mv "$B" "$CACHE/.trash.$$"
  (rm -rf "$CACHE/.trash.$$" </dev/null >/dev/null 2>&1 &)
  log "build: $* built"
}

built() {
  local b
  for b in kube-apiserver kube-controller-manager etcd kubectl; do
    [[ -x $BIN/$b ]] || return 1
  done
}

NODE_BINARIES=(kubelet kube-proxy kube-scheduler)

build() {  # build [node]: the control plane, and with `node` the node's binaries too
  local want=(kube-apiserver kube-controller-manager) missing=() b
  [[ ${1:-} == node ]] && want+=("${NODE_BINARIES[@]}")
  mkdir -p "$CACHE"
  # One build at a time per cache (two test sessions may start together).
  exec 9>"$CACHE/.lock"
  flock 9
  for b in "${want[@]}"; do [[ -x $BIN/$b ]] || missing+=("$b"); done
  if built && ((${#missing[@]} == 0)); then log "build: cached in $BIN"; return; fi
  rm -rf "$CACHE"/.trash.*
  fetch
  mkdir -p "$BIN"
  if [[ ! -x $BIN/etcd ]]; then
    unpack_deb "$DL/etcd-server_3.4.23-4+b4_amd64.deb" "$CACHE/etcd"
    ln -sfn ../etcd/usr/bin/etcd "$BIN/etcd"
    log "build: etcd unpacked"
  fi
  if [[ ! -x $BIN/kubectl ]]; then
    unpack_deb "$DL/kubernetes-client_1.20.5+really1.20.2-1_amd64.deb" "$CACHE/kubectl"
    ln -sfn ../kubectl/usr/bin/kubectl "$BIN/kubectl"
    log "build: kubectl unpacked"
  fi
  if ((${#missing[@]} > 0)); then
    build_kube "${missing[@]}"
  fi
  log "build: done ($(du -sh --exclude=".trash.*" "$CACHE" | cut -f1) in $CACHE)"
}

# ---------------------------------------------------------------------------------------- start

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

alive() {  # alive NAME: its pid file names a live process
  [[ -f $RUN/$1.pid ]] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null
}

spawn() {  # spawn NAME CMD...: start in the background, log and pid under $RUN
  "${@:2}" >"$RUN/$1.log" 2>&1 &
  echo $! >"$RUN/$1.pid"
}

wait_for() {  # wait_for WHAT SECONDS CMD...: poll CMD until it succeeds
  local what=$1 limit=$2 t=$SECONDS
  shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS - t < limit)) || die "$what not ready after ${limit}s (logs in $RUN)"
    sleep 0.3
  done
}

certs() {
  local C=$RUN/pki
  mkdir -p "$C"
  # P-256 keys: as good as RSA here and generated in milliseconds (RSA-2048 takes seconds on a
  # busy machine, and start-up time is budgeted). One CA signs the serving and admin certs.
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  openssl req -x509 "${ec[@]}" -days 30 -subj "/CN=selfmoa-test-ca" \
    -keyout "$C/ca.key" -out "$C/ca.crt" 2>/dev/null
  openssl req "${ec[@]}" -subj "/CN=kube-apiserver" \
    -keyout "$C/apiserver.key" -out "$C/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,IP:10.0.0.1,%sDNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\n' \
    "${ADDRESS:+IP:$ADDRESS,}" >"$C/san.ext"
  openssl x509 -req -in "$C/apiserver.csr" -CA "$C/ca.crt" -CAkey "$C/ca.key" -CAcreateserial \
    -days 30 -extfile "$C/san.ext" -out "$C/apiserver.crt" 2>/dev/null
  # Service-account token signing pair (ES256): the apiserver verifies, the controller-manager's
  # token controller signs the legacy token Secrets.
  openssl ecparam -name prime256v1 -genkey -noout -out "$C/sa.key" 2>/dev/null
  openssl ec -in "$C/sa.key" -pubout -out "$C/sa.pub" 2>/dev/null
  # Audit: one JSON line per request of anyone but the admin and kube-system's controllers, so a
  # test can list every request the operator's ServiceAccount made and its HTTP code.
  cat >"$RUN/audit-policy.yaml" <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: None
  users: ["selfmoa-admin", "system:apiserver", "system:kube-controller-manager"]
- level: None
  userGroups: ["system:serviceaccounts:kube-system"]
- level: Metadata
EOF
  # The admin authenticates with a static bearer token (system:masters), so tests build
  # token-only kubeconfigs the same way for the admin and for ServiceAccounts.
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$C/admin.token"
  printf '%s,selfmoa-admin,selfmoa-admin,system:masters\n' "$(cat "$C/admin.token")" >"$C/tokens.csv"
  if [[ -n ${SELFMOA_CLUSTER_EXTRA_TOKENS:-} ]]; then cat "$SELFMOA_CLUSTER_EXTRA_TOKENS" >>"$C/tokens.csv"; fi
}

kubeconfig() {  # kubeconfig FILE TOKEN: token-only kubeconfig (no client cert: a cert wins over a token)
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: selfmoa-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $RUN/pki/ca.crt
users:
- name: admin
  user:
    token: $2
contexts:
- name: selfmoa-test
  context: {cluster: selfmoa-test, user: admin, namespace: default}
current-context: selfmoa-test
EOF
}

start() {
  [[ -x $BIN/kube-apiserver ]] || die "not built: run '$0 build' first"
  ADDRESS=${SELFMOA_CLUSTER_ADDRESS:-}
  # On loopback only, the apiserver would publish 127.0.0.1 as the `kubernetes` Service's endpoint,
  # which endpoint validation rejects (127.0.0.0/8): no endpoint then. With an address of its own
  # network namespace, it listens there too and publishes that one, as on a real control plane.
  local listen=(--bind-address 127.0.0.1 --advertise-address 127.0.0.1 --endpoint-reconciler-type none)
  # The node registers a hostname no DNS here knows: reach its kubelet (logs, exec) by address.
  [[ -z $ADDRESS ]] || listen=(--bind-address 0.0.0.0 --advertise-address "$ADDRESS" --kubelet-preferred-address-types InternalIP)
  if alive apiserver; then log "already running (run dir $RUN)"; return; fi
  rm -rf "$RUN" && mkdir -p "$RUN"
  local api_port=${SELFMOA_CLUSTER_API_PORT:-$(free_port)}
  local etcd_port=${SELFMOA_CLUSTER_ETCD_PORT:-$(free_port)}
  local peer_port=${SELFMOA_CLUSTER_ETCD_PEER_PORT:-$(free_port)}
  API_PORT=$api_port
  certs
  kubeconfig "$RUN/admin.kubeconfig" "$(cat "$RUN/pki/admin.token")"
  echo "$api_port" >"$RUN/api.port"

  # etcd: throwaway data, on tmpfs when there is one: a test cluster needs no durability, and
  # fsync on a shared disk dominates write latency (etcd 3.4 has no --unsafe-no-fsync).
  local data=$RUN/etcd
  if [[ -d /dev/shm && -w /dev/shm ]]; then
    data=$(mktemp -d /dev/shm/selfmoa-etcd.XXXXXX)
    ln -sfn "$data" "$RUN/etcd"
  fi
  spawn etcd "$BIN/etcd" --name default --data-dir "$data" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "default=http://127.0.0.1:$peer_port"

  # Started together with etcd: the apiserver spends its first seconds registering APIs and
  # retries etcd until it answers.
  spawn apiserver "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    "${listen[@]}" --secure-port "$api_port" --insecure-port 0 \
    --tls-cert-file "$RUN/pki/apiserver.crt" --tls-private-key-file "$RUN/pki/apiserver.key" \
    --client-ca-file "$RUN/pki/ca.crt" --token-auth-file "$RUN/pki/tokens.csv" \
    --authorization-mode Node,RBAC --anonymous-auth=false \
    --service-account-key-file "$RUN/pki/sa.pub" --service-account-signing-key-file "$RUN/pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc --api-audiences https://kubernetes.default.svc \
    --service-cluster-ip-range 10.0.0.0/24 --allow-privileged \
    --audit-policy-file "$RUN/audit-policy.yaml" --audit-log-path "$RUN/audit.log" \
    --cert-dir "$RUN/pki"
  wait_for etcd 30 curl -sf "http://127.0.0.1:$etcd_port/health"
  log "start: etcd ready on 127.0.0.1:$etcd_port"
  local kc=("$BIN/kubectl" --kubeconfig "$RUN/admin.kubeconfig")
  wait_for apiserver 90 "${kc[@]}" get --raw /readyz
  log "start: kube-apiserver ready on https://127.0.0.1:$api_port"

  # No serving ports for the controller-manager (--port 0 --secure-port 0): nothing here asks its
  # /healthz, and a serving cert would cost it an RSA key at every start.
  # It exits if it starts before the apiserver has bootstrapped its RBAC roles (its per-controller
  # ServiceAccounts get 403): restarted until the token controller has made default/default's
  # token Secret — until then the ServiceAccount admission plugin rejects every Pod there.
  local tries=0
  spawn_kcm() {
    spawn controller-manager "$BIN/kube-controller-manager" \
      --kubeconfig "$RUN/admin.kubeconfig" --controllers='*' --use-service-account-credentials \
      --service-account-private-key-file "$RUN/pki/sa.key" --root-ca-file "$RUN/pki/ca.crt" \
      --cluster-signing-cert-file "$RUN/pki/ca.crt" --cluster-signing-key-file "$RUN/pki/ca.key" \
      --authentication-skip-lookup=true --port 0 --secure-port 0 --leader-elect=false \
      ${SELFMOA_CLUSTER_KCM_FLAGS:-}
  }
  spawn_kcm
  local t=$SECONDS
  until [[ -n $("${kc[@]}" -n default get sa default -o jsonpath='{.secrets[0].name}' 2>/dev/null) ]]; do
    ((SECONDS - t < 90)) || die "no token for default/default after 90s (logs in $RUN)"
    if ! alive controller-manager; then
      ((++tries < 10)) || die "kube-controller-manager keeps exiting (see $RUN/controller-manager.log)"
      log "start: kube-controller-manager exited early, restarting"
      mv "$RUN/controller-manager.log" "$RUN/controller-manager.$tries.log"
      spawn_kcm
    fi
    sleep 0.3
  done
  log "start: ready in $((SECONDS - T0))s (KUBECONFIG=$RUN/admin.kubeconfig)"
}

stop() {
  local name pid
  # Reverse order, so the controller-manager does not log the apiserver vanishing.
  for name in controller-manager apiserver etcd; do
    [[ -f $RUN/$name.pid ]] || continue
    pid=$(cat "$RUN/$name.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
  # etcd's data may live on tmpfs behind the run dir's `etcd` link.
  if [[ -L $RUN/etcd ]]; then rm -rf "$(readlink "$RUN/etcd")"; fi
  rm -rf "$RUN"
  log "stop: stopped and removed $RUN"
}

env_() {
  printf 'export KUBECONFIG=%q\n' "$RUN/admin.kubeconfig"
  printf 'export PATH=%q:"$PATH"\n' "$BIN"
}

main() {
  case ${1:-} in
    build) build ;;
    build-node) build node ;;
    start) start ;;
    stop) stop ;;
    env) env_ ;;
    built) built ;;
    *) echo "usage: $0 build|build-node|start|stop|env|built" >&2; exit 2 ;;
  esac
}

# One line, parsed whole before it runs: editing this file while a build or start is running
# can't make bash read on into the edited text.
main "$@"; exit
