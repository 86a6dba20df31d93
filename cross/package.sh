#!/usr/bin/env bash
# Builds the Debian package of edgeinfer for one board type, with plain dpkg-deb.
#
#   cross/package.sh TARGET [--binary PATH] [--version V] [--out DIR] [--compression xz|gzip|none]
#                           [--maintainer "Name <mail>"] [--any-binary] [--print-path]
#
#   TARGET        aarch64-unknown-linux-gnu (arm64), armv7-unknown-linux-gnueabihf (armhf)
#                 or x86_64-unknown-linux-gnu (amd64)
#   --binary      the edgeinfer binary (default dist/TARGET/edgeinfer from cross/build.sh;
#                 for x86_64, target/release/edgeinfer)
#   --version     the package version (default: Cargo.toml's); the daemon reports its own
#                 version in its status, so keep the upstream part equal to the binary's
#   --out         where the .deb goes (default dist/); the file is edgeinfer_VERSION_ARCH.deb
#   --compression dpkg-deb's compressor (default xz; gzip packs a debug binary 10x faster)
#   --maintainer  the Maintainer field (default: git config user.name and user.email)
#   --any-binary  package a binary that is not an ELF for TARGET (tests, packaging checks)
#   --print-path  print the path of the .deb these options make, and make nothing
#
# The package: /usr/bin/edgeinfer, /etc/edgeinfer/config.toml (a conffile: an edited config survives
# upgrades), the systemd unit, the example model in /var/lib/edgeinfer/models, the service user
# (systemd-sysusers, or adduser where there is none: hence Depends: adduser) and the maintainer
# scripts from cross/debian/.
# It prints the path of the .deb on its last line.
set -euo pipefail

usage() {
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0" # the header comment
    exit 2
}
die() {
    echo "cross/package.sh: $*" >&2
    exit 1
}

root=$(cd "$(dirname "$0")/.." && pwd)
target=""
binary=""
version=""
out=""
compression=xz
maintainer=""
any_binary=false
print_path=false
while [ $# -gt 0 ]; do
    case "$1" in
    --binary) binary=${2:?--binary needs a path} && shift ;;
    --version) version=${2:?--version needs a version} && shift ;;
    --out) out=${2:?--out needs a directory} && shift ;;
    --compression) compression=${2:?--compression needs xz, gzip or none} && shift ;;
    --maintainer) maintainer=${2:?--maintainer needs "Name <mail>"} && shift ;;
    --any-binary) any_binary=true ;;
    --print-path) print_path=true ;;
    -h | --help) usage ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *)
        [ -z "$target" ] || die "one TARGET only, got '$target' and '$1'"
        target=$1
        ;;
    esac
    shift
done

# TARGET -> Debian architecture, ELF machine (readelf -h) and the strip that reads it.
case "$target" in
aarch64-unknown-linux-gnu) arch=arm64 machine=AArch64 strip_tool=aarch64-linux-gnu-strip ;;
armv7-unknown-linux-gnueabihf) arch=armhf machine=ARM strip_tool=arm-linux-gnueabihf-strip ;;
x86_64-unknown-linux-gnu) arch=amd64 machine=X86-64 strip_tool=strip ;;
"") usage ;;
*) die "unsupported target '$target'; use aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf or x86_64-unknown-linux-gnu" ;;
esac
case "$compression" in
xz | gzip | none) ;;
*) die "--compression must be xz, gzip or none, not '$compression'" ;;
esac
for tool in dpkg-deb readelf; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install dpkg binutils)"
done

