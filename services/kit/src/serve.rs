//! Serving: what a service contributes ([`Mount`]) and the process that runs mounts
//! ([`start`]): one gRPC server (every mounted service, plus health and reflection) and one
//! HTTP server (`/healthz`, `/readyz`, `/metrics` and the services' routes), outbox relays and
//! event consumers. [`Running::stop`] stops accepting, drains in-flight requests, then stops
//! consumers and flushes the outboxes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::bus::measured::Measured;
use crate::bus::{Bus, Handler};
use crate::db::Db;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::tasks::Tasks;
use crate::{Error, Result};

/// An event consumer a service runs: `handler` applies `topic` as consumer group `group`.
pub struct Consumer {
    /// Consumer group (one per consuming service, e.g. "audit").
    pub group: String,
    /// Topic consumed.
    pub topic: String,
    /// What applies each event.
    pub handler: Arc<dyn Handler>,
}

/// A long-running task a service needs (key rotation, clean-up); it must end when the token
/// is cancelled.
pub type Background = Box<dyn FnOnce(CancellationToken) -> futures::future::BoxFuture<'static, ()> + Send>;

/// Registers one gRPC service on the process's router.
type AddGrpc = Box<dyn FnOnce(&mut tonic::service::RoutesBuilder) + Send>;

/// Everything one service contributes to a process.
pub struct Mount {
    /// The service's name ("records", "audit", ...).
    pub name: &'static str,
    /// Its gRPC services (added with [`Mount::add_grpc`]).
    grpc: Vec<AddGrpc>,
    /// Fully-qualified gRPC service names, for the health service.
    grpc_services: Vec<&'static str>,
    /// Its HTTP routes (merged at the root).
    pub http: axum::Router,
    /// Its event consumers.
    pub consumers: Vec<Consumer>,
    /// Its outbox, relayed by the process.
    pub outbox: Option<Outbox>,
    /// Its database, checked by `/readyz` and closed on stop.
    pub db: Option<Db>,
    /// Its background tasks, stopped with the consumers.
    pub background: Vec<Background>,
    /// Listeners of its own beside HTTP and gRPC (e.g. `("mllp", addr)`), as bound: reported
    /// in [`Running::listeners`] and the `listening` line.
    pub listeners: Vec<(&'static str, SocketAddr)>,
}

impl Mount {
    /// A mount with nothing in it yet.
    pub fn new(name: &'static str) -> Self {
        Mount {
            name,
            grpc: Vec::new(),
            grpc_services: Vec::new(),
            http: axum::Router::new(),
            consumers: Vec::new(),
            outbox: None,
            db: None,
            background: Vec::new(),
            listeners: Vec::new(),
        }
    }

    /// Adds a gRPC service (a generated `…Server`); it is also reported by the health service.
    pub fn add_grpc<S>(&mut self, svc: S)
    where
        S: tower::Service<http::Request<tonic::body::Body>, Error = std::convert::Infallible>
            + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.grpc_services.push(S::NAME);
        self.grpc.push(Box::new(move |b: &mut tonic::service::RoutesBuilder| {
            b.add_service(svc);
        }));
    }
}

/// Where to listen.
#[derive(Clone, Copy, Debug)]
pub struct Listen {
    /// HTTP address (port 0 picks a free port).
    pub http: SocketAddr,
    /// gRPC address (port 0 picks a free port).
    pub grpc: SocketAddr,
    /// A port of their own for `/healthz`, `/readyz` and `/metrics`, which the HTTP address
    /// then no longer serves: probes and scrapes reach them, routes to the public never do.
    pub health: Option<SocketAddr>,
    /// Requests (HTTP and gRPC together) served at once; one more is refused at once (503
    /// or RESOURCE_EXHAUSTED, naming the setting) rather than queued. Probes and scrapes are
    /// never refused.
    pub max_in_flight: usize,
    /// The largest HTTP request body taken; a larger one is refused with 413 naming the setting.
    pub max_body_bytes: usize,
    /// The longest a client may keep the server waiting for its next bytes: a request's head,
    /// the next piece of its body, the first bytes on a new connection, the next request on an
    /// idle keep-alive connection, an answer to an HTTP/2 ping. Past it the connection is
    /// closed (or a stalled body answered 408 / DEADLINE_EXCEEDED, naming the setting).
    pub client_timeout: Duration,
}

