#!/usr/bin/env python3
"""What a write costs each node of a 3-node cluster: latency, CPU time and context switches.

    cargo build --release && python3 examples/write-costs.py target/release/lightchain [OTHER_BINARY ...]

For each binary given (several are run in turn, ROUNDS times, so builds can be compared on a noisy
machine), starts a 3-node cluster on loopback (fresh temp dir, free ports, a shared cluster token) and
measures on the leader's mount:

- isolated writes: WRITES (default 500) `open(O_TRUNC)`+`write`+`close` of a SIZE-byte state (default
  100; random bytes), 5 ms apart, so every commit starts from idle threads: the p50 latency, and per
  write, for each node, the context switches of all its threads (`voluntary_ctxt_switches` +
  `nonvoluntary_ctxt_switches` under `/proc/PID/task`) and its CPU time (`utime` + `stime`);
- 32 writers for 3 s (100-byte states; skipped with LOADED=0): writes a second, and the same per-write
  counts.

For the 1 MiB row: `SIZE=1048576 WRITES=100 LOADED=0`. The CPU time of writers behind the
acknowledgement (`chain/`, `states/`) is counted when they ran before the window closed, so compare
builds with the same WRITES.

Counts are per node in node order, the leader marked with `*`. Context switches are a count, not a
duration, so they compare builds even when other work shares the machine; CPU time less so; latency
least. With PERF=leader or PERF=follower, `perf record -g` samples that node during the isolated writes
into PERF_OUT (default perf.data). Stops every process it started and removes the temp dir. By hand only.
"""
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import localcluster
from localcluster import write_state


def counters(pid):
    """(context switches of all threads, CPU seconds) of a process."""
    switches = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        switches += int(line.split()[1])
        except OSError:
            pass  # the thread ended
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return switches, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def per_write(pids, n, measure):
    before = [counters(p) for p in pids]
    measure()
    after = [counters(p) for p in pids]
    return ([(a[0] - b[0]) / n for a, b in zip(after, before)],
            [(a[1] - b[1]) / n * 1e6 for a, b in zip(after, before)])


def measure(binary, writes):
    d = tempfile.mkdtemp(prefix="lightchain-costs.")
    cluster = localcluster.Cluster()
    try:
        localcluster.start(binary, d, "warn", cluster)
        leader = cluster.leader
        lmnt = cluster.mnts[leader]
        pids = cluster.pids()
        for i in range(20):
            write_state(os.path.join(lmnt, f"w{i}"), b"a" * 100)
        time.sleep(0.3)

        perf = None
        if os.environ.get("PERF"):
            who = leader if os.environ["PERF"] == "leader" else (leader + 1) % 3
            perf = subprocess.Popen(
                ["perf", "record", "-F", "4000", "-g", "-o", os.environ.get("PERF_OUT", "perf.data"),
                 "-p", str(pids[who])], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        latencies = []
        content = os.urandom(int(os.environ.get("SIZE", "100")))

        def isolated():
            for i in range(writes):
                t0 = time.perf_counter()
                write_state(os.path.join(lmnt, f"w{i % 20}"), content)
                latencies.append(time.perf_counter() - t0)
                time.sleep(0.005)
        iso = per_write(pids, writes, isolated)
        if perf:
            perf.send_signal(signal.SIGINT)
            perf.wait()

        done = [0] * 32

        def writer(k, stop):
            n = 0
            while time.time() < stop:
                write_state(os.path.join(lmnt, f"c{k}"), b"c" * 100)
                n += 1
            done[k] = n
        elapsed = [0.0]

        def loaded():
            stop = time.time() + 3
            threads = [threading.Thread(target=writer, args=(k, stop)) for k in range(32)]
            t0 = time.time()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed[0] = time.time() - t0
        if os.environ.get("LOADED") == "0":
            return leader, statistics.median(latencies) * 1e6, iso, None, None
        before = [counters(p) for p in pids]
        loaded()
        after = [counters(p) for p in pids]
        n = sum(done)
        load = ([(a[0] - b[0]) / n for a, b in zip(after, before)],
                [(a[1] - b[1]) / n * 1e6 for a, b in zip(after, before)])
        return leader, statistics.median(latencies) * 1e6, iso, n / elapsed[0], load
    finally:
        cluster.stop()
        subprocess.run(["rm", "-rf", d])


def main():
    binaries = sys.argv[1:] or ["target/release/lightchain"]
    writes = int(os.environ.get("WRITES", "500"))
    for _ in range(int(os.environ.get("ROUNDS", "1"))):
        for binary in binaries:
            leader, p50, iso, rate, load = measure(binary, writes)

            def nodes(xs, fmt):
                return "/".join(("*" if i == leader else "") + format(x, fmt) for i, x in enumerate(xs))
            print(f"{binary}  load {os.getloadavg()[0]:.1f}\n"
                  f"  isolated: p50 {p50:5.0f} µs  switches/write {nodes(iso[0], '.0f')}"
                  f"  CPU µs/write {nodes(iso[1], '.0f')}", flush=True)
            if load:
                print(f"  32 writers: {rate:5.0f}/s  switches/write {nodes(load[0], '.1f')}"
                      f"  CPU µs/write {nodes(load[1], '.0f')}", flush=True)


if __name__ == "__main__":
    main()
