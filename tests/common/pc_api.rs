//! A stand-in for Entra ID, the Partner Center API, Microsoft Graph and the fraud events
//! API, on one loopback port. It issues tokens per grant and scope and insists on them,
//! checks the MS-* headers and the fraud paging parameters, records every request, and
//! can be scripted to misbehave per path.

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::net::TcpListener;

pub const CLIENT_ID: &str = "test-client";
pub const CLIENT_SECRET: &str = "test-client-secret-DO-NOT-LOG";
pub const REFRESH_TOKEN: &str = "test-refresh-token-DO-NOT-LOG";
/// The federated token (workload identity's client assertion) the stand-in accepts.
pub const FEDERATED_TOKEN: &str = "eyJ.federated-token-DO-NOT-LOG.sig";
pub const PC_SCOPE: &str = "https://api.partnercenter.microsoft.com/.default";
pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";

/// A scripted answer.
#[derive(Clone, Debug)]
pub enum Reply {
    Status(u16),
    /// Status with `Retry-After: secs`.
    RetryAfter(u16, u64),
    /// Answer normally after a pause.
    Slow(Duration),
    /// Close the connection without answering.
    Drop,
    /// `302 Found` to this URL.
    Redirect(String),
}

/// One request the stand-in received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: HashMap<String, String>,
    pub at: Instant,
    pub status: u16,
}

#[derive(Default)]
struct World {
    resources: HashMap<String, Value>,
    fraud: HashMap<String, Vec<Value>>,
    /// The audit log (`/v1/auditrecords`), in the order Partner Center returns it.
    audit: Vec<Value>,
    scripts: HashMap<String, VecDeque<Reply>>,
    /// Lists served a page at a time ([`PcApi::put_pages`]).
    pages: HashMap<String, Vec<Value>>,
    /// Issued tokens → (grant, scope).
    tokens: HashMap<String, (String, String)>,
    requests: Vec<Recorded>,
    token_requests: Vec<(String, String)>,
    latency: Duration,
    failing_token_endpoint: u32,
    /// `expires_in` of issued tokens (default 3599 s).
    token_lifetime: Option<u64>,
    /// Percentage of API requests answered by a random fault (500, 429 with
    /// Retry-After: 1, a 1.5 s answer, a dropped connection).
    chaos_percent: u32,
    /// API requests being answered now, and the most at once.
    concurrent: usize,
    max_concurrent: usize,
}

#[derive(Clone)]
pub struct PcApi {
    pub base: String,
    world: Arc<Mutex<World>>,
}

