#!/usr/bin/env bash
# Runs the same loads against lightchain's mounts and against a local etcd, in one run, and prints both
# with their ratios (examples/vs_etcd.rs says what is measured and how).
#
#   examples/bench-vs-etcd.sh              # twice in a row on a noisy machine: RUNS=2 examples/bench-vs-etcd.sh
#
# Installs Debian's etcd-server (and etcd-client, for etcdctl by hand) when `etcd` is missing: this needs
# root and apt. Builds lightchain and the bench in release mode. The bench picks free loopback ports, keeps
# everything in temporary directories and stops every process it started on the way out. Run by hand only,
# never as a test; compare figures within one run.
#
# Environment:
#   RUNS              how many times to run the bench (default 1)
#   CARGO_TARGET_DIR  where cargo builds (default the repository's target/)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
runs="${RUNS:-1}"

if ! command -v etcd >/dev/null 2>&1; then
    echo "etcd is missing: installing Debian's etcd-server and etcd-client..."
    if [ "$(id -u)" -ne 0 ]; then
        echo "installing etcd needs root (apt-get install -y etcd-server etcd-client)" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null
    # The package enables a system etcd on the default ports; the bench starts its own on other ports.
    systemctl disable --now etcd >/dev/null 2>&1 || true
fi

cd "$repo"
cargo build --release --quiet --bin lightchain --example vs_etcd
target="${CARGO_TARGET_DIR:-$repo/target}"
echo "machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'))," \
    "$(free -g | awk '/^Mem:/ {print $2}') GiB RAM, kernel $(uname -r)," \
    "disk $(df --output=source "${TMPDIR:-/tmp}" | tail -1) for ${TMPDIR:-/tmp}"
for run in $(seq 1 "$runs"); do
    echo
    echo "== run $run of $runs, $(date -u '+%Y-%m-%d %H:%M UTC') =="
    "$target/release/examples/vs_etcd"
done
