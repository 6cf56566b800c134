#!/usr/bin/env bash
# The real node of the test bed (containerd, CNI bridge, CoreDNS, kubelet, metrics-server, the S3
# server versitygw): what it needs on the host, and the host changes around it. The Rust test bed
# runs the daemons itself (so they die with it) and calls this script to set the host up and to
# put it back.
#
#   hack/node.sh deps            install the Debian packages (idempotent; needs root)
#   hack/node.sh build           deps, kubelet (hack/controlplane.sh), CoreDNS, kube-router (the
#                                NetworkPolicy enforcer), metrics-server (metrics.k8s.io), versitygw
#                                (S3), images; prints "kubelet PATH", "coredns PATH", "kube-router
#                                PATH", "metrics-server PATH", "versitygw PATH", "image NAME
#                                ARCHIVE" lines
#   hack/node.sh prepare DIR     save host state, create the bridge, write every config into DIR
#   hack/node.sh cleanup         stop what a node left behind and restore the saved host state;
#                                safe to run at any time, also after a crash
#   hack/node.sh prepare-nodes DIR N   the multi-node tier: N nodes, each in its own network and
#                                UTS namespace (tjnode-1..N) and cgroup, on the host bridge tjnodes0
#   hack/node.sh node-root ARCHIVE...  a containerd root with these images, cached; the nodes' copy
#   hack/node.sh power-off N     kill every process of node N at once and take its link down
#   hack/node.sh cleanup-nodes   what cleanup is for the multi-node tier
#
# The single node lives in the host's network namespace (one per machine); the multi-node tier's
# nodes each live in their own, with per-node kubelet directories, cgroup root and pod log
# directory, so that the two tiers can run at once.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache_root=${TRAINJOB_BED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trainjob-operator}
state=/run/trainjob-testbed-node
bridge=tjbed0
subnet=10.244.0
packages=(containerd runc containernetworking-plugins catatonit mmdebstrap iptables conntrack iproute2 ipset)
sysctls=(vm.overcommit_memory kernel.panic kernel.panic_on_oops net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables)
# kube-router enforces NetworkPolicies on the node (firewall only: no routing, no service proxy).
kube_router_version=v2.1.0
# Paths kubelet and containerd create whatever their root directories are.
fixed_paths=(/var/lib/kubelet /var/log/containers /var/log/pods /var/lib/cni /run/containerd)
# Where kube-controller-manager's hostpath provisioner (the bed's StorageClass `standard`) makes a
# directory per volume (pkg/volume/hostpath: /tmp/hostpath_pv/<uuid>, mode 0750); its deleter
# removes one when its PV goes, and cleanup removes those a bed left behind.
hostpath_pv=/tmp/hostpath_pv

fail() { echo "node.sh: $*" >&2; exit 1; }

