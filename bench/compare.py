#!/usr/bin/env python3
"""Time dbox against git, restic, borg and rsync on the same generated data.

    python3 bench/compare.py [--work DIR] [--only first,status,edit,restore,source,source4,large]

Data comes from ../shared/bench/gen-data.py (deterministic). Every tool works
on its own copy of the same tree in one run, so the ratios are comparable even
on a noisy machine. Prints markdown tables: wall time, CPU time (user+sys),
peak memory and bytes stored (dbox: .dbox/store, without the stat cache,
which like git's index describes the working tree), with dbox/other ratios. Needs git, restic,
borgbackup, rsync and GNU time (apt-get install restic borgbackup rsync time).

Scenarios (targets from the issue in brackets):
  first    first commit/backup of `mixed`        [dbox <= 0.5x fastest of git, restic, borg]
  status   status with nothing changed, `mixed`  [dbox <= 1.5x git status]
  edit     commit after `gen-data.py edit`       [<= 0.5x faster of restic/borg; bytes added <= restic]
  restore  whole `mixed` into an empty folder    [<= fastest of git checkout, restic restore, rsync -a]
  source   store size for `source`               [dbox <= restic]
  source4  status on `source` at scale 4         [dbox <= 1.5x git status]
  large    peak memory committing `large`        [<= 256 MiB]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GEN = os.path.join(ROOT, "..", "shared", "bench", "gen-data.py")
DBOX = os.path.join(ROOT, "target", "release", "dbox")
ENV = dict(os.environ, RESTIC_PASSWORD="bench", BORG_PASSPHRASE="bench",
           BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes", BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
           GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@b")


def run(cmd, cwd=None, quiet=True):
    """Runs cmd under GNU time; returns wall s, cpu s, peak KiB."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as t:
        full = ["/usr/bin/time", "-f", "%e %U %S %M", "-o", t.name] + cmd
        r = subprocess.run(full, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL if quiet else None,
                           stderr=subprocess.PIPE)
        if r.returncode != 0:
            sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr.decode(errors='replace')[-2000:]}")
        wall, user, sys_, rss = t.read().split()[-4:]
        return {"wall": float(wall), "cpu": float(user) + float(sys_), "rss_kib": int(rss)}


def total(*runs):
    out = {"wall": 0.0, "cpu": 0.0, "rss_kib": 0}
    for r in runs:
        out["wall"] += r["wall"]
        out["cpu"] += r["cpu"]
        out["rss_kib"] = max(out["rss_kib"], r["rss_kib"])
    return out


def du(path):
    return int(subprocess.run(["du", "-sb", path], capture_output=True, text=True).stdout.split()[0])


def median_wall(cmd, cwd, n=5):
    run(cmd, cwd)  # warm the cache
    return {"wall": statistics.median(run(cmd, cwd)["wall"] for _ in range(n)), "cpu": 0.0, "rss_kib": 0}


