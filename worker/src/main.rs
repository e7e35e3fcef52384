//! The `worker` binary: reads the configuration and decides orders until
//! SIGTERM or ctrl-c; `worker events …` prints order events instead ([`flashstock_worker::tail`]).

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
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "events") {
        let tail = flashstock_worker::tail::Tail::parse(&args[1..])
            .map_err(|e| anyhow::anyhow!("{e}\n{}", flashstock_worker::tail::USAGE))?;
        let config = Config::from_env()?;
        let stop = CancellationToken::new();
        tokio::spawn(shared::shutdown::on_signal(stop.clone()));
        return tail.run(config, stop).await;
    }
    if let Some(other) = args.first() {
        anyhow::bail!(
            "unknown argument {other:?}: run `worker` to decide orders, or\n{}",
            flashstock_worker::tail::USAGE
        );
    }
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
