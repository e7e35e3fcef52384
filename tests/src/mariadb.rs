//! A MariaDB primary and a replica on this machine, for the database
//! failover tests: Debian's `mariadbd`, each server with a port, data
//! folder and socket of its own under one temporary folder; the machine's
//! own server (3306) is left alone. GTID replication, semi-synchronous with
//! `AFTER_SYNC` when asked (both built into MariaDB 10.11): a commit is
//! answered only once the replica has it in its relay log. The replica runs
//! `read_only`. Dropping the [`Replicated`] kills both servers and removes
//! the folder, also when a test panics.
//!
//! Promotion is done as an orchestrator would: [`Replicated::promote`]
//! (`STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = 0`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to accept connections.
const START: Duration = Duration::from_secs(60);

/// One server.
#[derive(Debug)]
struct Server {
    port: u16,
    dir: PathBuf,
    server_id: u32,
    child: Option<Child>,
}

/// A primary (server 0) and its replica (server 1).
#[derive(Debug)]
pub struct Replicated {
    dir: PathBuf,
    servers: Vec<Server>,
    semi_sync: bool,
}

impl Replicated {
    /// Starts both servers and makes server 1 a replica of server 0;
    /// `semi_sync` makes the primary wait for the replica at every commit.
    pub async fn start(semi_sync: bool) -> Replicated {
        Self::start_lagging(semi_sync, 0).await
    }

    /// [`Replicated::start`], the replica applying what it receives `lag`
    /// seconds late (`MASTER_DELAY`): a replica behind, as one across a
    /// network under load is; on one machine it otherwise never is.
    pub async fn start_lagging(semi_sync: bool, lag: u32) -> Replicated {
        tokio::task::spawn_blocking(move || Self::start_blocking(semi_sync, lag))
            .await
            .expect("starting the servers")
    }

