#!/usr/bin/env bash
# Benchmarks of the object store (crate dbox-store): ingest of one 2 GiB
# file with its peak memory, and the criterion benches (ingest, index).
#
#   bench/store.sh            everything (8 to 15 minutes on 2 cores, by load)
#   bench/store.sh --no-criterion   only the 2 GiB ingest runs
#
# Data goes to target/bench-data (override with DBOX_BENCH_DATA), never into
# the repository; it is made once and reused. Figures: bench/RESULTS.md.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
data="${DBOX_BENCH_DATA:-$root/target/bench-data}"
gen="${DBOX_GEN_DATA:-$root/../shared/bench/gen-data.py}"
criterion=1
[[ "${1:-}" == "--no-criterion" ]] && criterion=0

if [[ ! -x /usr/bin/time ]]; then
    echo "installing GNU time (Debian package 'time')"
    apt-get update -qq && apt-get install -y -qq time
fi

echo "== machine"
echo "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg)"

echo "== build"
cargo build --release -p dbox-store --example ingest

echo "== data"
big="$data/large-2g.bin"
if [[ ! -f "$big" || $(stat -c %s "$big") -ne $((2 << 30)) ]]; then
    mkdir -p "$data"
    rm -rf "$data/large" "$data/parts" "$big"
    # gen-data.py's 'large' set is 8 random files of 256 MiB; concatenated
    # they are one 2 GiB file.
    if python3 "$gen" make large "$data/large" --scale 1; then
        cat "$data"/large/large/blob*.bin > "$big"
        rm -rf "$data/large"
    else
        # Python's Random.randbytes cannot make 256 MiB at once (OverflowError
        # in getrandbits on every Python to 3.13), so gen-data.py fails here.
        # Any incompressible bytes measure the same: a deterministic AES-CTR
        # stream, or the kernel's random source without openssl.
        echo "gen-data.py could not make the 'large' set; using a generated random stream instead"
        rm -rf "$data/large"
        if command -v openssl > /dev/null; then
            openssl enc -aes-256-ctr -pass pass:dbox-bench -nosalt -pbkdf2 < /dev/zero 2> /dev/null |
                head -c $((2 << 30)) > "$big" || true
        else
            head -c $((2 << 30)) /dev/urandom > "$big"
        fi
    fi
fi
if [[ ! -d "$data/parts" ]]; then
    mkdir -p "$data/parts"
    split -b 256M -d "$big" "$data/parts/part"
fi
[[ $(stat -c %s "$big") -eq $((2 << 30)) ]] || { echo "could not make $big" >&2; exit 1; }
ls -l "$big"

ingest() {
    local log
    log="$(mktemp)"
    /usr/bin/time -v target/release/examples/ingest "$@" 2> "$log"
    awk -F': ' '/Maximum resident set size/ {printf "peak RSS: %.1f MiB\n", $2/1024}
                /Elapsed \(wall clock\)/ {print "wall clock: " $2}
                /User time/ {print "user: " $2 " s"}
                /System time/ {print "system: " $2 " s"}
                /Minor.*page faults/ {print "minor page faults: " $2}
                /Percent of CPU/ {print "CPU: " $2}' "$log"
    rm -f "$log"
}

echo "== ingest one 2 GiB file, one thread (and the store's pack-writing thread)"
ingest "$big"
echo "== ingest the same bytes as 8 files of 256 MiB, two threads (and the pack-writing thread)"
ingest --threads 2 "$data"/parts/part*
echo "== the same two without the pack-writing thread: exactly one, then two threads"
ingest --no-pack-thread "$big"
ingest --no-pack-thread --threads 2 "$data"/parts/part*

if [[ $criterion == 1 ]]; then
    echo "== criterion benches"
    cargo bench -p dbox-store --bench ingest --bench index
fi
