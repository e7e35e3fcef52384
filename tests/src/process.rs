//! Real worker processes, for the tests that kill, pause and resume them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The `worker` binary next to the test executable (`target/<profile>/worker`).
/// `scripts/test.sh` builds it before the tests run.
pub fn worker_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join("worker");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bin worker` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A free port on 127.0.0.1, for a child's `/metrics`.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A worker running as its own process; killed when dropped.
pub struct WorkerProcess {
    child: Child,
    /// Where its `/metrics` is served.
    pub metrics_port: u16,
}

impl WorkerProcess {
    /// Starts `worker` with exactly `env` (plus `PATH`), logging to a file in
    /// the temporary directory.
    pub fn start(env: &HashMap<String, String>) -> WorkerProcess {
        let metrics_port = free_port();
        let log = std::env::temp_dir().join(format!("flashstock-worker-{metrics_port}.log"));
        let log = std::fs::File::create(&log).expect("worker log file");
        let child = Command::new(worker_binary())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env)
            .env("WORKER_METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
            .env("RUST_LOG", "info,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("the worker process starts");
        WorkerProcess {
            child,
            metrics_port,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (such as `KILL`, `STOP`, `CONT`, `TERM`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit (after a SIGTERM), up to `timeout`.
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        None
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        // A paused process must be resumed for SIGKILL to be reaped promptly.
        let _ = Command::new("kill")
            .arg("-CONT")
            .arg(self.pid().to_string())
            .status();
        self.kill();
    }
}
