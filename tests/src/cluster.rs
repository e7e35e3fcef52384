//! A real three-node RabbitMQ cluster on this machine, for the cluster
//! fault tests (`cargo nextest run --profile faults`).
//!
//! Each node is Debian's `rabbitmq-server`, run as the current user with a
//! node name, AMQP and distribution ports, data and log folders and config
//! file of its own, all under one temporary folder; the machine's own broker
//! (5672, `rabbit@localhost`) is left alone. Dropping the [`Cluster`] stops
//! every node it started and removes the folder, also when a test panics.

use crate::services::port_open;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian installs the broker's own scripts (the ones in /usr/sbin
/// switch to the `rabbitmq` user and its fixed folders).
const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";
/// Nodes in the cluster.
pub const NODES: usize = 3;
/// How long a node may take to start (or start again and rejoin).
const START: Duration = Duration::from_secs(90);
/// The longest one `rabbitmqctl` call may run.
const CTL_TIMEOUT: Duration = Duration::from_secs(60);

/// One node of the cluster.
#[derive(Debug, Clone)]
pub struct Node {
    /// `flashstock-{pid}-{random}-{i}@localhost`.
    pub name: String,
    /// Its AMQP port on 127.0.0.1.
    pub amqp_port: u16,
    dist_port: u16,
}

/// A running three-node cluster; stopped and removed on drop.
#[derive(Debug)]
pub struct Cluster {
    layout: Layout,
}

/// Where each node lives; what starting and stopping one needs.
#[derive(Debug, Clone)]
struct Layout {
    dir: PathBuf,
    nodes: Vec<Node>,
}

impl Cluster {
    /// Starts three nodes and joins nodes 1 and 2 to node 0.
    pub async fn start() -> Cluster {
        tokio::task::spawn_blocking(Self::start_blocking)
            .await
            .expect("starting the cluster")
    }

