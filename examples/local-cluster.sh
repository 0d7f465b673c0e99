#!/usr/bin/env bash
# Starts a 3-node lightchain cluster on loopback, with three mounts, and keeps it running until Ctrl-C.
#
#   examples/local-cluster.sh
#
# Everything lives in a fresh temporary directory (printed at start and at exit): nodeN/mnt is node N's
# mountpoint, nodeN/data its data directory, nodeN/log its log. Ctrl-C (or SIGTERM) stops the nodes cleanly
# (SIGTERM, which unmounts), lazily unmounts anything left behind, and keeps the data for you to inspect.
#
# Environment:
#   PORTS            the three gRPC ports (default "7071 7072 7073"), all on 127.0.0.1
#   LIGHTCHAIN_BIN   use this binary instead of building target/release/lightchain
#   COMMIT_TIMEOUT   --commit-timeout of every node (default 10s)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
read -r -a ports <<<"${PORTS:-7071 7072 7073}"
if [ "${#ports[@]}" -ne 3 ]; then
    echo "PORTS must name exactly three ports, got: ${PORTS:-}" >&2
    exit 2
fi
commit_timeout="${COMMIT_TIMEOUT:-10s}"

# The binary: given, or built (cargo only rebuilds what changed).
if [ -n "${LIGHTCHAIN_BIN:-}" ]; then
    bin="$LIGHTCHAIN_BIN"
else
    echo "building lightchain (cargo build --release)..."
    (cd "$repo" && cargo build --release --quiet)
    bin="$repo/target/release/lightchain"
fi
if [ ! -x "$bin" ]; then
    echo "no lightchain binary at $bin" >&2
    exit 1
fi

# Flags for the nodes come only from this script, not from LIGHTCHAIN_* variables of the caller's shell.
for v in $(compgen -e | grep '^LIGHTCHAIN_' || true); do
    unset "$v"
done

for port in "${ports[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "port $port on 127.0.0.1 is already in use; choose others, e.g. PORTS=\"8071 8072 8073\" $0" >&2
        exit 1
    fi
done

dir="$(mktemp -d "${TMPDIR:-/tmp}/lightchain-cluster.XXXXXX")"
peers="127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
# Every member gets the same cluster token (DESIGN §1.7): a shared secret, readable by its owner only.
token="$dir/cluster-token"
(umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$token" && echo >>"$token")
pids=()
sleeper=""

unmount() {
    local mnt="$1"
    if grep -q " $mnt fuse" /proc/mounts 2>/dev/null; then
        fusermount3 -u -z "$mnt" 2>/dev/null || fusermount -u -z "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
    fi
}

stopping=0
cleanup() {
    [ "$stopping" = 1 ] && return
    stopping=1
    trap '' INT TERM
    [ -n "$sleeper" ] && kill "$sleeper" 2>/dev/null
    echo
    echo "stopping the nodes..."
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    for i in 1 2 3; do
        unmount "$dir/node$i/mnt"
    done
    echo "stopped. The data is kept in $dir:"
    for i in 1 2 3; do
        echo "  node$i: data $dir/node$i/data, log $dir/node$i/log"
    done
    echo "Inspect it with e.g. '$bin log --data $dir/node1/data' or '$bin verify --data $dir/node2/data';"
    echo "remove it with 'rm -rf $dir'."
}
trap 'cleanup; exit 0' INT TERM
trap cleanup EXIT

for i in 1 2 3; do
    mkdir -p "$dir/node$i/mnt" "$dir/node$i/data"
    NO_COLOR=1 "$bin" mount "$dir/node$i/mnt" \
        --data "$dir/node$i/data" \
        --listen "127.0.0.1:${ports[$((i - 1))]}" \
        --peer "$peers" \
        --cluster-token-file "$token" \
        --name "node$i" \
        --commit-timeout "$commit_timeout" \
        >"$dir/node$i/log" 2>&1 &
    pids+=("$!")
done
echo "starting 3 nodes in $dir (peers $peers)..."

# Ready when every node knows a leader (`lightchain status` exits 0 only then).
deadline=$((SECONDS + 60))
for i in 1 2 3; do
    addr="127.0.0.1:${ports[$((i - 1))]}"
    until "$bin" status --addr "$addr" --data "$dir/node$i/data" >/dev/null 2>&1; do
        if ! kill -0 "${pids[$((i - 1))]}" 2>/dev/null; then
            echo "node$i exited during start-up; the end of its log ($dir/node$i/log):" >&2
            tail -n 20 "$dir/node$i/log" >&2
            exit 1
        fi
        if [ "$SECONDS" -gt "$deadline" ]; then
            echo "node$i is not ready after 60 s; the end of its log ($dir/node$i/log):" >&2
            tail -n 20 "$dir/node$i/log" >&2
            exit 1
        fi
        sleep 0.2
    done
done

m1="$dir/node1/mnt" m2="$dir/node2/mnt" m3="$dir/node3/mnt"
cat <<EOF

A 3-node lightchain cluster is running:
  node1  mount $m1  gRPC 127.0.0.1:${ports[0]}  pid ${pids[0]}
  node2  mount $m2  gRPC 127.0.0.1:${ports[1]}  pid ${pids[1]}
  node3  mount $m3  gRPC 127.0.0.1:${ports[2]}  pid ${pids[2]}

Things to try in another terminal:
  echo hello > $m1/greeting          # a write on node1 ...
  cat $m2/greeting                   # ... is readable on node2 as soon as it returned
  mkdir $m3/app && echo '{}' > $m3/app/config.json && ls -l $m1/app
  cat $m1/.lightchain/status         # this node's view: role, leader, term, head, members
  $bin status --addr 127.0.0.1:${ports[1]} --data $dir/node2/data   # the CLI reads the token there
  $bin log --data $dir/node1/data    # the chain: one block per committed change
  $bin log greeting --data $dir/node3/data
  diff -r $dir/node1/data/states $dir/node3/data/states   # the same files everywhere

Fail-over: kill the leader (its pid is above; the leader is named in the status), then keep writing on the
others. Restart a killed node N (here node2) with the same flags; it catches up (a node you restart by
hand is yours to stop: Ctrl-C in its terminal):
  $bin mount $m2 --data $dir/node2/data --listen 127.0.0.1:${ports[1]} --peer $peers --cluster-token-file $token --name node2

Press Ctrl-C to stop the cluster.
EOF

while true; do
    sleep 3600 &
    sleeper=$!
    wait "$sleeper" || true
done