impl PcApi {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind stand-in");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let world = Arc::new(Mutex::new(World::default()));
        let app = Router::new().fallback(handle).with_state(world.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base, world }
    }

    /// The environment that points a `pcbridge` process's API clients (Partner Center,
    /// Graph, Entra ID) at this stand-in, with its credentials.
    pub fn env(&self) -> [(&'static str, String); 8] {
        [
            ("PCBRIDGE_PARTNER_CENTER__BASE_URL", self.base.clone()),
            ("PCBRIDGE_PARTNER_CENTER__GRAPH_BASE_URL", self.base.clone()),
            ("PCBRIDGE_PARTNER_CENTER__REFERRALS_BASE_URL", self.base.clone()),
            ("PCBRIDGE_PARTNER_CENTER__TOKEN_BASE_URL", self.base.clone()),
            ("PCBRIDGE_PARTNER_CENTER__TENANT_ID", "tenant-1".to_string()),
            ("PCBRIDGE_PARTNER_CENTER__CLIENT_ID", CLIENT_ID.to_string()),
            ("PCBRIDGE_PARTNER_CENTER__CLIENT_SECRET", CLIENT_SECRET.to_string()),
            ("PCBRIDGE_PARTNER_CENTER__REFRESH_TOKEN", REFRESH_TOKEN.to_string()),
        ]
    }

    /// Serves `value` at `path` (Partner Center or Graph path, as the worker requests it).
    pub fn put(&self, path: &str, value: Value) {
        self.world.lock().unwrap().resources.insert(path.to_string(), value);
    }

    /// Appends records to the audit log.
    pub fn put_audit(&self, records: Vec<Value>) {
        self.world.lock().unwrap().audit.extend(records);
    }

    /// The fraud events of a subscription.
    pub fn put_fraud(&self, subscription_id: &str, events: Vec<Value>) {
        self.world.lock().unwrap().fraud.insert(subscription_id.to_string(), events);
    }

    /// The next answers for requests to `path` (then normal again).
    /// Serves `path` a page at a time, as its API pages: a Graph path (`/v1.0/…`) through
    /// `@odata.nextLink` with a `$skiptoken`, a Partner Center path through the
    /// `MS-ContinuationToken` header (answered, then sent back). Each page is the body as
    /// served (Graph: `{"value": […]}`; the next link is added).
    pub fn put_pages(&self, path: &str, pages: Vec<Value>) {
        self.world.lock().unwrap().pages.insert(path.to_string(), pages);
    }

    pub fn script(&self, path: &str, replies: Vec<Reply>) {
        self.world.lock().unwrap().scripts.insert(path.to_string(), replies.into());
    }

    /// Adds a fixed latency to every API answer.
    pub fn set_latency(&self, latency: Duration) {
        self.world.lock().unwrap().latency = latency;
    }

    /// Answers `percent` % of API requests with a random fault.
    pub fn set_chaos(&self, percent: u32) {
        self.world.lock().unwrap().chaos_percent = percent;
    }

    /// Issued tokens say they expire after `secs`.
    pub fn set_token_lifetime(&self, secs: u64) {
        self.world.lock().unwrap().token_lifetime = Some(secs);
    }

    /// The token endpoint answers 503 to the next `n` requests.
    pub fn fail_token_endpoint(&self, n: u32) {
        self.world.lock().unwrap().failing_token_endpoint = n;
    }

    /// The most API requests that were being answered at once.
    pub fn max_concurrent(&self) -> usize {
        self.world.lock().unwrap().max_concurrent
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.world.lock().unwrap().requests.clone()
    }

    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.path == path).collect()
    }

    /// Every access token the stand-in issued.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.world.lock().unwrap().tokens.keys().cloned().collect()
    }

    /// (grant_type, scope) of every token request.
    pub fn token_requests(&self) -> Vec<(String, String)> {
        self.world.lock().unwrap().token_requests.clone()
    }
}

fn is_guid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok()
}

async fn handle(
    State(world): State<Arc<Mutex<World>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or_default().to_string();
    let header_map: HashMap<String, String> =
        headers.iter().map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or_default().to_string())).collect();
    if method == Method::POST && path.ends_with("/oauth2/v2.0/token") {
        return token(&world, &body);
    }
    let (reply, latency) = {
        let mut w = world.lock().unwrap();
        let mut reply = w.scripts.get_mut(&path).and_then(VecDeque::pop_front);
        if reply.is_none() && fastrand::u32(..100) < w.chaos_percent {
            reply = Some(match fastrand::u8(..4) {
                0 => Reply::Status(500),
                1 => Reply::RetryAfter(429, 1),
                2 => Reply::Slow(Duration::from_millis(1500)),
                _ => Reply::Drop,
            });
        }
        w.concurrent += 1;
        w.max_concurrent = w.max_concurrent.max(w.concurrent);
        (reply, w.latency)
    };
    if let Some(Reply::Slow(d)) = &reply {
        tokio::time::sleep(*d).await;
    } else if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let response = answer(&world, &path, &query, &header_map, reply);
    let status = response.status().as_u16();
    let mut w = world.lock().unwrap();
    w.concurrent -= 1;
    w.requests.push(Recorded {
        method: method.to_string(),
        path,
        query,
        headers: header_map,
        at: Instant::now(),
        status,
    });
    response
}

