//! `cargo bench --bench load [-- <scenario>…]` (`make bench`): the ingress and the worker
//! as separate processes under load, on this machine, next to reference servers.
//!
//! Scenarios (all but `soak` and `rabbitmq-cost` when none is named):
//! - `ingress-kafka`, `ingress-rabbitmq`: the bare HTTP limit, the minimal pipeline and
//!   the ingress, as fast as they go (closed loop) and at fixed rates (open loop);
//!   on RabbitMQ the minimal both through the raw exchange (as the contract routes raw
//!   messages) and through the default exchange (issue 19's reference), and with one
//!   publish in flight at a time, to show what batching confirms is worth.
//!   `ingress-amqp`: the same over AMQP 1.0 (RabbitMQ's plugin), each message an
//!   unsettled transfer settled by the broker's `accepted`.
//!   `PCBRIDGE_BENCH_INGRESS_RATES` (comma-separated events/s; empty skips the
//!   open loop) narrows the fixed rates, e.g. for a profiling run; `PCBRIDGE_BENCH_ROUNDS`
//!   (2) sets the closed-loop rounds, and `PCBRIDGE_BENCH_INGRESS_ALT="PCBRIDGE_K=V …"`
//!   adds a second ingress with those variables to every round, to compare two settings.
//!   Both use the run's broker: a setting that changes bindings (topology) applies to
//!   both unless the alternative also names exchanges of its own
//!   (`PCBRIDGE_RABBITMQ__EXCHANGE=…`).
//! - `worker`: N events preloaded, the simulated API answering in a fixed 20 ms.
//! - `startup`: spawn to `/readyz` for both roles.
//! - `scaling`: 1, 2 and 3 worker processes on each broker, API-latency-bound, keeping
//!   per-resource order; efficiency against one, and a scale-out's join time (scaling.rs).
//! - `rabbitmq-cost`: RabbitMQ's CPU per published message, by what the message carries
//!   (exchange, `mandatory`, properties, headers): see rabbit_cost.rs.
//! - `soak`: both roles at half load for `PCBRIDGE_BENCH_SOAK_SECS` (600), RSS sampled
//!   (see soak.rs).
//!
//! Figures go to docs/BENCHMARKS.md. The load generator, the broker and the simulator run
//! in this process, so they share the 2 cores with what is measured.

mod generator;
mod procstat;
mod rabbit_cost;
mod reference;
mod scaling;
mod scenarios;
mod servers;
mod setup;
mod soak;

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` and nextest run this
    // binary too (nextest with `--list`): there it has nothing to list and does not run.
    let all_args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<String> = all_args.iter().filter(|a| !a.starts_with("--")).cloned().collect();
    let serving = args.first().is_some_and(|a| a.starts_with("serve-"));
    if !serving && !all_args.iter().any(|a| a == "--bench") {
        if !all_args.iter().any(|a| a == "--list") {
            eprintln!("the load benchmark runs under `cargo bench --bench load` (make bench)");
        }
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    pcbridge::partner_center::install_crypto_provider();
    match args.first().map(String::as_str) {
        Some("serve-bare") => runtime.block_on(reference::bare()),
        Some("serve-minimal") => runtime.block_on(reference::minimal(&args[1..])),
        _ => {
            let all = ["ingress-kafka", "ingress-rabbitmq", "ingress-amqp", "worker", "scaling", "startup"];
            let chosen: Vec<&str> =
                if args.is_empty() { all.to_vec() } else { args.iter().map(String::as_str).collect() };
            for scenario in chosen {
                println!("\n## {scenario}\n");
                match scenario {
                    "ingress-kafka" => runtime.block_on(scenarios::ingress(setup::Broker::kafka())),
                    "ingress-rabbitmq" => runtime.block_on(scenarios::ingress(setup::Broker::rabbitmq())),
                    "ingress-amqp" => runtime.block_on(scenarios::ingress(setup::Broker::amqp())),
                    "worker" => runtime.block_on(scenarios::worker()),
                    "startup" => runtime.block_on(scenarios::startup()),
                    "soak" => runtime.block_on(soak::soak()),
                    "rabbitmq-cost" => runtime.block_on(rabbit_cost::run()),
                    "scaling" => runtime.block_on(scaling::run()),
                    other => eprintln!("unknown scenario {other}; known: {all:?}, soak and rabbitmq-cost"),
                }
            }
        }
    }
}
