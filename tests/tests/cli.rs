//! The command line, run as a user would.
//!
//! The offline commands on a stopped server's data directory: `verify` checks the
//! hash chain, `replay` rebuilds read models from position 0 (and the server
//! started again answers exactly as before), `export` writes a read model as CSV;
//! a mistyped `--data` is refused and creates nothing.
//!
//! The contract of the CLI: `--help`, `-h` and `--version` on every command; every
//! option listed in `--help` with its environment variable, named by one rule, and
//! each taking effect from the command line and from its variable; `--listen`
//! with a host name; a busy port named, with no admin key made; `replay`,
//! `export` and a second `serve` on a live server's directory say so, while
//! `verify` works beside it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use paystream_tests::fixtures::{card_payment, id_of, onboard};
use paystream_tests::help::{help_options, help_text, variable_of, COMMANDS, LEAF_COMMANDS};
use paystream_tests::server::{paystream_command, temp_data_dir};
use paystream_tests::{Server, ADMIN_KEY};
use serde_json::Value;

fn paystream(args: &[&str]) -> Output {
    paystream_command().args(args).env("PAYSTREAM_LOG", "warn").output().expect("run paystream")
}

/// Runs `command` to its end, killed if it takes longer than a minute (a `serve`
/// that should have refused to start).
fn finished(mut command: Command) -> Output {
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{command:?} still runs after a minute: {:?}", child.wait_with_output());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A port of 127.0.0.1 free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn succeeded(output: Output, what: &str) -> String {
    assert!(output.status.success(), "{what} failed ({}):\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8 output")
}

fn search(server: &Server, min_position: u64) -> Value {
    server.admin().get(&format!("/v1/payments?limit=100&min_position={min_position}")).expect(200)
}

#[test]
fn offline_verify_replay_and_export_on_a_stopped_servers_data() {
    let data = temp_data_dir();
    let dir = data.path().to_str().unwrap().to_string();
    let mut server = Server::start_in(data.path(), "warn");
    let merchant = onboard(&server, "Cli Shop", "B");
    let mut ids = Vec::new();
    for (amount, capture) in [(1_000, "automatic"), (2_000, "manual"), (3_000, "automatic")] {
        ids.push(id_of(&merchant.pay(&card_payment(amount, capture))));
    }
    let head = server.admin().head_position();
    let before = search(&server, head);
    assert_eq!(before["data"].as_array().unwrap().len(), 3);
    assert_eq!(server.stop().code(), Some(0), "{}", server.stderr_text());

    succeeded(paystream(&["verify", "--data", &dir]), "verify");

    // A full replay: every projection rebuilt into its next version, up to the head.
    let report: Value = serde_json::from_str(&succeeded(paystream(&["replay", "--data", &dir]), "replay")).unwrap();
    assert_eq!(
        report["projections"],
        serde_json::json!(["merchant_dashboard", "payment_search", "platform_overview", "ledger"])
    );
    assert_eq!(report["versions"], serde_json::json!([2, 2, 2, 2]));
    assert_eq!(report["checkpoint"].as_u64(), Some(head));
    assert_eq!(report["events"].as_u64(), Some(head));
    let one = paystream(&["replay", "--projection", "payment_search", "--data", &dir]);
    let report: Value = serde_json::from_str(&succeeded(one, "replay --projection")).unwrap();
    assert_eq!(report["versions"], serde_json::json!([3]));

    // Export: a header and one row per payment, the id first.
    let csv = succeeded(paystream(&["export", "--projection", "payment_search", "--data", &dir]), "export");
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("id,merchant_id,status,amount,currency,"), "{}", lines[0]);
    let mut exported: Vec<String> = lines[1..].iter().map(|line| line.split(',').next().unwrap().to_string()).collect();
    exported.sort();
    ids.sort();
    assert_eq!(exported, ids);
    let ledger =
        succeeded(paystream(&["export", "--projection", "ledger", "--format", "csv", "--data", &dir]), "export");
    assert!(ledger.lines().count() > 1, "{ledger}");
    let refused = paystream(&["export", "--projection", "ledger", "--format", "xlsx", "--data", &dir]);
    assert!(!refused.status.success());

    // The server on the replayed data answers exactly as before.
    let server = Server::start_in(data.path(), "warn");
    assert_eq!(search(&server, head), before);
}