fn token(world: &Arc<Mutex<World>>, body: &[u8]) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let mut w = world.lock().unwrap();
    let grant = form.get("grant_type").cloned().unwrap_or_default();
    let scope = form.get("scope").cloned().unwrap_or_default();
    w.token_requests.push((grant.clone(), scope.clone()));
    if w.failing_token_endpoint > 0 {
        w.failing_token_endpoint -= 1;
        return (StatusCode::SERVICE_UNAVAILABLE, "token endpoint down").into_response();
    }
    let field = |k: &str| form.get(k).map(String::as_str);
    let ok_client = field("client_id") == Some(CLIENT_ID)
        && (field("client_secret") == Some(CLIENT_SECRET)
            || (field("client_assertion_type") == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
                && field("client_assertion") == Some(FEDERATED_TOKEN)));
    let ok_grant = match grant.as_str() {
        "client_credentials" => true,
        "refresh_token" => form.get("refresh_token").map(String::as_str) == Some(REFRESH_TOKEN),
        _ => false,
    };
    if !ok_client || !ok_grant {
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "invalid_client"}))).into_response();
    }
    let token = format!("tok-{}", uuid::Uuid::new_v4().simple());
    w.tokens.insert(token.clone(), (grant, scope));
    let lifetime = w.token_lifetime.unwrap_or(3599);
    axum::Json(
        json!({"token_type": "Bearer", "expires_in": lifetime, "access_token": token, "refresh_token": REFRESH_TOKEN}),
    )
    .into_response()
}

fn answer(
    world: &Arc<Mutex<World>>,
    path: &str,
    query: &str,
    headers: &HashMap<String, String>,
    reply: Option<Reply>,
) -> Response {
    match reply {
        Some(Reply::Status(code)) => return status(code),
        Some(Reply::RetryAfter(code, secs)) => {
            return (status_code(code), [("retry-after", secs.to_string())], "slow down").into_response();
        }
        Some(Reply::Drop) => {
            world.lock().unwrap().concurrent -= 1;
            // Panicking in a handler makes hyper drop the connection without an answer.
            std::panic::resume_unwind(Box::new("drop"));
        }
        Some(Reply::Redirect(to)) => {
            return (StatusCode::FOUND, [(http::header::LOCATION, to)]).into_response();
        }
        Some(Reply::Slow(_)) | None => {}
    }
    let w = world.lock().unwrap();
    let fraud = path == "/v1/fraudEvents";
    // The referrals API shares Graph's /v1.0 and OData paging, and wants App+User.
    let referrals = path.starts_with("/v1.0/engagements/");
    let graph = path.starts_with("/v1.0/") && !referrals;
    let (want_grant, want_scope) = match (fraud || referrals, graph) {
        (true, _) => ("refresh_token", PC_SCOPE),
        (false, true) => ("client_credentials", GRAPH_SCOPE),
        _ => ("client_credentials", PC_SCOPE),
    };
    let token = headers.get("authorization").and_then(|a| a.strip_prefix("Bearer ")).unwrap_or_default();
    match w.tokens.get(token) {
        Some((g, s)) if g == want_grant && s == want_scope => {}
        _ => return (StatusCode::UNAUTHORIZED, "bad or missing token for this API").into_response(),
    }
    let ms_ok = headers.get("ms-correlationid").is_some_and(|v| is_guid(v))
        && headers.get("ms-requestid").is_some_and(|v| is_guid(v))
        && headers.get("accept").is_some_and(|v| v.contains("application/json"));
    if !ms_ok {
        return (StatusCode::BAD_REQUEST, "MS-CorrelationId, MS-RequestId and Accept are required").into_response();
    }
    if fraud {
        let q: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        let new_model = headers.get("x-neweventsmodel");
        let (Some(sub), Some(size), Some(number)) = (
            q.get("SubscriptionId"),
            q.get("PageSize").and_then(|s| s.parse::<usize>().ok()),
            q.get("PageNumber").and_then(|s| s.parse::<usize>().ok()),
        ) else {
            return (StatusCode::BAD_REQUEST, "SubscriptionId, PageSize and PageNumber are required").into_response();
        };
        if new_model.map(String::as_str) != Some("true")
            || q.get("EventStatus").map(String::as_str) != Some("Active")
            || size == 0
            || number == 0
        {
            return (StatusCode::BAD_REQUEST, "X-NewEventsModel: true, EventStatus=Active, positive paging")
                .into_response();
        }
        let all = w.fraud.get(sub).cloned().unwrap_or_default();
        let page: Vec<Value> = all.into_iter().skip((number - 1) * size).take(size).collect();
        return axum::Json(Value::Array(page)).into_response();
    }
    if path == "/v1/auditrecords" {
        return audit_records(&w.audit, query, headers);
    }
    if let Some(pages) = w.pages.get(path) {
        return paged(pages, path, graph || referrals, query, headers);
    }
    match w.resources.get(path) {
        Some(v) => axum::Json(v.clone()).into_response(),
        None => (StatusCode::NOT_FOUND, "no such resource").into_response(),
    }
}