    fn start_blocking(semi_sync: bool, lag: u32) -> Replicated {
        let dir = std::env::temp_dir().join(format!(
            "flashstock-mariadb-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        let mut servers = Vec::new();
        for i in 0..2u32 {
            let folder = dir.join(format!("server{i}"));
            std::fs::create_dir_all(folder.join("data")).expect("server folder");
            let status = Command::new("mariadb-install-db")
                .args([
                    "--no-defaults",
                    "--user=root",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ])
                .arg(format!("--datadir={}", folder.join("data").display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("mariadb-install-db runs");
            assert!(status.success(), "mariadb-install-db failed");
            servers.push(Server {
                port: crate::process::free_port(),
                dir: folder,
                server_id: i + 1,
                child: None,
            });
        }
        let mut replicated = Replicated {
            dir,
            servers,
            semi_sync,
        };
        replicated.launch(0, false);
        replicated.launch(1, true);
        replicated.sql(
            1,
            &format!(
                "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {}, MASTER_USER = 'root', \
                 MASTER_PASSWORD = '', MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1, \
                 MASTER_DELAY = {lag}; START SLAVE",
                replicated.servers[0].port
            ),
        );
        replicated
    }

    /// Starts server `i` on its folder, `read_only` when asked.
    fn launch(&mut self, i: usize, read_only: bool) {
        self.launch_with(i, read_only, &[]);
    }

    /// [`Replicated::launch`] with `extra` options.
    fn launch_with(&mut self, i: usize, read_only: bool, extra: &[&str]) {
        // The primary waits for a replica; a replica acknowledges (and, its
        // SQL thread writing its own binlog, must not wait itself).
        let on = |yes: bool| if yes { "ON" } else { "OFF" };
        let (master, slave) = (
            on(self.semi_sync && !read_only),
            on(self.semi_sync && read_only),
        );
        let server = &mut self.servers[i];
        let data = server.dir.join("data");
        let child = Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", server.dir.join("sock").display()))
            .arg(format!("--pid-file={}", server.dir.join("pid").display()))
            .arg(format!(
                "--log-error={}",
                server.dir.join("error.log").display()
            ))
            .arg(format!("--port={}", server.port))
            .arg(format!("--server-id={}", server.server_id))
            .arg(format!("--log-bin={}", data.join("binlog").display()))
            .arg(format!(
                "--read-only={}",
                if read_only { "ON" } else { "OFF" }
            ))
            .args([
                "--user=root",
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--gtid-strict-mode=ON",
                "--log-slave-updates=ON",
                "--innodb-buffer-pool-size=64M",
                "--max-connections=500",
                "--rpl-semi-sync-master-wait-point=AFTER_SYNC",
                // Waits for the replica up to 10 s, then carries on alone
                // (and says so in Rpl_semi_sync_master_status).
                "--rpl-semi-sync-master-timeout=10000",
            ])
            .arg(format!("--rpl-semi-sync-master-enabled={master}"))
            .arg(format!("--rpl-semi-sync-slave-enabled={slave}"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd starts");
        server.child = Some(child);
        let deadline = Instant::now() + START;
        while std::net::TcpStream::connect(("127.0.0.1", server.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "server {i} did not start: see {}",
                server.dir.join("error.log").display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // mariadb-install-db made root@127.0.0.1, without a password.
    }

    /// Runs `sql` on server `i` through its socket (as root).
    fn sql(&self, i: usize, sql: &str) -> String {
        let server = &self.servers[i];
        let out = Command::new("mariadb")
            .arg(format!("--socket={}", server.dir.join("sock").display()))
            .args(["-u", "root", "-N", "-B", "-e", sql])
            .output()
            .expect("mariadb runs");
        assert!(
            out.status.success(),
            "server {i}: {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `mysql://root@127.0.0.1:{port}` of server `i`.
    pub fn server_url(&self, i: usize) -> String {
        format!("mysql://root@127.0.0.1:{}", self.servers[i].port)
    }

    /// `DATABASE_URL` for database `name` listing both servers, server
    /// `first` first.
    pub fn url(&self, name: &str, first: usize) -> String {
        let other = self.servers[1 - first].port;
        format!("{}/{name},127.0.0.1:{other}", self.server_url(first))
    }

    /// Kills server `i` at once (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Pauses server `i` (SIGSTOP): it holds its connections and answers
    /// nothing, as behind a network partition.
    pub fn pause(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    /// Resumes a paused server `i` (SIGCONT).
    pub fn resume(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    fn signal(&self, i: usize, signal: &str) {
        assert!(self.send(i, signal), "kill {signal} server {i}");
    }

    /// Sends `signal` to server `i`, if it runs; whether it was delivered.
    fn send(&self, i: usize, signal: &str) -> bool {
        self.servers[i].child.as_ref().is_none_or(|child| {
            Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .is_ok_and(|s| s.success())
        })
    }

    /// Makes server `i` the primary: stops replicating and takes writes.
    /// It has no replica yet, so semi-sync stays off on it (it would hold
    /// every commit for `rpl_semi_sync_master_timeout`, 10 s, before
    /// carrying on alone): an orchestrator turns it on when it attaches a
    /// replica.
    ///
    /// It first applies all it received: semi-sync AFTER_SYNC put every
    /// acknowledged commit in its relay log, and `RESET SLAVE ALL` would
    /// throw away what is there but not yet applied.
    pub fn promote(&self, i: usize) {
        self.sql(i, "STOP SLAVE IO_THREAD");
        let status = self.sql(i, "SHOW SLAVE STATUS\\G");
        let received = status
            .lines()
            .find_map(|l| l.trim().strip_prefix("Gtid_IO_Pos:"))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned();
        let applied = self.sql(i, &format!("SELECT MASTER_GTID_WAIT('{received}', 60)"));
        assert_eq!(
            applied, "0",
            "server {i} did not apply {received} within 60 s"
        );
        self.sql(i, "STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = 0");
    }

    /// Starts server `i` again, `read_only` or not.
    pub fn restart(&mut self, i: usize, read_only: bool) {
        self.launch(i, read_only);
    }

    /// Brings server `i`, a primary lost and replaced by `primary`, back as
    /// `primary`'s replica, as OPERATIONS.md's recovery says: started
    /// `read_only` with `--init-rpl-role=SLAVE` (and semi-sync on its
    /// replica side), so that it truncates the end of its binlog that no
    /// replica acknowledged; then replicating from where its own history
    /// ends (`current_pos`), and `primary` waiting for it again.
    pub fn rejoin(&mut self, i: usize, primary: usize) {
        self.launch_with(i, true, &["--init-rpl-role=SLAVE"]);
        self.sql(
            i,
            &format!(
                "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {}, MASTER_USER = 'root', \
                 MASTER_PASSWORD = '', MASTER_USE_GTID = current_pos, MASTER_CONNECT_RETRY = 1; START SLAVE",
                self.servers[primary].port
            ),
        );
        if self.semi_sync {
            self.sql(primary, "SET GLOBAL rpl_semi_sync_master_enabled = ON");
        }
    }

    /// Whether server `i`, as a primary, waits for a replica at each commit
    /// (`Rpl_semi_sync_master_status`: `ON`, or `OFF` once it fell back).
    pub fn semi_sync_status(&self, i: usize) -> String {
        let row = self.sql(i, "SHOW STATUS LIKE 'Rpl_semi_sync_master_status'");
        row.rsplit('\t').next().unwrap_or_default().to_owned()
    }

    /// Runs `sql` on server `i` and returns its tab-separated output.
    pub fn query(&self, i: usize, sql: &str) -> String {
        self.sql(i, sql)
    }
}

impl Drop for Replicated {
    fn drop(&mut self) {
        // Nothing here may panic: a panic while a test unwinds would abort
        // and leave the servers running.
        for i in 0..self.servers.len() {
            self.send(i, "-CONT");
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
