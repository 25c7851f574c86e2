//! `pcbridge register`: the tenant's webhook registration with Partner Center — show it,
//! list the events on offer, create or update it, send a test event and follow its
//! delivery attempts. Uses the worker's credentials (`partner_center.*`, App-only).
//! `register watch` ([`guard`]) keeps checking that the registration is still ours.

pub mod guard;

use crate::config::Config;
use crate::partner_center::client::{ApiClient, ErrorClass, FetchError};
use crate::partner_center::registration::{Registration, RegistrationApi, Validation};
use crate::telemetry::Metrics;
use std::{fmt::Write as _, sync::Arc};

/// `pcbridge register …`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum RegisterCommand {
    /// Show the tenant's registration.
    Show,
    /// List the event names Partner Center offers.
    Events,
    /// Register the webhook URL and events (fails when one exists: use update).
    Create(RegisterArgs),
    /// Replace the registration's URL, events and signature header.
    Update(RegisterArgs),
    /// Ask Partner Center to send a test-created event to the registered URL (2 a minute at most).
    Test,
    /// Show the delivery attempts of a test event; without one, the last check of the
    /// registration guard (`register watch`).
    Status {
        /// The correlation id `register test` printed.
        correlation_id: Option<String>,
        /// The guard's admin URL; default: this configuration's `admin.listen` on this host.
        #[arg(long, value_name = "URL")]
        guard: Option<String>,
    },
    /// Keep checking that the registration is the one in `[registration]`: report a
    /// change (metric, error log) and, with `registration.restore`, put it back.
    Watch,
}

/// What to register.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["events", "all_events"])))]
pub struct RegisterArgs {
    /// The public webhook URL, e.g. https://pcbridge.example.com/webhooks/partner-center.
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// Event names, comma-separated (see `pcbridge register events`).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub events: Vec<String>,
    /// Every event Partner Center offers.
    #[arg(long)]
    pub all_events: bool,
    /// Have Partner Center sign in the x-ms-signature header instead of Authorization
    /// (SignatureTokenToMsSignatureHeader).
    #[arg(long)]
    pub signature_header: bool,
}

/// A `register` failure, phrased for the person at the terminal.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The command line asks for something impossible (not a URL, an unknown event).
    #[error("{0}")]
    Usage(String),
    /// The Partner Center client cannot be built from the configuration.
    #[error("cannot prepare the Partner Center client: {0}")]
    Client(#[from] crate::partner_center::BuildError),
    /// Partner Center answered, and the answer means the command cannot be done as
    /// asked (a registration exists already, none exists, the test-event quota is used).
    #[error("{0}")]
    Refused(String),
    /// The call failed: what failed, where, and what to do about it.
    #[error("{0}")]
    Api(String),
}

/// Runs one `register` command and returns what to print.
pub async fn run(config: &Config, command: RegisterCommand) -> Result<String, RegisterError> {
    match &command {
        RegisterCommand::Status { correlation_id: None, guard: url } => {
            let url = url.clone().unwrap_or_else(|| guard::local_admin_url(config));
            return guard::fetch_last(&url).await.map(|c| guard::describe(&c)).map_err(RegisterError::Refused);
        }
        RegisterCommand::Watch => {
            return Err(RegisterError::Usage("`register watch` runs until stopped; start it from the CLI".into()));
        }
        _ => {}
    }
    let base = config.partner_center.base_url.clone();
    let client = ApiClient::new(config, Arc::new(Metrics::new()))?;
    let api = RegistrationApi::new(client);
    let explain = |e: FetchError| RegisterError::Api(explain(&e, &base, config));
    match command {
        RegisterCommand::Show => Ok(match api.show().await.map_err(explain)? {
            Some(r) => describe(&r),
            None => "No webhook registration for this tenant. Create one with `pcbridge register create --url URL --all-events`.\n".into(),
        }),
        RegisterCommand::Events => {
            let names = api.events().await.map_err(explain)?;
            Ok(names.iter().map(|n| format!("{n}\n")).collect())
        }
        RegisterCommand::Create(args) => save(&api, args, true, &base, config).await,
        RegisterCommand::Update(args) => save(&api, args, false, &base, config).await,
        RegisterCommand::Test => match api.send_test().await {
            Ok(id) => Ok(format!(
                "Partner Center is sending a test-created event to the registered URL.\n\
                 correlation id: {id}\nFollow it with: pcbridge register status {id}\n"
            )),
            Err(e) if e.status == Some(429) => {
                let wait = match e.class {
                    ErrorClass::Transient { retry_after: Some(d) } => format!("in {} s", d.as_secs().max(1)),
                    _ => "in a minute".to_string(),
                };
                Err(RegisterError::Refused(format!(
                    "Partner Center accepts at most 2 test events a minute, and this tenant has used them: try again {wait}."
                )))
            }
            Err(e) => Err(explain(e)),
        },
        RegisterCommand::Status { correlation_id: None, .. } | RegisterCommand::Watch => {
            Err(RegisterError::Usage("handled above".into()))
        }
        RegisterCommand::Status { correlation_id: Some(correlation_id), .. } => match api
            .status(&correlation_id)
            .await
            .map_err(explain)?
        {
            Some(v) => Ok(describe_validation(&v)),
            None => Err(RegisterError::Refused(format!(
                "Partner Center knows no test event {correlation_id:?} (it keeps them for 7 days)."
            ))),
        },
    }
}

