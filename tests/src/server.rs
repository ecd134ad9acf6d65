//! The `paystream` binary under test: found (and built when needed) once per
//! test process, run as `paystream serve` on a free port with its own data
//! directory, stopped with SIGTERM or killed when its guard drops.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::http::Client;

/// The admin key every test server registers (PAYSTREAM_ADMIN_KEY).
pub const ADMIN_KEY: &str = "psk_test_admin_key";
/// Longest wait for `listening on ...` after spawning the server.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for the server to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Path of the `paystream` binary.
///
/// `PAYSTREAM_BIN` names a prebuilt binary. Otherwise the binary is built
/// with `cargo build -p paystream-api --bin paystream` into the target
/// directory this test executable was built in (it lives in
/// `<target>/<profile>/deps/`), with the same profile, so `cargo test` from a
/// clean clone, with or without `CARGO_TARGET_DIR`, tests the current
/// sources. Cargo's own freshness check makes the build a no-op when
/// nothing changed; it runs once per test process.
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(path) = std::env::var_os("PAYSTREAM_BIN") {
            return PathBuf::from(path);
        }
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test executable lives in <target>/<profile>/deps/")
            .to_path_buf();
        let target_dir = profile_dir.parent().expect("<target>/<profile>").to_path_buf();
        let profile = profile_dir.file_name().and_then(|n| n.to_str()).expect("profile directory name");
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .current_dir(workspace)
            .args(["build", "--quiet", "-p", "paystream-api", "--bin", "paystream"])
            .env("CARGO_TARGET_DIR", &target_dir);
        match profile {
            "debug" => {}
            "release" => {
                build.arg("--release");
            }
            other => {
                build.args(["--profile", other]);
            }
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "cargo build -p paystream-api failed: {status}");
        let binary = profile_dir.join(format!("paystream{}", std::env::consts::EXE_SUFFIX));
        assert!(binary.is_file(), "{} missing after cargo build", binary.display());
        binary
    })
}

/// The `paystream` binary as a command whose environment holds none of the test
/// process's PAYSTREAM_* variables: every option is also read from one
/// (`PAYSTREAM_DATA`, ...), and a developer's exported settings must not steer the
/// servers under test.
pub fn paystream_command() -> Command {
    let mut command = Command::new(binary());
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|name| name.starts_with("PAYSTREAM_")) {
            command.env_remove(name);
        }
    }
    command
}

/// A new, empty temporary directory for a server's data, removed on drop.
///
/// Under `PAYSTREAM_TEST_TMPDIR` if set, else in `/dev/shm` where it exists
/// (Linux tmpfs), else in the system temp directory. Every append waits for
/// fdatasync; on a disk that is ~20 ms, on tmpfs ~0, and these tests are
/// about the API, not about durability (the store's own tests cover that),
/// so tmpfs keeps the suite fast without weakening what it checks.
pub fn temp_data_dir() -> tempfile::TempDir {
    let root = match std::env::var_os("PAYSTREAM_TEST_TMPDIR") {
        Some(dir) => PathBuf::from(dir),
        None if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
        None => std::env::temp_dir(),
    };
    tempfile::Builder::new()
        .prefix("paystream-test-")
        .tempdir_in(&root)
        .or_else(|_| tempfile::Builder::new().prefix("paystream-test-").tempdir())
        .expect("create a temporary data directory")
}

/// Where the server keeps its data: a temporary directory it owns, or one
/// the test owns (to restart a server on the same data).
enum DataDir {
    Owned(tempfile::TempDir),
    Borrowed(PathBuf),
}

impl DataDir {
    fn path(&self) -> &Path {
        match self {
            DataDir::Owned(dir) => dir.path(),
            DataDir::Borrowed(path) => path,
        }
    }
}

/// A running `paystream serve`. Dropping it kills the process (SIGKILL);
/// [`Server::stop`] stops it the graceful way.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    data: DataDir,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    admin_key: String,
}

impl Server {
    /// A server on a fresh temporary data directory, logging at `info`.
    pub fn start() -> Server {
        Server::spawn(DataDir::Owned(temp_data_dir()), "info", ADMIN_KEY, &[])
    }

    /// A server on a fresh temporary data directory whose admin key
    /// (PAYSTREAM_ADMIN_KEY) is `admin_key`.
    pub fn start_with_admin_key(admin_key: &str) -> Server {
        Server::spawn(DataDir::Owned(temp_data_dir()), "info", admin_key, &[])
    }

