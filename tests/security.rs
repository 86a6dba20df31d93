//! The broker connection a real site uses: TLS with a private CA, and username/password.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use edgeinfer::client::Requester;
use edgeinfer::config::Config;
use serde_json::Value;

/// A private CA and a server certificate for 127.0.0.1, made with the openssl command.
fn make_pki(dir: &Path) {
    let run = |args: &[&str]| {
        let status = Command::new("openssl").args(args).current_dir(dir).status().expect("openssl");
        assert!(status.success(), "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=edgeinfer test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
}

fn tls_broker(pki: &Path) -> Broker {
    let passwords = pki.join("passwords");
    let status = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwords)
        .args(["board", "s3cret word"])
        .status()
        .expect("mosquitto_passwd");
    assert!(status.success());
    // mosquitto drops privileges and must be able to read its files.
    Command::new("chmod").arg("-R").arg("a+rX").arg(pki).status().unwrap();
    Broker::start_tls(&format!(
        "cafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\nallow_anonymous false\npassword_file {1}\n",
        pki.display(),
        passwords.display()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_serves_through_a_tls_broker_with_credentials_and_refuses_wrong_ones() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let broker = tls_broker(pki.path());
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    std::fs::write(pki.path().join("password"), "s3cret word\n").unwrap();
    let tls = format!(
        "ca_file = \"{0}/ca.pem\"\nusername = \"board\"\npassword_file = \"{0}/password\"\n",
        pki.path().display()
    );
    let daemon = Daemon::spawn_with_broker_section(&url, &digits_repository(), &tls, "");
    daemon.wait_online_with(|topic| {
        let out = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "--cafile"])
            .arg(pki.path().join("ca.pem"))
            .args(["-u", "board", "-P", "s3cret word", "-t", topic, "-C", "1", "-W", "2", "--retained-only"])
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout).ok()
    });

    let mut config = Config::default();
    config.broker.url = url.clone();
    config.broker.ca_file = Some(pki.path().join("ca.pem"));
    config.broker.username = Some("board".into());
    config.broker.password = Some("s3cret word".into());
    let config = config.finalize().unwrap();
    let requester = Requester::connect(&config, PATIENCE).await.unwrap();
    let golden = digits_golden();
    let reply = requester
        .request(&daemon.infer_topic("digits"), digits_request("tls", &golden.inputs[4]).into_bytes(), None, PATIENCE)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(argmax(&output_data(&v, "probabilities")), argmax(&golden.probabilities[4]));
    requester.close().await;

    // A daemon with the wrong password never gets in, says why, and keeps trying.
    std::fs::write(pki.path().join("wrong"), "guess").unwrap();
    let wrong = tls.replace("/password\"", "/wrong\"");
    let refused = Daemon::spawn_with_broker_section(&url, &digits_repository(), &wrong, "");
    wait_until("the refusal is logged", || refused.log().contains("broker connection failed"));
    let log = refused.log();
    assert!(
        log.contains("Connection refused") || log.contains("NotAuthorized") || log.contains("BadUserNamePassword"),
        "{log}"
    );

    // And a client that does not trust the broker's CA cannot connect at all.
    let mut untrusting = Config::default();
    untrusting.broker.url = url;
    untrusting.broker.ca_file = Some(std::path::PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
    untrusting.broker.username = Some("board".into());
    untrusting.broker.password = Some("s3cret word".into());
    let untrusting = untrusting.finalize().unwrap();
    assert!(Requester::connect(&untrusting, std::time::Duration::from_secs(2)).await.is_err());
}

/// `mosquitto_sub`/`mosquitto_pub`/`mosquitto_rr` arguments for a login on `broker`.
fn login(broker: &Broker, user: &str, password: &str) -> Vec<String> {
    ["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-u", user, "-P", password].map(String::from).to_vec()
}

#[test]
fn the_example_acl_lets_clients_ask_and_boards_answer_but_no_client_fake_a_boards_status() {
    let dir = tempfile::tempdir().unwrap();
    let device = format!("acl-{}", free_port());
    let acl = std::fs::read_to_string(repo_root().join("systemd/mosquitto-acl.example")).unwrap();
    assert!(acl.contains("pi4-kitchen"), "the example names its board pi4-kitchen");
    std::fs::write(dir.path().join("acl"), acl.replace("pi4-kitchen", &device)).unwrap();
    let passwords = dir.path().join("passwords");
    for (i, (user, password)) in
        [(format!("board-{device}"), "board pw"), ("camera-1".into(), "camera pw")].iter().enumerate()
    {
        let mut cmd = Command::new("mosquitto_passwd");
        cmd.arg("-b");
        if i == 0 {
            cmd.arg("-c");
        }
        assert!(cmd.arg(&passwords).args([user.as_str(), password]).status().unwrap().success());
    }
    Command::new("chmod").arg("-R").arg("a+rX").arg(dir.path()).status().unwrap();
    let port = free_port();
    let conf = format!(
        "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\nacl_file {}\nset_tcp_nodelay true\npersistence false\n",
        passwords.display(),
        dir.path().join("acl").display()
    );
    let broker = Broker::start_conf_on(port, &conf);
    let keys = format!("username = \"board-{device}\"\npassword = \"board pw\"\n");
    let daemon = Daemon::spawn_as(&device, &broker.url(), &digits_repository(), &keys);
    let camera = login(&broker, "camera-1", "camera pw");
    let status = |topic: &str| {
        let out = Command::new("mosquitto_sub")
            .args(&camera)
            .args(["-t", topic, "-C", "1", "-W", "2", "--retained-only"])
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout).ok()
    };
    daemon.wait_online_with(status);

    // The camera asks the board and the fleet, and reads its replies under replies/camera-1/.
    let request = digits_request("acl", &digits_golden().inputs[3]);
    for topic in [daemon.infer_topic("digits"), "edgeinfer/fleet/models/digits/infer".to_string()] {
        let out = Command::new("mosquitto_rr")
            .args(&camera)
            .args(["-t", &topic, "-e", "replies/camera-1/acl", "-W", "5", "-m", &request])
            .output()
            .unwrap();
        let reply: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("{topic}: no reply ({e}): {}\n{}", String::from_utf8_lossy(&out.stderr), daemon.log())
        });
        assert!(reply["outputs"].is_array(), "{reply}");
    }

    // It cannot fake the board's status: the broker refuses the publish, the status stays online.
    let status_topic = format!("edgeinfer/{device}/status");
    let fake = Command::new("mosquitto_pub")
        .args(&camera)
        .args(["-V", "mqttv5", "-t", &status_topic, "-r", "-q", "1", "-m", r#"{"state":"offline"}"#])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&fake.stderr).to_string();
    assert!(said.contains("not authorized") || said.contains("Not authorized"), "{said}");
    assert_eq!(status(&status_topic).unwrap()["state"], "online");

    // Nor send the board (or the fleet) an admin operation: only the operator's login may.
    for topic in [format!("edgeinfer/{device}/admin/unload"), "edgeinfer/fleet/admin/unload".to_string()] {
        let admin = Command::new("mosquitto_pub")
            .args(&camera)
            .args(["-V", "mqttv5", "-t", &topic, "-q", "1", "-m", r#"{"model":"digits"}"#])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&admin.stderr).to_string();
        assert!(said.contains("not authorized") || said.contains("Not authorized"), "{topic}: {said}");
    }
}