    fn start_blocking() -> Cluster {
        remove_abandoned();
        let id = format!(
            "{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let dir = std::env::temp_dir().join(format!("flashstock-cluster-{id}"));
        std::fs::create_dir_all(dir.join("home")).expect("cluster folder");
        // The cluster's own cookie; the CLI reads it from $HOME.
        let cookie = dir.join("home/.erlang.cookie");
        std::fs::write(&cookie, uuid::Uuid::new_v4().simple().to_string()).expect("cookie");
        set_mode(&cookie, 0o400);
        // An empty env file, so /etc/rabbitmq/rabbitmq-env.conf (the
        // machine's node name) is not read; no plugins.
        std::fs::write(dir.join("rabbitmq-env.conf"), "").expect("env file");
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("plugins file");
        let mut taken = Vec::new();
        let mut nodes = Vec::new();
        for i in 0..NODES {
            let amqp_port = free_port(5681, &mut taken);
            let dist_port = free_port(25681, &mut taken);
            let node = Node {
                name: format!("flashstock-{id}-{i}@localhost"),
                amqp_port,
                dist_port,
            };
            let folder = dir.join(format!("node{i}"));
            std::fs::create_dir_all(folder.join("data")).expect("node folder");
            std::fs::create_dir_all(folder.join("log")).expect("node folder");
            std::fs::create_dir_all(folder.join("conf.d")).expect("node folder");
            std::fs::write(
                folder.join("rabbitmq.conf"),
                format!(
                    "listeners.tcp.local = 127.0.0.1:{amqp_port}\n\
                     loopback_users = none\n\
                     cluster_partition_handling = pause_minority\n"
                ),
            )
            .expect("node config");
            nodes.push(node);
        }
        let cluster = Cluster {
            layout: Layout { dir, nodes },
        };
        let layout = &cluster.layout;
        for i in 0..NODES {
            layout.launch(i);
        }
        for i in 0..NODES {
            layout.await_node(i);
        }
        for node in &layout.nodes[1..] {
            let name = node.name.as_str();
            layout.ctl(&["-n", name, "stop_app"]).expect("stop_app");
            layout
                .ctl(&["-n", name, "join_cluster", &layout.nodes[0].name])
                .expect("join_cluster");
            layout.ctl(&["-n", name, "start_app"]).expect("start_app");
        }
        for i in 0..NODES {
            layout.await_node(i);
        }
        cluster
    }

    /// The nodes, in the order they joined (node 0 first).
    pub fn nodes(&self) -> &[Node] {
        &self.layout.nodes
    }

    /// The folder holding every node's data, logs and config.
    pub fn dir(&self) -> &Path {
        &self.layout.dir
    }

    /// `AMQP_URL` naming every node, node `first` first and the rest in turn.
    /// The others are `host:port` entries, which take the credentials and
    /// virtual host from the first.
    pub fn url_from(&self, first: usize) -> String {
        let mut url = self.url_of(first);
        for k in 1..NODES {
            let port = self.nodes()[(first + k) % NODES].amqp_port;
            url.push_str(&format!(",127.0.0.1:{port}"));
        }
        url
    }

    /// `AMQP_URL` of node `i` alone.
    pub fn url_of(&self, i: usize) -> String {
        format!(
            "amqp://guest:guest@127.0.0.1:{}/%2f",
            self.nodes()[i].amqp_port
        )
    }

    /// Kills node `i` outright (SIGKILL: no goodbye to its peers or clients)
    /// and waits until its AMQP port is closed.
    pub async fn kill(&self, i: usize) {
        let pid = std::fs::read_to_string(self.layout.pid_file(i)).expect("the node's pid file");
        let status = tokio::process::Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .await
            .expect("kill runs");
        assert!(status.success(), "kill node {i}: {status}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while port_open(self.nodes()[i].amqp_port) {
            assert!(Instant::now() < deadline, "node {i} did not stop");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = std::fs::remove_file(self.layout.pid_file(i));
    }

    /// Starts node `i` again (it rejoins the cluster from its data folder)
    /// and waits until it runs.
    pub async fn restart(&self, i: usize) {
        let layout = self.layout.clone();
        tokio::task::spawn_blocking(move || {
            layout.launch(i);
            layout.await_node(i);
        })
        .await
        .expect("restarting the node");
    }

    /// The node leading each queue whose name starts with `prefix`, as an
    /// index into [`Cluster::nodes`].
    pub async fn leaders(&self, prefix: &str) -> Vec<(String, usize)> {
        let rows = self
            .ctl_json(&["list_queues", "name", "leader", "--online"])
            .await;
        rows.iter()
            .filter_map(|row| {
                let name = row["name"].as_str()?;
                let leader = row["leader"].as_str()?;
                let node = self.nodes().iter().position(|n| n.name == leader)?;
                name.starts_with(prefix).then(|| (name.to_owned(), node))
            })
            .collect()
    }

    /// The node each client connection is on, by the connection name the
    /// client gave (`flashstock api-…`, `flashstock worker-…`).
    pub async fn connections(&self) -> Vec<(String, usize)> {
        let rows = self
            .ctl_json(&["list_connections", "client_properties", "port"])
            .await;
        rows.iter()
            .filter_map(|row| {
                let port = row["port"].as_u64()?;
                let node = self
                    .nodes()
                    .iter()
                    .position(|n| u64::from(n.amqp_port) == port)?;
                let props = row["client_properties"].as_array()?;
                let name = props.iter().find_map(|p| {
                    let p = p.as_array()?;
                    (p.first()?.as_str()? == "connection_name")
                        .then(|| p.get(2)?.as_str().map(str::to_owned))?
                })?;
                Some((name, node))
            })
            .collect()
    }

    /// Runs a listing on the first running node, as JSON rows.
    async fn ctl_json(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for node in self.nodes() {
                if !port_open(node.amqp_port) {
                    continue;
                }
                let mut ctl_args = vec!["-n", node.name.as_str(), "--formatter", "json", "-q"];
                ctl_args.extend_from_slice(args);
                let out = tokio::process::Command::from(self.layout.ctl_command(&ctl_args))
                    .output()
                    .await
                    .expect("rabbitmqctl runs");
                if out.status.success()
                    && let Ok(rows) = serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
                {
                    return rows;
                }
            }
            assert!(Instant::now() < deadline, "no node answered {args:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Layout {
    fn launch(&self, i: usize) {
        let node = &self.nodes[i];
        let folder = self.dir.join(format!("node{i}"));
        let mut command = Command::new(format!("{RABBITMQ_BIN}/rabbitmq-server"));
        // Nothing of the machine's broker: none of the caller's RABBITMQ_*
        // variables, no /etc/rabbitmq/conf.d, no advanced.config.
        without_rabbitmq_env(&mut command);
        let status = command
            .envs(self.cli_env())
            .env("RABBITMQ_CONFIG_FILES", folder.join("conf.d"))
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                folder.join("advanced.config"),
            )
            .env("RABBITMQ_NODENAME", &node.name)
            .env("RABBITMQ_CONFIG_FILE", folder.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.dir.join("enabled_plugins"),
            )
            .env("RABBITMQ_MNESIA_BASE", folder.join("data"))
            .env("RABBITMQ_LOG_BASE", folder.join("log"))
            .env("RABBITMQ_PID_FILE", self.pid_file(i))
            .env("RABBITMQ_DIST_PORT", node.dist_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("ERL_FLAGS", "-kernel inet_dist_use_interface {127,0,0,1}")
            .arg("-detached")
            .status()
            .expect("rabbitmq-server runs");
        assert!(status.success(), "starting node {i}: {status}");
    }

    /// Waits until node `i` has written its pid file and its broker runs.
    fn await_node(&self, i: usize) {
        let deadline = Instant::now() + START;
        let name = &self.nodes[i].name;
        loop {
            let waited = self.ctl(&[
                "-n",
                name,
                "wait",
                &self.pid_file(i).to_string_lossy(),
                "--timeout",
                "30",
            ]);
            if waited.is_ok() && port_open(self.nodes[i].amqp_port) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {i} did not start: {waited:?}; logs in {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `rabbitmqctl` with `args`, stopped after [`CTL_TIMEOUT`] (and
    /// killed 10 s later if it ignores that).
    fn ctl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("timeout");
        command
            .args(["-k", "10"])
            .arg(CTL_TIMEOUT.as_secs().to_string())
            .arg(format!("{RABBITMQ_BIN}/rabbitmqctl"));
        without_rabbitmq_env(&mut command);
        command.envs(self.cli_env()).args(args);
        command
    }

    /// Runs `rabbitmqctl` with `args`, killed after [`CTL_TIMEOUT`].
    fn ctl(&self, args: &[&str]) -> Result<(), String> {
        let out = self
            .ctl_command(args)
            .output()
            .map_err(|e| format!("rabbitmqctl: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "rabbitmqctl {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn cli_env(&self) -> [(&'static str, PathBuf); 2] {
        [
            ("HOME", self.dir.join("home")),
            ("RABBITMQ_CONF_ENV_FILE", self.dir.join("rabbitmq-env.conf")),
        ]
    }

    fn pid_file(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node{i}/pid"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let layout = &self.layout;
        // A clean stop of every node at once, each waiting for its process
        // to exit (`shutdown` asks the node for its pid; it fails at once
        // for a node that is down); SIGKILL when that fails and a node of
        // this folder still runs.
        let stops: Vec<_> = (0..layout.nodes.len())
            .map(|i| {
                let name = layout.nodes[i].name.as_str();
                let mut stop = layout.ctl_command(&["-n", name, "shutdown"]);
                stop.stdout(Stdio::null()).stderr(Stdio::null()).spawn()
            })
            .collect();
        for (i, stop) in stops.into_iter().enumerate() {
            let stopped = stop.and_then(|mut child| child.wait());
            if !stopped.is_ok_and(|status| status.success()) {
                kill_node(&layout.pid_file(i), &layout.dir);
            }
        }
        if let Err(e) = remove_folder(&layout.dir) {
            eprintln!("removing {}: {e}", layout.dir.display());
        }
    }
}

/// Stops the nodes of clusters whose test process is gone (killed before
/// its drop could run) and removes their folders.
fn remove_abandoned() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("flashstock-cluster-")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        for i in 0..NODES {
            kill_node(&entry.path().join(format!("node{i}/pid")), &entry.path());
        }
        let _ = remove_folder(&entry.path());
    }
}

/// Removes the caller's RabbitMQ and Erlang settings from `command`'s
/// environment (`RABBITMQ_*`, the unprefixed names rabbitmq-env falls back
/// to, `ERL_*` flags), so the cluster's nodes and CLI agree with each other
/// and with nothing else.
fn without_rabbitmq_env(command: &mut Command) {
    const FALLBACKS: [&str; 10] = [
        "NODENAME",
        "NODE_IP_ADDRESS",
        "NODE_PORT",
        "USE_LONGNAME",
        "MNESIA_BASE",
        "MNESIA_DIR",
        "LOG_BASE",
        "CONFIG_FILE",
        "CONF_ENV_FILE",
        "ENABLED_PLUGINS_FILE",
    ];
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("RABBITMQ_")
            || name.starts_with("ERL_")
            || FALLBACKS.contains(&name.as_str())
        {
            command.env_remove(name);
        }
    }
}

/// SIGKILLs the node whose pid `pid_file` holds, if that process is still a
/// node of the cluster in `dir` (its command line names the folder), and
/// waits until it is gone.
fn kill_node(pid_file: &Path, dir: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
    else {
        return;
    };
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let ours = |proc: &Path| {
        std::fs::read(proc.join("cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*dir.to_string_lossy()))
    };
    if !ours(&proc) {
        return;
    }
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ours(&proc) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes `dir`, retrying while a node that just stopped still writes.
fn remove_folder(dir: &Path) -> std::io::Result<()> {
    let mut tries = 0;
    loop {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if tries >= 20 => return Err(e),
            Err(_) => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
}

/// The first port from `from` that nothing listens on and this cluster has
/// not taken yet.
fn free_port(from: u16, taken: &mut Vec<u16>) -> u16 {
    let port = (from..from + 1000)
        .find(|p| !taken.contains(p) && std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port");
    taken.push(port);
    port
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}
