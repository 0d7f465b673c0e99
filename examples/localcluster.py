"""A 3-node lightchain cluster on loopback for the Python bench scripts in this directory.

`start(binary, d, rust_log)` starts three nodes under the directory `d` (fresh token, free ports,
each node's log in `d/nI/log`), waits until all are ready and returns a `Cluster`; `stop()` ends every
process it started and lazily unmounts. Used by write-timeline.py and write-costs.py.
"""
import os
import signal
import socket
import subprocess
import sys
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(mnt):
    try:
        with open(os.path.join(mnt, ".lightchain/status")) as f:
            return f.read()
    except OSError:
        return ""


def write_state(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)  # the commit: close returns once the write is durable on a majority


class Cluster:
    def __init__(self):
        self.procs, self.mnts, self.logs = [], [], []
        self.leader = None

    def pids(self):
        return [p.pid for p in self.procs]

    def stop(self):
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p, mnt in zip(self.procs, self.mnts):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
            subprocess.run(["umount", "-l", mnt], stderr=subprocess.DEVNULL)


def start(binary, d, rust_log="warn", cluster=None):
    """Starts the nodes into `cluster` (so a caller's `finally` can stop what started)."""
    cluster = cluster if cluster is not None else Cluster()
    token = os.path.join(d, "token")
    with open(token, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    os.chmod(token, 0o600)
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    for i, addr in enumerate(addrs):
        mnt, data, log = (os.path.join(d, f"n{i}", x) for x in ("mnt", "data", "log"))
        os.makedirs(mnt)
        os.makedirs(data)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIGHTCHAIN_")}
        env.update(RUST_LOG=rust_log, NO_COLOR="1")
        cluster.procs.append(subprocess.Popen(
            [binary, "mount", mnt, "--data", data, "--listen", addr, "--peer", ",".join(addrs),
             "--cluster-token-file", token],
            stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env))
        cluster.mnts.append(mnt)
        cluster.logs.append(log)
    deadline = time.time() + 60
    for mnt in cluster.mnts:
        while '"ready": true' not in status(mnt):
            if time.time() > deadline:
                sys.exit("the cluster did not become ready")
            time.sleep(0.05)
    cluster.leader = next(i for i, m in enumerate(cluster.mnts) if '"role": "leader"' in status(m))
    return cluster