#[test]
fn a_data_directory_without_a_log_is_refused_and_left_uncreated() {
    let data = temp_data_dir();
    let missing = data.path().join("typo");
    let missing_arg = missing.to_str().unwrap();
    for args in [
        vec!["replay", "--data", missing_arg],
        vec!["export", "--projection", "ledger", "--data", missing_arg],
        vec!["verify", "--data", missing_arg],
    ] {
        let output = paystream(&args);
        assert!(!output.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("holds no event log"), "{args:?}: {stderr}");
        assert!(!Path::new(&missing).exists(), "{args:?} created {}", missing.display());
    }
}

#[test]
fn help_and_version_answer_on_every_command() {
    let version = format!("paystream {}", env!("CARGO_PKG_VERSION"));
    for command in COMMANDS {
        let usage =
            format!("Usage: {}", ["paystream"].iter().chain(command.iter()).copied().collect::<Vec<_>>().join(" "));
        for flag in ["--help", "-h"] {
            let help = help_text(command, flag);
            assert!(help.contains(&usage), "paystream {command:?} {flag}:\n{help}");
        }
        for flag in ["--version", "-V"] {
            let output = paystream_command().args(*command).arg(flag).output().unwrap();
            assert!(output.status.success(), "paystream {command:?} {flag}: {output:?}");
            assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), version, "paystream {command:?} {flag}");
        }
    }
    let top = help_text(&[], "--help");
    for word in ["serve", "verify", "replay", "export", "bench", "PAYSTREAM_LOG", "PAYSTREAM_BENCH_"] {
        assert!(top.contains(word), "paystream --help names {word}:\n{top}");
    }
    // A usage error exits 2 and says what is wrong.
    let unknown = paystream(&["serve", "--no-such-option", "1"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("--no-such-option"), "{unknown:?}");
}

#[test]
fn every_option_has_its_variable_by_one_rule_and_serve_names_the_others() {
    for command in LEAF_COMMANDS {
        let options = help_options(command);
        assert!(!options.is_empty(), "paystream {command:?} --help lists no option");
        for option in options {
            assert_eq!(
                option.env.as_deref(),
                Some(variable_of(command, &option.long).as_str()),
                "paystream {command:?} --help: {}",
                option.text
            );
        }
    }
    let serve: Vec<String> = help_options(&["serve"]).into_iter().map(|o| o.long).collect();
    let expected = [
        "--data",
        "--listen",
        "--store-cache-mib",
        "--facts-cache-mib",
        "--projections-cache-mib",
        "--idempotency-window-seconds",
        "--pending-after-seconds",
    ];
    assert_eq!(serve, expected);
    let help = help_text(&["serve"], "--help");
    for variable in ["PAYSTREAM_ADMIN_KEY", "PAYSTREAM_FINGERPRINT_KEY", "PAYSTREAM_LOG", "PAYSTREAM_LOG_FORMAT"] {
        assert!(help.contains(variable), "serve --help describes {variable}:\n{help}");
    }
    // A bad value from a variable names the variable.
    let output = paystream_command().args(["serve"]).env("PAYSTREAM_STORE_CACHE_MIB", "lots").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("--store-cache-mib") && said.contains("PAYSTREAM_STORE_CACHE_MIB"), "{said}");
}

/// The settings `serve` logs at start, as `name=value`.
fn assert_settings(stderr: &str, settings: &[&str]) {
    let line = stderr.lines().find(|line| line.contains("paystream started")).unwrap_or_else(|| panic!("{stderr}"));
    for setting in settings {
        assert!(line.split_whitespace().any(|word| word == *setting), "{setting} in: {line}");
    }
}