/// A started process. Dropping it does not stop it: call [`Running::stop`].
pub struct Running {
    /// The bound HTTP address.
    pub http: SocketAddr,
    /// The bound gRPC address.
    pub grpc: SocketAddr,
    /// Names of the mounted services.
    pub services: Vec<&'static str>,
    /// The services' own listeners (protocol, bound address), e.g. HL7 v2 over MLLP.
    pub listeners: Vec<(&'static str, SocketAddr)>,
    servers: Vec<tokio::task::JoinHandle<()>>,
    in_flight: Arc<AtomicUsize>,
    workers: TaskTracker,
    stop_serving: CancellationToken,
    stop_working: CancellationToken,
    dbs: Vec<Db>,
    health: tonic_health::server::HealthReporter,
    grpc_names: Vec<&'static str>,
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Io(format!("cannot listen for {what} on {addr}: {e}")))
}

/// Listeners bound before services are built, so a service can know its own address (the
/// identity issuer is the HTTP base URL when none is configured).
pub struct Bound {
    http: TcpListener,
    grpc: TcpListener,
    health: Option<TcpListener>,
    /// The bound HTTP address.
    pub http_addr: SocketAddr,
    /// The bound gRPC address.
    pub grpc_addr: SocketAddr,
    max_in_flight: usize,
    max_body_bytes: usize,
    client_timeout: Duration,
}

/// Binds the HTTP and gRPC listeners.
pub async fn bind_all(listen: Listen) -> Result<Bound> {
    let http = bind(listen.http, "HTTP").await?;
    let grpc = bind(listen.grpc, "gRPC").await?;
    let health = match listen.health {
        Some(addr) => Some(bind(addr, "health and metrics").await?),
        None => None,
    };
    let http_addr = http.local_addr().map_err(|e| Error::Io(e.to_string()))?;
    let grpc_addr = grpc.local_addr().map_err(|e| Error::Io(e.to_string()))?;
    Ok(Bound {
        http,
        grpc,
        health,
        http_addr,
        grpc_addr,
        max_in_flight: listen.max_in_flight.max(1),
        max_body_bytes: listen.max_body_bytes,
        client_timeout: listen.client_timeout,
    })
}

