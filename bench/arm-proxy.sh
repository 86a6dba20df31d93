#!/usr/bin/env bash
# ARM instruction proxy: guest instructions per inference, tract (the project's aarch64 build) vs
# onnxruntime's aarch64 wheel, on emulated Cortex-A53/A72/A76 cores, one thread. No board needed;
# method and caveats in bench/arm-proxy.md. A bench, not a test: keep it out of CI.
#
#   bench/arm-proxy.sh [--cores "a72 a76"] [--models-only "squeezenet digits"] [--models DIR]
#                      [--binary PATH] [--build] [--out FILE]
#
#   --cores        any of a53 a72 a76 (default: a72 a76)
#   --models-only  pack models to run (default: digits silero_vad ppocr_cls ppocr_rec squeezenet resnet50)
#   --models DIR   model repository, the same files for both engines (default: models)
#   --binary PATH  aarch64 edgeinfer with `bench --iterations` (default: dist/aarch64-unknown-linux-gnu/edgeinfer)
#   --build        build that binary first: PROFILE=arm-check cross/build.sh aarch64-unknown-linux-gnu
#                  (30+ minutes cold on 2 cores; keep EDGEINFER_CROSS_TARGET_DIR between runs)
#   --concrete-batch  give tract each model with its -1 batch dimension replaced by the batch used
#                  (a model.toml rewritten under the cache, the same model.onnx): what a concrete plan
#                  costs (issue 11 item 2); onnxruntime gets the same shapes either way
#   --fresh        count again instead of reusing counts kept from earlier runs (see measure below)
#   --engines      count only these, of: tract onnxruntime (default both; the table needs both, so
#                  one alone only fills the kept counts, e.g. onnxruntime while the binary builds)
#   --out FILE     also write the raw counts there, tab-separated (default: target/arm-proxy/counts.tsv)
#
# What it installs, and where:
#   - host packages, only if missing and only when run as root (else it prints the command and stops):
#     qemu-user (the dynamic qemu: plugin support), gcc, gcc-aarch64-linux-gnu, python3-pip
#   - under ARM_PROXY_CACHE (default /var/cache/edgeinfer/arm-proxy, or ~/.cache/edgeinfer/arm-proxy
#     when that is not writable), nothing outside it:
#       apt/      a private apt state for Debian bookworm arm64 (the host's dpkg is never touched)
#       sysroot/  Debian bookworm arm64 packages (Python 3.11 and its libraries) extracted with dpkg -x,
#                 onnxruntime and numpy aarch64 wheels unzipped into sysroot/site, bytecode precompiled
#       boards/   one qemu -L prefix per core: links to the sysroot plus that board's own /proc/cpuinfo
#       build/    the TCG plugin (bench/arm-proxy/insncount.c) and the getrandom shim, built every run
#   A second run reuses apt/, sysroot/ and the wheels: only the counting runs are slow.
#
# Environment: ARM_PROXY_CACHE (above); ARM_PROXY_REPEAT and ARM_PROXY_TRACT_REPEAT (runs of count(1)
# for onnxruntime and for tract, the smallest kept; default 3 and 1: tract's count repeats to a few
# hundred instructions with the getrandom shim, onnxruntime's start-up varies by millions);
# ARM_PROXY_APT_SOURCES (a deb822 .sources or .list file for Debian bookworm, when the host's apt
# sources are not bookworm's).
set -euo pipefail

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit 2
}
die() {
    echo "arm-proxy: $*" >&2
    exit 1
}
say() { echo "arm-proxy: $*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }

root=$(cd "$(dirname "$0")/.." && pwd)
here=$root/bench/arm-proxy
cores="a72 a76"
only="digits silero_vad ppocr_cls ppocr_rec squeezenet resnet50"
models=$root/models
binary=$root/dist/aarch64-unknown-linux-gnu/edgeinfer
build=0
fresh=0
concrete=0
engines="tract onnxruntime"
out=$root/target/arm-proxy/counts.tsv
while [ $# -gt 0 ]; do
    case "$1" in
    --cores) cores=$2 && shift 2 ;;
    --models-only) only=$2 && shift 2 ;;
    --models) models=$(cd "$2" && pwd) && shift 2 ;;
    --binary) binary=$2 && shift 2 ;;
    --build) build=1 && shift ;;
    --fresh) fresh=1 && shift ;;
    --concrete-batch) concrete=1 && shift ;;
    --engines) engines=$2 && shift 2 ;;
    --out) out=$2 && shift 2 ;;
    -h | --help) usage ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
