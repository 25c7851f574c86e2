//! The `pcbridge` binary: everything lives in the library; see `pcbridge --help`.

use clap::Parser;
use std::process::ExitCode;

/// jemalloc instead of glibc's malloc, for speed and for memory that stays flat.
///
/// - Speed: the ingress frees on one thread what another allocated (hyper, librdkafka's
///   delivery thread), which glibc serves slowly (`malloc_consolidate` on every request's
///   read buffer, arena locks). With jemalloc the Kafka ingress went from 0.86 to 0.95 of
///   the minimal pipeline (docs/BENCHMARKS.md).
/// - Memory: glibc gives each busy thread an arena of its own (8 per core of the node,
///   not of the container's limit) and rarely returns what is freed there; under steady
///   load the RabbitMQ worker crept by about 0.3 MiB a minute. jemalloc purges unused
///   pages after a delay.
///
/// librdkafka, compiled in, keeps glibc's malloc for its own allocations.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it initialises (`_RJEM_MALLOC_CONF` in the environment
/// overrides them): a background thread returns pages freed after a burst to the system
/// within about a second, even while the process is idle, instead of keeping them until
/// the next allocation triggers a purge. After a flood of large bodies the ingress goes
/// back near its resting size (tests/ingress_memory.rs).
#[cfg(not(target_env = "msvc"))]
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_CONF: JemallocConf =
    JemallocConf(c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());

/// A `const char *` jemalloc reads once, at start-up.
#[cfg(not(target_env = "msvc"))]
#[repr(transparent)]
struct JemallocConf(*const std::ffi::c_char);

// SAFETY: it points at a string literal, which is immutable for the program's life.
#[cfg(not(target_env = "msvc"))]
unsafe impl Sync for JemallocConf {}

fn main() -> ExitCode {
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