/// How often the outbox backlog and consumer lag gauges are measured.
const MEASURE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Starts servers, relays and consumers for `mounts` on `bus`. `tasks` are those the mounted
/// services spawned their own workers under; relays, consumers and background tasks join them,
/// and [`Running::stop`] stops and waits for all of them. `verifier` checks the bearer token
/// of every gRPC call once, for the methods that ask who is calling ([`crate::caller`]).
pub async fn start(
    mounts: Vec<Mount>,
    bus: Arc<dyn Bus>,
    bound: Bound,
    metrics: Metrics,
    tasks: Tasks,
    verifier: Option<crate::auth::Verifier>,
) -> Result<Running> {
    let (workers, stop_working) = tasks.into_parts();
    let Bound {
        http: http_listener,
        grpc: grpc_listener,
        health: health_listener,
        http_addr,
        grpc_addr,
        max_in_flight,
        max_body_bytes,
        client_timeout,
    } = bound;

    let mut servers = Vec::new();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let admitted = Arc::new(AtomicUsize::new(0));
    let stop_serving = CancellationToken::new();

    let (health, health_service) = tonic_health::server::health_reporter();
    // Reflection lists what this process serves: the mounted services, health and itself.
    let mut advertised: Vec<&str> = mounts.iter().flat_map(|m| m.grpc_services.iter().copied()).collect();
    advertised.extend([
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]);
    let reflection = || {
        advertised.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(sharedcare_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
            |b, name| b.with_service_name(*name),
        )
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| Error::Io(format!("reflection: {e}")))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| Error::Io(format!("reflection: {e}")))?;

    let mut grpc = tonic::service::RoutesBuilder::default();
    let mut http = axum::Router::new();
    let mut dbs = Vec::new();
    let mut services = Vec::new();
    let mut grpc_names = vec![""];
    let mut listeners = Vec::new();
    for m in mounts {
        services.push(m.name);
        listeners.extend(m.listeners.iter().copied());
        for add in m.grpc {
            add(&mut grpc);
        }
        grpc_names.extend(m.grpc_services.iter().copied());
        for name in m.grpc_services {
            health
                .set_service_status(name, tonic_health::ServingStatus::Serving)
                .await;
        }
        http = http.merge(m.http);
        if let Some(db) = m.db {
            dbs.push(db);
        }
        if let Some(outbox) = m.outbox {
            workers.spawn(
                outbox
                    .clone()
                    .measure(metrics.clone(), MEASURE_EVERY, stop_working.clone()),
            );
            let (bus, token) = (bus.clone(), stop_working.clone());
            workers.spawn(
                outbox
                    .run(bus, token)
                    .instrument(tracing::info_span!("outbox", service = m.name)),
            );
        }
        for task in m.background {
            workers.spawn(task(stop_working.clone()).instrument(tracing::info_span!("background", service = m.name)));
        }
        for c in m.consumers {
            let (bus, token) = (bus.clone(), stop_working.clone());
            let span = tracing::info_span!("consumer", group = %c.group, topic = %c.topic);
            let measured = Measured::new(c.handler, &c.group, &c.topic, metrics.clone());
            workers.spawn(measured.clone().measure_lag(bus.clone(), MEASURE_EVERY, token.clone()));
            workers.spawn(
                async move {
                    if let Err(e) = bus.consume(&c.group, &c.topic, measured, token).await {
                        tracing::error!(error = %e, "consumer stopped");
                    }
                }
                .instrument(span),
            );
        }
    }

    let mut grpc_router = grpc.routes().into_axum_router();
    // Inside the observer: a call is counted whatever its caller.
    if let Some(v) = verifier {
        grpc_router = grpc_router.layer(axum::middleware::from_fn_with_state(v, crate::caller::verify));
    }
    let grpc_routes = tonic::service::Routes::from(grpc_router.layer(axum::middleware::from_fn_with_state(
        Observe {
            metrics: metrics.clone(),
            protocol: "grpc",
            in_flight: in_flight.clone(),
            admitted: admitted.clone(),
            max_in_flight,
            max_body_bytes: usize::MAX,
            client_timeout,
        },
        observe,
    )))
    .add_service(health_service)
    .add_service(reflection_v1)
    .add_service(reflection_v1alpha);
    let token = stop_serving.clone();
    servers.push(tokio::spawn(async move {
        let incoming = speaking(grpc_listener, client_timeout, token.clone());
        // A connection whose peer stops answering pings is closed; a live idle one stays.
        let res = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(client_timeout))
            .http2_keepalive_timeout(Some(client_timeout))
            .add_routes(grpc_routes)
            .serve_with_incoming_shutdown(incoming, token.cancelled_owned())
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "gRPC server failed");
        }
    }));

    let ready = Readiness {
        dbs: dbs.clone(),
        bus: bus.clone(),
    };
    let internal = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz).with_state(ready))
        .route("/metrics", get(render_metrics).with_state(metrics.clone()));
    let http = match health_listener {
        None => http.merge(internal),
        Some(listener) => {
            let addr = listener.local_addr().map_err(|e| Error::Io(e.to_string()))?;
            listeners.push(("health", addr));
            let token = stop_serving.clone();
            servers.push(tokio::spawn(serve_http(listener, internal, client_timeout, token)));
            http
        }
    };
    let http =
        http.layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
            .layer(axum::middleware::from_fn_with_state(
                Observe {
                    metrics,
                    protocol: "http",
                    in_flight: in_flight.clone(),
                    admitted: admitted.clone(),
                    max_in_flight,
                    max_body_bytes,
                    client_timeout,
                },
                observe,
            ));
    let token = stop_serving.clone();
    servers.push(tokio::spawn(serve_http(http_listener, http, client_timeout, token)));

    Ok(Running {
        http: http_addr,
        grpc: grpc_addr,
        services,
        listeners,
        servers,
        in_flight,
        workers,
        stop_serving,
        stop_working,
        dbs,
        health,
        grpc_names,
    })
}