/// One page of a [`PcApi::put_pages`] list, with the way to the next.
fn paged(pages: &[Value], path: &str, graph: bool, query: &str, headers: &HashMap<String, String>) -> Response {
    let q: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let token = if graph { q.get("$skiptoken") } else { headers.get("ms-continuationtoken") };
    let index = token.and_then(|t| t.parse::<usize>().ok()).unwrap_or(0);
    let Some(page) = pages.get(index) else { return status(400) };
    let more = index + 1 < pages.len();
    if graph {
        let mut page = page.clone();
        if more {
            let host = headers.get("host").cloned().unwrap_or_default();
            page["@odata.nextLink"] = json!(format!("http://{host}{path}?$top=300&$skiptoken={}", index + 1));
        }
        return axum::Json(page).into_response();
    }
    let mut response = axum::Json(page.clone()).into_response();
    if more && let Ok(value) = http::HeaderValue::from_str(&(index + 1).to_string()) {
        response.headers_mut().insert("MS-ContinuationToken", value);
    }
    response
}

/// `GET /v1/auditrecords` as Partner Center answers it: `startDate` and `endDate` at most
/// 30 days apart, `startDate` within the 90 days records are kept (else 400), `size`
/// records a page, the next page through `links.next` with an `MS-ContinuationToken`.
fn audit_records(log: &[Value], query: &str, headers: &HashMap<String, String>) -> Response {
    use time::{OffsetDateTime, format_description::well_known::Rfc3339};
    let q: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let date = |k: &str| q.get(k).and_then(|d| OffsetDateTime::parse(d, &Rfc3339).ok());
    let (Some(start), Some(end), Some(size)) =
        (date("startDate"), date("endDate"), q.get("size").and_then(|s| s.parse::<usize>().ok()))
    else {
        return (StatusCode::BAD_REQUEST, "startDate, endDate and size are required").into_response();
    };
    if end - start > time::Duration::days(30) || end < start {
        return (StatusCode::BAD_REQUEST, "the range may span at most 30 days").into_response();
    }
    if OffsetDateTime::now_utc() - start > time::Duration::days(90) {
        return (StatusCode::BAD_REQUEST, "startDate is older than 90 days").into_response();
    }
    let offset: usize = headers.get("ms-continuationtoken").and_then(|t| t.parse().ok()).unwrap_or(0);
    let in_range: Vec<&Value> = log
        .iter()
        .filter(|r| {
            let at = r["operationDate"].as_str().and_then(|d| OffsetDateTime::parse(d, &Rfc3339).ok());
            at.is_some_and(|at| at >= start && at < end)
        })
        .collect();
    let page: Vec<&Value> = in_range.iter().skip(offset).take(size.max(1)).copied().collect();
    let mut body = json!({ "totalCount": in_range.len(), "items": page });
    if offset + size < in_range.len() {
        body["links"] = json!({"next": {
            "uri": format!("/v1/auditrecords?{query}"),
            "method": "GET",
            "headers": [{"key": "MS-ContinuationToken", "value": (offset + size).to_string()}],
        }});
    }
    axum::Json(body).into_response()
}

fn status_code(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn status(code: u16) -> Response {
    (status_code(code), format!("scripted {code}")).into_response()
}