    /// A server on `data` (kept after it stops), logging at `log_level`
    /// (the PAYSTREAM_LOG filter).
    pub fn start_in(data: &Path, log_level: &str) -> Server {
        Server::spawn(DataDir::Borrowed(data.to_path_buf()), log_level, ADMIN_KEY, &[])
    }

    /// [`Server::start_in`] with more `serve` options (e.g. `--idempotency-window-seconds 2`).
    pub fn start_in_with(data: &Path, log_level: &str, serve_args: &[&str]) -> Server {
        Server::spawn(DataDir::Borrowed(data.to_path_buf()), log_level, ADMIN_KEY, serve_args)
    }

    /// Kills the process with SIGKILL (a crash) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// `paystream serve` with exactly `args` and, of the PAYSTREAM_* variables, exactly
    /// `env` (those of the test process are not passed on): the command line's own tests.
    /// `data` is where `args` or `env` put the data (kept after it stops). The admin
    /// client uses `env`'s PAYSTREAM_ADMIN_KEY, if any.
    pub fn start_command_line(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut command = paystream_command();
        command.arg("serve").args(args).envs(env.iter().copied());
        let admin_key = env.iter().find(|(name, _)| *name == "PAYSTREAM_ADMIN_KEY").map_or("", |(_, key)| key);
        Server::launch(command, DataDir::Borrowed(data.to_path_buf()), admin_key)
    }

    fn spawn(data: DataDir, log_level: &str, admin_key: &str, serve_args: &[&str]) -> Server {
        let mut command = paystream_command();
        command
            .arg("serve")
            .arg("--data")
            .arg(data.path())
            .args(["--listen", "127.0.0.1:0"])
            .args(serve_args)
            .env("PAYSTREAM_ADMIN_KEY", admin_key)
            .env("PAYSTREAM_LOG", log_level);
        Server::launch(command, data, admin_key)
    }

    fn launch(mut command: Command, data: DataDir, admin_key: &str) -> Server {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn paystream serve");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let out_pipe = child.stdout.take().expect("stdout pipe");
        let err_pipe = child.stderr.take().expect("stderr pipe");
        let out_reader = {
            let stdout = Arc::clone(&stdout);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(out_pipe);
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    if let Some(addr) = line.trim().strip_prefix("listening on http://") {
                        let _ = ready_tx.send(addr.to_string());
                    }
                    stdout.lock().unwrap().extend_from_slice(line.as_bytes());
                    line.clear();
                }
            })
        };
        let err_reader = {
            let stderr = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(err_pipe);
                let mut chunk = [0_u8; 8192];
                while let Ok(n @ 1..) = reader.read(&mut chunk) {
                    stderr.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            })
        };
        let addr = match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => addr.parse().expect("listening address"),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = out_reader.join();
                let _ = err_reader.join();
                panic!(
                    "paystream serve did not print `listening on`; stdout:\n{}\nstderr:\n{}",
                    String::from_utf8_lossy(&stdout.lock().unwrap()),
                    String::from_utf8_lossy(&stderr.lock().unwrap()),
                );
            }
        };
        Server {
            child,
            addr,
            data,
            stdout,
            stderr,
            readers: vec![out_reader, err_reader],
            admin_key: admin_key.to_string(),
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// A client with no key.
    pub fn anonymous(&self) -> Client {
        Client::new(self.addr, None)
    }

    /// A client with `key`.
    pub fn client(&self, key: &str) -> Client {
        Client::new(self.addr, Some(key))
    }

    /// A client with the admin key.
    pub fn admin(&self) -> Client {
        self.client(&self.admin_key)
    }

    /// Sends SIGTERM and waits for the process to exit; returns its status
    /// once stdout and stderr are fully read.
    pub fn stop(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("paystream did not exit within {STOP_TIMEOUT:?} of SIGTERM; stderr:\n{}", self.stderr_text());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        status
    }

    /// Everything the server printed on stdout so far.
    pub fn stdout(&self) -> Vec<u8> {
        self.stdout.lock().unwrap().clone()
    }

    /// Everything the server logged on stderr so far.
    pub fn stderr(&self) -> Vec<u8> {
        self.stderr.lock().unwrap().clone()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr()).into_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // The data directory (if owned) is removed after the process is gone.
    }
}
