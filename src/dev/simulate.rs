//! `pcbridge simulate --target URL`: Partner Center's side alone. Serves the signing
//! certificate and the simulated APIs, sends signed events to any running ingress, and
//! reports each answer. The PKI is kept in `--pki-dir`, so an ingress configured once to
//! trust the simulator's CA keeps trusting it across runs.

use super::pki::{ORGANIZATION, Pki};
use super::report::Tracker;
use super::sender::{SendOptions, print_progress, send};
use super::simulator::{self, Simulator};
use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};
use tokio_util::sync::CancellationToken;

/// `pcbridge simulate` options.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// The ingress's webhook URL, e.g. https://pcbridge.example.com/webhooks/partner-center.
    #[arg(long, value_name = "URL")]
    pub target: String,
    /// Events per second.
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,
    /// Events to send (the first 24 cover every catalogue type).
    #[arg(long, default_value_t = 24, conflicts_with = "forever")]
    pub count: u64,
    /// Send until Ctrl-C.
    #[arg(long)]
    pub forever: bool,
    /// No line per event: progress and the summary only.
    #[arg(long)]
    pub quiet: bool,
    /// Where the simulator serves its certificate and APIs. The ingress must reach it:
    /// use 0.0.0.0:PORT and --public-url for an ingress in a cluster.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// The URL the ingress reaches the simulator at (certificate URLs are built on it).
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// Where the simulator's CA and signing key are kept between runs.
    #[arg(long, default_value = ".pcbridge-simulator")]
    pub pki_dir: PathBuf,
    /// Sign in x-ms-signature instead of Authorization (SignatureTokenToMsSignatureHeader).
    #[arg(long)]
    pub ms_signature_header: bool,
    /// Keep serving the certificate and APIs after sending, until Ctrl-C (for a worker
    /// that enriches from the simulator).
    #[arg(long)]
    pub linger: bool,
    /// Percentage of API requests throttled (429, Retry-After: 1).
    #[arg(long, default_value_t = 0)]
    pub throttle_percent: u32,
}

/// A `pcbridge simulate` failure, phrased for the person who ran it.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// The simulation could not start (the target, the certificates, the simulator).
    #[error("{0}")]
    Start(String),
    /// It ran, and the ingress refused or did not answer some events.
    #[error("the ingress refused or did not answer {0} events; see the lines above for the answers")]
    Refused(u64),
}

/// Runs the simulation; an error when the ingress refused or did not answer an event.
pub async fn run(args: SimulateArgs, interrupt: CancellationToken) -> Result<(), SimulateError> {
    let err = SimulateError::Start;
    url::Url::parse(&args.target).map_err(|e| err(format!("--target {:?} is not a URL: {e}", args.target)))?;
    let pki = Pki::load_or_generate(&args.pki_dir)
        .map_err(|e| err(format!("the simulator's certificates in {}: {e}", args.pki_dir.display())))?;
    let options = simulator::Options {
        listen: args.listen,
        public_url: args.public_url.clone(),
        throttle_percent: args.throttle_percent.min(100),
        gone_percent: 0,
        latency: Duration::ZERO,
    };
    let sim = Simulator::start(pki, options).await.map_err(|e| err(e.to_string()))?;
    let ca = args.pki_dir.join("ca.pem");
    let list = format!("[\"{}\"]", sim.certificate_prefix());
    println!("Simulating Partner Center at {} (certificate {}).", sim.base_url(), sim.certificate_url());
    println!("The ingress at {} must trust it:", args.target);
    println!("  PCBRIDGE_SIGNATURE__TRUSTED_CERTIFICATE_URL_PREFIXES='{list}'");
    println!("  PCBRIDGE_SIGNATURE__EXTRA_TRUST_ANCHORS_FILE={}", ca.display());
    println!("  PCBRIDGE_SIGNATURE__ISSUER_ORGANIZATION='{ORGANIZATION}'");
    println!(
        "A worker can enrich from it: PCBRIDGE_PARTNER_CENTER__{{BASE_URL,GRAPH_BASE_URL,TOKEN_BASE_URL}}={}",
        sim.base_url()
    );
    println!(
        "  PCBRIDGE_PARTNER_CENTER__TENANT_ID={} PCBRIDGE_PARTNER_CENTER__CLIENT_ID={} \
         PCBRIDGE_PARTNER_CENTER__CLIENT_SECRET={} PCBRIDGE_PARTNER_CENTER__REFRESH_TOKEN={}\n",
        simulator::TENANT_ID,
        simulator::CLIENT_ID,
        simulator::CLIENT_SECRET,
        simulator::REFRESH_TOKEN
    );

    let tracker = Arc::new(Tracker::new(false, !args.quiet));
    let progress_stop = CancellationToken::new();
    let progress = tokio::spawn(print_progress(tracker.clone(), Duration::from_secs(5), progress_stop.clone()));
    let options = SendOptions {
        give_ups: None,
        target: args.target.clone(),
        rate: args.rate,
        count: (!args.forever).then_some(args.count),
        ms_signature_header: args.ms_signature_header,
        seed: fastrand::u64(..),
        timeout: Duration::from_secs(10),
    };
    send(&sim, tracker.clone(), &options, interrupt.clone()).await;
    progress_stop.cancel();
    let _ = progress.await;
    print!("{}", tracker.summary());
    if args.linger && !interrupt.is_cancelled() {
        println!("Still serving the certificate and APIs at {}; Ctrl-C to stop.", sim.base_url());
        interrupt.cancelled().await;
    }
    let refused: u64 = tracker.totals().refused.values().sum();
    if refused > 0 {
        return Err(SimulateError::Refused(refused));
    }
    Ok(())
}