impl Running {
    /// Stops accepting, drains in-flight requests, stops consumers, flushes outboxes and
    /// closes databases, each phase within `grace`. `false` if something did not finish.
    pub async fn stop(self, grace: Duration) -> bool {
        for name in &self.grpc_names {
            self.health
                .set_service_status(name, tonic_health::ServingStatus::NotServing)
                .await;
        }
        // Stop accepting; let in-flight requests finish; then close idle keep-alive
        // connections, which a client may hold open indefinitely.
        self.stop_serving.cancel();
        let deadline = tokio::time::Instant::now() + grace;
        while self.in_flight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let served = self.in_flight.load(Ordering::SeqCst) == 0;
        if !served {
            tracing::warn!(
                requests = self.in_flight.load(Ordering::SeqCst),
                "requests still running after the grace period"
            );
        }
        for server in &self.servers {
            server.abort();
        }
        for server in self.servers {
            let _ = server.await;
        }
        self.stop_working.cancel();
        self.workers.close();
        let worked = tokio::time::timeout(grace, self.workers.wait()).await.is_ok();
        for db in &self.dbs {
            db.close().await;
        }
        served && worked
    }
}

#[derive(Clone)]
struct Readiness {
    dbs: Vec<Db>,
    bus: Arc<dyn Bus>,
}

async fn readyz(State(r): State<Readiness>) -> Response {
    let mut problems = Vec::new();
    for db in &r.dbs {
        if let Err(e) = db.ping().await {
            problems.push(e.to_string());
        }
    }
    if let Err(e) = r.bus.health().await {
        problems.push(e.to_string());
    }
    if problems.is_empty() {
        (http::StatusCode::OK, "ready\n").into_response()
    } else {
        (
            http::StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready:\n{}\n", problems.join("\n")),
        )
            .into_response()
    }
}

async fn render_metrics(State(m): State<Metrics>) -> Response {
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
        .into_response()
}

#[derive(Clone)]
struct Observe {
    metrics: Metrics,
    protocol: &'static str,
    /// Every request being answered (shutdown drains them).
    in_flight: Arc<AtomicUsize>,
    /// Those counted against `max_in_flight`: all but the process's calls to itself.
    admitted: Arc<AtomicUsize>,
    max_in_flight: usize,
    /// HTTP only: a body declared larger (Content-Length) is refused before it is read.
    max_body_bytes: usize,
    /// A body that stalls this long between its pieces is abandoned.
    client_timeout: Duration,
}

/// An HTTP refusal with `message`: an OperationOutcome (issue `code`) on the FHIR API (`fhir`),
/// else the message as text.
fn refusal(status: http::StatusCode, fhir: bool, code: &str, message: String) -> Response {
    if fhir {
        (
            status,
            [(http::header::CONTENT_TYPE, "application/fhir+json")],
            serde_json::json!({
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": code, "diagnostics": message}],
            })
            .to_string(),
        )
            .into_response()
    } else {
        (status, message).into_response()
    }
}