def gen(kind, dest, scale=1.0):
    if os.path.isdir(dest):
        return
    r = subprocess.run([sys.executable, GEN, "make", kind, dest, "--scale", str(scale)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if r.returncode == 0:
        return
    if kind != "large":
        sys.exit(f"gen-data.py make {kind} failed:\n{r.stderr.decode(errors='replace')[-2000:]}")
    # gen-data.py's `large` asks randbytes for 256 MiB at once, which
    # overflows on the Pythons here; make the same shape in 1 MiB pieces.
    import random
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    rng = random.Random(1)
    for i in range(int(round(8 * scale))):
        with open(os.path.join(dest, f"large{i:02d}.bin"), "wb") as f:
            for _ in range(256):
                f.write(rng.randbytes(1 << 20))


def copy(src, dst):
    if os.path.exists(dst):
        shutil.rmtree(dst)
    subprocess.run(["cp", "-a", src, dst], check=True)


def table(title, rows, extra=None):
    print(f"\n### {title}\n")
    cols = ["tool", "wall s", "CPU s", "peak MiB"] + ([extra] if extra else []) + ["dbox/tool (wall)"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    base = rows.get("dbox")
    for name, r in rows.items():
        ratio = f"{base['wall'] / r['wall']:.2f}" if base and r["wall"] > 0 else "-"
        cells = [name, f"{r['wall']:.2f}", f"{r['cpu']:.2f}", f"{r['rss_kib'] / 1024:.0f}"]
        if extra:
            cells.append(f"{r.get('bytes', 0) / 1e6:.1f} MB")
        cells.append(ratio)
        print("| " + " | ".join(cells) + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=os.path.join(ROOT, "target", "bench-compare"))
    ap.add_argument("--only", default="first,status,edit,restore,source,source4,large")
    ap.add_argument("--mixed-kind", default="mixed", help="data set for the mixed scenarios (tiny: a smoke test)")
    args = ap.parse_args()
    only = set(args.only.split(","))
    for tool in ["git", "restic", "borg", "rsync", "/usr/bin/time"]:
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install git restic borgbackup rsync time")
    subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
    w = os.path.abspath(args.work)
    os.makedirs(w, exist_ok=True)
    data = os.path.join(w, "data")
    os.makedirs(data, exist_ok=True)
    ENV["DBOX_HOME"] = os.path.join(w, "dbox-home")
    results = {}

    if only & {"first", "status", "edit", "restore"}:
        mixed = os.path.join(data, args.mixed_kind)
        gen(args.mixed_kind, mixed)
        d, g, s = (os.path.join(w, x) for x in ("mixed-dbox", "mixed-git", "mixed-src"))
        for x in (d, g, s):
            copy(mixed, x)
        rr, br = os.path.join(w, "restic-repo"), os.path.join(w, "borg-repo")
        for x in (rr, br):
            shutil.rmtree(x, ignore_errors=True)
        first = {
            "dbox": total(run([DBOX, "init", d]), run([DBOX, "-C", d, "commit", "-m", "first"])),
            "git": total(run(["git", "init", "-q", g]), run(["git", "add", "-A"], g),
                         run(["git", "commit", "-q", "-m", "first"], g)),
            "restic": total(run(["restic", "init", "-q", "-r", rr]), run(["restic", "-q", "-r", rr, "backup", "."], s)),
            "borg": total(run(["borg", "init", "-e", "repokey-blake2", br]), run(["borg", "create", br + "::first", "."], s)),
        }
        first["dbox"]["bytes"] = du(os.path.join(d, ".dbox", "store"))
        first["git"]["bytes"] = du(os.path.join(g, ".git"))
        first["restic"]["bytes"] = du(rr)
        first["borg"]["bytes"] = du(br)
        table("first commit / backup of mixed", first, "stored")
        results["first"] = first

        if "status" in only:
            st = {"dbox": median_wall([DBOX, "status"], d), "git": median_wall(["git", "status", "--porcelain"], g)}
            table("status, nothing changed, mixed (median of 5)", st)
            results["status"] = st

        if only & {"edit", "restore"}:
            for x in (d, g, s):
                subprocess.run([sys.executable, GEN, "edit", x], check=True, stdout=subprocess.DEVNULL)
            before = {"dbox": du(os.path.join(d, ".dbox", "store")), "git": du(os.path.join(g, ".git")), "restic": du(rr), "borg": du(br)}
            edit = {
                "dbox": run([DBOX, "-C", d, "commit"]),
                "git": total(run(["git", "add", "-A"], g), run(["git", "commit", "-q", "-m", "edit"], g)),
                "restic": run(["restic", "-q", "-r", rr, "backup", "."], s),
                "borg": run(["borg", "create", br + "::edit", "."], s),
            }
            edit["dbox"]["bytes"] = du(os.path.join(d, ".dbox", "store")) - before["dbox"]
            edit["git"]["bytes"] = du(os.path.join(g, ".git")) - before["git"]
            edit["restic"]["bytes"] = du(rr) - before["restic"]
            edit["borg"]["bytes"] = du(br) - before["borg"]
            table("commit after gen-data.py edit, mixed", edit, "added")
            results["edit"] = edit

        if "restore" in only:
            outs = {k: os.path.join(w, "out-" + k) for k in ("dbox", "git", "restic", "borg", "rsync")}
            for o in outs.values():
                shutil.rmtree(o, ignore_errors=True)
                os.makedirs(o)
            restore = {
                "dbox": run([DBOX, "-C", d, "restore", "--to", outs["dbox"]]),
                "git": run(["git", "--work-tree", outs["git"], "checkout", "-f", "HEAD", "--", "."], g),
                "restic": run(["restic", "-q", "-r", rr, "restore", "latest", "--target", outs["restic"]]),
                "borg": run(["borg", "extract", br + "::edit"], outs["borg"]),
                "rsync": run(["rsync", "-a", s + "/", outs["rsync"] + "/"]),
            }
            table("restore the whole of mixed into an empty folder", restore)
            results["restore"] = restore

    if "source" in only:
        gen("source", os.path.join(data, "source"))
        d, s = os.path.join(w, "source-dbox"), os.path.join(data, "source")
        copy(s, d)
        rr = os.path.join(w, "restic-source")
        shutil.rmtree(rr, ignore_errors=True)
        src = {
            "dbox": total(run([DBOX, "init", d]), run([DBOX, "-C", d, "commit", "-m", "source"])),
            "restic": total(run(["restic", "init", "-q", "-r", rr]), run(["restic", "-q", "-r", rr, "backup", "."], s)),
        }
        src["dbox"]["bytes"] = du(os.path.join(d, ".dbox", "store"))
        src["restic"]["bytes"] = du(rr)
        table("store size for source", src, "stored")
        results["source"] = src

    if "source4" in only:
        gen("source", os.path.join(data, "source4"), 4)
        d, g = os.path.join(w, "source4-dbox"), os.path.join(w, "source4-git")
        copy(os.path.join(data, "source4"), d)
        copy(os.path.join(data, "source4"), g)
        run([DBOX, "init", d])
        run([DBOX, "-C", d, "commit", "-m", "s4"])
        run(["git", "init", "-q", g])
        run(["git", "add", "-A"], g)
        run(["git", "commit", "-q", "-m", "s4"], g)
        st = {"dbox": median_wall([DBOX, "status"], d), "git": median_wall(["git", "status", "--porcelain"], g)}
        table("status, nothing changed, source at scale 4 (200,000 files)", st)
        results["source4"] = st

    if "large" in only:
        gen("large", os.path.join(data, "large"))
        d = os.path.join(w, "large-dbox")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        # Commit the data in place through a symlink-free copy would double
        # the disk; init a repository next to hard links of the files instead.
        for f in os.listdir(os.path.join(data, "large")):
            src = os.path.join(data, "large", f)
            if os.path.isfile(src):
                os.link(src, os.path.join(d, f))
        r = total(run([DBOX, "init", d]), run([DBOX, "-C", d, "commit", "-m", "large"]))
        r["bytes"] = du(os.path.join(d, ".dbox", "store"))
        table("commit of large (2 GiB), peak memory", {"dbox": r}, "stored")
        results["large"] = r

    with open(os.path.join(w, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"\n(raw figures in {os.path.join(w, 'results.json')})")


if __name__ == "__main__":
    main()