if [ -z "$version" ]; then
    version=$(awk '/^\[package\]/ { p = 1; next } /^\[/ { p = 0 }
        p && /^version *=/ { gsub(/^[^"]*"|".*$/, ""); print; exit }' "$root/Cargo.toml")
    [ -n "$version" ] || die "no version in $root/Cargo.toml; give --version"
fi
[[ "$version" =~ ^([0-9]+:)?[0-9][A-Za-z0-9.+~-]*$ ]] || die "'$version' is not a Debian version"
out=${out:-$root/dist}
deb=$out/edgeinfer_${version#*:}_${arch}.deb
if $print_path; then
    echo "$deb"
    exit 0
fi
if [ -z "$binary" ]; then
    if [ "$target" = x86_64-unknown-linux-gnu ]; then
        binary=$root/target/release/edgeinfer
    else
        binary=$root/dist/$target/edgeinfer
    fi
fi
[ -f "$binary" ] || die "no binary at $binary (build it: cross/build.sh $target, or give --binary)"
if [ -z "$maintainer" ]; then
    name=$(git -C "$root" config user.name 2>/dev/null || true)
    mail=$(git -C "$root" config user.email 2>/dev/null || true)
    if [ -n "$name" ] && [ -n "$mail" ]; then
        maintainer="$name <$mail>"
    else
        maintainer="edgeinfer maintainers <edgeinfer@localhost>"
    fi
fi
mkdir -p "$out"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
chmod 0755 "$stage"

# --- the binary, checked, stripped when a strip for its architecture is at hand
install -D -m 0755 "$binary" "$stage/usr/bin/edgeinfer"
depends="adduser"
if header=$(readelf -h "$binary" 2>/dev/null); then
    found=$(sed -n 's/^ *Machine: *//p' <<<"$header")
    if [[ "$found" != *"$machine"* ]] && ! $any_binary; then
        die "$binary is built for '$found', $target needs $machine (give --any-binary to package it anyway)"
    fi
    sections=$(readelf -S -W "$binary") # not piped into grep -q: pipefail would see readelf's SIGPIPE
    if grep -qE '\] \.(symtab|debug_)' <<<"$sections"; then
        if command -v "$strip_tool" >/dev/null; then
            "$strip_tool" --strip-unneeded --remove-section=.comment --remove-section=.note \
                "$stage/usr/bin/edgeinfer"
        else
            echo "cross/package.sh: warning: $binary has symbols and $strip_tool is missing; packaged unstripped" >&2
        fi
    fi
    # Depends: the newest glibc symbol version the binary needs; libgcc_s for unwinding when linked.
    glibc=$(readelf -V -W "$binary" | grep -oE 'GLIBC_[0-9]+(\.[0-9]+)+' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
    needed=$(readelf -d -W "$binary" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
    depends="libc6${glibc:+ (>= $glibc)}"
    if grep -qx 'libgcc_s.so.1' <<<"$needed"; then
        depends="$depends, libgcc-s1"
    fi
    depends="$depends, adduser"
elif $any_binary; then
    echo "cross/package.sh: warning: $binary is not an ELF file; packaged as given (--any-binary)" >&2
else
    die "$binary is not an ELF binary (give --any-binary to package it anyway)"
fi

# --- config, unit, user, example model, docs
install -D -m 0644 "$root/systemd/edgeinfer.toml" "$stage/etc/edgeinfer/config.toml"
install -D -m 0644 "$root/systemd/edgeinfer.service" "$stage/lib/systemd/system/edgeinfer.service"
install -D -m 0644 "$root/cross/debian/sysusers.conf" "$stage/usr/lib/sysusers.d/edgeinfer.conf"
# The unit's WorkingDirectory is /var/lib/edgeinfer and models.repository defaults to "models".
models=$stage/var/lib/edgeinfer/models/digits
install -d -m 0755 "$models"
for file in model.onnx model.toml labels.txt; do
    # -L: models/digits may be a symlink (or hold links); the package carries real files.
    [ -e "$root/models/digits/$file" ] || die "models/digits/$file is missing"
    cp -L "$root/models/digits/$file" "$models/$file"
    chmod 0644 "$models/$file"
done
doc=$stage/usr/share/doc/edgeinfer
install -D -m 0644 "$root/README.md" "$doc/README.md"
install -m 0644 "$root/cross/debian/copyright" "$doc/copyright"
install -D -m 0644 "$root/cross/debian/lintian-overrides" "$stage/usr/share/lintian/overrides/edgeinfer"
install -d -m 0755 "$stage/usr/share/man/man1"
gzip -9n <"$root/cross/debian/edgeinfer.1" >"$stage/usr/share/man/man1/edgeinfer.1.gz"
chmod 0644 "$stage/usr/share/man/man1/edgeinfer.1.gz"
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
# A version with a Debian revision (0.1.0-2) is a non-native package: its changelog has another name.
if [[ "$version" == *-* ]]; then changelog=changelog.Debian.gz; else changelog=changelog.gz; fi
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)}
{
    printf 'edgeinfer (%s) unstable; urgency=medium\n\n' "$version"
    printf '  * Built by cross/package.sh for %s from git %s.\n\n' "$target" "$commit"
    printf ' -- %s  %s\n' "$maintainer" "$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$doc/$changelog"
chmod 0644 "$doc/$changelog"

# --- DEBIAN/
install -d -m 0755 "$stage/DEBIAN"
for script in postinst prerm postrm; do
    install -m 0755 "$root/cross/debian/$script" "$stage/DEBIAN/$script"
done
echo /etc/edgeinfer/config.toml >"$stage/DEBIAN/conffiles"
installed_size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s|@VERSION@|$version|" -e "s|@ARCH@|$arch|" -e "s|@MAINTAINER@|$maintainer|" \
    -e "s/@INSTALLED_SIZE@/$installed_size/" -e "s/@DEPENDS@/$depends/" \
    "$root/cross/debian/control.in" >"$stage/DEBIAN/control"
(cd "$stage" && find . \( -path ./DEBIAN -o -path ./etc \) -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
    >"$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/conffiles" "$stage/DEBIAN/md5sums"

dpkg-deb --root-owner-group -Z"$compression" --build "$stage" "$deb" >/dev/null
size=$(stat -c %s "$deb")
echo "cross/package.sh: edgeinfer $version ($arch, $depends), $size bytes ($((size / 1024)) KiB)" >&2
echo "$deb"
