#!/usr/bin/env bash
# Installs the edgeinfer package on boards over ssh, one board after another, and rolls a board back
# to its previous package when the new one does not come online on the broker.
#
#   cross/deploy.sh [options] user@host...
#
#   --target T         board type (default aarch64-unknown-linux-gnu; armv7-unknown-linux-gnueabihf,
#                      x86_64-unknown-linux-gnu)
#   --package FILE     the .deb to deploy; without it dist/edgeinfer_<Cargo version>_<arch>.deb, made
#                      by cross/build.sh and cross/package.sh when missing
#   --rebuild          build and package even when that .deb exists
#   --broker URL       the broker the boards report to, mqtt://host[:port] or mqtts://host[:port]
#                      (default mqtt://127.0.0.1:1883), read with mosquitto_sub from this machine
#   --mqtt-opt OPT     an extra mosquitto_sub argument (repeat: --mqtt-opt -u --mqtt-opt me,
#                      --mqtt-opt --cafile --mqtt-opt ca.pem)
#   --timeout S        how long a board has, after its restart, to report "online" with the new
#                      version on edgeinfer/<device>/status (default 60)
#   --rollback-timeout S  the same for the previous version after a rollback (default 120: a
#                      known-good release gets more patience than a new one)
#   --device NAME      the board's device id (one host only; default: the board's hostname)
#   --ssh-opt OPT      an ssh -o option (repeat: --ssh-opt Port=2222 --ssh-opt IdentityFile=~/.ssh/pi)
#   --remote-root DIR  install into a staging root DIR on the board (dpkg --root) instead of /;
#                      needs --restart-cmd
#   --restart-cmd CMD  how to restart the daemon on the board, run by its login shell
#                      (default: systemctl restart edgeinfer, through sudo when not root)
#   --dpkg-opt OPT     an extra dpkg option (repeat), e.g. --force-depends for a bare staging root
#   --keep-going       go on to the next board after a failed one (default: stop, so that a bad
#                      release reaches one board only)
#   --dry-run          print every command it would run, run none
#
# On each board: the package is streamed over ssh to /var/lib/edgeinfer-deploy/ (root's, 0700), the
# package installed there before (current.deb) becomes previous.deb, dpkg installs the new one (keeping
# edited conffiles), the daemon restarts, and the board's retained status must say "online" with the
# new version within --timeout. If not, previous.deb is installed again and the daemon restarted: the
# board is reported "rolled back" and the exit status is 1. Remote commands use `sudo -n` (no
# password prompt) when the login is not root.
set -euo pipefail

usage() {
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0" # the header comment
    exit 2
}
die() {
    echo "cross/deploy.sh: $*" >&2
    exit 1
}

root=$(cd "$(dirname "$0")/.." && pwd)
target=aarch64-unknown-linux-gnu
package=""
rebuild=false
broker=mqtt://127.0.0.1:1883
mqtt_opts=()
timeout=60
rollback_timeout=120
device=""
ssh_opts=()
remote_root=""
restart_cmd=""
dpkg_opts=()
keep_going=false
dry_run=false
hosts=()
while [ $# -gt 0 ]; do
    case "$1" in
    --target) target=${2:?--target needs a target} && shift ;;
    --package) package=${2:?--package needs a .deb} && shift ;;
    --rebuild) rebuild=true ;;
    --broker) broker=${2:?--broker needs a URL} && shift ;;
    --mqtt-opt) mqtt_opts+=("${2:?--mqtt-opt needs an argument}") && shift ;;
    --timeout) timeout=${2:?--timeout needs seconds} && shift ;;
    --rollback-timeout) rollback_timeout=${2:?--rollback-timeout needs seconds} && shift ;;
    --device) device=${2:?--device needs a name} && shift ;;
    --ssh-opt) ssh_opts+=(-o "${2:?--ssh-opt needs Key=Value}") && shift ;;
    --remote-root) remote_root=${2:?--remote-root needs a directory} && shift ;;
    --restart-cmd) restart_cmd=${2:?--restart-cmd needs a command} && shift ;;
    --dpkg-opt) dpkg_opts+=("${2:?--dpkg-opt needs an option}") && shift ;;
    --keep-going) keep_going=true ;;
    --dry-run) dry_run=true ;;
    -h | --help) usage ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *) hosts+=("$1") ;;
    esac
    shift