async fn save(
    api: &RegistrationApi,
    args: RegisterArgs,
    create: bool,
    base: &str,
    config: &Config,
) -> Result<String, RegisterError> {
    let explain = |e: FetchError| RegisterError::Api(explain(&e, base, config));
    let url = url::Url::parse(&args.url)
        .map_err(|e| RegisterError::Usage(format!("--url {:?} is not a URL: {e}", args.url)))?;
    if url.scheme() != "https" {
        eprintln!("note: Partner Center delivers only to https URLs; {url} is accepted here for test endpoints.");
    }
    let offered = api.events().await.map_err(explain)?;
    let events = if args.all_events {
        offered
    } else {
        let unknown: Vec<&String> = args.events.iter().filter(|e| !offered.contains(e)).collect();
        if !unknown.is_empty() {
            return Err(RegisterError::Usage(format!(
                "Partner Center offers no event named {}; see `pcbridge register events`.",
                unknown.iter().map(|e| format!("{e:?}")).collect::<Vec<_>>().join(", ")
            )));
        }
        args.events
    };
    let wanted = Registration { webhook_url: args.url, events, ms_signature_header: args.signature_header };
    match api.save(&wanted, create).await {
        Ok(saved) => Ok(format!("{}\n{}", if create { "Registered." } else { "Updated." }, describe(&saved))),
        Err(e) if create && e.status == Some(409) => Err(RegisterError::Refused(
            "This tenant has a registration already; change it with `pcbridge register update`.".into(),
        )),
        Err(e) if !create && e.status == Some(404) => Err(RegisterError::Refused(
            "This tenant has no registration to update; create one with `pcbridge register create`.".into(),
        )),
        Err(e) => Err(explain(e)),
    }
}

fn describe(r: &Registration) -> String {
    let header = if r.ms_signature_header { "x-ms-signature" } else { "Authorization" };
    let mut s =
        format!("webhook URL:      {}\nsignature header: {header}\nevents ({}):\n", r.webhook_url, r.events.len());
    for e in &r.events {
        let _ = writeln!(s, "  {e}");
    }
    s
}

fn describe_validation(v: &Validation) -> String {
    let mut s =
        format!("test event {}: {}\n", v.correlation_id, if v.status.is_empty() { "unknown" } else { &v.status });
    if v.attempts.is_empty() {
        s.push_str("  no delivery attempt yet\n");
    }
    for (i, a) in v.attempts.iter().enumerate() {
        let code = if a.response_code.is_empty() { "no answer" } else { &a.response_code };
        let _ = writeln!(s, "  attempt {}: {}  {} → {code}  {}", i + 1, a.at, a.event_name, a.message.trim());
    }
    s
}

/// What failed, where, and what to do about it.
fn explain(e: &FetchError, base: &str, config: &Config) -> String {
    let pc = &config.partner_center;
    match e.status {
        None if e.message.contains("oauth2") || e.message.contains("token") || e.message.contains("secret") => format!(
            "Could not get a token from Entra ID for client {:?} in tenant {:?}: {}\n\
             Check partner_center.tenant_id, partner_center.client_id and the client secret \
             (PCBRIDGE_PARTNER_CENTER__CLIENT_SECRET or partner_center.client_secret_file).",
            pc.client_id, pc.tenant_id, e.message
        ),
        None => format!(
            "Could not reach the Partner Center API at {base}: {}\nCheck partner_center.base_url and the network.",
            e.message
        ),
        Some(401 | 403) => format!(
            "Partner Center refused the request: {}\nThe application needs the Partner Center API permission, \
             and the partner tenant must have consented to it.",
            e.message
        ),
        Some(_) => format!("Partner Center answered: {}", e.message),
    }
}
