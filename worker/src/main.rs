//! The `worker` binary: reads the configuration and decides orders until SIGTERM or ctrl-c.

use flashstock_worker::Worker;
use shared::Config;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // A fatal start-up error is one line that says what to do, not a trace.
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worker: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    shared::telemetry::init(config.log_json);
    let worker = Worker::build(config).await?;
    tracing::info!(worker_id = worker.id(), "worker started");
    let stop = CancellationToken::new();
    tokio::spawn(shared::shutdown::on_signal(stop.clone()));
    worker.run_until_stopped(stop).await;
    tracing::info!("worker stopped");
    Ok(())
}
