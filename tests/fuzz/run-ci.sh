#!/usr/bin/env bash
# Builds the fuzz targets (cargo-fuzz, libFuzzer, on the stable toolchain) and runs each one for a
# short bounded time on its committed corpus; exits non-zero when any target finds a crash, a
# panic, an allocation over 512 MiB, a hang (-timeout) or an out-of-memory (-rss_limit_mb).
#
#   tests/fuzz/run-ci.sh                  # every target, FUZZ_SECONDS (20) each
#   tests/fuzz/run-ci.sh image reply      # some targets
#   FUZZ_RUNS=10000000 FUZZ_GROW=1 tests/fuzz/run-ci.sh request_json
#                                         # the long runs of bench/fuzz-results.md: a run count
#                                         # instead of a time, new inputs kept in corpus/<target>
#
# cargo-fuzz is installed into $EDGEINFER_CACHE/cargo-fuzz (default /var/cache/edgeinfer) when
# absent, and the instrumented build goes to $EDGEINFER_CACHE/fuzz-target, so later runs on the
# same machine reuse both. No sanitizer (-s none): the code is safe Rust, the fuzzers hunt panics,
# aborts, hangs and memory blow-ups, and ASan would double the build (bench/fuzz-results.md).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${EDGEINFER_CACHE:-/var/cache/edgeinfer}
seconds=${FUZZ_SECONDS:-20}
cargo_fuzz_version=0.13.2

export PATH="$cache/cargo-fuzz/bin:$PATH"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$cache/fuzz-target}"
# cargo-fuzz passes -Z flags (sanitizer coverage) to rustc; stable rustc takes them with this.
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $cargo_fuzz_version"; then
    echo "== installing cargo-fuzz $cargo_fuzz_version into $cache/cargo-fuzz"
    nice -n 10 cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked --root "$cache/cargo-fuzz"
fi

cd "$root"
build_flags=(--fuzz-dir tests/fuzz --sanitizer none --debug-assertions --codegen-units 16)

# libFuzzer options per target: dictionary, largest input, per-input time limit (a hang).
options() {
    case "$1" in
        request_json | request_binary | reply) echo "-dict=tests/fuzz/dicts/request.dict -max_len=65536 -timeout=10" ;;
        bytes_elements) echo "-max_len=4096 -timeout=10" ;;
        media) echo "-dict=tests/fuzz/dicts/media.dict -max_len=65536 -timeout=10" ;;
        # Images: big enough for a real camera frame's worth of compressed bytes and for
        # decompression bombs up to the daemon's 8192-pixel side limit, small enough that an
        # honest decode inside the limits stays far below the allocation cap and the RSS limit.
        image) echo "-dict=tests/fuzz/dicts/image.dict -max_len=262144 -timeout=20" ;;
        manifest) echo "-dict=tests/fuzz/dicts/manifest.dict -max_len=16384 -timeout=10" ;;
        reply_topic) echo "-dict=tests/fuzz/dicts/topic.dict -max_len=70000 -timeout=10" ;;
        *) echo "unknown fuzz target $1" >&2; return 1 ;;
    esac
}

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list --fuzz-dir tests/fuzz)
fi

lock_before=$(sha256sum tests/fuzz/Cargo.lock)
echo "== building ${#targets[@]} fuzz targets into $CARGO_TARGET_DIR"
start=$(date +%s)
nice -n 10 cargo fuzz build "${build_flags[@]}"
echo "== built in $(( $(date +%s) - start )) s"
if [ "$(sha256sum tests/fuzz/Cargo.lock)" != "$lock_before" ]; then
    echo "tests/fuzz/Cargo.lock changed during the build: commit the new one" >&2
    exit 1
fi

failed=()
for target in "${targets[@]}"; do
    opts=$(options "$target")
    corpus=tests/fuzz/corpus/$target
    mkdir -p "$corpus"
    if [ -n "${FUZZ_GROW:-}" ]; then
        dirs=("$corpus")
    else
        # New inputs go to a scratch directory (libFuzzer writes into the first one), so a CI
        # run leaves the repository as it was.
        scratch=$(mktemp -d)
        dirs=("$scratch" "$corpus")
    fi
    if [ -n "${FUZZ_RUNS:-}" ]; then limit="-runs=$FUZZ_RUNS"; else limit="-max_total_time=$seconds"; fi
    echo "== $target: $limit $opts"
    # shellcheck disable=SC2086  # $opts is a list of options
    if nice -n 10 cargo fuzz run "${build_flags[@]}" "$target" "${dirs[@]}" -- \
        $limit $opts -print_final_stats=1 ${FUZZ_EXTRA:-} 2>&1 | tee "${FUZZ_LOG_DIR:-/tmp}/fuzz-$target.log" \
        | grep -E "^(#[0-9]+[[:space:]]+(INITED|DONE)|stat::|==[0-9]+== ERROR|==fuzz==|thread .* panicked|SUMMARY|artifact_prefix|Test unit written)" ; then
        :
    fi
    if ! grep -q "^Done [0-9]* runs\|^#[0-9]* *DONE" "${FUZZ_LOG_DIR:-/tmp}/fuzz-$target.log" ||
        grep -q "Test unit written\|==[0-9]*== ERROR\|^SUMMARY: libFuzzer" "${FUZZ_LOG_DIR:-/tmp}/fuzz-$target.log"; then
        failed+=("$target")
    fi
    [ -n "${FUZZ_GROW:-}" ] || rm -rf "$scratch"
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: FAILED: ${failed[*]} (inputs under tests/fuzz/artifacts/<target>/, logs ${FUZZ_LOG_DIR:-/tmp}/fuzz-<target>.log)" >&2
    exit 1
fi
echo "fuzz: ${#targets[@]} targets, no crash"
