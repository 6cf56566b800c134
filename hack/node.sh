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
#
# Only one real node per machine: kubelet's ports (10250, 10248) and some of its paths are fixed.
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
  mkdir -p "$state" "$dir"/{containerd,state,cni/net.d,ipam,opt,kubelet}
  echo "$dir" > "$state/dir"
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
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni/net.d"
EOF
  cat > "$dir/Corefile" <<EOF
.:53 {
    bind $subnet.1
    errors
    kubernetes cluster.local {
        kubeconfig $KUBECONFIG
    }
    cache 2
}
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
clusterDNS: [$subnet.1]
clusterDomain: cluster.local
containerRuntimeEndpoint: unix://$dir/containerd.sock
imageServiceEndpoint: unix://$dir/containerd.sock
registerWithTaints: [{key: trainjob.test/real-node, effect: NoSchedule}]
readOnlyPort: 0
serializeImagePulls: false
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: "100Mi"}
EOF
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

case "${1:-}" in
  deps) deps ;;
  build) build ;;
  prepare) [[ -n "${2:-}" ]] || fail "prepare needs a directory"; prepare "$2" ;;
  cleanup) cleanup ;;
  *) sed -n '2,17p' "$0" >&2; exit 2 ;;
esac