deps() {
  [[ $(id -u) -eq 0 ]] || fail "the real node needs root"
  local missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  command -v apt-get >/dev/null || fail "missing Debian packages ${missing[*]} and no apt-get"
  echo ">> installing ${missing[*]}" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Builds PACKAGE of the Go module MODULE that hack/DIR/go.mod pins, once, into a cache directory
# keyed by its version and go.sum; prints "NAME PATH". STAMP, when given, is the -X variable that
# upstream's Makefile sets to the version.
pinned() {
  local name=$1 dir="$here/$2" module=$3 package=$4 stamp=${5:-} version sum bin
  version=$(awk -v m="$module" '{ for (i = 1; i < NF; i++) if ($i == m) { print $(i + 1); exit } }' "$dir/go.mod")
  [[ -n "$version" ]] || fail "no $module requirement in $dir/go.mod"
  sum=$(cat "$dir/go.mod" "$dir/go.sum" | sha256sum | cut -c1-12)
  bin="$cache_root/$name-$version-$sum/$name"
  if [[ ! -x "$bin" ]]; then
    echo ">> building $name $version into $bin" >&2
    local start=$SECONDS
    mkdir -p "$(dirname "$bin")"
    (cd "$dir" && CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath \
      -ldflags "-s -w${stamp:+ -X $stamp=$version}" -o "$bin.tmp" "$package" >&2)
    mv "$bin.tmp" "$bin"
    echo ">> built $name in $((SECONDS - start))s" >&2
  fi
  echo "$name $bin"
}

coredns() { pinned coredns coredns github.com/coredns/coredns github.com/coredns/coredns; }

# metrics-server serves metrics.k8s.io (kubectl top, the dashboard) from the real node's kubelet.
metrics_server() {
  pinned metrics-server metrics-server sigs.k8s.io/metrics-server \
    sigs.k8s.io/metrics-server/cmd/metrics-server k8s.io/client-go/pkg/version.gitVersion
}

# versitygw is the bed's S3 server (a gateway over a directory): pods download data from it and
# upload results to it. The Rust test bed runs it on the bridge address.
versitygw() {
  pinned versitygw s3 github.com/versity/versitygw github.com/versity/versitygw/cmd/versitygw main.Version
}

kube_router() {
  local bin="$cache_root/kube-router-$kube_router_version/kube-router"
  if [[ ! -x "$bin" ]]; then
    echo ">> building kube-router $kube_router_version into $bin (slow the first time: docs/development/testing.md)" >&2
    local start=$SECONDS
    mkdir -p "$(dirname "$bin")"
    GOBIN="$(dirname "$bin")" GOFLAGS=-buildvcs=false \
      go install "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$kube_router_version" >&2
    echo ">> built kube-router in $((SECONDS - start))s" >&2
  fi
  echo "kube-router $bin"
}

build() {
  deps
  local bin
  bin=$("$here/controlplane.sh")
  echo "kubelet $bin/kubelet"
  coredns
  kube_router
  metrics_server
  versitygw
  "$here/images.sh" | sed 's/^/image /'
}

prepare() {
  local dir=$1
  [[ -e "$state" ]] && cleanup
  [[ -n "${NODE_ROOT:-}" ]] || fail "prepare needs NODE_ROOT"
  mkdir -p "$state" "$dir"/{containerd,state,cni/net.d,ipam,opt,kubelet}
  echo "$dir" > "$state/dir"
  seed_root "$dir/containerd"
  # bridge-nf-call-iptables exists only with br_netfilter loaded.
  modprobe br_netfilter 2>/dev/null || true
  for s in "${sysctls[@]}"; do echo "$s=$(sysctl -n "$s")"; done > "$state/sysctls"
  for p in "${fixed_paths[@]}"; do [[ -e "$p" ]] || echo "$p"; done > "$state/created"
  # The volume directories there before the bed, which cleanup keeps.
  if [[ -d "$hostpath_pv" ]]; then ls -A "$hostpath_pv" > "$state/hostpath_pv"; fi

  ip link add "$bridge" type bridge
  ip addr add "$subnet.1/24" dev "$bridge"
  ip link set "$bridge" up
  sysctl -qw net.ipv4.ip_forward=1
  # Bridged pod-to-pod traffic must pass iptables for kube-router's NetworkPolicy rules.
  sysctl -qw net.bridge.bridge-nf-call-iptables=1
  # There is no kube-proxy: forward the `kubernetes` Service to the API server, as it would.
  if [[ -n "${API_PORT:-}" ]]; then
    iptables -t nat -N TRAINJOB-BED
    iptables -t nat -A PREROUTING -j TRAINJOB-BED
    iptables -t nat -A TRAINJOB-BED -s "$subnet.0/24" -d 10.96.0.1 -p tcp --dport 443 \
      -j DNAT --to-destination "$subnet.1:$API_PORT"
  fi

  node_configs "$dir" "$bridge" "$subnet"
  corefile "$dir" "$subnet.1"
}

# Removes the KUBE-* chains kubelet adds (KUBE-FIREWALL drops non-loopback traffic to 127/8),
# our TRAINJOB-BED chain, and the rules that jump to them; other rules stay as they are.
remove_kube_chains() {
  local ipt=$1 table
  command -v "$ipt" >/dev/null || return 0
  for table in filter nat mangle raw; do
    "$ipt-save" -t "$table" 2>/dev/null | sed -n 's/^-A \(.* -j \(KUBE\|TRAINJOB\)-.*\)$/\1/p' | while read -r rule; do
      eval "$ipt -t $table -D $rule" 2>/dev/null || true
    done
    "$ipt-save" -t "$table" 2>/dev/null | sed -n 's/^:\(\(KUBE\|TRAINJOB\)-[^ ]*\) .*/\1/p' | while read -r chain; do
      "$ipt" -t "$table" -F "$chain" 2>/dev/null || true
      "$ipt" -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
}

# Kills every process whose command line mentions $1.
kill_matching() {
  local pids
  pids=$(pgrep -f -- "$1" || true)
  [[ -n "$pids" ]] && kill -9 $pids 2>/dev/null || true
}

cleanup() {
  [[ -d "$state" ]] || return 0
  local dir
  dir=$(cat "$state/dir" 2>/dev/null || true)
  if [[ -n "$dir" ]]; then
    kill_matching "kubelet --config=$dir/kubelet.yaml"
    kill_matching "$dir/Corefile"
    kill_matching "kube-router --kubeconfig=$dir/"
    kill_matching "metrics-server --kubeconfig=$dir/"
    kill_matching "versitygw .* posix $dir/s3"
  fi
  # Every pod process lives in a kubepods cgroup; the shims are containerd's children.
  for procs in /sys/fs/cgroup/*/kubepods/cgroup.procs /sys/fs/cgroup/*/kubepods/*/cgroup.procs /sys/fs/cgroup/*/kubepods/*/*/cgroup.procs /sys/fs/cgroup/*/kubepods/*/*/*/cgroup.procs; do
    [[ -f "$procs" ]] && xargs -r kill -9 < "$procs" 2>/dev/null || true
  done
  if [[ -n "$dir" ]]; then
    kill_matching "containerd-shim-runc-v2 -namespace k8s.io .*-address $dir/containerd.sock"
    kill_matching "containerd --config $dir/containerd.toml"
    # Mounts under the node's directory (overlays, Secret volumes, netns), deepest first.
    awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r m; do
      umount -l "$m" 2>/dev/null || true
    done
  fi
  for ns in /var/run/netns/cni-*; do
    [[ -e "$ns" ]] && { umount -l "$ns" 2>/dev/null || true; rm -f "$ns"; }
  done
  ip link del "$bridge" 2>/dev/null || true
  # Empty kubepods cgroups, deepest first, in every hierarchy.
  find /sys/fs/cgroup/*/kubepods* -depth -type d -exec rmdir {} \; 2>/dev/null || true
  for ipt in iptables ip6tables; do remove_kube_chains "$ipt"; done
  # kube-router's ipsets, once no rule refers to them.
  if command -v ipset >/dev/null; then
    # No sets at all is fine (grep finding none must not end the script under pipefail).
    ipset list -n 2>/dev/null | { grep -E '^(KUBE-|kube-router)' || true; } | while read -r set; do
      ipset destroy "$set" 2>/dev/null || true
    done
  fi
  if [[ -f "$state/sysctls" ]]; then
    while IFS= read -r kv; do sysctl -qw "$kv" || true; done < "$state/sysctls"
  fi
  if [[ -f "$state/created" ]]; then
    while IFS= read -r p; do [[ -n "$p" ]] && rm -rf "$p"; done < "$state/created"
  fi
  # Volumes of the bed's PVs that were not deleted before the bed went; the directory itself too
  # when the bed made it.
  if [[ -d "$hostpath_pv" && -f "$state/dir" ]]; then
    local v
    for v in "$hostpath_pv"/*; do
      [[ -e "$v" ]] || continue
      grep -qxF "$(basename "$v")" "$state/hostpath_pv" 2>/dev/null || rm -rf "$v"
    done
    [[ -f "$state/hostpath_pv" ]] || rmdir "$hostpath_pv" 2>/dev/null || true
  fi
  rm -rf "$state"
}

# The multi-node tier. Node N (1..count) is network namespace tjnode-N at 10.245.0.(10+N) on the
# host bridge tjnodes0 (the host is 10.245.0.1: API server, CoreDNS), its pods on 10.244.N.0/24
# behind its own CNI bridge, routed directly between the nodes (no masquerade: NetworkPolicies
# see pods' own addresses). Its daemons run in cgroup tjnode-N (cgroup.kill powers it off) with
# `--cgroup-root=/tjnode-N`: kubelets sharing a cgroup root or a pod log directory kill and
# delete each other's pods.
nodes_state=/run/trainjob-testbed-nodes
nodes_bridge=tjnodes0
nodes_net=10.245.0
nodes_sysctls=(vm.overcommit_memory kernel.panic kernel.panic_on_oops)

# The cgroup hierarchies mounted under /sys/fs/cgroup (the v1 controllers and the unified tree).
hierarchies() {
  awk '$9 == "cgroup" || $9 == "cgroup2" { print $5 }' /proc/self/mountinfo | grep '^/sys/fs/cgroup/' | sort -u
}

prepare_nodes() {
  local dir=$1 count=$2 n h ns
  [[ -n "${API_PORT:-}" && -n "${NODE_ROOT:-}" ]] || fail "prepare-nodes needs API_PORT and NODE_ROOT"
  [[ -e "$nodes_state" ]] && cleanup_nodes
  mkdir -p "$nodes_state" "$dir"
  echo "$dir" > "$nodes_state/dir"
  echo "$count" > "$nodes_state/count"
  modprobe br_netfilter 2>/dev/null || true
  for s in "${nodes_sysctls[@]}"; do echo "$s=$(sysctl -n "$s")"; done > "$nodes_state/sysctls"
  for p in "${fixed_paths[@]}"; do [[ -e "$p" ]] || echo "$p"; done > "$nodes_state/created"

  for link in $(ip -o link show | sed -n 's/^[0-9]*: \(tjn-[0-9]*\)@.*/\1/p'); do ip link del "$link"; done
  ip link add "$nodes_bridge" type bridge
  ip addr add "$nodes_net.1/24" dev "$nodes_bridge"
  ip link set "$nodes_bridge" up
  for ((n = 1; n <= count; n++)); do
    ns=tjnode-$n
    mkdir -p "$dir/node$n"/{containerd,state,cni/net.d,ipam,opt,kubelet,pod-logs,runc}
    ip netns add "$ns"
    ip link add "tjn-$n" type veth peer name eth0 netns "$ns"
    ip link set "tjn-$n" master "$nodes_bridge" up
    ip route add "10.244.$n.0/24" via "$nodes_net.$((10 + n))"
    # One-shot commands in the namespace only: `ip netns exec` makes a mount namespace per
    # call, which would hide the kubelet's volume mounts from runc if daemons started that way.
    nsenter --net="/run/netns/$ns" sh -ec "
      ip link set lo up
      ip addr add $nodes_net.$((10 + n))/24 dev eth0
      ip link set eth0 up
      ip route add default via $nodes_net.1
      for m in \$(seq 1 $count); do [ \$m -eq $n ] || ip route add 10.244.\$m.0/24 via $nodes_net.\$((10 + m)); done
      echo 1 > /proc/sys/net/ipv4/ip_forward
      echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables
      # No kube-proxy: the kubernetes Service as it would forward it, for pods and host-network pods.
      iptables -t nat -A PREROUTING -d 10.96.0.1 -p tcp --dport 443 -j DNAT --to-destination $nodes_net.1:$API_PORT
      iptables -t nat -A OUTPUT -d 10.96.0.1 -p tcp --dport 443 -j DNAT --to-destination $nodes_net.1:$API_PORT
    "
    # Its own host name: host-network pods (and the ranks in them) see tjnode-N.
    touch "$nodes_state/uts-$n"
    unshare --uts="$nodes_state/uts-$n" hostname "$ns"
    for h in $(hierarchies); do
      mkdir -p "$h/$ns"
      # A v1 cpuset takes no task until it has CPUs and memory nodes.
      if [[ -f "$h/cpuset.cpus" ]]; then
        cat "$h/cpuset.cpus" > "$h/$ns/cpuset.cpus"
        cat "$h/cpuset.mems" > "$h/$ns/cpuset.mems"
      fi
    done
    node_configs "$dir/node$n" tjbr "10.244.$n" "$n"
    seed_root "$dir/node$n/containerd"
  done
  corefile "$dir" "$nodes_net.1"
}

# A containerd root holding ARCHIVES, imported and unpacked once per set of archives (their
# names carry their content's hash) into the cache; prints "node-root DIR". Each node of the
# multi-node tier starts from a hard-linked copy of it (`prepare-nodes`): an import per node
# would take three times as long and three times the disk.
node_root() {
  local key root tmp pid
  key=$(for a in "$@"; do basename "$a"; done | sha256sum | cut -c1-12)
  root="$cache_root/node-root-$key"
  if [[ ! -f "$root/done" ]]; then
    echo ">> importing the multi-node tier's images into $root" >&2
    local start=$SECONDS
    tmp="$root.tmp"
    rm -rf "$tmp" && mkdir -p "$tmp/root" "$tmp/state"
    cat > "$tmp/containerd.toml" <<EOF
version = 2
root = "$tmp/root"
state = "$tmp/state"
[grpc]
  address = "$tmp/containerd.sock"
[ttrpc]
  address = "$tmp/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$tmp/opt"
EOF
    containerd --config "$tmp/containerd.toml" > "$tmp/containerd.log" 2>&1 &
    pid=$!
    for _ in $(seq 200); do [[ -S "$tmp/containerd.sock" ]] && break; sleep 0.1; done
    local a ok=1
    for a in "$@"; do
      ctr -a "$tmp/containerd.sock" -n k8s.io images import "$a" >/dev/null || { ok=0; break; }
    done
    kill "$pid" && wait "$pid" 2>/dev/null || true
    [[ $ok -eq 1 ]] || { tail -20 "$tmp/containerd.log" >&2; rm -rf "$tmp"; fail "importing the images into $root"; }
    # Only the root stays: state, sockets and log go.
    rm -rf "$tmp/state" "$tmp/opt" "$tmp"/containerd.sock* "$tmp/containerd.toml" "$tmp/containerd.log"
    for old in "$cache_root"/node-root-*; do [[ "$old" == "$tmp" ]] || rm -rf "$old"; done
    touch "$tmp/done" && mv "$tmp" "$root"
    echo ">> imported in $((SECONDS - start))s" >&2
  fi
  echo "node-root $root"
}

# Fills the containerd root DIR with the images of the cached root $NODE_ROOT (`node-root`): hard
# links to its files (layers are only ever read: containers write to snapshots of their own),
# copies of its databases (containerd writes those).
seed_root() {
  local root=$1 db
  cp -al "$NODE_ROOT/root/." "$root/"
  find "$NODE_ROOT/root" -name '*.db' -printf '%P\n' | while read -r db; do
    rm "$root/$db" && cp "$NODE_ROOT/root/$db" "$root/$db"
  done
}

# The cluster DNS's configuration in DIR: CoreDNS on ADDRESS, reading the bed's API server.
corefile() {
  cat > "$1/Corefile" <<EOF
.:53 {
    bind $2
    errors
    kubernetes cluster.local {
        kubeconfig $KUBECONFIG
    }
    cache 2
}
EOF
}

# The containerd, CNI and kubelet configuration of a node in DIR: its pods on SUBNET.0/24 behind
# BRIDGE, the cluster DNS at SUBNET.1 (single node) or on the host (multi-node). Node N of the
# multi-node tier also gets its own cgroup root, pod logs and runc state, and keeps its pods'
# network namespaces in its own state directory, not in /var/run/netns (shared by all nodes).
node_configs() {
  local dir=$1 bridge=$2 subnet=$3 n=${4:-} dns=$3.1 cri="" runc="" kubelet=""
  if [[ -n "$n" ]]; then
    dns=$nodes_net.1
    cri="netns_mounts_under_state_dir = true"
    runc="Root = \"$dir/runc\""
    kubelet="cgroupRoot: /tjnode-$n
podLogsDir: $dir/pod-logs"
  fi
  cat > "$dir/cni/net.d/10-bed.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "trainjob-bed", "plugins": [{"type": "bridge", "bridge": "$bridge",
  "isGateway": true, "ipMasq": false, "hairpinMode": true,
  "ipam": {"type": "host-local", "dataDir": "$dir/ipam", "ranges": [[{"subnet": "$subnet.0/24", "gateway": "$subnet.1"}]],
    "routes": [{"dst": "0.0.0.0/0"}]}}]}