/// What a request over `max_in_flight` gets at once: 503 with Retry-After (an
/// OperationOutcome on the FHIR API), or RESOURCE_EXHAUSTED; each names the setting.
fn overloaded(protocol: &str, fhir: bool, max_in_flight: usize) -> Response {
    let message = format!(
        "this service is answering its limit of {max_in_flight} requests at once (max_in_flight); retry shortly"
    );
    if protocol == "grpc" {
        return tonic::Status::resource_exhausted(message).into_http::<axum::body::Body>();
    }
    let mut res = refusal(http::StatusCode::SERVICE_UNAVAILABLE, fhir, "transient", message);
    res.headers_mut()
        .insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    res
}

/// Serves `router` over HTTP/1.1 on `listener` until `stop`; then stops accepting and lets
/// each connection finish the request it is answering. Written out rather than `axum::serve`,
/// which gives hyper no timer: with one, hyper's header-read timeout (`client_timeout`) closes
/// a connection whose client dribbles a request head or sits idle between requests, which
/// would otherwise hold it (and a file descriptor) for ever. Handlers see the peer's address
/// as axum's `ConnectInfo<SocketAddr>`.
async fn serve_http(listener: TcpListener, router: axum::Router, client_timeout: Duration, stop: CancellationToken) {
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: back off rather than spin.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        // Without it a response written in two parts waits for the peer's delayed ACK.
        let _ = stream.set_nodelay(true);
        let (router, stop) = (router.clone(), stop.clone());
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                tower::Service::call(&mut router.clone(), req.map(axum::body::Body::new))
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(client_timeout);
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            let res = tokio::select! {
                res = conn.as_mut() => res,
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = res {
                tracing::debug!(error = %e, %peer, "HTTP connection ended");
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// The gRPC port's connections, each handed to the server once its client has sent its first
/// bytes: one that sends nothing within `client_timeout` is closed (hyper's HTTP/2 side has no
/// timer before the handshake; after it, unanswered pings close a connection).
fn speaking(
    listener: TcpListener,
    client_timeout: Duration,
    stop: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<tokio::net::TcpStream>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "gRPC accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = stop.cancelled() => break,
                () = tx.closed() => break,
            };
            // Without it every response waits for the peer's delayed ACK (~40 ms).
            let _ = stream.set_nodelay(true);
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                if let Ok(Ok(1..)) = tokio::time::timeout(client_timeout, stream.peek(&mut first)).await {
                    let _ = tx.send(Ok(stream)).await;
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Decrements the in-flight count when a request finishes (or is dropped).
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One span per request (child of the caller's `traceparent`), request metrics, the
/// in-flight count shutdown drains, and gRPC decode failures reported as INVALID_ARGUMENT.
async fn observe(State(o): State<Observe>, req: Request, next: Next) -> Response {
    let (metrics, protocol) = (o.metrics, o.protocol);
    o.in_flight.fetch_add(1, Ordering::SeqCst);
    let _guard = InFlight(o.in_flight);
    // A call this process makes to itself while answering an admitted request is not counted.
    let (now, _counted) = if crate::nested::is_nested(req.headers()) {
        (0, None)
    } else {
        let now = o.admitted.fetch_add(1, Ordering::SeqCst) + 1;
        (now, Some(InFlight(o.admitted)))
    };
    let path = match req.extensions().get::<MatchedPath>() {
        Some(p) if protocol == "http" => p.as_str().to_string(),
        _ => req.uri().path().to_string(),
    };
    let probe = matches!(req.uri().path(), "/healthz" | "/readyz" | "/metrics");
    let fhir = req.uri().path().starts_with("/fhir/");
    if now > o.max_in_flight && !probe {
        let matched = protocol == "grpc" || req.extensions().get::<MatchedPath>().is_some();
        let (label, code) = match protocol {
            "grpc" => (path.as_str(), "ResourceExhausted"),
            _ => (if matched { path.as_str() } else { "unmatched" }, "503"),
        };
        metrics.observe(protocol, label, code, 0.0);
        return overloaded(protocol, fhir, o.max_in_flight);
    }
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(length) = declared.filter(|&n| n > o.max_body_bytes as u64) {
        let label = if req.extensions().get::<MatchedPath>().is_some() {
            path.as_str()
        } else {
            "unmatched"
        };
        metrics.observe(protocol, label, "413", 0.0);
        let message = format!(
            "the request body is {length} bytes; this service takes at most {} (max_body_bytes)",
            o.max_body_bytes
        );
        return refusal(http::StatusCode::PAYLOAD_TOO_LARGE, fhir, "too-long", message);
    }
    // A body that stops arriving is abandoned after client_timeout, and the request answered
    // as such (below), rather than holding its in-flight place for as long as the client likes.
    let stalled = Arc::new(AtomicBool::new(false));
    let req = if axum::body::HttpBody::is_end_stream(req.body()) {
        req
    } else {
        let (stalled, timeout) = (stalled.clone(), o.client_timeout);
        req.map(|body| {
            axum::body::Body::new(http_body_util::BodyExt::map_err(
                tower_http::timeout::TimeoutBody::new(timeout, body),
                move |e| {
                    if e.is::<tower_http::timeout::TimeoutError>() {
                        stalled.store(true, Ordering::Relaxed);
                    }
                    e
                },
            ))
        })
    };
    let span = tracing::info_span!(
        "request",
        otel.name = %path,
        otel.kind = "server",
        rpc.system = if protocol == "grpc" { "grpc" } else { "" },
        code = tracing::field::Empty,
    );
    crate::telemetry::set_parent_from_headers(&span, req.headers());
    let started = Instant::now();
    let mut res = next.run(req).instrument(span.clone()).await;
    if stalled.load(Ordering::Relaxed) {
        let message = format!(
            "the request body stopped arriving: nothing for {} ms (client_timeout_ms)",
            o.client_timeout.as_millis()
        );
        res = match protocol {
            "grpc" => tonic::Status::deadline_exceeded(message).into_http::<axum::body::Body>(),
            _ => refusal(http::StatusCode::REQUEST_TIMEOUT, fhir, "timeout", message),
        };
    } else if protocol == "grpc" {
        undecodable_is_invalid_argument(&mut res);
    } else if res.status() == http::StatusCode::PAYLOAD_TOO_LARGE && declared.is_none() {
        // A body sent without a declared length, cut off at the limit by the extractor.
        let message = format!(
            "the request body is over {} bytes, the most this service takes (max_body_bytes)",
            o.max_body_bytes
        );
        res = refusal(http::StatusCode::PAYLOAD_TOO_LARGE, fhir, "too-long", message);
    }
    let code = match protocol {
        "grpc" => res
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(|c| format!("{:?}", tonic::Code::from_bytes(c.as_bytes())))
            .unwrap_or_else(|| "Ok".to_string()),
        _ => res.status().as_u16().to_string(),
    };
    span.record("code", code.as_str());
    // Unknown routes and methods share one label, so scanners cannot grow the label set.
    let label = if code == "404" || code == "Unimplemented" {
        "unmatched"
    } else {
        path.as_str()
    };
    metrics.observe(protocol, label, &code, started.elapsed().as_secs_f64());
    res
}

/// tonic reports a request it cannot decode as INTERNAL; it is the caller's bad input, so
/// say INVALID_ARGUMENT (the message, which names the field, is kept).
fn undecodable_is_invalid_argument(res: &mut Response) {
    let headers = res.headers_mut();
    let internal = headers.get("grpc-status").is_some_and(|v| v.as_bytes() == b"13");
    let undecodable = headers.get("grpc-message").is_some_and(|v| {
        v.as_bytes().starts_with(b"failed%20to%20decode%20Protobuf")
            || v.as_bytes().starts_with(b"failed to decode Protobuf")
    });
    if internal && undecodable {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
    }
}