done
repeat=${ARM_PROXY_REPEAT:-3}
tract_repeat=${ARM_PROXY_TRACT_REPEAT:-1}

# Per model: the batch `edgeinfer bench --batch` and onnxruntime use for a -1 dimension, and N, the
# inferences of the long run. N - 1 inferences must dwarf the few million instructions by which
# onnxruntime's start-up varies (bench/arm-proxy.md); resnet50 takes ~40 s an inference under qemu.
model_batch() { case "$1" in silero_vad) echo 4 ;; *) echo 1 ;; esac; }
model_n() {
    case "$1" in
    digits) echo 30001 ;;
    silero_vad) echo 1001 ;;
    ppocr_cls) echo 51 ;;
    ppocr_rec) echo 11 ;;
    squeezenet) echo 11 ;;
    resnet50) echo 4 ;;
    *) echo 11 ;;
    esac
}

# Per core: qemu's CPU model, tract's kernel kind (tract has no A76 kind; a75's f32 kernels are the
# a72's), and what the board's /proc/cpuinfo says (CPU part, variant, revision, Features).
core_qemu() { echo "cortex-$1"; }
core_tract() { case "$1" in a53) echo a53 ;; a72) echo a72 ;; a76) echo a75 ;; esac; }
core_cpuinfo() {
    case "$1" in
    a53) echo "0xd03 0x0 4 fp asimd evtstrm crc32 cpuid" ;;
    a72) echo "0xd08 0x0 3 fp asimd evtstrm crc32 cpuid" ;;
    a76) echo "0xd0b 0x4 1 fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" ;;
    esac
}
for core in $cores; do
    case "$core" in a53 | a72 | a76) ;; *) die "unknown core '$core': use a53, a72 or a76" ;; esac
done
for model in $only; do
    [ -f "$models/$model/model.onnx" ] || die "no $models/$model/model.onnx: fetch the pack first (python3 models/fetch.py)"
done

# ---- host tools ----------------------------------------------------------------------------------
missing=()
have qemu-aarch64 || missing+=(qemu-user)
have gcc || missing+=(gcc)
have aarch64-linux-gnu-gcc || missing+=(gcc-aarch64-linux-gnu)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
for tool in apt-get dpkg python3 setarch; do have "$tool" || die "needs $tool (a Debian or Ubuntu host)"; done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        say "installing host packages: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >&2 ||
            die "apt-get install ${missing[*]} failed (run apt-get update first?)"
    else
        die "missing host packages; run: sudo apt-get install ${missing[*]}"
    fi
fi
if ! qemu-aarch64 -h | grep -q -- '^-plugin'; then
    die "$(command -v qemu-aarch64) has no TCG plugin support (qemu-user-static has none): apt-get install qemu-user"
fi

cache=${ARM_PROXY_CACHE:-/var/cache/edgeinfer/arm-proxy}
if ! mkdir -p "$cache" 2>/dev/null || [ ! -w "$cache" ]; then
    cache=${ARM_PROXY_CACHE:-$HOME/.cache/edgeinfer/arm-proxy}
    mkdir -p "$cache"
fi
say "cache: $cache"
mkdir -p "$cache/build" "$(dirname "$out")"

