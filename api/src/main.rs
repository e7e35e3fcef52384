//! The `api` binary: reads the configuration and runs the api until SIGTERM or ctrl-c.

use flashstock_api::Application;
use shared::Config;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // A fatal start-up error is one line that says what to do, not a trace.
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("api: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    shared::telemetry::init(config.log_json);
    let addr = config.api_addr;
    let app = Application::build(config).await?;
    tracing::info!(%addr, port = app.port(), "api listening");
    let stop = CancellationToken::new();
    tokio::spawn(shared::shutdown::on_signal(stop.clone()));
    app.run_until_stopped(stop).await?;
    tracing::info!("api stopped");
    Ok(())
}
