//! The `pcbridge` binary: everything lives in the library; see `pcbridge --help`.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    limit_malloc_arenas();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pcbridge: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cli = pcbridge::cli::Cli::parse();
    match runtime.block_on(pcbridge::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Before tracing is set up (bad config) this is the only way out; after, it
            // is the last line an operator reads.
            eprintln!("pcbridge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// glibc gives each thread that finds the main malloc arena busy an arena of its own, up
/// to 8 per core *of the node* (not of the container's CPU limit), and freed memory
/// scattered over many arenas is rarely returned. Under steady load the RabbitMQ worker's
/// RSS crept by 0.3–1 MiB a minute with the default and stayed flat with 2 arenas
/// (docs/BENCHMARKS.md, soak). Threads keep their per-thread caches, so small allocations
/// rarely touch an arena's lock. `MALLOC_ARENA_MAX`, when set, wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: runs before any other thread exists; mallopt only sets a tunable.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}