# ---- the plugin, checked on a loop of known length ---------------------------------------------
plugin=$cache/build/libinsncount.so
# Built aside and moved into place: another run of this script may have a guest using them, and a
# shared object rewritten in place under a running process kills it with SIGBUS.
gcc -O2 -Wall -shared -fPIC -o "$plugin.$$" "$here/insncount.c" || die "building the plugin failed"
mv -f "$plugin.$$" "$plugin"
aarch64-linux-gnu-gcc -O2 -shared -fPIC -o "$cache/build/fixed-random.so.$$" "$here/fixed-random.c" ||
    die "building the getrandom shim failed"
for loops in 1000 3000000; do
    aarch64-linux-gnu-gcc -nostdlib -static -DLOOPS=$loops -o "$cache/build/loop.$$" "$here/loop.S" ||
        die "building the check loop failed"
    qemu-aarch64 -plugin "$plugin,outfile=$cache/build/loop.count.$$,perthread=on" "$cache/build/loop.$$" ||
        die "qemu-aarch64 could not run the check loop with the plugin"
    got=$(awk '{print $2}' "$cache/build/loop.count.$$")
    rm -f "$cache/build/loop.$$" "$cache/build/loop.count.$$"
    [ "$got" = $((5 + 2 * loops)) ] || die "plugin check failed: $loops loops counted $got instructions, expected $((5 + 2 * loops))"
done
say "plugin check: a loop of 1,000 and one of 3,000,000 iterations counted exactly 5 + 2 x iterations"

