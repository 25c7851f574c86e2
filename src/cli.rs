//! The `pcbridge` command line: parse, load the configuration, start telemetry, and
//! wire one role to its listeners and broker. The only place `anyhow` is used.

use crate::config::{Config, LogFormat};
use crate::telemetry::{LogStyle, Metrics, init_tracing};
use crate::{forward, ingress, shutdown, worker};
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::{path::PathBuf, sync::Arc};
use tokio::net::TcpListener;

/// Microsoft Partner Center webhooks → Kafka / RabbitMQ.
#[derive(Debug, Parser)]
#[command(name = "pcbridge", version, about)]
pub struct Cli {
    /// Configuration file. Every key can be overridden by PCBRIDGE_<SECTION>__<KEY>.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Receive signed webhooks and publish them to the broker.
    Ingress,
    /// Consume raw events, enrich them from the Partner Center API, publish them enriched.
    Worker,
    /// Send every verified event, byte for byte and still signed, to other receivers
    /// (`[forward.receivers.*]`), so they share pcbridge's one registration.
    Forward,
    /// The whole pipeline on this machine: embedded Kafka (or RabbitMQ), ingress, worker
    /// and a Partner Center simulator sending signed events.
    Dev(crate::dev::run::DevArgs),
    /// Send signed test events to a running ingress, as Partner Center would.
    Simulate(crate::dev::simulate::SimulateArgs),
    /// Partner Center's webhook registration: show, events, create, update, test, status.
    #[command(subcommand)]
    Register(crate::register::RegisterCommand),
    /// Publish dead letters back to their raw destination (filters, --dry-run).
    Replay(crate::replay::ReplayArgs),
    /// Publish the changes Partner Center recorded but did not deliver (audit log),
    /// each once across webhooks, runs and replicas (--since, --until, --dry-run).
    Reconcile(crate::reconcile::run::ReconcileArgs),
    /// Validate the configuration and reach every dependency it names; exit 1 on failure.
    Check {
        /// Also fetch and validate this signing-certificate URL.
        #[arg(long, value_name = "URL")]
        certificate_url: Option<String>,
    },
}

/// Runs the chosen command to completion.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let (path, required) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from("config.toml"), false),
    };
    let config = Config::load(&path, required)?;
    let style = if config.log.format == LogFormat::Json { LogStyle::Json } else { LogStyle::Text };
    // The interactive commands print for a person; their logs only speak up on trouble.
    let level = match cli.command {
        // (librdkafka's configuration warnings are noise against the embedded broker.)
        Command::Dev(_) | Command::Simulate(_) | Command::Register(_) | Command::Replay(_) => "warn,librdkafka=error",
        _ => config.log.level.as_str(),
    };
    let service = match cli.command {
        Command::Ingress => "pcbridge-ingress",
        Command::Worker => "pcbridge-worker",
        Command::Forward => "pcbridge-forward",
        Command::Reconcile(_) => "pcbridge-reconcile",
        _ => "pcbridge",
    };
    init_tracing(style, level, service);
    let interactive =
        matches!(cli.command, Command::Dev(_) | Command::Simulate(_) | Command::Register(_) | Command::Replay(_));
    if !required && !path.exists() && !interactive {
        tracing::warn!("no config.toml in the working directory; using defaults and PCBRIDGE_* variables");
    }
    let result = run_command(cli.command, config, &path).await;
    crate::telemetry::trace::flush().await;
    result
}

async fn run_command(command: Command, config: Config, path: &std::path::Path) -> anyhow::Result<()> {
    match command {
        Command::Ingress => run_ingress(config).await,
        Command::Worker => run_worker(config).await,
        Command::Forward => run_forward(config).await,
        Command::Dev(args) => Ok(crate::dev::run::run(config, args, shutdown::on_signal()).await?),
        Command::Simulate(args) => Ok(crate::dev::simulate::run(args, shutdown::on_signal()).await?),
        Command::Register(crate::register::RegisterCommand::Watch) => run_watch(config).await,
        Command::Register(command) => {
            let out = crate::register::run(&config, command).await?;
            print!("{out}");
            Ok(())
        }
        Command::Replay(args) => {
            let out = crate::replay::run(&config, args).await?;
            print!("{out}");
            Ok(())
        }
        Command::Reconcile(args) => {
            let summary = crate::reconcile::run::run(&config, &args, Arc::new(Metrics::new())).await?;
            print!("{summary}");
            match summary.unread_lists.len() {
                0 => Ok(()),
                n => Err(anyhow::anyhow!("{n} lists could not be read; run reconcile again once they can")),
            }
        }
        Command::Check { certificate_url } => {
            let source = if path.exists() { path.display().to_string() } else { "defaults and environment".into() };
            let checks = crate::check::run(&config, &source, certificate_url.as_deref()).await;
            let (text, ok) = crate::check::report(&checks);
            print!("{text}");
            if ok { Ok(()) } else { Err(anyhow::anyhow!("some checks failed")) }
        }
    }
}

async fn run_ingress(config: Config) -> anyhow::Result<()> {
    let stop = shutdown::on_signal();
    let admin_listener = TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("cannot listen on admin.listen = {}", config.admin.listen))?;
    let listener = TcpListener::bind(config.ingress.listen)
        .await
        .with_context(|| format!("cannot listen on ingress.listen = {}", config.ingress.listen))?;
    let role = ingress::start(&config, "pcbridge-ingress", listener, admin_listener, Arc::new(Metrics::new()), stop)
        .await
        .with_context(|| format!("cannot start the ingress on {}", config.broker.kind))?;
    Ok(role.await.context("the ingress task failed")??)
}

async fn run_worker(config: Config) -> anyhow::Result<()> {
    let stop = shutdown::on_signal();
    let admin_listener = TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("cannot listen on admin.listen = {}", config.admin.listen))?;
    let role = worker::start(&config, "pcbridge-worker", admin_listener, Arc::new(Metrics::new()), stop)
        .await
        .with_context(|| format!("cannot start the {} worker", config.broker.kind))?;
    role.await.context("the worker task failed")
}

async fn run_forward(config: Config) -> anyhow::Result<()> {
    let stop = shutdown::on_signal();
    let admin_listener = TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("cannot listen on admin.listen = {}", config.admin.listen))?;
    let role = forward::start(&config, "pcbridge-forward", admin_listener, Arc::new(Metrics::new()), stop)
        .await
        .with_context(|| format!("cannot start the {} forwarder", config.broker.kind))?;
    role.await.context("the forwarder task failed")
}

async fn run_watch(config: Config) -> anyhow::Result<()> {
    let stop = shutdown::on_signal();
    let admin_listener = TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("cannot listen on admin.listen = {}", config.admin.listen))?;
    let (_, role) = crate::register::guard::start(&config, admin_listener, Arc::new(Metrics::new()), stop)
        .await
        .context("cannot start the registration watch")?;
    role.await.context("the registration watch task failed")
}