done
[ ${#hosts[@]} -gt 0 ] || die "no board given: cross/deploy.sh [options] user@host... (see --help)"
[[ "$timeout" =~ ^[1-9][0-9]*$ ]] || die "--timeout must be a whole number of seconds, not '$timeout'"
[[ "$rollback_timeout" =~ ^[1-9][0-9]*$ ]] || die "--rollback-timeout must be a whole number of seconds, not '$rollback_timeout'"
[ -z "$device" ] || [ ${#hosts[@]} -eq 1 ] || die "--device names one board; give one host with it"
if [ -n "$remote_root" ]; then
    [[ "$remote_root" == /* ]] || die "--remote-root must be an absolute path, not '$remote_root'"
    [ -n "$restart_cmd" ] || die "--remote-root needs --restart-cmd (systemctl would restart the board's real service)"
fi
case "$target" in
aarch64-unknown-linux-gnu) arch=arm64 ;;
armv7-unknown-linux-gnueabihf) arch=armhf ;;
x86_64-unknown-linux-gnu) arch=amd64 ;;
*) die "unsupported --target '$target'" ;;
esac

# The broker: mqtt[s]://host[:port], host possibly [IPv6].
if [[ "$broker" =~ ^(mqtts?)://(\[[0-9A-Fa-f:.]+\]|[^]:/[]+)(:([0-9]+))?/?$ ]]; then
    broker_host=${BASH_REMATCH[2]}
    broker_host=${broker_host#[}
    broker_host=${broker_host%]}
    broker_port=${BASH_REMATCH[4]}
    if [ "${BASH_REMATCH[1]}" = mqtts ]; then
        broker_port=${broker_port:-8883}
        [ ${#mqtt_opts[@]} -gt 0 ] || mqtt_opts=(--capath /etc/ssl/certs)
    else
        broker_port=${broker_port:-1883}
    fi
else
    die "--broker must be mqtt://host[:port] or mqtts://host[:port], not '$broker'"
fi

# Prints a command as it is (or, in a dry run, would be) run.
show() {
    local out="+"
    local arg
    for arg in "$@"; do
        out+=" $(q "$arg")"
    done
    echo "$out"
}
run() {
    show "$@"
    $dry_run || "$@"
}
# Quotes a value for a POSIX shell (the board's), where it needs quoting.
q() {
    if [[ "$1" =~ ^[A-Za-z0-9_./=:@,+%-]+$ ]]; then
        printf '%s' "$1"
    else
        printf "'%s'" "${1//\'/\'\\\'\'}"
    fi
}

# --- the package: given, or built and packaged here
if [ -z "$package" ]; then
    package=$("$root/cross/package.sh" "$target" --print-path)
    if $rebuild || [ ! -f "$package" ]; then
        if [ "$target" = x86_64-unknown-linux-gnu ]; then
            run cargo build --locked --release --manifest-path "$root/Cargo.toml"
        elif $rebuild || [ ! -f "$root/dist/$target/edgeinfer" ]; then
            run "$root/cross/build.sh" "$target"
        fi
        run "$root/cross/package.sh" "$target"
    fi
fi
if [ -f "$package" ]; then
    if command -v dpkg-deb >/dev/null; then
        version=$(dpkg-deb -f "$package" Version) || die "$package: not a Debian package"
        package_arch=$(dpkg-deb -f "$package" Architecture)
    else # a laptop without dpkg: the name that cross/package.sh gives, edgeinfer_VERSION_ARCH.deb
        name=$(basename "$package" .deb)
        [[ "$name" =~ ^edgeinfer_([^_]+)_([^_]+)$ ]] || die "no dpkg-deb to read $package, and its name is not edgeinfer_VERSION_ARCH.deb"
        version=${BASH_REMATCH[1]}
        package_arch=${BASH_REMATCH[2]}
    fi
    [ "$package_arch" = "$arch" ] || die "$package is for $package_arch; --target $target boards need $arch"
elif $dry_run; then
    version=$(basename "$package" .deb | cut -d_ -f2)
else
    die "no package at $package"
fi
# The daemon reports its upstream version (Cargo's): the package version without epoch and revision.
expected=${version#*:}
expected=${expected%-*}
if ! $dry_run; then
    command -v mosquitto_sub >/dev/null || die "mosquitto_sub is missing (apt-get install mosquitto-clients)"
fi

# ${a[@]+"${a[@]}"}: an empty array under set -u, also in macOS's bash 3.2. The user's options come
# first: for ssh, the first value of an option wins.
ssh_base=(ssh ${ssh_opts[@]+"${ssh_opts[@]}"} -o BatchMode=yes -o ConnectTimeout=10)
deploy_dir=$remote_root/var/lib/edgeinfer-deploy
dpkg_cmd="dpkg --force-confdef --force-confold"
if [ -n "$remote_root" ]; then
    dpkg_cmd+=" --root=$(q "$remote_root") --force-script-chrootless"
fi
for opt in ${dpkg_opts[@]+"${dpkg_opts[@]}"}; do
    dpkg_cmd+=" $(q "$opt")"
done

# Per-board state, set by the steps below.
host=""
sudo=""
board_device=""
installed=""
step=""
fail() {
    echo "cross/deploy.sh: $host: $step: $*" >&2
    return 1
}
remote() {
    run "${ssh_base[@]}" "$host" "$1"
}
# Runs a POSIX sh script on the board as root (through sudo -n when the login is not root).
as_root() {
    remote "${sudo}sh -c $(q "$1")"
}

probe() {
    step="connect"
    local admindir
    admindir=$(q "$remote_root/var/lib/dpkg")
    if $dry_run; then
        show "${ssh_base[@]}" "$host" "id -u; hostname; dpkg-query --admindir=$admindir -W -f='\${Version}' edgeinfer"
        [ "${host%%@*}" = root ] || sudo="sudo -n "
        board_device=${device:-"<hostname of $host>"}
        return 0
    fi
    local out
    out=$("${ssh_base[@]}" "$host" "id -u; hostname; dpkg-query --admindir=$admindir -W -f='\${Version}' edgeinfer 2>/dev/null || true") ||
        fail "ssh failed (is the host up, the key authorised? see the ssh message above)" || return 1
    local uid hostname
    { read -r uid; read -r hostname; read -r installed || true; } <<<"$out"
    if [ "$uid" = 0 ]; then sudo=""; else sudo="sudo -n "; fi
    board_device=${device:-$hostname}
    [ -n "$board_device" ] || fail "the board reported no hostname; give --device" || return 1
    echo "$host: device $board_device, installed ${installed:-nothing}, deploying $version"
}

copy() {
    step="copy"
    local dir
    dir=$(q "$deploy_dir")
    echo "$(show "${ssh_base[@]}" "$host" "${sudo}install -d -m 0700 $dir && ${sudo}sh -c $(q "cat > $dir/incoming.deb")") < $(q "$package")"
    $dry_run && return 0
    "${ssh_base[@]}" "$host" "${sudo}install -d -m 0700 $dir && ${sudo}sh -c $(q "cat > $dir/incoming.deb")" <"$package" ||
        fail "could not copy $package to $deploy_dir/incoming.deb"
}

# incoming.deb is installed as current.deb; the current.deb that is the installed version becomes
# previous.deb, the rollback copy. A board whose package was installed by hand has none.
install_new() {
    step="install"
    local dir
    dir=$(q "$deploy_dir")
    local admin=""
    if [ -n "$remote_root" ]; then
        local db
        db=$(q "$remote_root/var/lib/dpkg")
        admin="mkdir -p $db/info $db/updates && touch $db/status && "
    fi
    as_root "set -e; ${admin}cd $dir
if [ -f current.deb ] && [ \"\$(dpkg-deb -f current.deb Version)\" = $(q "$installed") ]; then mv -f current.deb previous.deb; else rm -f previous.deb current.deb; fi
mv -f incoming.deb current.deb
$dpkg_cmd -i current.deb" || fail "dpkg could not install $version (its output is above)"
}

restart() {
    step="restart"
    if [ -n "$restart_cmd" ]; then
        remote "$restart_cmd" || fail "the restart command failed: $restart_cmd"
    else
        remote "${sudo}systemctl restart edgeinfer" || fail "systemctl restart edgeinfer failed (journalctl -u edgeinfer on the board says why)"
    fi
}

# Waits until the retained status says online with version $1, for at most $2 seconds.
last_status=""
wait_online() {
    step="wait for status"
    local want=$1
    local timeout=$2
    local topic="edgeinfer/$board_device/status"
    local sub=(mosquitto_sub -h "$broker_host" -p "$broker_port" ${mqtt_opts[@]+"${mqtt_opts[@]}"} -t "$topic" -C 1 -W 2 --retained-only)
    show "${sub[@]}"
    echo "  (repeated until the status is online with version $want, for at most ${timeout}s)"
    $dry_run && return 0
    local deadline=$((SECONDS + timeout))
    local line last_error=""
    last_status=""
    while [ $SECONDS -lt $deadline ]; do
        line=$("${sub[@]}" 2>&1 | head -n 1) || true
        case "$line" in
        "{"*)
            last_status=$line
            # The daemon's status is compact serde_json: {"state":"online","version":"0.1.0",...}.
            if [[ "$line" == *'"state":"online"'* && "$line" == *"\"version\":\"$want\""* ]]; then
                return 0
            fi
            ;;
        ?*) last_error=$line ;; # mosquitto_sub's own complaint: broker unreachable, refused, ...
        esac
        sleep 0.5
    done
    fail "no \"online\" status with version $want on $topic within ${timeout}s; last status: ${last_status:-none}${last_error:+; mosquitto_sub said: $last_error}"
}

roll_back() {
    step="roll back"
    local dir
    dir=$(q "$deploy_dir")
    local previous
    if $dry_run; then
        previous=$installed
    else
        previous=$("${ssh_base[@]}" "$host" "${sudo}sh -c $(q "dpkg-deb -f $dir/previous.deb Version")" 2>/dev/null) || previous=""
    fi
    if [ -z "$previous" ]; then
        fail "no rollback copy ($deploy_dir/previous.deb): $version stays installed" || true
        summary+=("$host: failed at $failed_step, nothing to roll back to")
        return 0
    fi
    as_root "set -e; cd $dir; $dpkg_cmd -i previous.deb; mv -f current.deb failed.deb; mv -f previous.deb current.deb" ||
        fail "dpkg could not reinstall $previous" || true
    local upstream=${previous#*:}
    if restart && wait_online "${upstream%-*}" "$rollback_timeout"; then
        summary+=("$host: rolled back to $previous ($version failed at '$failed_step'); $previous is online again")
    else
        summary+=("$host: rolled back to $previous ($version failed at '$failed_step'), but $previous is not online either")
    fi
}

summary=()
status=0
for host in "${hosts[@]}"; do
    if [ $status -ne 0 ] && ! $keep_going; then
        summary+=("$host: skipped (an earlier board failed; --keep-going deploys to the rest anyway)")
        continue
    fi
    echo "--- $host"
    start=$SECONDS
    installed=""
    if ! probe; then
        summary+=("$host: failed at connect, nothing changed")
        status=1
        continue
    fi
    if ! copy; then
        summary+=("$host: failed at copy, nothing changed")
        status=1
        continue
    fi
    if install_new && restart && wait_online "$expected" "$timeout"; then
        $dry_run && summary+=("$host: would deploy $version") && continue
        summary+=("$host: ok, ${installed:-nothing} -> $version, online as $board_device in $((SECONDS - start))s")
        continue
    fi
    failed_step=$step
    status=1
    roll_back
done

echo "--- summary"
printf '%s\n' "${summary[@]}"
$dry_run && echo "(dry run: nothing was run)"
exit $status
