//! The `pcbridge` binary: everything lives in the library; see `pcbridge --help`.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = pcbridge::cli::Cli::parse();
    match pcbridge::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Before tracing is set up (bad config) this is the only way out; after, it
            // is the last line an operator reads.
            eprintln!("pcbridge: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
