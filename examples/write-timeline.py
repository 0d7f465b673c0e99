#!/usr/bin/env python3
"""Timeline of one 3-node commit, from the daemons' own debug lines.

    cargo build --release && python3 examples/write-timeline.py [target/release/lightchain] [writes]

Starts a 3-node lightchain cluster on loopback (fresh temp dir, free ports, a shared cluster token) with
RUST_LOG set to the debug lines of the write path: every FUSE request as fuser receives it, the flush and
its answer, the batcher's client_write, the log store's append and fsync, AppendEntries sent, received and
answered, and the state machine's apply. Then it makes isolated writes on the leader (open O_TRUNC + write
+ close of a 100-byte state, or of SIZE random bytes, 20 ms apart, so no two commits overlap), cuts the three logs into one window
per write (the client's time before open to after close; all processes share the clock), and prints, per
event, the median and p90 time since the client's open, with the step from the previous event. Also the
FUSE requests the leader saw per write, and the blocks each write made. Stops every process it started
and removes the temp dir. Debug lines cost a few µs each (a formatted line written to a file), so the
total is a little above the bench's figure; compare the steps, not the sum, with the bench. By hand only.
"""
import calendar
import os
import re
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict

import localcluster
from localcluster import status, write_state

FILTER = ",".join([
    "warn",
    "fuser=debug",
    "lightchain::fs::fuse=debug",
    "lightchain::node::batcher=debug",
    "lightchain::consensus=debug",
])
LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:(\d\d\.\d+))Z\s+\w+\s+([\w:]+): (.*)$")
FUSE_OP = re.compile(r"FUSE\(\s*\d+\) ino 0x[0-9a-f]+ (\w+)")


def parse_ts(stamp):
    """Seconds since the epoch, as a float with µs, from tracing's RFC 3339 stamp (UTC)."""
    day, frac = stamp.split(".")
    base = calendar.timegm(time.strptime(day, "%Y-%m-%dT%H:%M:%S"))
    return base + float("0." + frac)


def events(log):
    out = []
    with open(log, errors="replace") as f:
        for line in f:
            m = LINE.match(line.rstrip("\n"))
            if not m:
                continue
            ts, target, msg = parse_ts(m.group(1)), m.group(3), m.group(4)
            op = FUSE_OP.search(msg)
            if op:
                out.append((ts, "fuse " + op.group(1), msg))
            else:
                words = re.sub(r"\s\w+=\S+", "", msg).strip()
                out.append((ts, words, msg))
    return out


