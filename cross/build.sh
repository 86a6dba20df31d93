#!/usr/bin/env bash
# Cross-builds the edgeinfer binary for a board and leaves it, stripped, in dist/TARGET/edgeinfer.
#
#   cross/build.sh aarch64-unknown-linux-gnu       # 64-bit Raspberry Pi OS, Jetson
#   cross/build.sh armv7-unknown-linux-gnueabihf   # 32-bit Raspberry Pi OS
#
# It uses the first of these that the machine has, and says which:
#   1. rustup      an installed rustup target plus the target's gcc as linker
#   2. zigbuild    `cargo zigbuild` (zig is the linker; no cross gcc needed)
#   3. cross       `cross` (builds in a container; needs docker or podman)
#   4. build-std   Debian's own Rust (rustc-web, cargo-web, rust-web-src) rebuilding std for the target
#                  with -Zbuild-std: what works on machines where rustup cannot download targets
#
# Environment:
#   PROFILE                      cargo profile (default release; CI uses arm-check, see Cargo.toml)
#   EDGEINFER_CROSS_METHOD       force one method: rustup, zigbuild, cross or build-std
#   EDGEINFER_CROSS_TARGET_DIR   cargo target dir (default target/cross); keep it between runs, a cold
#                                build takes 10-25 minutes on 2 cores
set -euo pipefail

usage() {
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

target=${1:-}
case "$target" in
aarch64-unknown-linux-gnu)
    gcc_prefix=aarch64-linux-gnu
    debian_arch=arm64
    ;;
armv7-unknown-linux-gnueabihf)
    gcc_prefix=arm-linux-gnueabihf
    debian_arch=armhf
    ;;
-h | --help | "") usage ;;
*)
    echo "cross/build.sh: unsupported target '$target'; use aarch64-unknown-linux-gnu or armv7-unknown-linux-gnueabihf" >&2
    exit 2
    ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
profile=${PROFILE:-release}
target_dir=${EDGEINFER_CROSS_TARGET_DIR:-$root/target/cross}
linker_var="CARGO_TARGET_$(echo "$target" | tr 'a-z-' 'A-Z_')_LINKER"

have() { command -v "$1" >/dev/null 2>&1; }

rustup_ready() {
    have rustup && rustup target list --installed 2>/dev/null | grep -qx "$target" && have "$gcc_prefix-gcc"
}
zigbuild_ready() { have cargo-zigbuild && have zig; }
cross_ready() { have cross && { have docker || have podman; }; }
build_std_ready() {
    [ -x /usr/bin/cargo ] && [ -x /usr/bin/rustc ] && have "$gcc_prefix-gcc" &&
        [ -d "$(/usr/bin/rustc --print sysroot)/lib/rustlib/src/rust/library" ]
}

method=${EDGEINFER_CROSS_METHOD:-}
if [ -z "$method" ]; then
    for candidate in rustup zigbuild cross build-std; do
        if "${candidate//-/_}_ready"; then
            method=$candidate
            break
        fi
    done
fi
if [ -z "$method" ]; then
    cat >&2 <<EOF
cross/build.sh: no way to build for $target on this machine. Any one of these works:
  rustup target add $target && sudo apt-get install gcc-$gcc_prefix
  cargo install cargo-zigbuild (and zig on PATH)
  cargo install cross (and docker or podman)
  sudo apt-get install rustc-web cargo-web rust-web-src gcc-$gcc_prefix libc6-dev-$debian_arch-cross
EOF
    exit 1
fi

start=$(date +%s)
echo "cross/build.sh: building $target ($profile profile) with $method into $target_dir"
case "$method" in
rustup)
    env "$linker_var=$gcc_prefix-gcc" cargo build --locked --profile "$profile" --target "$target" --target-dir "$target_dir"
    ;;
zigbuild)
    cargo zigbuild --locked --profile "$profile" --target "$target" --target-dir "$target_dir"
    ;;
cross)
    cross build --locked --profile "$profile" --target "$target" --target-dir "$target_dir"
    ;;
build-std)
    # Debian's toolchain, never rustup's: the two must not share build artefacts (own target dir).
    # RUSTC_BOOTSTRAP lets this stable compiler take -Zbuild-std; it is set for this build only.
    env PATH="/usr/bin:$PATH" RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 "$linker_var=$gcc_prefix-gcc" \
        /usr/bin/cargo build --locked --profile "$profile" --target "$target" -Zbuild-std \
        --target-dir "$target_dir"
    ;;
*)
    echo "cross/build.sh: unknown EDGEINFER_CROSS_METHOD '$method'" >&2
    exit 2
    ;;
esac

case "$profile" in
dev) out_profile=debug ;;
*) out_profile=$profile ;;
esac
built="$target_dir/$target/$out_profile/edgeinfer"
mkdir -p "dist/$target"
if have "$gcc_prefix-strip"; then
    "$gcc_prefix-strip" -o "dist/$target/edgeinfer" "$built"
else
    cp "$built" "dist/$target/edgeinfer"
fi
size=$(stat -c %s "dist/$target/edgeinfer")
echo "cross/build.sh: dist/$target/edgeinfer, $size bytes ($((size / 1024)) KiB), built with $method in $(($(date +%s) - start))s"
