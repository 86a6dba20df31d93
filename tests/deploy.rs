//! cross/package.sh and cross/deploy.sh for real: a Debian package of the built daemon, installed,
//! upgraded and purged in a scratch root with dpkg, and deployed over ssh (an sshd of the test's own
//! on loopback) into a staging root, with the daemon started there against a private broker. A
//! broken release must be rolled back.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::*;
use tempfile::TempDir;

fn script(name: &str) -> PathBuf {
    repo_root().join("cross").join(name)
}

/// Runs a command to the end and returns its output, stdout and stderr as text.
fn run(cmd: &mut Command) -> (Output, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out, text)
}

fn run_ok(cmd: &mut Command) -> String {
    let (out, text) = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// Builds a package with cross/package.sh and returns the .deb's path (its last line of stdout).
fn package(binary: &Path, version: &str, out: &Path, extra: &[&str]) -> PathBuf {
    let mut cmd = Command::new(script("package.sh"));
    cmd.args(["x86_64-unknown-linux-gnu", "--version", version, "--compression", "gzip", "--binary"])
        .arg(binary)
        .arg("--out")
        .arg(out)
        .args(extra);
    let (output, text) = run(&mut cmd);
    assert!(output.status.success(), "package.sh failed:\n{text}");
    let deb = PathBuf::from(String::from_utf8_lossy(&output.stdout).lines().last().unwrap());
    assert_eq!(deb, out.join(format!("edgeinfer_{version}_amd64.deb")));
    deb
}

/// A stand-in for the daemon that exits 1, as a release whose binary cannot start.
fn broken_binary(dir: &Path) -> PathBuf {
    let path = dir.join("broken-edgeinfer");
    write_file(&path, b"#!/bin/sh\necho 'this build is broken' >&2\nexit 1\n");
    run_ok(Command::new("chmod").arg("755").arg(&path));
    path
}

/// The installed version of edgeinfer in a dpkg root, or "" when it is not installed.
fn installed_version(root: &Path) -> String {
    let out = Command::new("dpkg-query")
        .arg(format!("--admindir={}/var/lib/dpkg", root.display()))
        .args(["-W", "-f=${Status} ${Version}", "edgeinfer"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.strip_prefix("install ok installed ").unwrap_or("").to_string()
}

/// An empty dpkg database, as a freshly debootstrapped root has (without any package in it).
fn scratch_root() -> TempDir {
    let root = tempfile::tempdir().unwrap();
    for dir in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(root.path().join("var/lib/dpkg").join(dir)).unwrap();
    }
    write_file(&root.path().join("var/lib/dpkg/status"), b"");
    root
}

/// `dpkg --root=ROOT --force-script-chrootless` (maintainer scripts run here with DPKG_ROOT=ROOT).
fn dpkg(root: &Path) -> Command {
    let mut cmd = Command::new("dpkg");
    cmd.arg(format!("--root={}", root.display())).arg("--force-script-chrootless");
    cmd
}

/// An sshd of the test's own on 127.0.0.1, its own host key, one throwaway client key.
struct Sshd {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Sshd {
    fn start() -> Sshd {
        let dir = tempfile::tempdir().unwrap();
        for key in ["host_key", "client_key"] {
            run_ok(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(dir.path().join(key)));
        }
        std::fs::copy(dir.path().join("client_key.pub"), dir.path().join("authorized_keys")).unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap(); // sshd's privilege-separation directory
        let port = free_port();
        let d = dir.path().display();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
             PidFile {d}/sshd.pid\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM no\nPermitRootLogin prohibit-password\n"
        );
        std::fs::write(dir.path().join("sshd_config"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("sshd.log")).unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(dir.path().join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("openssh-server must be installed (/usr/sbin/sshd)");
        let sshd = Sshd { port, dir, child: Some(child) };
        wait_until("sshd listens", || {
            TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(100)).is_ok()
        });
        sshd
    }

    /// `user@127.0.0.1` for the user running the tests.
    fn login(&self) -> String {
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
        format!("{}@127.0.0.1", user.trim())
    }

    /// deploy.sh's --ssh-opt arguments that reach this sshd with the client key.
    fn ssh_opts(&self) -> Vec<String> {
        [
            format!("Port={}", self.port),
            format!("IdentityFile={}", self.dir.path().join("client_key").display()),
            "IdentitiesOnly=yes".into(),
            "StrictHostKeyChecking=no".into(),
            "UserKnownHostsFile=/dev/null".into(),
            "LogLevel=ERROR".into(),
        ]
        .into_iter()
        .flat_map(|opt| ["--ssh-opt".to_string(), opt])
        .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The "board": a staging root that deploy.sh installs into, and the restart command that runs the
/// daemon installed there (in the background, through a pidfile) against the test's broker.
struct Board {
    root: TempDir,
    dir: TempDir,
    device: String,
}

impl Board {
    fn new(broker: &Broker) -> Board {
        let root = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let device = format!("deploy-test-{}", free_port());
        let config = format!(
            "[broker]\nurl = \"{}\"\nreconnect_max_ms = 500\n\n[topics]\ndevice = \"{device}\"\n\n\
             [models]\nrepository = \"{}/var/lib/edgeinfer/models\"\n",
            broker.url(),
            root.path().display()
        );
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        Board { root, dir, device }
    }

    fn pidfile(&self) -> PathBuf {
        self.dir.path().join("edgeinfer.pid")
    }

    /// Stops the running daemon (SIGTERM, then waits while it is alive and not a zombie: this
    /// machine's init may not reap it) and starts STAGING/usr/bin/edgeinfer in a session of its own.
    fn restart_cmd(&self) -> String {
        let pidfile = self.pidfile().display().to_string();
        format!(
            "if [ -f {pidfile} ]; then pid=$(cat {pidfile}); kill -TERM $pid 2>/dev/null; i=0; \
             while [ $i -lt 200 ] && s=$(ps -o stat= -p $pid) && [ \"${{s#Z}}\" = \"$s\" ]; do sleep 0.05; i=$((i+1)); done; fi; \
             RUST_LOG=info setsid {root}/usr/bin/edgeinfer serve --config {dir}/config.toml </dev/null >>{dir}/daemon.log 2>&1 & \
             echo $! > {pidfile}",
            root = self.root.path().display(),
            dir = self.dir.path().display(),
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    fn status(&self, broker: &Broker) -> Option<serde_json::Value> {
        retained(broker, &format!("edgeinfer/{}/status", self.device))
    }

    /// One inference request with mosquitto_rr, answered by the board's daemon.
    fn assert_answers(&self, broker: &Broker) {
        let topic = format!("edgeinfer/{}/models/digits/infer", self.device);
        let request = std::fs::read_to_string(shipped_models().join("digits/example-request.json")).unwrap();
        let (out, text) = run(Command::new("mosquitto_rr")
            .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-t", &topic, "-e", "deploy/reply", "-W", "10"])
            .args(["-m", &request]));
        assert!(out.status.success(), "no answer from the deployed daemon: {text}\nlog:\n{}", self.log());
        let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(reply["id"], "example-1", "{reply}");
        assert_eq!(argmax(&output_data(&reply, "probabilities")), 7, "{reply}");
    }

    /// deploy.sh against this board through `sshd`, with the given package and extra arguments.
    fn deploy(&self, sshd: &Sshd, broker: &Broker, deb: &Path, extra: &[&str]) -> (Output, String) {
        run(Command::new(script("deploy.sh"))
            .args(["--target", "x86_64-unknown-linux-gnu", "--package"])
            .arg(deb)
            .args(["--broker", &broker.url(), "--device", &self.device, "--dpkg-opt", "--force-depends"])
            .arg("--remote-root")
            .arg(self.root.path())
            .args(["--restart-cmd", &self.restart_cmd()])
            .args(sshd.ssh_opts())
            .args(extra)
            .arg(sshd.login()))
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.pidfile()) {
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
        }
    }
}

#[test]
fn deploy_installs_over_ssh_and_rolls_a_broken_release_back() {
    let broker = Broker::start();
    let sshd = Sshd::start();
    let board = Board::new(&broker);
    let debs = tempfile::tempdir().unwrap();
    let good = package(Path::new(env!("CARGO_BIN_EXE_edgeinfer")), env!("CARGO_PKG_VERSION"), debs.path(), &[]);
    let broken = package(&broken_binary(debs.path()), "99.0.0", debs.path(), &["--any-binary"]);

    let (out, text) = board.deploy(&sshd, &broker, &good, &["--timeout", "20"]);
    eprintln!("{text}"); // the transcript, for --nocapture
    assert!(out.status.success(), "deploy failed:\n{text}\nsshd:\n{}\ndaemon:\n{}", sshd.log(), board.log());
    assert!(text.contains(&format!("ok, nothing -> {}", env!("CARGO_PKG_VERSION"))), "{text}");
    assert_eq!(installed_version(board.root.path()), env!("CARGO_PKG_VERSION"));
    let status = board.status(&broker).expect("a retained status");
    assert_eq!(status["state"], "online", "{status}");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"), "{status}");
    board.assert_answers(&broker);
    // The packaged config's models.repository, relative, finds the packaged model from the unit's
    // WorkingDirectory=/var/lib/edgeinfer.
    let staged = board.root.path();
    let (out, text) = run(Command::new(staged.join("usr/bin/edgeinfer"))
        .arg("models")
        .arg("--config")
        .arg(staged.join("etc/edgeinfer/config.toml"))
        .current_dir(staged.join("var/lib/edgeinfer")));
    assert!(out.status.success(), "{text}");
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["name"], "digits", "{text}");
    // The rollback copy that the next deploy keeps is in root's deploy directory of the board.
    assert!(board.root.path().join("var/lib/edgeinfer-deploy/current.deb").is_file());

    let (out, text) = board.deploy(&sshd, &broker, &broken, &["--timeout", "3"]);
    eprintln!("{text}");
    assert!(!out.status.success(), "a release that never comes online must fail the deploy:\n{text}");
    assert!(text.contains(&format!("rolled back to {}", env!("CARGO_PKG_VERSION"))), "{text}");
    assert!(text.contains(&format!("{} is online again", env!("CARGO_PKG_VERSION"))), "{text}");
    assert!(text.contains("no \"online\" status with version 99.0.0"), "{text}");
    assert_eq!(installed_version(board.root.path()), env!("CARGO_PKG_VERSION"));
    assert!(board.log().contains("this build is broken"), "the broken release never ran:\n{}", board.log());
    let status = board.status(&broker).expect("a retained status");
    assert_eq!(status["state"], "online", "{status}");
    board.assert_answers(&broker);
}

#[test]
fn a_dry_run_prints_the_commands_and_runs_none() {
    let broker = Broker::start();
    let board = Board::new(&broker);
    let debs = tempfile::tempdir().unwrap();
    let deb = package(&broken_binary(debs.path()), "1.2.3", debs.path(), &["--any-binary"]);
    // Not an sshd: a listener that would see any connection attempt.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let root = board.root.path().join("stage");

    let (out, text) = run(Command::new(script("deploy.sh"))
        .args(["--dry-run", "--target", "x86_64-unknown-linux-gnu", "--package"])
        .arg(&deb)
        .args(["--broker", &broker.url(), "--remote-root"])
        .arg(&root)
        .args(["--restart-cmd", "touch /tmp/never", "--ssh-opt", &format!("Port={port}"), "root@127.0.0.1"]));
    assert!(out.status.success(), "{text}");
    for expected in
        ["+ ssh ", "incoming.deb", "dpkg --force-confdef --force-confold", "touch /tmp/never", "mosquitto_sub"]
    {
        assert!(text.contains(expected), "the dry run does not show {expected:?}:\n{text}");
    }
    assert!(text.contains("dry run: nothing was run"), "{text}");
    assert!(!root.exists(), "the dry run created the staging root");
    assert!(listener.accept().is_err(), "the dry run connected to the board");
}

#[test]
fn the_package_installs_upgrades_keeping_an_edited_config_and_purges_in_a_scratch_root() {
    let work = tempfile::tempdir().unwrap();
    let binary = broken_binary(work.path()); // contents do not matter here, and a small one packs fast
    let v1 = package(&binary, "1.0.0", work.path(), &["--any-binary"]);
    let v2 = package(&binary, "1.0.1", work.path(), &["--any-binary"]);
    let root = scratch_root();
    let r = root.path();
    let host_passwd = std::fs::read_to_string("/etc/passwd").unwrap();

    // --force-depends: the scratch root has no libc6 or adduser packages (nothing is installed in it).
    run_ok(dpkg(r).args(["--force-depends", "-i"]).arg(&v1));
    assert_eq!(installed_version(r), "1.0.0");
    for file in [
        "usr/bin/edgeinfer",
        "etc/edgeinfer/config.toml",
        "lib/systemd/system/edgeinfer.service",
        "usr/lib/sysusers.d/edgeinfer.conf",
        "var/lib/edgeinfer/models/digits/model.onnx",
        "var/lib/edgeinfer/models/digits/model.toml",
        "var/lib/edgeinfer/models/digits/labels.txt",
        "usr/share/doc/edgeinfer/README.md",
        "usr/share/doc/edgeinfer/copyright",
        // enabled by deb-systemd-helper, inside the root
        "etc/systemd/system/multi-user.target.wants/edgeinfer.service",
    ] {
        // symlink_metadata: the enabled unit is a link to /lib/..., absolute, as on the board
        assert!(r.join(file).symlink_metadata().is_ok(), "{file} is not installed");
    }
    assert_eq!(
        std::fs::read(r.join("etc/edgeinfer/config.toml")).unwrap(),
        std::fs::read(repo_root().join("systemd/edgeinfer.toml")).unwrap()
    );
    let conffiles = run_ok(Command::new("dpkg-query").arg(format!("--admindir={}/var/lib/dpkg", r.display())).args([
        "-W",
        "-f=${Conffiles}",
        "edgeinfer",
    ]));
    assert!(conffiles.contains("/etc/edgeinfer/config.toml"), "{conffiles}");
    let passwd = std::fs::read_to_string(r.join("etc/passwd")).unwrap();
    let user = passwd.lines().find(|l| l.starts_with("edgeinfer:")).expect("the service user in the root's passwd");
    let uid: u32 = user.split(':').nth(2).unwrap().parse().unwrap();
    use std::os::unix::fs::MetadataExt;
    let state = std::fs::metadata(r.join("var/lib/edgeinfer")).unwrap();
    assert_eq!((state.uid(), state.mode() & 0o777), (uid, 0o750), "the state directory is the service's");
    let config = std::fs::metadata(r.join("etc/edgeinfer/config.toml")).unwrap();
    assert_eq!((config.uid(), config.mode() & 0o777), (0, 0o640), "the config is root's, readable by the group");
    // Nothing escaped the root: no user and no enabled unit on the machine running dpkg.
    assert_eq!(std::fs::read_to_string("/etc/passwd").unwrap(), host_passwd);
    assert!(Path::new("/etc/systemd/system/multi-user.target.wants/edgeinfer.service").symlink_metadata().is_err());

    // An edited config survives the upgrade.
    let edited = "# this board's own settings\n[topics]\ndevice = \"pi4-kitchen\"\n";
    std::fs::write(r.join("etc/edgeinfer/config.toml"), edited).unwrap();
    run_ok(dpkg(r).args(["--force-depends", "--force-confdef", "--force-confold", "-i"]).arg(&v2));
    assert_eq!(installed_version(r), "1.0.1");
    assert_eq!(std::fs::read_to_string(r.join("etc/edgeinfer/config.toml")).unwrap(), edited);

    run_ok(dpkg(r).args(["--purge", "edgeinfer"]));
    assert_eq!(installed_version(r), "");
    for gone in ["usr/bin/edgeinfer", "etc/edgeinfer", "var/lib/edgeinfer", "lib/systemd/system/edgeinfer.service"] {
        assert!(!r.join(gone).exists(), "{gone} is left after purge");
    }
}

#[test]
fn package_refuses_a_binary_for_another_board() {
    let (out, text) = run(Command::new(script("package.sh"))
        .args(["aarch64-unknown-linux-gnu", "--binary", env!("CARGO_BIN_EXE_edgeinfer"), "--out"])
        .arg(tempfile::tempdir().unwrap().path()));
    assert!(!out.status.success(), "an x86-64 binary packaged as arm64:\n{text}");
    assert!(text.contains("aarch64-unknown-linux-gnu needs AArch64"), "{text}");
}

#[test]
fn an_unreachable_board_is_named_with_its_step_and_the_boards_after_it_are_skipped() {
    let debs = tempfile::tempdir().unwrap();
    let deb = package(&broken_binary(debs.path()), "1.2.3", debs.path(), &["--any-binary"]);
    let closed_port = free_port(); // nothing listens there
    let (out, text) = run(Command::new(script("deploy.sh"))
        .args(["--target", "x86_64-unknown-linux-gnu", "--package"])
        .arg(&deb)
        .args(["--ssh-opt", &format!("Port={closed_port}"), "--ssh-opt", "ConnectTimeout=5"])
        .args(["root@127.0.0.1", "pi@127.0.0.2"]));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("cross/deploy.sh: root@127.0.0.1: connect: ssh failed"), "{text}");
    assert!(text.contains("root@127.0.0.1: failed at connect, nothing changed"), "{text}");
    assert!(text.contains("pi@127.0.0.2: skipped (an earlier board failed"), "{text}");
}