def applied_height(mnt):
    m = re.search(r'"applied_height":\s*(\d+)', status(mnt))
    return int(m.group(1)) if m else -1


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/lightchain"
    writes = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    size = int(os.environ.get("SIZE", "100"))
    content = b"b" * 100 if size == 100 else os.urandom(size)
    tmp = tempfile.TemporaryDirectory(prefix="lightchain-timeline.")
    d = tmp.name
    cluster = localcluster.Cluster()
    try:
        localcluster.start(binary, d, FILTER, cluster)
        leader = cluster.leader
        lmnt = cluster.mnts[leader]
        for i in range(20):
            write_state(os.path.join(lmnt, f"w{i}"), b"a" * 100)
        time.sleep(0.2)
        windows = []
        h0 = applied_height(lmnt)
        for i in range(writes):
            t0 = time.time()
            write_state(os.path.join(lmnt, f"w{i % 20}"), content)
            t1 = time.time()
            windows.append((t0, t1))
            time.sleep(0.02)
        time.sleep(1)
        blocks = applied_height(lmnt) - h0
    finally:
        cluster.stop()

    logs = [events(log) for log in cluster.logs]
    followers = [i for i in range(3) if i != leader]
    offsets = defaultdict(list)
    steps = defaultdict(list)
    ops = Counter()
    parallel = []  # per write, with the send before the leader's fsync: was that fsync later than the reply?
    for t0, t1 in windows:
        def first(node, name, after=t0, before=None):
            for ts, ev, msg in logs[node]:
                if ts >= after and ts <= (before or t1 + 0.005) and ev == name:
                    if name == "append_entries sent" and "entries=0" in msg:
                        continue
                    return ts
            return None

        row = {}
        for ts, ev, _ in logs[leader]:
            if t0 <= ts <= t1 and ev.startswith("fuse "):
                ops[ev] += 1
                row.setdefault(f"leader {ev} received", ts)
        for name in ["flush received", "client_write start", "log appended", "log fsynced",
                     "append_entries sent"]:
            row[f"leader {name}"] = first(leader, name)
        for k, f in enumerate(followers):
            appended = first(f, "log appended")
            if appended is None:
                continue
            rec = [ts for ts, ev, _ in logs[f] if ev == "append_entries received" and t0 <= ts <= appended]
            row[f"follower{k + 1} append_entries received"] = rec[-1] if rec else None
            row[f"follower{k + 1} log appended"] = appended
            row[f"follower{k + 1} log fsynced"] = first(f, "log fsynced", after=appended)
            row[f"follower{k + 1} append_entries answered"] = first(f, "append_entries answered", after=appended)
        sent = row.get("leader append_entries sent") or t0
        replies = sorted(ts for ts, ev, _ in logs[leader] if ev == "append_entries reply" and sent <= ts <= t1)
        if replies:
            row["leader first append_entries reply"] = replies[0]
        if len(replies) > 1:
            row["leader second append_entries reply"] = replies[1]
        for name in ["save_committed start", "save_committed done", "apply start", "apply end",
                     "client_write done", "flush answered"]:
            row[f"leader {name}"] = first(leader, name, after=replies[0] if replies else t0)
        row["client close returned"] = t1
        for k, v in row.items():
            if v is not None:
                offsets[k].append((v - t0) * 1e6)
        # The causal path of this commit: through the follower that answered first, and the
        # leader's first AppendEntries reply after that answer.
        answered = [(row.get(f"follower{k + 1} append_entries answered"), k + 1) for k in range(2)]
        answered = [a for a in answered if a[0] is not None]
        if not answered:
            continue
        at, q = min(answered)
        reply = next((r for r in replies if r >= at), None)
        # openraft 0.9 sent AppendEntries only after the leader's fsync; 0.10 sends it while the
        # fsync runs, and the commit waits for the later of that fsync and the quorum's answer.
        fsynced, sent_at = row.get("leader log fsynced"), row.get("leader append_entries sent")
        serial = fsynced is not None and sent_at is not None and fsynced <= sent_at
        leader_steps = ["fuse FLUSH received", "client_write start", "log appended"]
        leader_steps += ["log fsynced", "append_entries sent"] if serial else ["append_entries sent"]
        path = [("client open", t0)] + [(name, row.get(f"leader {name}")) for name in leader_steps]
        path += [(f"quorum follower {name}", row.get(f"follower{q} {name}")) for name in
                 ["append_entries received", "log appended", "log fsynced", "append_entries answered"]]
        path += [("leader append_entries reply", reply)]
        if not serial and fsynced is not None and reply is not None:
            parallel.append(fsynced > reply)
            if fsynced > reply:
                path += [("leader log fsynced (after the reply)", fsynced)]
        path += [(name, row.get(f"leader {name}")) for name in
                 ["save_committed start", "save_committed done", "apply start", "apply end",
                  "client_write done", "flush answered"]]
        path += [("client close returned", t1)]
        # Steps a build does not log on the commit path (raft/committed.json is now saved behind)
        # are left out rather than dropping every write.
        path = [p for p in path if p[1] is not None or p[0].startswith("save_committed")]
        path = [p for p in path if p[1] is not None] if all(
            row.get(f"leader {n}") is None for n in ["save_committed start", "save_committed done"]) else path
        if all(v is not None for _, v in path) and all(a[1] <= b[1] for a, b in zip(path, path[1:])):
            for (_, a), (name, b) in zip(path, path[1:]):
                steps[name].append((b - a) * 1e6)

    n = len(windows)
    print(f"{n} isolated {size}-byte writes (open O_TRUNC + write + close) on the leader of 3 nodes")
    print(f"blocks per write: {blocks / n:.2f}")
    print("FUSE requests the leader received per write: " +
          ", ".join(f"{op[5:]} {c / n:.2f}" for op, c in ops.most_common()))
    print(f"\n{'event':<46} {'median µs':>10} {'p90 µs':>9} {'step µs':>9}  (samples)")
    rows = sorted(offsets.items(), key=lambda kv: statistics.median(kv[1]))
    prev = 0.0
    for name, vals in rows:
        med = statistics.median(vals)
        p90 = sorted(vals)[int(0.9 * (len(vals) - 1))]
        print(f"{name:<46} {med:>10.0f} {p90:>9.0f} {med - prev:>9.0f}  ({len(vals)})")
        prev = med
    complete = len(steps["client close returned"])
    print(f"\nthe causal path, step by step ({complete} writes with every event in order; median and p90 of")
    print("each write's own step, so the medians need not add up to the total exactly)")
    total = 0.0
    for name, vals in steps.items():
        # A step seen in few writes belongs to the other order (fsync before or after the send).
        if len(vals) < complete / 2:
            continue
        med = statistics.median(vals)
        total += med
        p90 = sorted(vals)[int(0.9 * (len(vals) - 1))]
        print(f"  -> {name:<44} {med:>8.0f} µs {p90:>8.0f} µs")
    print(f"  {'sum of the median steps':<47} {total:>8.0f} µs")
    if parallel:
        print(f"\nAppendEntries went out before the leader's fsync in {len(parallel)} writes; in "
              f"{sum(parallel)} of them that fsync ended after the quorum's answer (then it is on the path)")
    tmp.cleanup()


if __name__ == "__main__":
    main()
