#!/usr/bin/env bash
# Proves an ARM build computes the same answers as x86: runs dist/TARGET/edgeinfer under qemu-user
# on every shipped model's golden inputs, once per board CPU, compares with onnxruntime's outputs
# (and the x86 edgeinfer's, when one is built), then does one MQTT round trip with the ARM daemon
# against a private mosquitto on a free loopback port.
#
#   cross/check-qemu.sh aarch64-unknown-linux-gnu
#   cross/check-qemu.sh armv7-unknown-linux-gnueabihf
#
# The ARM binary is built first (cross/build.sh) when dist/TARGET/edgeinfer is missing.
# Board CPUs: qemu's default CPU ("max") would run tract's SVE kernels, which no Pi has, so every
# check names the CPU: cortex-a53 (Pi 3, Zero 2 W), cortex-a72 (Pi 4), cortex-a76 (Pi 5) for
# aarch64; cortex-a7 (Pi 2) and cortex-a15 for armv7. Under qemu-user tract reads the host's
# /proc/cpuinfo, so on aarch64 the CPU family is also forced (TRACT_CPU_AARCH64_KIND) to get the
# kernels tuned for that core, as on the board. Models over 50 MB (resnet50) run on the first CPU
# only: a run takes minutes under qemu.
#
# Needs: qemu-user-static, the target's libc (libc6-dev-arm64-cross / libc6-dev-armhf-cross),
# python3, mosquitto and mosquitto-clients. Times under qemu say nothing about speed on a board.
set -euo pipefail

target=${1:-}
case "$target" in
aarch64-unknown-linux-gnu)
    qemu=qemu-aarch64-static
    sysroot=/usr/aarch64-linux-gnu
    cpus=(cortex-a53 cortex-a72 cortex-a76)
    # tract's name for each core's family; the Pi 5's A76 has no tuned kernels of its own.
    declare -A tract_kind=([cortex-a53]=a53 [cortex-a72]=a72 [cortex-a76]=generic)
    ;;
armv7-unknown-linux-gnueabihf)
    qemu=qemu-arm-static
    sysroot=/usr/arm-linux-gnueabihf
    cpus=(cortex-a7 cortex-a15)
    declare -A tract_kind=()
    ;;
*)
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
start=$(date +%s)
for tool in "$qemu" python3 mosquitto mosquitto_sub mosquitto_rr; do
    command -v "$tool" >/dev/null || {
        echo "cross/check-qemu.sh: $tool is missing (apt-get install qemu-user-static python3 mosquitto mosquitto-clients)" >&2
        exit 1
    }
done
[ -d "$sysroot/lib" ] || {
    echo "cross/check-qemu.sh: no target libc at $sysroot (apt-get install libc6-dev-${sysroot#/usr/}-cross)" >&2
    exit 1
}

arm_bin=$root/dist/$target/edgeinfer
[ -x "$arm_bin" ] || cross/build.sh "$target"
x86_bin=
for candidate in target/release/edgeinfer target/debug/edgeinfer; do
    if [ -x "$candidate" ]; then
        x86_bin=$root/$candidate
        break
    fi
done

