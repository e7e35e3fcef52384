//! Real api and worker processes, for the tests that kill, pause and resume them.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary `name` next to the test executable (`target/<profile>/<name>`).
/// `scripts/test.sh` builds it before the tests run.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bins` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A child process of ours, logging to a file in the temporary directory;
/// resumed and killed when dropped.
pub struct Process {
    child: Child,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

impl Process {
    /// Starts binary `name` with exactly `env` and then `extra` (plus `PATH`).
    pub fn start(name: &str, env: &HashMap<String, String>, extra: &[(&str, String)]) -> Process {
        let log = std::env::temp_dir().join(format!(
            "flashstock-{name}-{}.log",
            uuid::Uuid::new_v4().simple()
        ));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(binary(name))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info,sqlx=warn")
            .envs(env)
            .envs(extra.iter().map(|(k, v)| (*k, v)))
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("the {name} process starts: {e}"));
        Process { child, log }
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

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What it has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // A paused process must be resumed for SIGKILL to be reaped promptly.
        let _ = Command::new("kill")
            .arg("-CONT")
            .arg(self.pid().to_string())
            .stderr(Stdio::null())
            .status();
        self.kill();
    }
}

/// A worker running as its own process.
pub struct WorkerProcess {
    process: Process,
    /// Where its `/metrics` is served.
    pub metrics_port: u16,
}

impl WorkerProcess {
    /// Starts `worker` with `env` and then `extra`, serving `/metrics` on a free port.
    pub fn start(env: &HashMap<String, String>, extra: &[(&str, String)]) -> WorkerProcess {
        let metrics_port = free_port();
        let mut vars = vec![("WORKER_METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))];
        vars.extend(extra.iter().cloned());
        WorkerProcess {
            process: Process::start("worker", env, &vars),
            metrics_port,
        }
    }

    /// The value of counter `name` on its `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        metric(&format!("http://127.0.0.1:{}", self.metrics_port), name).await
    }
}

impl Deref for WorkerProcess {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.process
    }
}

impl DerefMut for WorkerProcess {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

/// An api running as its own process.
pub struct ApiProcess {
    process: Process,
    /// `http://127.0.0.1:{port}`.
    pub address: String,
}

impl ApiProcess {
    /// Starts `api` with `env` and then `extra` on a free port, and waits
    /// (up to 30 s) until `/healthz` answers.
    pub async fn start(env: &HashMap<String, String>, extra: &[(&str, String)]) -> ApiProcess {
        let port = free_port();
        let mut vars = vec![("API_ADDR", format!("127.0.0.1:{port}"))];
        vars.extend(extra.iter().cloned());
        let mut process = Process::start("api", env, &vars);
        let address = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = client
                .get(format!("{address}/healthz"))
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if up {
                break;
            }
            if let Some(status) = process.wait_exit(Duration::ZERO) {
                panic!("the api exited ({status}): {}", process.log_text());
            }
            assert!(Instant::now() < deadline, "the api did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ApiProcess { process, address }
    }
}

impl Deref for ApiProcess {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.process
    }
}

impl DerefMut for ApiProcess {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

/// The value of the unlabelled sample `name` at `{base}/metrics` (0 when
/// absent or unreachable).
pub async fn metric(base: &str, name: &str) -> f64 {
    let Ok(response) = reqwest::get(format!("{base}/metrics")).await else {
        return 0.0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .filter_map(|value| value.trim().parse().ok())
        .next()
        .unwrap_or(0.0)
}