#[test]
fn serve_takes_every_option_from_the_command_line_or_its_variable() {
    let root = temp_data_dir();

    // From the command line.
    let dir = root.path().join("by-option");
    let dir_arg = dir.to_str().unwrap();
    let mut server = Server::start_command_line(
        &dir,
        &[
            "--data",
            dir_arg,
            "--listen",
            "127.0.0.1:0",
            "--store-cache-mib",
            "7",
            "--facts-cache-mib",
            "9",
            "--projections-cache-mib",
            "11",
            "--idempotency-window-seconds",
            "3600",
            "--pending-after-seconds",
            "5",
        ],
        &[("PAYSTREAM_ADMIN_KEY", ADMIN_KEY), ("PAYSTREAM_LOG", "info")],
    );
    server.anonymous().get("/healthz").expect(200);
    server.admin().get("/v1/projections").expect(200);
    assert_eq!(server.stop().code(), Some(0), "{}", server.stderr_text());
    assert!(dir.join("log").is_dir(), "--data {dir_arg} holds the log");
    assert!(dir.join("secrets/fingerprint.key").is_file(), "without PAYSTREAM_FINGERPRINT_KEY the key is made");
    let settings = [
        "store_cache_mib=7",
        "facts_cache_mib=9",
        "projections_cache_mib=11",
        "idempotency_window_seconds=3600",
        "pending_after_seconds=5",
    ];
    assert_settings(&server.stderr_text(), &settings);

    // From the variables; the command line wins over a variable.
    let dir = root.path().join("by-variable");
    let key = "psk_variable_admin_key";
    let mut server = Server::start_command_line(
        &dir,
        &["--store-cache-mib", "13"],
        &[
            ("PAYSTREAM_DATA", dir.to_str().unwrap()),
            ("PAYSTREAM_LISTEN", "127.0.0.1:0"),
            ("PAYSTREAM_STORE_CACHE_MIB", "7"),
            ("PAYSTREAM_FACTS_CACHE_MIB", "9"),
            ("PAYSTREAM_PROJECTIONS_CACHE_MIB", "11"),
            ("PAYSTREAM_IDEMPOTENCY_WINDOW_SECONDS", "3600"),
            ("PAYSTREAM_PENDING_AFTER_SECONDS", "5"),
            ("PAYSTREAM_ADMIN_KEY", key),
            ("PAYSTREAM_FINGERPRINT_KEY", &"ab".repeat(32)),
            ("PAYSTREAM_LOG", "info"),
        ],
    );
    server.anonymous().get("/healthz").expect(200);
    server.client(key).get("/v1/projections").expect(200);
    assert_eq!(server.stop().code(), Some(0), "{}", server.stderr_text());
    assert!(dir.join("log").is_dir(), "PAYSTREAM_DATA={} holds the log", dir.display());
    assert!(!dir.join("secrets/fingerprint.key").exists(), "PAYSTREAM_FINGERPRINT_KEY is the key");
    let mut settings = settings;
    settings[0] = "store_cache_mib=13";
    assert_settings(&server.stderr_text(), &settings);

    // PAYSTREAM_LOG: at warn, no info line.
    let dir = root.path().join("quiet");
    let mut server = Server::start_command_line(
        &dir,
        &["--data", dir.to_str().unwrap(), "--listen", "127.0.0.1:0"],
        &[("PAYSTREAM_ADMIN_KEY", ADMIN_KEY), ("PAYSTREAM_LOG", "warn")],
    );
    server.anonymous().get("/healthz").expect(200);
    assert_eq!(server.stop().code(), Some(0), "{}", server.stderr_text());
    assert!(!server.stderr_text().contains("INFO"), "{}", server.stderr_text());
}

#[test]
fn listen_takes_a_host_name() {
    let data = temp_data_dir();
    let port = free_port();
    let listen = format!("localhost:{port}");
    let mut server = Server::start_command_line(
        data.path(),
        &["--data", data.path().to_str().unwrap(), "--listen", &listen],
        &[("PAYSTREAM_ADMIN_KEY", ADMIN_KEY), ("PAYSTREAM_LOG", "warn")],
    );
    assert_eq!(server.addr, SocketAddr::from(([127, 0, 0, 1], port)), "localhost listens on 127.0.0.1");
    server.anonymous().get("/healthz").expect(200);
    assert_eq!(server.stop().code(), Some(0), "{}", server.stderr_text());

    let unknown =
        paystream(&["serve", "--data", data.path().to_str().unwrap(), "--listen", "no-such-host.invalid:8080"]);
    assert!(!unknown.status.success());
    let said = String::from_utf8_lossy(&unknown.stderr);
    assert!(said.contains("cannot listen on no-such-host.invalid:8080") && said.contains("--listen"), "{said}");
}

