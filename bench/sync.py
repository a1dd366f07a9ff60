#!/usr/bin/env python3
"""Sync over loopback: dbox against rsync (daemon mode) and git push.

    python3 bench/sync.py [--datasets source,mixed] [--scale F] [--large]
                          [--tools dbox,rsync,git] [--chain 2000] [--work DIR]
                          [--first-rounds N] [--drop-caches] [--loop GIB]

Data comes from ../shared/bench/gen-data.py (deterministic), by way of
compare.py's gen() (which works around `make large` failing on the Pythons
here), and is kept in --data (default target/bench-compare/data, shared with
compare.py, never modified). For each data set, one copy of the tree, A, is
the source for every tool, so they all move the same bytes in the same run:

  first       dbox: A commits and serves, B runs `dbox clone` (join + fetch +
              checkout); rsync: push A to an empty module of an rsync daemon
              on 127.0.0.1; git: push to an empty bare repository (file path)
  after edit  `gen-data.py edit A` (seed 2) and commit in A (dbox and git,
              not timed); then `dbox pull origin` in B, rsync again, git push
  no change   the same once more with nothing changed (dbox target <= 0.2 s)

With --first-rounds N the first sync is timed N times, dbox and rsync in
turn (each extra round into a fresh folder, removed after), and the
medians are reported beside the table's single pair: the machine's speed
drifts by a factor of two from minute to minute here.

Figures:
  seconds     wall time of the client process (GNU time); dbox's own
              "seconds" from --json is in the raw results. Each timed
              command starts after a `sync`, so no tool pays for the
              writeback of the step before it. With --drop-caches each
              tool's step also starts with the page cache dropped, so
              every tool reads its source from the disk.
  wire bytes  dbox: wire.sent + wire.received from --json (QUIC datagram
              payloads, both directions); rsync: "Total bytes sent" +
              "Total bytes received" from --stats (protocol bytes on the TCP
              stream); git: bytes through the pipe between `git push` and
              `git receive-pack`, both directions, counted by a wrapper
              (what would cross ssh or git://, without their framing)
  client MiB  peak RSS of the client (GNU time). For git push that is the
              largest of git push and its children (pack-objects, and the
              receive side: receive-pack, index-pack), as one process
  server MiB  dbox: VmHWM of the long-running `dbox serve`, reset before each
              step through /proc/PID/clear_refs; rsync: peak RSS of a daemon
              started for the step (its per-connection child included); git:
              the receive side is in the client figure

Also: where dbox's wire bytes go (object bytes as stored and as carried,
whole or as deltas, vs protocol overhead), and
a negotiation measurement: A commits --chain tiny versions (one file changed
each), B clones, A commits 10 more, B pulls; the wire bytes of that pull are
what negotiating over a long shared history costs. (The figure for 100,000
versions comes from the Rust test `negotiation_stays_small_on_a_large_graph`
in tests/sync.rs, which builds the graph without the CLI.)

--loop GIB runs the whole bench in a fresh ext4 file system of that size,
on a loop device in direct-I/O mode, mounted at --work (root only; made
before the run, removed after it unless --keep). Direct I/O matters: a
buffered loop device copies every O_DIRECT pack write into its backing
file's page cache, which a real disk does not (see bench/RESULTS.md).

Needs rsync, git and GNU time (apt-get install -y rsync time).
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # no bench/__pycache__ from importing compare
import compare  # noqa: E402  (gen(): gen-data.py with the `large` fallback)

GEN = compare.GEN
DBOX = os.path.join(ROOT, "target", "release", "dbox")
ENV = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b",
           GIT_COMMITTER_EMAIL="b@b", GIT_CONFIG_NOSYSTEM="1")
ENV.pop("GIT_DIR", None)
ENV.pop("GIT_WORK_TREE", None)
STEPS = ["first", "after edit", "no change"]
MiB = 1024 * 1024


def rmtree(path):
    subprocess.run(["rm", "-rf", path], check=True)


def die(msg):
    sys.exit(f"sync.py: {msg}")


def free_port(kind):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def loop_mount(work, gib):
    """A fresh ext4 file system of `gib` GiB on a loop device in direct-I/O
    mode, mounted at `work`; returns (image, device)."""
    if os.geteuid() != 0:
        die("--loop needs root (losetup, mount)")
    for tool in ["losetup", "mkfs.ext4", "mount", "umount"]:
        if not shutil.which(tool):
            die(f"--loop needs {tool}: apt-get install -y util-linux e2fsprogs mount")
    if gib <= 0:
        die("--loop takes a size in GiB, more than 0")
    os.makedirs(work, exist_ok=True)
    if os.path.ismount(work) or os.listdir(work):
        die(f"--loop mounts a new file system at {work}, which must be an empty folder")
    image = work.rstrip("/") + ".img"
    if os.path.exists(image):
        die(f"{image} exists: remove it, or use another --work")
    with open(image, "wb") as f:
        f.truncate(int(gib * (1 << 30)))
    sh(["mkfs.ext4", "-q", "-F", image])
    dev = sh(["losetup", "--direct-io=on", "--show", "-f", image]).stdout.strip()
    r = subprocess.run(["mount", dev, work], capture_output=True, text=True)
    if r.returncode != 0:
        subprocess.run(["losetup", "-d", dev])
        os.remove(image)
        die(f"mount {dev} {work} failed: {r.stderr.strip()}")
    print(f"--loop: {gib:g} GiB ext4 on {dev} (direct I/O) at {work}", file=sys.stderr)
    return image, dev


def loop_unmount(work, image, dev, keep):
    if keep:
        print(f"--keep: still mounted; to remove: umount {work} && losetup -d {dev} && rm {image}",
              file=sys.stderr)
        return
    # The raw figures outlive the file system: into the folder under it.
    results = os.path.join(work, "results.json")
    kept = None
    if os.path.exists(results):
        with open(results, "rb") as f:
            kept = f.read()
    subprocess.run(["umount", work])
    subprocess.run(["losetup", "-d", dev])
    os.remove(image)
    if kept is not None:
        with open(results, "wb") as f:
            f.write(kept)


def sh(cmd, cwd=None, env=None, check=True):
    r = subprocess.run(cmd, cwd=cwd, env=env or ENV, capture_output=True, text=True)
    if check and r.returncode != 0:
        die(f"failed: {' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r


def timed(cmd, cwd=None, env=None):
    """Runs cmd under GNU time: (wall s, peak KiB, stdout, stderr).

    Every timed command starts after a `sync`, so that none pays for the
    writeback of what ran before it (the copy of the data set, a commit, the
    other tool's files)."""
    os.sync()
    with tempfile.NamedTemporaryFile("r", suffix=".time") as t:
        r = subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", t.name] + cmd, cwd=cwd,
                           env=env or ENV, capture_output=True, text=True)
        if r.returncode != 0:
            die(f"failed: {' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        wall, rss = t.read().split()[-2:]
    return float(wall), int(rss), r.stdout, r.stderr


def last_json(text):
    i = text.find("{")
    if i < 0:
        die(f"no JSON in output:\n{text[-2000:]}")
    return json.loads(text[i:])


# ---------------------------------------------------------------- dbox

class DboxServer:
    """`dbox serve` for repository `repo`, with its own DBOX_HOME."""

    def __init__(self, repo, home, log):
        self.repo, self.env, self.log = repo, dict(ENV, DBOX_HOME=home), log
        self.port = free_port(socket.SOCK_DGRAM)
        addr_file = os.path.join(repo, ".dbox", "serve.addr")
        if os.path.exists(addr_file):
            os.remove(addr_file)
        self.logf = open(log, "ab")
        self.p = subprocess.Popen([DBOX, "-C", repo, "serve", "--listen", f"127.0.0.1:{self.port}"],
                                  env=self.env, stdout=subprocess.DEVNULL, stderr=self.logf)
        deadline = time.time() + 30
        while not os.path.exists(addr_file):
            if self.p.poll() is not None or time.time() > deadline:
                self.stop()
                die(f"dbox serve did not start; log {log}:\n{open(log).read()[-2000:]}")
            time.sleep(0.02)

    def reset_peak(self):
        with open(f"/proc/{self.p.pid}/clear_refs", "w") as f:
            f.write("5")

    def peak_kib(self):
        with open(f"/proc/{self.p.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return 0

    def invite(self):
        out = sh([DBOX, "-C", self.repo, "invite"], env=self.env).stdout.strip().splitlines()
        return out[-1].strip()

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.logf.close()


def dbox_step(server, cmd, env):
    server.reset_peak()
    wall, rss, out, _ = timed(cmd, env=env)
    j = last_json(out)
    return {"seconds": wall, "wire": j["wire"]["sent"] + j["wire"]["received"],
            "client_kib": rss, "server_kib": server.peak_kib(), "json": j}


# ---------------------------------------------------------------- rsync

class RsyncDaemon:
    """An rsync daemon on 127.0.0.1 under GNU time, one per step."""

    def __init__(self, tmp, dest):
        self.port = free_port(socket.SOCK_STREAM)
        conf = os.path.join(tmp, "rsyncd.conf")
        with open(conf, "w") as f:
            f.write(f"pid file = {tmp}/rsyncd.pid\nuse chroot = no\nnumeric ids = yes\n"
                    f"uid = {os.getuid()}\ngid = {os.getgid()}\nmax connections = 4\n"
                    f"lock file = {tmp}/rsyncd.lock\nlog file = {tmp}/rsyncd.log\n"
                    f"[data]\n  path = {dest}\n  read only = no\n")
        self.timef = os.path.join(tmp, "rsyncd.time")
        if os.path.exists(os.path.join(tmp, "rsyncd.pid")):
            os.remove(os.path.join(tmp, "rsyncd.pid"))
        self.p = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", self.timef, "rsync", "--daemon",
                                   "--no-detach", f"--config={conf}", f"--port={self.port}",
                                   "--address=127.0.0.1"], env=ENV, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.p.poll() is not None or time.time() > deadline:
                    die("rsync daemon did not start")
                time.sleep(0.02)
        self.url = f"rsync://127.0.0.1:{self.port}/data/"

    def stop_and_peak(self):
        time.sleep(0.3)  # let the connection's child exit and be reaped
        children = open(f"/proc/{self.p.pid}/task/{self.p.pid}/children").read().split()
        for c in children:
            os.kill(int(c), signal.SIGTERM)
        self.p.wait(20)
        try:
            return int(open(self.timef).read().split()[-1])
        except (OSError, ValueError, IndexError):
            return 0


def rsync_step(tmp, src, dest):
    d = RsyncDaemon(tmp, dest)
    try:
        wall, rss, out, _ = timed(["rsync", "-a", "--delete", "--stats", "--exclude=/.dbox",
                                   src.rstrip("/") + "/", d.url])
    finally:
        server = d.stop_and_peak()
    stats = {}
    for line in out.splitlines():
        if line.startswith("Total bytes sent:") or line.startswith("Total bytes received:"):
            k, v = line.split(":", 1)
            stats[k] = int(v.strip().replace(",", ""))
    return {"seconds": wall, "wire": stats.get("Total bytes sent", 0) + stats.get("Total bytes received", 0),
            "client_kib": rss, "server_kib": server, "stats": stats}


# ---------------------------------------------------------------- git

RECEIVE_PACK = """#!/bin/bash
# git-receive-pack, counting the bytes that pass in each direction
tee >(wc -c >"$GIT_WIRE_DIR/in") | git receive-pack "$@" | tee >(wc -c >"$GIT_WIRE_DIR/out")
"""


def git_setup(w, tree):
    gd, bare = os.path.join(w, "git-dir"), os.path.join(w, "bare.git")
    sh(["git", "init", "-q", "--bare", bare])
    sh(["git", "--git-dir", bare, "config", "gc.auto", "0"])
    sh(["git", "init", "-q", "--separate-git-dir", gd, os.path.join(w, "git-wt-unused")])
    shutil.rmtree(os.path.join(w, "git-wt-unused"))
    sh(["git", "--git-dir", gd, "config", "gc.auto", "0"])
    with open(os.path.join(gd, "info", "exclude"), "a") as f:
        f.write("/.dbox/\n")
    rp = os.path.join(w, "receive-pack.sh")
    with open(rp, "w") as f:
        f.write(RECEIVE_PACK)
    os.chmod(rp, 0o755)
    return {"gd": gd, "bare": bare, "rp": rp, "tree": tree, "cnt": os.path.join(w, "git-wire")}


def git_commit(g, msg):
    t0 = time.time()
    base = ["git", "--git-dir", g["gd"], "--work-tree", g["tree"]]
    sh(base + ["add", "-A"])
    sh(base + ["commit", "-q", "--allow-empty", "-m", msg])
    return time.time() - t0


def git_step(g):
    shutil.rmtree(g["cnt"], ignore_errors=True)
    os.makedirs(g["cnt"])
    env = dict(ENV, GIT_WIRE_DIR=g["cnt"])
    wall, rss, _, _ = timed(["git", "--git-dir", g["gd"], "push", "-q", f"--receive-pack={g['rp']}",
                             g["bare"], "HEAD:refs/heads/main"], env=env)
    wire = 0
    for name in ("in", "out"):
        p = os.path.join(g["cnt"], name)
        deadline = time.time() + 5
        while time.time() < deadline and not (os.path.exists(p) and open(p).read().strip()):
            time.sleep(0.02)
        wire += int(open(p).read().strip() or 0)
    return {"seconds": wall, "wire": wire, "client_kib": rss, "server_kib": None}


# ---------------------------------------------------------------- one data set

def drop_caches(args):
    """With --drop-caches, every tool starts its step with nothing cached:
    without it, rsync reads a source that `cp` has just put in the page
    cache while dbox's server reads packs that its commit wrote past the
    cache (O_DIRECT)."""
    if not args.drop_caches:
        return
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def run_dataset(args, kind, label, src, tools):
    w = os.path.join(args.work, label)
    rmtree(w)
    os.makedirs(w)
    a, b, dest, tmp = (os.path.join(w, x) for x in ("A", "B", "rsync-dest", "tmp"))
    os.makedirs(dest)
    os.makedirs(tmp)
    print(f"\n[{label}] copying {src} ...", file=sys.stderr)
    subprocess.run(["cp", "-a", src, a], check=True)
    files = size = 0
    for d, _, names in os.walk(a):
        for n in names:
            files += 1
            size += os.lstat(os.path.join(d, n)).st_size
    env_a = dict(ENV, DBOX_HOME=os.path.join(w, "home-a"))
    env_b = dict(ENV, DBOX_HOME=os.path.join(w, "home-b"))
    res = {"dataset": label, "bytes": size, "files": files, "steps": {s: {} for s in STEPS}, "setup": {}}
    server = None
    g = None
    try:
        if "dbox" in tools:
            sh([DBOX, "init", a], env=env_a)
            t0 = time.time()
            sh([DBOX, "-C", a, "commit", "-m", "first"], env=env_a)
            res["setup"]["dbox commit first"] = time.time() - t0
            server = DboxServer(a, env_a["DBOX_HOME"], os.path.join(w, "serve.log"))
        if "git" in tools:
            g = git_setup(w, a)
            res["setup"]["git add+commit first"] = git_commit(g, "first")

        if args.first_rounds > 1:
            res["first_rounds"] = first_rounds(args, w, a, server, tmp, tools, label)

        for step in STEPS:
            if step == "after edit":
                e = sh([sys.executable, GEN, "edit", a]).stdout.strip()
                res["edit"] = json.loads(e)
                if "dbox" in tools:
                    t0 = time.time()
                    sh([DBOX, "-C", a, "commit", "-m", "edit"], env=env_a)
                    res["setup"]["dbox commit edit"] = time.time() - t0
                if "git" in tools:
                    res["setup"]["git add+commit edit"] = git_commit(g, "edit")
            print(f"[{label}] {step} ...", file=sys.stderr)
            r = res["steps"][step]
            if "dbox" in tools:
                drop_caches(args)
                if step == "first":
                    r["dbox"] = dbox_step(server, [DBOX, "clone", server.invite(), b, "--json"], env_b)
                else:
                    r["dbox"] = dbox_step(server, [DBOX, "-C", b, "pull", "origin", "--json"], env_b)
            if "rsync" in tools:
                drop_caches(args)
                r["rsync"] = rsync_step(tmp, a, dest)
            if step == "first" and "first_rounds" in res:
                for tool in ("dbox", "rsync"):
                    if tool in r:
                        res["first_rounds"][tool].append(r[tool]["seconds"])
            if "git" in tools:
                drop_caches(args)
                r["git"] = git_step(g)

        if not args.no_verify:
            problems = []
            if "dbox" in tools:
                d = subprocess.run(["diff", "-rq", "--exclude=.dbox", a, b], capture_output=True, text=True)
                if d.returncode != 0:
                    problems.append("dbox: B differs from A:\n" + d.stdout[:2000])
            if "rsync" in tools:
                d = subprocess.run(["diff", "-rq", "--exclude=.dbox", a, dest], capture_output=True, text=True)
                if d.returncode != 0:
                    problems.append("rsync: destination differs from A:\n" + d.stdout[:2000])
            if "git" in tools:
                x = sh(["git", "--git-dir", g["gd"], "rev-parse", "HEAD"]).stdout.strip()
                y = sh(["git", "--git-dir", g["bare"], "rev-parse", "main"]).stdout.strip()
                if x != y:
                    problems.append(f"git: bare main {y} != {x}")
            res["verify"] = problems or "ok"
            for p in problems:
                print(f"[{label}] VERIFY FAILED {p}", file=sys.stderr)
    finally:
        if server:
            server.stop()
        if not args.keep:
            rmtree(w)
    return res


def first_rounds(args, w, a, server, tmp, tools, label):
    """--first-rounds N: N - 1 more first syncs before the one in the
    table, each into a fresh folder that is then removed, dbox and rsync
    taking turns at going first; the table's own first sync is the last
    round. The machine's speed drifts from minute to minute, so one pair
    of figures says little; the medians of N alternating rounds say more."""
    rounds = {t: [] for t in ("dbox", "rsync") if t in tools}
    for i in range(args.first_rounds - 1):
        print(f"[{label}] first, round {i + 1} of {args.first_rounds} ...", file=sys.stderr)
        order = list(rounds) if i % 2 == 0 else list(reversed(list(rounds)))
        for tool in order:
            drop_caches(args)
            if tool == "dbox":
                b, env = os.path.join(w, f"B-round{i}"), dict(ENV, DBOX_HOME=os.path.join(w, f"home-b-round{i}"))
                x = dbox_step(server, [DBOX, "clone", server.invite(), b, "--json"], env)
                rmtree(b)
                rmtree(env["DBOX_HOME"])
            else:
                dest = os.path.join(w, f"rsync-round{i}")
                os.makedirs(dest)
                x = rsync_step(tmp, a, dest)
                rmtree(dest)
            rounds[tool].append(x["seconds"])
    return rounds


# ---------------------------------------------------------------- negotiation

def negotiation(args, base, extra=10):
    w = os.path.join(args.work, f"chain-{base}")
    rmtree(w)
    os.makedirs(w)
    a, b = os.path.join(w, "A"), os.path.join(w, "B")
    env_a = dict(ENV, DBOX_HOME=os.path.join(w, "home-a"))
    env_b = dict(ENV, DBOX_HOME=os.path.join(w, "home-b"))
    sh([DBOX, "init", a], env=env_a)

    def commits(n, start):
        for i in range(start, start + n):
            with open(os.path.join(a, "counter.txt"), "w") as f:
                f.write(f"{i}\n")
            r = subprocess.run([DBOX, "-C", a, "commit", "-m", f"v{i}"], env=env_a,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if r.returncode != 0:
                die(f"dbox commit {i} failed: {r.stderr.decode(errors='replace')}")

    print(f"[chain {base}] {base} commits ...", file=sys.stderr)
    t0 = time.time()
    commits(base, 0)
    commit_s = (time.time() - t0) / base
    server = DboxServer(a, env_a["DBOX_HOME"], os.path.join(w, "serve.log"))
    try:
        clone = dbox_step(server, [DBOX, "clone", server.invite(), b, "--json"], env_b)
        commits(extra, base)
        pull = dbox_step(server, [DBOX, "-C", b, "pull", "origin", "--json"], env_b)
        again = dbox_step(server, [DBOX, "-C", b, "pull", "origin", "--json"], env_b)
    finally:
        server.stop()
        if not args.keep:
            rmtree(w)
    return {"base": base, "extra": extra, "commit_s": commit_s, "clone": clone, "pull": pull, "again": again}


# ---------------------------------------------------------------- output

def fmt_bytes(n):
    if n is None:
        return "-"
    if n >= 1000 * 1000:
        return f"{n / 1e6:,.2f} MB"
    if n >= 10 * 1000:
        return f"{n / 1e3:,.1f} kB"
    return f"{n:,} B"


def mib(kib):
    return "-" if kib is None else f"{kib / 1024:.0f}"


def print_tables(results, chains):
    print("\n### Sync over loopback: dbox vs rsync daemon vs git push\n")
    print("| tool | dataset | step | seconds | wire bytes | client MiB | server MiB | dbox ÷ this (s) | dbox ÷ this (bytes) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for res in results:
        for step in STEPS:
            r = res["steps"][step]
            base = r.get("dbox")
            for tool in ("dbox", "rsync", "git"):
                if tool not in r:
                    continue
                x = r[tool]
                rs = rb = ""
                if tool != "dbox" and base:
                    rs = f"{base['seconds'] / x['seconds']:.2f}" if x["seconds"] > 0 else "-"
                    rb = f"{base['wire'] / x['wire']:.2f}" if x["wire"] > 0 else "-"
                print(f"| {tool} | {res['dataset']} | {step} | {x['seconds']:.2f} | {fmt_bytes(x['wire'])} | "
                      f"{mib(x['client_kib'])} | {mib(x['server_kib'])} | {rs} | {rb} |")

    print("\nData sets: " + "; ".join(
        f"{r['dataset']}: {r['files']:,} files, {r['bytes'] / 1e6:,.1f} MB, edit "
        f"{r.get('edit', {}).get('changed', '?')} changed / {r.get('edit', {}).get('large_edited', '?')} large edited / "
        f"{r.get('edit', {}).get('deleted', '?')} deleted / {r.get('edit', {}).get('added', '?')} added"
        for r in results))

    rows = [(res, step, res["steps"][step]["dbox"]) for res in results for step in STEPS
            if "dbox" in res["steps"][step]]
    if rows:
        print("\n### dbox: where the wire bytes go\n")
        print("| dataset | step | versions | objects | as deltas | objects as stored (pulled.bytes) "
              "| objects as carried (pulled.carried) | wire sent | wire received "
              "| overhead (wire − carried) | overhead % of wire | dbox seconds (own) |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for res, step, x in rows:
            j = x["json"]
            ob = j["pulled"]["bytes"]
            carried = j["pulled"].get("carried", ob)
            ov = x["wire"] - carried
            print(f"| {res['dataset']} | {step} | {j['pulled']['versions']} | {j['pulled']['objects']:,} | "
                  f"{j['pulled'].get('deltas', 0):,} | {fmt_bytes(ob)} | {fmt_bytes(carried)} | "
                  f"{fmt_bytes(j['wire']['sent'])} | {fmt_bytes(j['wire']['received'])} | "
                  f"{fmt_bytes(ov)} | {100 * ov / x['wire']:.1f} | {j['seconds']:.2f} |")
        for res, step, x in rows:
            if step == "no change":
                ok = "met" if x["seconds"] <= 0.2 else "MISSED"
                print(f"\ndbox pull with nothing changed, {res['dataset']}: {x['seconds']:.2f} s wall "
                      f"(target ≤ 0.2 s: {ok})")
        for res in results:
            fr = res.get("first_rounds")
            if fr and len(fr.get("dbox", [])) > 1 and fr.get("rsync"):
                d, r = statistics.median(fr["dbox"]), statistics.median(fr["rsync"])
                per = ", ".join(f"{x / y:.2f}" for x, y in zip(fr["dbox"], fr["rsync"]) if y > 0)
                print(f"\nFirst sync of {res['dataset']}, {len(fr['dbox'])} alternating rounds: "
                      f"dbox {', '.join(f'{x:.2f}' for x in fr['dbox'])} s; "
                      f"rsync {', '.join(f'{x:.2f}' for x in fr['rsync'])} s; "
                      f"medians {d:.2f} / {r:.2f} s = **{d / r:.2f} ×** (per round: {per})")
        setups = [(r["dataset"], r["setup"]) for r in results if r["setup"]]
        if setups:
            print("\nNot timed in the table (setup): " + "; ".join(
                f"{d}: " + ", ".join(f"{k} {v:.2f} s" for k, v in s.items()) for d, s in setups))
        for r in results:
            if r.get("verify") not in (None, "ok"):
                print(f"\n**Verification failed for {r['dataset']}:** {r['verify']}")

    if chains:
        print("\n### dbox negotiation: pull of 10 new versions on top of a long shared history\n")
        print("| shared versions | new versions pulled | object bytes | wire sent | wire received | "
              "overhead (wire − objects) | seconds | no-change pull: wire | no-change pull: seconds |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for c in chains:
            p, j, a = c["pull"], c["pull"]["json"], c["again"]
            print(f"| {c['base']:,} | {j['pulled']['versions']} | {fmt_bytes(j['pulled']['bytes'])} | "
                  f"{fmt_bytes(j['wire']['sent'])} | {fmt_bytes(j['wire']['received'])} | "
                  f"{fmt_bytes(p['wire'] - j['pulled']['bytes'])} | {p['seconds']:.2f} | "
                  f"{fmt_bytes(a['wire'])} | {a['seconds']:.2f} |")
        print("\n(Versions made with the CLI, one `dbox commit` each: "
              + ", ".join(f"{c['commit_s'] * 1000:.0f} ms per commit at {c['base']:,}" for c in chains)
              + ". The 100,000-version figure comes from the Rust test "
              "`negotiation_stays_small_on_a_large_graph` in tests/sync.rs.)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=os.path.join(ROOT, "target", "bench-sync"))
    ap.add_argument("--data", default=os.path.join(ROOT, "target", "bench-compare", "data"),
                    help="pristine generated data (shared with compare.py; never modified)")
    ap.add_argument("--datasets", default="source,mixed", help="comma list of source, mixed, tiny, or none")
    ap.add_argument("--scale", type=float, default=1.0, help="gen-data.py --scale for source and mixed")
    ap.add_argument("--large", action="store_true", help="also sync `large` (2 GiB), for peak memory")
    ap.add_argument("--large-tools", default="dbox,rsync", help="tools for --large (git on 2 GiB is slow)")
    ap.add_argument("--tools", default="dbox,rsync,git")
    ap.add_argument("--chain", default="10,2000",
                    help="shared history lengths for the negotiation measurement (0: skip)")
    ap.add_argument("--first-rounds", type=int, default=1, metavar="N",
                    help="time the first sync N times, dbox and rsync in turn, and report the medians")
    ap.add_argument("--keep", action="store_true", help="keep the work folders")
    ap.add_argument("--drop-caches", action="store_true",
                    help="drop the page cache before each tool's step (root only): every tool starts cold")
    ap.add_argument("--no-verify", action="store_true", help="skip the diff of A against B and the rsync copy")
    ap.add_argument("--loop", type=float, metavar="GIB",
                    help="run in a fresh ext4 file system of GIB GiB on a direct-I/O loop device at --work (root)")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--report", metavar="RESULTS_JSON", help="only print the tables of an earlier run")
    args = ap.parse_args()
    if args.report:
        with open(args.report) as f:
            r = json.load(f)
        print_tables(r["datasets"], r["chains"])
        return
    args.work = os.path.abspath(args.work)
    if args.first_rounds < 1:
        die("--first-rounds takes a count of 1 or more")
    tools = [t for t in args.tools.split(",") if t]
    for tool in ["git", "rsync", "/usr/bin/time", "diff"]:
        if not shutil.which(tool):
            die(f"{tool} is missing: apt-get install -y git rsync time")
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
    if args.loop is None:
        run(args, tools)
        return
    image, dev = loop_mount(args.work, args.loop)
    try:
        run(args, tools)
    finally:
        loop_unmount(args.work, image, dev, args.keep)


def run(args, tools):
    os.makedirs(args.work, exist_ok=True)
    # Run a private copy, so that a rebuild during the run cannot change the binary.
    global DBOX
    private = os.path.join(args.work, "dbox")
    shutil.copy2(DBOX, private)
    DBOX = private
    head = sh(["git", "-C", ROOT, "describe", "--always", "--dirty"], check=False).stdout.strip()
    print(f"dbox binary: {head or '?'} (copied to {private})", file=sys.stderr)
    os.makedirs(args.data, exist_ok=True)

    results, chains = [], []
    load = [os.getloadavg()[0]]
    kinds = [k for k in args.datasets.split(",") if k and k != "none"]
    plan = [(k, k if args.scale == 1.0 else f"{k}@{args.scale:g}", args.scale, tools) for k in kinds]
    if args.large:
        plan.append(("large", "large", 1.0, [t for t in args.large_tools.split(",") if t]))
    for kind, label, scale, tl in plan:
        src = os.path.join(args.data, kind if scale == 1.0 else f"{kind}-scale{scale:g}")
        if not os.path.isdir(src):
            print(f"generating {kind} (scale {scale:g}) into {src} ...", file=sys.stderr)
        compare.gen(kind, src, scale)
        results.append(run_dataset(args, kind, label, src, tl))
        with open(os.path.join(args.work, "results.json"), "w") as f:
            json.dump({"dbox": head, "datasets": results, "chains": chains}, f, indent=1)
    if "dbox" in tools:
        for n in (int(x) for x in args.chain.split(",") if x.strip()):
            if n > 0:
                chains.append(negotiation(args, n))
    with open(os.path.join(args.work, "results.json"), "w") as f:
        json.dump({"dbox": head, "datasets": results, "chains": chains}, f, indent=1)
    load.append(os.getloadavg()[0])
    print(f"dbox {head}; load average {load[0]:.2f} at start, {load[1]:.2f} at end")
    print_tables(results, chains)
    print(f"\n(raw figures in {os.path.join(args.work, 'results.json')})")


if __name__ == "__main__":
    main()