EOF
  cat > "$dir/containerd.toml" <<EOF
version = 2
root = "$dir/containerd"
state = "$dir/state"
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "trainjob.local/pause:bed"
  # Root here lacks CAP_SYS_RESOURCE: runc may not lower oom_score_adj.
  restrict_oom_score_adj = true
  $cri
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        $runc
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni/net.d"
EOF
  cat > "$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# Test only: the bed's API server has no kubelet client certificate.
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
clusterDNS: [$dns]
clusterDomain: cluster.local
containerRuntimeEndpoint: unix://$dir/containerd.sock
imageServiceEndpoint: unix://$dir/containerd.sock
registerWithTaints: [{key: trainjob.test/real-node, effect: NoSchedule}]
readOnlyPort: 0
serializeImagePulls: false
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: "100Mi"}
$kubelet
EOF
}

# Node N loses power: every process of it (daemons, shims, containers) killed at once, its link
# down. Its directories stay, so that it can boot again.
power_off() {
  local n=$1 cg=/sys/fs/cgroup/unified/tjnode-$1
  ip link set "tjn-$n" down 2>/dev/null || true
  [[ -f $cg/cgroup.kill ]] || return 0
  echo 1 > "$cg/cgroup.kill"
  for _ in $(seq 100); do
    grep -q '^populated 0' "$cg/cgroup.events" && return 0
    sleep 0.1
  done
  fail "node $n's cgroup still has processes 10 s after cgroup.kill"
}