# ---- the aarch64 Python sysroot ------------------------------------------------------------------
# Debian bookworm arm64: Python 3.11 (what onnxruntime's cp311 wheel needs) and the libraries it and
# the wheels link; fetched with a private apt state, extracted with dpkg -x, never installed.
debs="libc6 libgcc-s1 gcc-12-base libstdc++6 zlib1g libexpat1 libffi8 libbz2-1.0 liblzma5 libssl3
libcrypt1 libuuid1 libsqlite3-0 libdb5.3 libncursesw6 libtinfo6 libreadline8 libnsl2 libtirpc3
libgssapi-krb5-2 libk5crypto3 libkeyutils1 libkrb5-3 libkrb5support0 libcom-err2 libgdbm6 media-types
python3.11-minimal libpython3.11-minimal libpython3.11-stdlib"
wheels="numpy==2.4.6 onnxruntime==1.32.0"
sysroot=$cache/sysroot
stamp="$(echo "$debs $wheels" | tr -s ' \n' ' ') v1"
if [ "$(cat "$sysroot/.complete" 2>/dev/null)" != "$stamp" ]; then
    apt_dir=$cache/apt
    mkdir -p "$apt_dir/state/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/sources.list.d" "$apt_dir/debs"
    touch "$apt_dir/state/status"
    rm -f "$apt_dir"/sources.list.d/*
    if [ -n "${ARM_PROXY_APT_SOURCES:-}" ]; then
        cp "$ARM_PROXY_APT_SOURCES" "$apt_dir/sources.list.d/"
    else
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
            [ -f "$f" ] && grep -q bookworm "$f" && cp "$f" "$apt_dir/sources.list.d/"
        done
    fi
    ls "$apt_dir"/sources.list.d/* >/dev/null 2>&1 ||
        die "no Debian bookworm apt source on this host: set ARM_PROXY_APT_SOURCES to a bookworm .sources or .list file"
    apt_opts=(-o "Dir::State=$apt_dir/state" -o "Dir::State::status=$apt_dir/state/status"
        -o "Dir::Cache=$apt_dir/cache" -o Dir::Etc::SourceList=/dev/null
        -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d" -o APT::Architecture=arm64
        -o APT::Architectures::=arm64 -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
    say "fetching Debian bookworm arm64 packages into $apt_dir (private apt state, nothing installed)"
    apt-get "${apt_opts[@]}" -qq update >&2 || die "apt-get update for bookworm arm64 failed"
    # shellcheck disable=SC2086 # $debs is a list of package names
    (cd "$apt_dir/debs" && rm -f ./*.deb && apt-get "${apt_opts[@]}" -qq download $debs >&2) ||
        die "apt-get download of the arm64 packages failed"
    say "fetching aarch64 wheels ($wheels) into $cache/wheels"
    mkdir -p "$cache/wheels"
    # pip takes only the platform tags it is given: list the glibc versions up to bookworm's 2.36.
    platforms=(--platform manylinux2014_aarch64)
    for v in 17 26 27 28 31 34 35 36; do platforms+=(--platform "manylinux_2_${v}_aarch64"); done
    # shellcheck disable=SC2086 # $wheels is a list of requirements
    python3 -m pip download -q --only-binary=:all: "${platforms[@]}" --python-version 3.11 \
        --implementation cp --abi cp311 --no-deps -d "$cache/wheels" $wheels >&2 ||
        die "pip download of the aarch64 wheels failed"
    say "extracting into $sysroot"
    rm -rf "$sysroot"
    mkdir -p "$sysroot/site"
    for deb in "$apt_dir"/debs/*.deb; do dpkg -x "$deb" "$sysroot"; done
    for whl in "$cache"/wheels/numpy-2.4.6-*.whl "$cache"/wheels/onnxruntime-1.32.0-*.whl; do
        [ -f "$whl" ] || die "wheel missing after pip download: $whl"
        python3 -m zipfile -e "$whl" "$sysroot/site"
    done
    [ -x "$sysroot/usr/bin/python3.11" ] || die "no usr/bin/python3.11 in $sysroot after extraction"
    say "precompiling the sysroot's Python bytecode once, under qemu (a few minutes)"
    env -i qemu-aarch64 -L "$sysroot" "$sysroot/usr/bin/python3.11" -m compileall -q -j 1 \
        "$sysroot/usr/lib/python3.11" "$sysroot/site" >/dev/null 2>&1 || true
    echo "$stamp" >"$sysroot/.complete"
fi
mkdir -p "$sysroot/usr/lib/arm-proxy"
mv -f "$cache/build/fixed-random.so.$$" "$sysroot/usr/lib/arm-proxy/fixed-random.so"

# ---- one -L prefix per board: the sysroot plus the board's /proc/cpuinfo --------------------------
# qemu-user shows the guest the host's x86 /proc/cpuinfo; onnxruntime's cpuinfo crashes on it, and
# tract could not detect the core. qemu looks absolute paths up under -L first.
nproc_conf=$(getconf _NPROCESSORS_CONF)
for core in $cores; do
    board=$cache/boards/$core
    mkdir -p "$board/proc"
    for d in lib usr etc; do ln -sfn "$sysroot/$d" "$board/$d"; done
    read -r part variant revision features <<<"$(core_cpuinfo "$core")"
    for ((i = 0; i < nproc_conf; i++)); do
        printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\n' "$i" "$features"
        printf 'CPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' "$variant" "$part" "$revision"
    done >"$board/proc/cpuinfo"
done

# ---- the project's aarch64 build ----------------------------------------------------------------
want() { case " $engines " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
for engine in $engines; do
    case "$engine" in tract | onnxruntime) ;; *) die "unknown engine '$engine': use tract, onnxruntime or both" ;; esac
done
if [ "$build" = 1 ]; then
    say "building: PROFILE=arm-check cross/build.sh aarch64-unknown-linux-gnu"
    PROFILE=${PROFILE:-arm-check} "$root/cross/build.sh" aarch64-unknown-linux-gnu >&2
fi
if want tract; then
    [ -x "$binary" ] || die "no aarch64 binary at $binary: run with --build, or PROFILE=arm-check cross/build.sh aarch64-unknown-linux-gnu"
    if ! qemu-aarch64 -L "$sysroot" "$binary" bench --help 2>/dev/null | grep -q -- --iterations; then
        die "$binary has no 'bench --iterations': rebuild it from this tree (--build)"
    fi
    tract_id="tract $(sha256sum "$binary" | cut -c1-64)"
fi

# ---- counting ------------------------------------------------------------------------------------
# Runs one engine under qemu with the plugin and prints its instruction count (all guest threads).
# env -i and setarch -R: the host's environment and address layout do not leak into the count.
norandom=(setarch -R)
"${norandom[@]}" true 2>/dev/null || {
    say "setarch -R is not permitted here: counts may vary more between runs"
    norandom=()
}
count() { # core, then the guest command line
    local core=$1 result
    shift
    result=$cache/build/count.$$
    rm -f "$result"
    "${norandom[@]}" env -i PATH=/usr/bin:/bin LANG=C.UTF-8 HOME=/nonexistent PYTHONHASHSEED=0 \
        PYTHONPATH="$sysroot/site" OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 \
        TRACT_CPU_AARCH64_KIND="$(core_tract "$core")" \
        qemu-aarch64 -cpu "$(core_qemu "$core")" -L "$cache/boards/$core" -seed 1 \
        -E LD_PRELOAD=/usr/lib/arm-proxy/fixed-random.so \
        -plugin "$plugin,outfile=$result,perthread=on" "$@" >"$cache/build/guest.$$.log" 2>&1 ||
        die "guest run failed ($*); its output: $(tail -5 "$cache/build/guest.$$.log")"
    [ -s "$result" ] || die "the plugin wrote no count for: $*"
    # "insns TOTAL vcpus M threads T0 T1 ...": the total, and what threads other than the first did.
    awk '{ other = 0; for (i = 7; i <= NF; i++) other += $i; print $2, other }' "$result"
    rm -f "$result"
}
# The smallest count (and its other-thread part) of RUNS runs, kept in $cache/counts under a key of
# everything that decides it (engine build, model files, core, command, plugin), so that a second run
# of the script, or one after an interrupted run, only counts what changed. --fresh ignores them.
measure() { # identity of the engine build, runs, core, then the guest command line
    local identity=$1 runs=$2 core=$3 key best="" best_other="" c o
    shift 3
    key=$({
        echo "$identity $runs $core $* v1"
        cat "$here/insncount.c" "$here/fixed-random.c" "$cache/boards/$core/proc/cpuinfo"
    } | sha256sum | cut -c1-32)
    if [ "$fresh" = 0 ] && grep -qx '[0-9][0-9]* [0-9][0-9]*' "$cache/counts/$key" 2>/dev/null; then
        cat "$cache/counts/$key"
        return
    fi
    for ((r = 0; r < runs; r++)); do
        c=$(count "$core" "$@") || exit 1 # count has said why
        read -r c o <<<"$c"
        case "$c$o" in '' | *[!0-9]*) die "no count from: $*" ;; esac
        if [ -z "$best" ] || [ "$c" -lt "$best" ]; then best=$c best_other=$o; fi
    done
    mkdir -p "$cache/counts"
    echo "$best $best_other" | tee "$cache/counts/$key"
}

ort_id="onnxruntime $stamp $(sha256sum "$here/ort_run.py" | cut -c1-64)"
printf 'model\tcore\tbatch\tN\ttract_count1\ttract_countN\tort_count1\tort_countN\ttract_per_inf\tort_per_inf\tratio\tconcrete_batch\n' >"$out"
rows=()
for model in $only; do
    batch=$(model_batch "$model")
    n=$(model_n "$model")
    for core in $cores; do
        say "$model on $core: batch $batch, count(1) and count($n) for each engine"
        tract_models=$models
        # Not for audio models: the daemon takes their rows as [-1, context + frame] or [1, ...] only.
        if [ "$concrete" = 1 ] && grep -q '^ *shape *= *\[-1,' "$models/$model/model.toml" &&
            ! grep -q '^ *kind *= *"audio"' "$models/$model/model.toml"; then
            # The model's own files, and a model.toml whose -1 dimensions are the batch.
            tract_models=$cache/concrete/batch$batch
            rm -rf "${tract_models:?}/$model"
            mkdir -p "$tract_models/$model"
            for f in "$models/$model"/*; do ln -s "$f" "$tract_models/$model/"; done
            rm "$tract_models/$model/model.toml"
            sed "/^ *shape *=/ s/\[-1,/[$batch,/" "$models/$model/model.toml" >"$tract_models/$model/model.toml"
        fi
        tract=("$binary" bench "$model" --models "$tract_models" --batch "$batch" --iterations)
        ort=("$sysroot/usr/bin/python3.11" "$here/ort_run.py" "$models/$model" "$batch")
        files=$(cat "$models/$model/model.onnx" "$models/$model/model.toml" | sha256sum | cut -c1-64)
        tract_files=$(cat "$tract_models/$model/model.onnx" "$tract_models/$model/model.toml" | sha256sum | cut -c1-64)
        if want tract; then
            t1=$(measure "$tract_id $tract_files" "$tract_repeat" "$core" "${tract[@]}" 1) || exit 1
            read -r t1 _ <<<"$t1"
            tn=$(measure "$tract_id $tract_files" 1 "$core" "${tract[@]}" "$n") || exit 1
            read -r tn tother <<<"$tn"
        fi
        if want onnxruntime; then
            o1=$(measure "$ort_id $files" "$repeat" "$core" "${ort[@]}" 1) || exit 1
            read -r o1 _ <<<"$o1"
            on=$(measure "$ort_id $files" 1 "$core" "${ort[@]}" "$n") || exit 1
            read -r on oother <<<"$on"
        fi
        if ! want tract || ! want onnxruntime; then
            say "$model on $core: $engines counted and kept; run with both engines for the table"
            continue
        fi
        for pair in "tract $tother $tn $t1" "onnxruntime $oother $on $o1"; do
            read -r engine other total first <<<"$pair"
            if [ $((other * 100)) -gt $((total - first)) ]; then
                say "warning: $engine ran over 1% of the difference on threads other than the first ($other)"
            fi
        done
        rewritten=no
        [ "$tract_models" = "$models" ] || rewritten=yes
        row=$(awk -v m="$model" -v c="$core" -v b="$batch" -v n="$n" -v t1="$t1" -v tn="$tn" -v o1="$o1" -v on="$on" -v r="$rewritten" 'BEGIN {
            t = (tn - t1) / (n - 1); o = (on - o1) / (n - 1)
            printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.0f\t%.0f\t%.3f\t%s", m, c, b, n, t1, tn, o1, on, t, o, t / o, r }')
        echo "$row" >>"$out"
        rows+=("$row")
        say "$(echo "$row" | awk -F'\t' '{ printf "%s %s: tract %.4g, onnxruntime %.4g instructions/inference, ratio %s", $1, $2, $9, $10, $11 }')"
    done
done

[ ${#rows[@]} -gt 0 ] || exit 0
echo
echo "| model | core | tract instructions/inference | onnxruntime instructions/inference | tract / onnxruntime |"
echo "|---|---|--:|--:|--:|"
for row in "${rows[@]}"; do
    echo "$row" | awk -F'\t' -v concrete="$concrete" '{
        label = $1; if ($3 != 1) label = label " (batch " $3 ")"; if (concrete && $12 == "yes") label = label ", concrete batch"
        printf "| %s | %s | %s | %s | %.2f |\n", label, toupper(substr($2, 1, 1)) substr($2, 2), commas($9), commas($10), $11 }
        function commas(x, s) { s = sprintf("%.0f", x); while (s ~ /[0-9]{4}/) sub(/[0-9]{3}($|,)/, ",&", s); return s }'
done
echo
echo "raw counts: $out"