#[test]
fn a_busy_port_is_named_and_makes_no_admin_key() {
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap();
    let root = temp_data_dir();
    let dir = root.path().join("fresh");
    let dir_arg = dir.to_str().unwrap();
    for listen in [addr.to_string(), format!("localhost:{}", addr.port())] {
        let output = paystream(&["serve", "--data", dir_arg, "--listen", &listen]);
        assert!(!output.status.success(), "serve on a busy {listen} exited 0");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(said.contains(&format!("cannot listen on {listen}")), "{said}");
        assert!(said.contains(&addr.to_string()) && said.contains("address already in use"), "{said}");
        assert!(said.contains("--listen"), "says what to do: {said}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(!stdout.contains("admin API key") && !stdout.contains("psk_"), "{stdout}");
        assert!(!dir.exists(), "a busy port leaves the data directory uncreated");
    }
    drop(holder);

    // The first start that binds makes the admin key, shows it, and it works.
    let mut server = Server::start_command_line(&dir, &["--data", dir_arg, "--listen", "127.0.0.1:0"], &[]);
    let stdout = String::from_utf8(server.stdout()).unwrap();
    assert!(stdout.contains("First start: your admin API key"), "{stdout}");
    let key = stdout.lines().map(str::trim).find(|line| line.starts_with("psk_")).unwrap();
    server.client(key).get("/v1/projections").expect(200);
    assert_eq!(server.stop().code(), Some(0), "{}", server.stderr_text());
}

#[test]
fn a_live_servers_directory_is_refused_by_replay_export_and_serve_but_verified() {
    let server = Server::start();
    let merchant = onboard(&server, "Live Shop", "B");
    merchant.pay(&card_payment(1_000, "automatic"));
    let dir = server.data_dir().to_str().unwrap().to_string();
    for args in [
        vec!["replay", "--data", &dir],
        vec!["export", "--projection", "ledger", "--data", &dir],
        vec!["serve", "--data", &dir, "--listen", "127.0.0.1:0"],
    ] {
        let mut command = paystream_command();
        command.args(&args).env("PAYSTREAM_LOG", "warn").env("PAYSTREAM_ADMIN_KEY", ADMIN_KEY);
        let output = finished(command);
        assert!(!output.status.success(), "{args:?} succeeded beside a live server");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(said.contains(&format!("a server is using this data directory: {dir}")), "{args:?}: {said}");
        assert!(said.contains("stop it first"), "{args:?} says what to do: {said}");
        assert!(!said.contains("could not acquire lock"), "{args:?}: {said}");
    }
    // verify takes no lock: it checks a live server's log.
    let report = succeeded(paystream(&["verify", "--data", &dir]), "verify beside a live server");
    assert!(report.contains("chain intact"), "{report}");
    server.anonymous().get("/healthz").expect(200);
}

#[test]
fn bench_options_are_taken_from_the_command_line_or_their_variables() {
    let root = temp_data_dir();
    // bench http with a child server, everything from PAYSTREAM_BENCH_*; a server's
    // PAYSTREAM_DATA does not steer it.
    let dir = root.path().join("bench-http");
    let server_data = root.path().join("server-data");
    let mut command = paystream_command();
    command.args(["bench", "http"]).envs([
        ("PAYSTREAM_LOG", "warn"),
        ("PAYSTREAM_DATA", server_data.to_str().unwrap()),
        ("PAYSTREAM_BENCH_CLIENTS", "2"),
        ("PAYSTREAM_BENCH_SECONDS", "1"),
        ("PAYSTREAM_BENCH_INTERVAL_SECONDS", "1"),
        ("PAYSTREAM_BENCH_DATA", dir.to_str().unwrap()),
        ("PAYSTREAM_BENCH_STORE_CACHE_MIB", "8"),
        ("PAYSTREAM_BENCH_FACTS_CACHE_MIB", "8"),
        ("PAYSTREAM_BENCH_PROJECTIONS_CACHE_MIB", "8"),
    ]);
    let report = succeeded(finished(command), "bench http");
    assert!(report.contains("restart on this data"), "{report}");
    assert!(dir.join("log").is_dir(), "PAYSTREAM_BENCH_DATA keeps the bench's data");
    assert!(!server_data.exists(), "PAYSTREAM_DATA is not the bench's");

    // bench http against a running server: nothing listens there, and it says where.
    let url = format!("127.0.0.1:{}", free_port());
    let by_option = paystream(&[
        "bench",
        "http",
        "--url",
        &url,
        "--admin-key",
        "k",
        "--clients",
        "2",
        "--seconds",
        "1",
        "--interval-seconds",
        "1",
    ]);
    let by_variable = paystream_command()
        .args(["bench", "http"])
        .envs([("PAYSTREAM_LOG", "warn"), ("PAYSTREAM_BENCH_URL", &url), ("PAYSTREAM_BENCH_ADMIN_KEY", "k")])
        .output()
        .unwrap();
    for output in [by_option, by_variable] {
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(said.contains(&format!("cannot connect to {url}")), "{said}");
    }
    // The child's options do not apply to a running server.
    let both = paystream(&["bench", "http", "--url", &url, "--admin-key", "k", "--store-cache-mib", "8"]);
    assert_eq!(both.status.code(), Some(2), "{both:?}");

    // bench store in a directory that cannot be made: the options were taken, and the
    // error names the directory.
    let blocker = root.path().join("a-file");
    std::fs::write(&blocker, b"").unwrap();
    let bad_dir = blocker.join("bench");
    let by_option = paystream(&["bench", "store", "--events", "10", "--dir", bad_dir.to_str().unwrap()]);
    let by_variable = paystream_command()
        .args(["bench", "store"])
        .envs([
            ("PAYSTREAM_LOG", "warn"),
            ("PAYSTREAM_BENCH_EVENTS", "10"),
            ("PAYSTREAM_BENCH_DIR", bad_dir.to_str().unwrap()),
        ])
        .output()
        .unwrap();
    for output in [by_option, by_variable] {
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(said.contains(&format!("bench store in {}", bad_dir.display())), "{said}");
    }
    let bad = paystream_command().args(["bench", "store"]).env("PAYSTREAM_BENCH_EVENTS", "many").output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("PAYSTREAM_BENCH_EVENTS"), "{bad:?}");
}

