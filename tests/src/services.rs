//! Outages of the shared MariaDB and RabbitMQ, for the fault tests only:
//! they stop a server every other test uses, so they run on their own,
//! after the rest (`cargo nextest run --profile faults`).
//!
//! An outage is a guard: [`Outage::heal`] starts the server again, and so
//! does dropping the guard, which also happens when the test panics.

use std::process::Command;
use std::time::{Duration, Instant};

/// Which shared server an outage stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// RabbitMQ: `rabbitmqctl stop_app` / `start_app` (the Erlang node stays up).
    RabbitMq,
    /// MariaDB: `mysqladmin shutdown`, then `scripts/services.sh` starts it.
    MariaDb,
}

impl Server {
    fn port(self) -> u16 {
        match self {
            Server::RabbitMq => 5672,
            Server::MariaDb => 3306,
        }
    }
}

/// A server stopped by a test; started again by [`Outage::heal`] or on drop.
#[derive(Debug)]
pub struct Outage {
    server: Server,
    healed: bool,
}

impl Outage {
    /// Stops `server` and waits until its port is closed.
    pub async fn begin(server: Server) -> Outage {
        let outage = Outage {
            server,
            healed: false,
        };
        let (program, args): (&str, &[&str]) = match server {
            Server::RabbitMq => ("rabbitmqctl", &["stop_app"]),
            Server::MariaDb => (
                "mysqladmin",
                &[
                    "--protocol=TCP",
                    "-h",
                    "127.0.0.1",
                    "-u",
                    "root",
                    "shutdown",
                ],
            ),
        };
        let status = tokio::process::Command::new(program)
            .args(args)
            .status()
            .await
            .unwrap_or_else(|e| panic!("{program} runs: {e}"));
        assert!(status.success(), "{program} {args:?}: {status}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while port_open(server.port()) {
            assert!(Instant::now() < deadline, "{server:?} did not stop");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        outage
    }

    /// Starts the server again and waits until it answers.
    pub async fn heal(&mut self) {
        let server = self.server;
        self.healed = true;
        let started = tokio::task::spawn_blocking(move || start(server))
            .await
            .expect("starting the server");
        if let Err(e) = started {
            panic!("{e}");
        }
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if !self.healed
            && let Err(e) = start(self.server)
        {
            // No panic in a drop that may run while unwinding.
            eprintln!("{e}");
        }
    }
}

/// Starts `server` and waits (up to two minutes) until it answers.
fn start(server: Server) -> Result<(), String> {
    let scripts = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/services.sh");
    let (program, args): (&str, &[&str]) = match server {
        Server::RabbitMq => ("rabbitmqctl", &["start_app"]),
        // The same script CI uses to bring its services up.
        Server::MariaDb => ("bash", &[scripts]),
    };
    let status = Command::new(program).args(args).status();
    if !status.as_ref().is_ok_and(|s| s.success()) {
        eprintln!("{program} {args:?}: {status:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while !port_open(server.port()) {
        if Instant::now() > deadline {
            return Err(format!("{server:?} did not start again"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Whether something accepts connections on 127.0.0.1:`port`.
pub(crate) fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .is_ok()
}

/// A RabbitMQ memory alarm raised by a test (the memory high watermark set
/// to almost nothing, so every publishing connection is blocked); cleared
/// by [`MemoryAlarm::clear`] or on drop, even when the test panics.
#[derive(Debug)]
pub struct MemoryAlarm {
    watermark: String,
    cleared: bool,
}

impl MemoryAlarm {
    /// Raises the alarm and waits until RabbitMQ reports it.
    pub async fn raise() -> MemoryAlarm {
        let watermark = rabbitmqctl(&["eval", "vm_memory_monitor:get_vm_memory_high_watermark()."])
            .trim()
            .to_owned();
        let watermark = if watermark.parse::<f64>().is_ok() {
            watermark
        } else {
            "0.4".to_owned()
        };
        let alarm = MemoryAlarm {
            watermark,
            cleared: false,
        };
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.000001"]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !rabbitmqctl(&["eval", "rabbit_alarm:get_alarms()."]).contains("memory") {
            assert!(Instant::now() < deadline, "the memory alarm did not go off");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        alarm
    }

    /// Puts the watermark back.
    pub fn clear(&mut self) {
        self.cleared = true;
        rabbitmqctl(&["set_vm_memory_high_watermark", &self.watermark]);
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        if !self.cleared {
            self.clear();
        }
    }
}

fn rabbitmqctl(args: &[&str]) -> String {
    match Command::new("rabbitmqctl").args(args).output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(e) => {
            eprintln!("rabbitmqctl {args:?}: {e}");
            String::new()
        }
    }
}