work=$(mktemp -d)
broker_pid=
daemon_pid=
cleanup() {
    [ -n "$daemon_pid" ] && kill -9 "$daemon_pid" 2>/dev/null
    [ -n "$broker_pid" ] && kill "$broker_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

# Runs the ARM binary on a board CPU; exec, so that a backgrounded run's PID is qemu's own and
# SIGTERM reaches the daemon.
run_arm() {
    local cpu=$1
    shift
    QEMU_CPU=$cpu TRACT_CPU_AARCH64_KIND=${tract_kind[$cpu]:-generic} exec "$qemu" -L "$sysroot" "$arm_bin" "$@"
}

# One inference under qemu; prints which kernel family tract chose.
infer_arm() {
    local cpu=$1 out=$2
    shift 2
    (RUST_LOG=tract_linalg=info,warn run_arm "$cpu" infer "$@") >"$out" 2>"$out.log" || {
        cat "$out.log" >&2
        return 1
    }
    echo "  tract on $cpu: $(grep -o 'CPU optimisation: .*' "$out.log" || echo 'no aarch64 CPU detection (armv7)')"
}

echo "== $target: $(file -b "$arm_bin" | cut -d, -f1-2), $(stat -c %s "$arm_bin") bytes"
echo "== x86 reference: ${x86_bin:-none built, so comparing with the onnxruntime goldens only}"

failed=0

for model_dir in models/*/; do
    model=$(basename "$model_dir")
    python3 cross/golden.py request "$model" >"$work/$model-request.json" 2>/dev/null || continue
    x86_json=
    if [ -n "$x86_bin" ]; then
        "$x86_bin" infer "$model" --models models --input "$work/$model-request.json" >"$work/$model-x86.json"
        x86_json=$work/$model-x86.json
    fi
    for cpu in "${cpus[@]}"; do
        echo "== $model under qemu -cpu $cpu"
        infer_arm "$cpu" "$work/$model-$cpu.json" "$model" --models models --input "$work/$model-request.json" || failed=1
        python3 cross/golden.py compare "$model" "$work/$model-$cpu.json" $x86_json || failed=1
    done
done

# The pack models (models/fetch.py) with random weights: the light zoo files' constant weights
# would make any two engines agree.
for golden in tests/fixtures/*_random_golden.json; do
    model=$(basename "$golden" _random_golden.json)
    if [ ! -f "target/pack-random/$model/model.onnx" ]; then
        echo "== $model: no random-weight copy in target/pack-random (python3 models/fetch.py); skipped"
        continue
    fi
    input=tests/fixtures/${model}_random_input.npy
    x86_json=
    if [ -n "$x86_bin" ]; then
        "$x86_bin" infer "$model" --models target/pack-random --input "$input" >"$work/$model-x86.json"
        x86_json=$work/$model-x86.json
    fi
    model_cpus=("${cpus[@]}")
    [ "$(stat -c %s "target/pack-random/$model/model.onnx")" -gt 50000000 ] && model_cpus=("${cpus[0]}")
    for cpu in "${model_cpus[@]}"; do
        echo "== $model (random weights) under qemu -cpu $cpu"
        infer_arm "$cpu" "$work/$model-$cpu.json" "$model" --models target/pack-random --input "$input" || failed=1
        python3 cross/golden.py compare-pack "$golden" "$work/$model-$cpu.json" $x86_json || failed=1
    done
done

# Real weights, real inputs: rendered text lines (PNG, JPEG, upside down) through the image
# pre-processing and CTC decoding, and a synthesised recording through silero VAD
# (tests/fixtures/pack, made by models/make_pack_goldens.py).
if [ -f models/ppocr_rec/model.onnx ] && [ -f models/ppocr_cls/model.onnx ] && [ -f models/silero_vad/model.onnx ]; then
    for cpu in "${cpus[@]}"; do
        echo "== ppocr_rec, ppocr_cls and silero_vad under qemu -cpu $cpu"
        while read -r index form file; do
            for model in ppocr_rec ppocr_cls; do
                [ "$model" = ppocr_rec ] && [ "$form" = png_180 ] && continue
                out=$work/$model-$index-$form-$cpu.json
                infer_arm "$cpu" "$out" "$model" --models models --input "$file" >/dev/null || failed=1
                python3 cross/golden.py compare-ocr "$model" "$index" "$form" "$out" || failed=1
            done
        done < <(python3 cross/golden.py media-lines)
        infer_arm "$cpu" "$work/vad-$cpu.json" silero_vad --models models --input tests/fixtures/pack/vad/speech.wav || failed=1
        python3 cross/golden.py compare-vad "$work/vad-$cpu.json" || failed=1
    done
else
    echo "== ppocr_rec, ppocr_cls, silero_vad: not fetched (python3 models/fetch.py); skipped"
fi

# Whole frames: the ppocr pipeline (PP-OCRv4 det, cls and rec) on a 1280x720 scene, and SCRFD on
# a photo, against RapidOCR's and the scrfd package's answers (tests/fixtures/detect). One CPU:
# a frame through three models takes minutes under qemu.
if [ -f models/ppocr_det/model.onnx ] && [ -f models/scrfd/model.onnx ]; then
    cpu=${cpus[-1]}
    echo "== ppocr and scrfd (whole frames) under qemu -cpu $cpu"
    infer_arm "$cpu" "$work/ppocr-$cpu.json" ppocr --models models --input tests/fixtures/detect/ocr/scene-01.jpg || failed=1
    python3 cross/golden.py compare-detect ppocr scene-01.jpg "$work/ppocr-$cpu.json" || failed=1
    infer_arm "$cpu" "$work/scrfd-$cpu.json" scrfd --models models --input tests/fixtures/detect/scrfd/faces-02.jpg || failed=1
    python3 cross/golden.py compare-detect scrfd faces-02.jpg "$work/scrfd-$cpu.json" || failed=1
else
    echo "== ppocr, scrfd: not fetched (python3 models/fetch.py); skipped"
fi

echo "== MQTT round trip: the ARM daemon (qemu -cpu ${cpus[-1]}) against a private mosquitto"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\npersistence false\n' "$port" >"$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
broker_pid=$!
device=qemu-check-$port
mkdir "$work/repo"
ln -s "$root/models/digits" "$work/repo/digits"
(RUST_LOG=info run_arm "${cpus[-1]}" serve --broker "mqtt://127.0.0.1:$port" --models "$work/repo" --device "$device") \
    >"$work/daemon.log" 2>&1 &
daemon_pid=$!

status() { mosquitto_sub -p "$port" -t "edgeinfer/$device/status" -C 1 -W 2 2>/dev/null || true; }
waited=0
until status | grep -q '"online"'; do
    waited=$((waited + 2))
    if [ $waited -gt 180 ] || ! kill -0 "$daemon_pid" 2>/dev/null; then
        echo "FAIL: the ARM daemon did not come online within ${waited}s:" >&2
        cat "$work/daemon.log" >&2
        exit 1
    fi
done
echo "  ok   online: $(status)"

reply=$(mosquitto_rr -p "$port" -t "edgeinfer/$device/models/digits/infer" -e "qemu-check/replies" -W 60 \
    -m "$(cat models/digits/example-request.json)")
echo "$reply" >"$work/reply.json"
"${x86_bin:-$arm_bin}" infer digits --models models --input models/digits/example-request.json >"$work/reply-local.json" 2>/dev/null ||
    (run_arm "${cpus[-1]}" infer digits --models models --input models/digits/example-request.json) >"$work/reply-local.json"
if python3 cross/golden.py same "$work/reply.json" "$work/reply-local.json" 1e-5; then
    echo "  ok   the MQTT reply equals a local inference on the example request"
else
    echo "FAIL: MQTT reply: $reply" >&2
    failed=1
fi

kill -TERM "$daemon_pid"
if wait "$daemon_pid"; then
    echo "  ok   SIGTERM: exit 0, status $(status)"
else
    echo "FAIL: the ARM daemon exited with status $? on SIGTERM:" >&2
    tail -20 "$work/daemon.log" >&2
    failed=1
fi
daemon_pid=

if [ $failed -ne 0 ]; then
    echo "cross/check-qemu.sh: $target FAILED after $(($(date +%s) - start))s" >&2
    exit 1
fi
echo "cross/check-qemu.sh: $target ok in $(($(date +%s) - start))s"
