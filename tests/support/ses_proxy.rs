//! A recording, fault-injecting HTTP proxy in front of moto's SES v2
//! endpoint. A test double, and the only one on the SES path: real SES
//! cannot be made to throttle or pause an account on demand, and moto
//! never does, so the proxy answers `SendEmail` the way SES does when it
//! throttles (429 `TooManyRequestsException`) or pauses sending, and
//! otherwise forwards every request to moto untouched. It also records
//! what the real AWS SDK sent (headers, tags, reply-to: moto does not show
//! them) and when each send arrived.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

/// The SES v2 `SendEmail` route.
pub const SEND_EMAIL_PATH: &str = "/v2/email/outbound-emails";

/// What the proxy does with `SendEmail` requests.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Forward to moto.
    None,
    /// Answer 429 `TooManyRequestsException` for this long, counted from
    /// the first `SendEmail` that arrives while this fault is set.
    ThrottleFor(Duration),
    /// Answer every send with `status` and this SES error type.
    Error { status: u16, error_type: &'static str },
    /// Forward each send to moto after this long, even when the caller
    /// gave up waiting meanwhile (a slow SES that accepts what timed out).
    Delay(Duration),
}

/// One `SendEmail` as the proxy saw it.
#[derive(Debug, Clone)]
pub struct RecordedSend {
    pub at: Instant,
    pub body: serde_json::Value,
    /// What the proxy answered.
    pub status: u16,
}

#[derive(Debug)]
struct Inner {
    upstream: String,
    client: reqwest::Client,
    fault: Mutex<Fault>,
    throttle_until: Mutex<Option<Instant>>,
    sends: Mutex<Vec<RecordedSend>>,
}

pub struct SesProxy {
    pub url: String,
    inner: Arc<Inner>,
}

impl SesProxy {
    /// Starts the proxy on a free loopback port, forwarding to `upstream`.
    pub async fn start(upstream: &str) -> Self {
        let inner = Arc::new(Inner {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: reqwest::Client::new(),
            fault: Mutex::new(Fault::None),
            throttle_until: Mutex::new(None),
            sends: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new().fallback(handle).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}"),
            inner,
        }
    }

    pub fn set_fault(&self, fault: Fault) {
        *self.inner.throttle_until.lock().unwrap() = None;
        *self.inner.fault.lock().unwrap() = fault;
    }

    /// Every `SendEmail` so far, in arrival order (they are recorded when
    /// answered, which is not always the order they came in).
    pub fn sends(&self) -> Vec<RecordedSend> {
        let mut sends = self.inner.sends.lock().unwrap().clone();
        sends.sort_by_key(|s| s.at);
        sends
    }

    /// When the throttling window (of [`Fault::ThrottleFor`]) ends, once
    /// it started.
    pub fn throttle_until(&self) -> Option<Instant> {
        *self.inner.throttle_until.lock().unwrap()
    }
}

fn ses_error(status: u16, error_type: &str, message: &str) -> Response {
    let mut response = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        serde_json::json!({ "message": message }).to_string(),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert("x-amzn-errortype", HeaderValue::from_str(error_type).unwrap());
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    response
}

async fn handle(State(inner): State<Arc<Inner>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 16 * 1024 * 1024).await.unwrap_or_default();
    let is_send = parts.method == Method::POST && parts.uri.path() == SEND_EMAIL_PATH;
    if is_send {
        let now = Instant::now();
        let fault = inner.fault.lock().unwrap().clone();
        let injected = match fault {
            Fault::None => None,
            Fault::ThrottleFor(window) => {
                let mut until = inner.throttle_until.lock().unwrap();
                let end = *until.get_or_insert(now + window);
                (now < end).then_some((429, "TooManyRequestsException"))
            }
            Fault::Error { status, error_type } => Some((status, error_type)),
            Fault::Delay(delay) => {
                // Its own task: the forward happens whether or not the
                // caller is still waiting for the answer.
                let task_inner = inner.clone();
                let task = tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let response = forward(&task_inner, &parts.method, &parts.uri, &parts.headers, bytes.clone()).await;
                    task_inner.sends.lock().unwrap().push(RecordedSend {
                        at: now,
                        body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
                        status: response.status().as_u16(),
                    });
                    response
                });
                return task
                    .await
                    .unwrap_or_else(|e| (StatusCode::BAD_GATEWAY, e.to_string()).into_response());
            }
        };
        let record = |status: u16| RecordedSend {
            at: now,
            body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
            status,
        };
        if let Some((status, error_type)) = injected {
            inner.sends.lock().unwrap().push(record(status));
            return ses_error(status, error_type, "injected by the test's SES proxy");
        }
        let response = forward(&inner, &parts.method, &parts.uri, &parts.headers, bytes.clone()).await;
        inner.sends.lock().unwrap().push(record(response.status().as_u16()));
        return response;
    }
    forward(&inner, &parts.method, &parts.uri, &parts.headers, bytes).await
}

async fn forward(inner: &Inner, method: &Method, uri: &axum::http::Uri, headers: &HeaderMap, body: Bytes) -> Response {
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut request = inner
        .client
        .request(method.clone(), format!("{}{path}", inner.upstream))
        .body(body);
    for (name, value) in headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    match request.send().await {
        Ok(upstream) => {
            let status = upstream.status();
            let mut out = HeaderMap::new();
            for (name, value) in upstream.headers() {
                if name != "content-length" && name != "transfer-encoding" && name != "connection" {
                    out.insert(name.clone(), value.clone());
                }
            }
            let bytes = upstream.bytes().await.unwrap_or_default();
            let mut response = Response::new(Body::from(bytes));
            *response.status_mut() = status;
            *response.headers_mut() = out;
            response
        }
        Err(error) => (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    }
}