#[cfg(unix)]
#[test]
fn secrets_are_the_owners_only_and_a_short_fingerprint_key_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let root = temp_data_dir();

    // A short (or empty) key would let anyone compute fingerprints: refused, nothing created.
    for short in ["", "ab", &"ab".repeat(31)] {
        let dir = root.path().join("short");
        let mut command = paystream_command();
        command
            .args(["serve", "--data", dir.to_str().unwrap(), "--listen", "127.0.0.1:0"])
            .env("PAYSTREAM_LOG", "warn")
            .env("PAYSTREAM_FINGERPRINT_KEY", short);
        let output = finished(command);
        assert!(!output.status.success(), "PAYSTREAM_FINGERPRINT_KEY={short:?} was accepted");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(said.contains("PAYSTREAM_FINGERPRINT_KEY") && said.contains("at least 32"), "{said}");
    }

    // A first start makes the data directory and the key file for its owner only.
    let dir = root.path().join("fresh");
    let mut server =
        Server::start_command_line(&dir, &["--data", dir.to_str().unwrap(), "--listen", "127.0.0.1:0"], &[]);
    server.anonymous().get("/healthz").expect(200);
    assert_eq!(server.stop().code(), Some(0), "{}", server.stderr_text());
    assert_eq!(mode(&dir), 0o700, "the data directory");
    assert_eq!(mode(&dir.join("secrets")), 0o700, "the secrets directory");
    assert_eq!(mode(&dir.join("secrets/fingerprint.key")), 0o600, "the key file");

    // A key file left readable by an older server is made private at the next start.
    std::fs::set_permissions(dir.join("secrets/fingerprint.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut server =
        Server::start_command_line(&dir, &["--data", dir.to_str().unwrap(), "--listen", "127.0.0.1:0"], &[]);
    server.anonymous().get("/healthz").expect(200);
    assert_eq!(server.stop().code(), Some(0), "{}", server.stderr_text());
    assert_eq!(mode(&dir.join("secrets/fingerprint.key")), 0o600, "the key file after a restart");
}

#[test]
fn a_stop_right_after_listening_is_a_clean_stop() {
    let root = temp_data_dir();
    let dir = root.path().join("quick");
    for _ in 0..3 {
        let mut server = Server::start_command_line(
            &dir,
            &["--data", dir.to_str().unwrap(), "--listen", "127.0.0.1:0"],
            &[("PAYSTREAM_ADMIN_KEY", ADMIN_KEY)],
        );
        // SIGTERM at once: the handler must already be installed.
        assert_eq!(server.stop().code(), Some(0), "{}", server.stderr_text());
        assert!(server.stderr_text().contains("stopped cleanly"), "{}", server.stderr_text());
    }
}