cleanup_nodes() {
  [[ -d "$nodes_state" ]] || return 0
  local dir count n h
  dir=$(cat "$nodes_state/dir" 2>/dev/null || true)
  count=$(cat "$nodes_state/count" 2>/dev/null || echo 0)
  for ((n = 1; n <= count; n++)); do power_off "$n" || true; done
  if [[ -n "$dir" ]]; then
    # Whatever ran outside its node's cgroup (a crash between spawn and joining it).
    kill_matching "$dir/node"
    kill_matching "$dir/Corefile"
    awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r m; do
      umount -l "$m" 2>/dev/null || true
    done
  fi
  for ((n = 1; n <= count; n++)); do
    ip netns del "tjnode-$n" 2>/dev/null || true
    # The namespace itself may outlive its last process for minutes (its orphaned TCP
    # connections retry toward dead peers); its link goes now.
    ip link del "tjn-$n" 2>/dev/null || true
    umount "$nodes_state/uts-$n" 2>/dev/null || true
    for h in $(hierarchies); do
      [[ -d "$h/tjnode-$n" ]] && { find "$h/tjnode-$n" -depth -type d -exec rmdir {} \; 2>/dev/null || true; }
    done
  done
  ip link del "$nodes_bridge" 2>/dev/null || true
  if [[ -f "$nodes_state/sysctls" ]]; then
    while IFS= read -r kv; do sysctl -qw "$kv" || true; done < "$nodes_state/sysctls"
  fi
  if [[ -f "$nodes_state/created" ]]; then
    while IFS= read -r p; do [[ -n "$p" ]] && rm -rf "$p"; done < "$nodes_state/created"
  fi
  rm -rf "$nodes_state"
}

case "${1:-}" in
  deps) deps ;;
  build) build ;;
  prepare) [[ -n "${2:-}" ]] || fail "prepare needs a directory"; prepare "$2" ;;
  cleanup) cleanup ;;
  node-root) shift; node_root "$@" ;;
  prepare-nodes) [[ -n "${3:-}" ]] || fail "prepare-nodes needs a directory and a count"; prepare_nodes "$2" "$3" ;;
  power-off) [[ -n "${2:-}" ]] || fail "power-off needs a node number"; power_off "$2" ;;
  cleanup-nodes) cleanup_nodes ;;
  *) sed -n '2,24p' "$0" >&2; exit 2 ;;
esac
