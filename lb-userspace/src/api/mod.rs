//! The daemon's HTTP surfaces. Each listener can do only what its
//! audience needs; nothing reachable over the network changes where
//! traffic goes unless the operator opted in with a token:
//!
//! | listener | serves | changes |
//! |---|---|---|
//! | `metrics_addr` | `GET /metrics`, `GET /healthz` | never |
//! | `api_addr` | `GET /status` | only with `api_token_file`: `PUT /services/{name}/servers`, `PUT /kernel-log`, `POST /reload` with `Authorization: Bearer <token>` |
//! | `control_socket` | `GET /status`, `PUT /services/{name}/servers`, `PUT /kernel-log`, `POST /reload` | root, the daemon's user or `control_group` ([`auth::may_control`]) |
//!
//! `PUT /services/{name}/servers` replaces a service's server list with the
//! JSON list of `"IP:port"` strings in the body and answers with the
//! service's new status, `400` naming the bad entry, or `404`.
//! `PUT /kernel-log` sets what the kernel programs log (body: the JSON
//! string `"off"`, `"warn"` or `"debug"`) until the next reload, and
//! answers `{"kernel_log": "<level>"}` or `400` naming the bad value.
//! `POST /reload` re-reads the config file like SIGHUP and answers
//! `{"reloaded": "<path>"}` or `400` with the config's errors (the running
//! configuration stays).
//!
//! Every refusal is answered with a JSON `{"error": ...}` that says where
//! the request belongs, logged at warn with the method, path and peer
//! (address, or uid/gid/pid), and counted in `daas_lb_api_refused_total`.
//! Every listener has the limits of [`guard`].
//!
//! Reloads (SIGHUP, `POST /reload` on either listener) and server-list
//! replacements are counted by result in `daas_lb_config_reloads_total` and
//! `daas_lb_server_list_changes_total` ([`Changes`]); both families are in
//! the first scrape, with zeros.

pub mod auth;
pub mod client;
pub mod control;
pub mod guard;
pub mod status;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError, RwLock},
};

use anyhow::Context as _;
use axum::{
    Json, Router,
    extract::{ConnectInfo, DefaultBodyLimit, Path, Request, State, rejection::JsonRejection},
    http::{HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse as _, Response},
    routing::{get, post, put},
    serve::Listener,
};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use self::{
    auth::Token,
    guard::{Conn, Guarded, MAX_BODY, Peer, PeerStream},
};
use crate::{
    config::{Config, KernelLog},
    controller::{Controller, ServersError},
    metrics::{self, ChangeResult},
};

/// Loads the config file again with the command line's overrides (the
/// caller knows where it came from); `Err` for the built-in demo.
pub type LoadConfig = Arc<dyn Fn() -> anyhow::Result<(Config, String)> + Send + Sync>;

/// Refused requests and early-closed connections, per (listener, reason).
#[derive(Debug, Default)]
pub struct Refusals {
    counts: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl Refusals {
    /// Counts one.
    pub fn count(&self, listener: &'static str, reason: &'static str) {
        *self
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((listener, reason))
            .or_default() += 1;
    }

    /// How many so far.
    pub fn get(&self, listener: &str, reason: &str) -> u64 {
        self.snapshot()
            .iter()
            .find(|((l, r), _)| *l == listener && *r == reason)
            .map_or(0, |(_, n)| *n)
    }

    /// Every count, sorted.
    pub fn snapshot(&self) -> Vec<((&'static str, &'static str), u64)> {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }
}

/// Configuration reloads and server-list replacements, by result.
#[derive(Debug, Default)]
pub struct Changes {
    reloads: Mutex<BTreeMap<ChangeResult, u64>>,
    /// Per (service, result). Only configured services are counted: each
    /// name becomes a label value, and a client must not be able to add
    /// series by making names up.
    server_lists: Mutex<BTreeMap<(String, ChangeResult), u64>>,
}

impl Changes {
    /// Counts a reload.
    pub fn reloaded(&self, result: ChangeResult) {
        *self
            .reloads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(result)
            .or_default() += 1;
    }

    /// Counts a server-list change of `service`, a configured service.
    pub fn server_list_changed(&self, service: &str, result: ChangeResult) {
        *self
            .server_lists
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((service.to_owned(), result))
            .or_default() += 1;
    }

    /// Reloads per result: both results, zero until counted.
    pub fn reloads(&self) -> Vec<(ChangeResult, u64)> {
        let counts = self.reloads.lock().unwrap_or_else(PoisonError::into_inner);
        ChangeResult::ALL
            .iter()
            .map(|result| (*result, counts.get(result).copied().unwrap_or(0)))
            .collect()
    }

    /// Server-list changes per (service, result), sorted: every count so
    /// far (also of a service a reload has removed since), and zero for
    /// both results of each of `services` not counted yet.
    pub fn server_lists(
        &self,
        services: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Vec<((String, ChangeResult), u64)> {
        let mut all = self
            .server_lists
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for service in services {
            for result in ChangeResult::ALL {
                all.entry((service.as_ref().to_owned(), result))
                    .or_default();
            }
        }
        all.into_iter().collect()
    }
}

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Surface {
    Metrics,
    Api,
    Control,
}

impl Surface {
    const fn name(self) -> &'static str {
        match self {
            Self::Metrics => "metrics",
            Self::Api => "api",
            Self::Control => "control",
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct Api {
    controller: Controller,
    load_config: LoadConfig,
    /// The bearer token of `api_token_file`; `None`: `api_addr` is read-only.
    token: Arc<RwLock<Option<Token>>>,
    control_socket: PathBuf,
    control_gid: Option<u32>,
    own_uid: u32,
    refusals: Arc<Refusals>,
    changes: Arc<Changes>,
}

impl Api {
    /// The state for the routers of a daemon running `config`, with the
    /// token of its `api_token_file` ([`load_token`]).
    pub fn new(
        controller: Controller,
        config: &Config,
        token: Option<Token>,
        load_config: LoadConfig,
    ) -> Self {
        Self {
            controller,
            load_config,
            token: Arc::new(RwLock::new(token)),
            control_socket: config.control_socket.clone(),
            control_gid: config.control_group.as_ref().map(|g| g.gid),
            // SAFETY: geteuid has no preconditions.
            own_uid: unsafe { libc::geteuid() },
            refusals: Arc::new(Refusals::default()),
            changes: Arc::new(Changes::default()),
        }
    }

    /// Counts of refused requests so far.
    pub fn refusals(&self) -> &Arc<Refusals> {
        &self.refusals
    }

    /// Reloads the config file (SIGHUP and `POST /reload`): the file and
    /// its `api_token_file` must load before anything changes; a config
    /// that does not apply leaves the running one. Returns the file's path.
    /// Counted in `daas_lb_config_reloads_total`.
    pub async fn reload(&self) -> anyhow::Result<String> {
        let reloaded = self.load_and_apply().await;
        self.changes.reloaded(ChangeResult::of(&reloaded));
        reloaded
    }

    /// [`Api::reload`] without the count.
    async fn load_and_apply(&self) -> anyhow::Result<String> {
        let (config, origin) = (self.load_config)()?;
        let token = load_token(&config)?;
        self.controller.reload(config).await?;
        let had = std::mem::replace(
            &mut *self.token.write().unwrap_or_else(PoisonError::into_inner),
            token,
        )
        .is_some();
        let has = self.has_token();
        if had != has {
            info!(
                mutations_over_tcp = has,
                "api_token_file changed: changes over api_addr are now {}",
                if has { "on (with the token)" } else { "off" }
            );
        }
        Ok(origin)
    }

    fn has_token(&self) -> bool {
        self.token
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// `metrics_addr`: `GET /metrics` and `GET /healthz`, nothing else.
    pub fn metrics_router(&self) -> Router {
        self.finish(
            Router::new()
                .route("/metrics", get(metrics_text))
                .route("/healthz", get(healthz))
                .fallback(refuse_on_metrics)
                .method_not_allowed_fallback(refuse_on_metrics),
        )
    }

    /// `api_addr`: `GET /status`; changes only with the bearer token.
    pub fn api_router(&self) -> Router {
        let changes =
            mutations().route_layer(middleware::from_fn_with_state(self.clone(), require_token));
        self.finish(
            Router::new()
                .route("/status", get(status))
                .merge(changes)
                .fallback(refuse_on_api)
                .method_not_allowed_fallback(refuse_on_api),
        )
    }

    /// The control socket: status and every change, for permitted peers.
    pub fn control_router(&self) -> Router {
        self.finish(
            Router::new()
                .route("/status", get(status))
                .merge(mutations())
                .fallback(not_found_on_control)
                .method_not_allowed_fallback(not_found_on_control)
                .layer(middleware::from_fn_with_state(self.clone(), require_peer)),
        )
    }

    /// Body cap and one request per connection, on every router.
    fn finish(&self, router: Router<Self>) -> Router {
        router
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .layer(middleware::from_fn(one_request_per_connection))
            .with_state(self.clone())
    }

    /// Answers `status` with a JSON error, logs the refusal at warn and
    /// counts it.
    fn refuse(
        &self,
        surface: Surface,
        peer: &Peer,
        request: (&Method, &str),
        (status, reason): (StatusCode, &'static str),
        message: String,
    ) -> Response {
        self.refusals.count(surface.name(), reason);
        warn!(
            listener = surface.name(),
            method = %request.0,
            path = request.1,
            peer = %peer,
            reason,
            "refused: {message}"
        );
        error(status, message)
    }
}

/// The routes that change things (served behind a permission check).
fn mutations() -> Router<Api> {
    Router::new()
        .route("/services/{name}/servers", put(put_servers))
        .route("/kernel-log", put(put_kernel_log))
        .route("/reload", post(reload))
}

/// The token of `config.api_token_file`, if set (see [`Token::load`]).
pub fn load_token(config: &Config) -> anyhow::Result<Option<Token>> {
    config
        .api_token_file
        .as_deref()
        .map(Token::load)
        .transpose()
}

/// Binds a TCP listener (before anything is attached, so a busy port fails early).
pub async fn bind(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {what} on {addr}"))
}

/// Serves `router` on `listener` with the limits of [`guard`] until the
/// task is aborted; `name` names the listener in logs and metrics.
pub async fn serve<L>(
    listener: L,
    name: &'static str,
    router: Router,
    refusals: Arc<Refusals>,
) -> anyhow::Result<()>
where
    L: Listener,
    L::Io: PeerStream,
    L::Addr: std::fmt::Debug,
{
    let listener = Guarded::new(listener, name, refusals);
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<Conn>(),
    )
    .await
    .with_context(|| format!("HTTP server of the {name} listener"))
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// Marks the request head as received (see [`guard`]) and closes the
/// connection after the response.
async fn one_request_per_connection(
    ConnectInfo(conn): ConnectInfo<Conn>,
    request: Request,
    next: Next,
) -> Response {
    conn.mark_started();
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The control socket: only permitted peers get past this.
async fn require_peer(
    State(api): State<Api>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    request: Request,
    next: Next,
) -> Response {
    let permitted = match &conn.peer {
        Peer::Unix(creds) => auth::may_control(creds, api.own_uid, api.control_gid),
        Peer::Tcp(_) => false,
    };
    if permitted {
        return next.run(request).await;
    }
    api.refuse(
        Surface::Control,
        &conn.peer,
        (request.method(), request.uri().path()),
        (StatusCode::FORBIDDEN, "not_authorized"),
        format!(
            "{} may not control daas-lb: only root{} may",
            conn.peer,
            api.control_gid
                .map(|gid| format!(" and members of control_group (gid {gid})"))
                .unwrap_or_default()
        ),
    )
}

/// `api_addr`'s changes: the bearer token of `api_token_file`, if any.
async fn require_token(
    State(api): State<Api>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    request: Request,
    next: Next,
) -> Response {
    let verdict = {
        let token = api.token.read().unwrap_or_else(PoisonError::into_inner);
        token.as_ref().map(|token| {
            let presented = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            match presented {
                None => Err("no_token"),
                Some(presented) if token.matches(presented.trim()) => Ok(()),
                Some(_) => Err("bad_token"),
            }
        })
    };
    let target = (request.method(), request.uri().path());
    match verdict {
        Some(Ok(())) => {
            info!(method = %target.0, path = target.1, peer = %conn.peer, "change over api_addr with the bearer token");
            next.run(request).await
        }
        Some(Err(reason)) => {
            let mut response = api.refuse(
                Surface::Api,
                &conn.peer,
                target,
                (StatusCode::UNAUTHORIZED, reason),
                format!(
                    "{}: changes over api_addr need `Authorization: Bearer <token>` with the \
                     token of api_token_file",
                    if reason == "no_token" {
                        "no bearer token"
                    } else {
                        "wrong bearer token"
                    }
                ),
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"daas-lb\""),
            );
            response
        }
        None => api.refuse(
            Surface::Api,
            &conn.peer,
            target,
            (StatusCode::FORBIDDEN, "read_only"),
            read_only_api_message(&api),
        ),
    }
}

fn read_only_api_message(api: &Api) -> String {
    format!(
        "api_addr is read-only (GET /status): changes go through the control socket {} \
         (`daas-lb set-servers`, `daas-lb reload`), or over TCP with a bearer token once \
         api_token_file is set",
        api.control_socket.display()
    )
}

/// Anything but `GET /metrics` and `GET /healthz` on `metrics_addr`.
async fn refuse_on_metrics(
    State(api): State<Api>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    method: Method,
    uri: axum::http::Uri,
) -> Response {
    let message = "metrics_addr is read-only: it serves GET /metrics and GET /healthz".to_owned();
    if method == Method::GET || method == Method::HEAD {
        debug!(path = uri.path(), peer = %conn.peer, "no such endpoint on metrics_addr");
        return error(StatusCode::NOT_FOUND, message);
    }
    let mut response = api.refuse(
        Surface::Metrics,
        &conn.peer,
        (&method, uri.path()),
        (StatusCode::METHOD_NOT_ALLOWED, "read_only"),
        message,
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    response
}

/// Anything unrouted on `api_addr`.
async fn refuse_on_api(
    State(api): State<Api>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    method: Method,
    uri: axum::http::Uri,
) -> Response {
    if method == Method::GET || method == Method::HEAD || api.has_token() {
        debug!(%method, path = uri.path(), peer = %conn.peer, "no such endpoint on api_addr");
        return error(
            StatusCode::NOT_FOUND,
            "no such endpoint: api_addr serves GET /status, and with the bearer token \
             PUT /services/{name}/servers, PUT /kernel-log and POST /reload"
                .to_owned(),
        );
    }
    api.refuse(
        Surface::Api,
        &conn.peer,
        (&method, uri.path()),
        (StatusCode::FORBIDDEN, "read_only"),
        read_only_api_message(&api),
    )
}

/// Anything unrouted on the control socket (its peer is already permitted).
async fn not_found_on_control(method: Method, uri: axum::http::Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no {method} {}: the control socket serves GET /status, PUT /services/{{name}}/servers, \
             PUT /kernel-log and POST /reload",
            uri.path()
        ),
    )
}

async fn status(State(api): State<Api>) -> Response {
    match api.controller.status().await {
        Ok(status) => Json(status).into_response(),
        Err(stopped) => error(StatusCode::SERVICE_UNAVAILABLE, stopped.to_string()),
    }
}

async fn metrics_text(State(api): State<Api>) -> Response {
    let (status, counters) = match api.controller.snapshot().await {
        Ok(snapshot) => snapshot,
        Err(stopped) => return error(StatusCode::SERVICE_UNAVAILABLE, stopped.to_string()),
    };
    let mut body = metrics::render(&status, &counters);
    let services: Vec<String> = status.services.into_iter().map(|s| s.name).collect();
    metrics::render_api_refusals(&mut body, &api.refusals.snapshot());
    metrics::render_api_changes(
        &mut body,
        &api.changes.reloads(),
        &api.changes.server_lists(&services),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Liveness: answers once the controller thread answers.
async fn healthz(State(api): State<Api>) -> Response {
    match api.controller.ping().await {
        Ok(()) => "ok\n".into_response(),
        Err(stopped) => error(StatusCode::SERVICE_UNAVAILABLE, stopped.to_string()),
    }
}

async fn put_servers(
    State(api): State<Api>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Path(name): Path<String>,
    body: Result<Json<Vec<String>>, JsonRejection>,
) -> Response {
    let Json(servers) = match body {
        Ok(body) => body,
        Err(rejection) => {
            count_rejected_if_configured(&api, &name).await;
            let status = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            return error(
                status,
                format!(
                    "expected a JSON list of \"IP:port\" strings (at most {MAX_BODY} bytes): {}",
                    rejection.body_text()
                ),
            );
        }
    };
    let result = api.controller.set_servers(&name, servers.clone()).await;
    // An unknown name is not counted (see `Changes::server_lists`); every
    // other error means a configured service kept its list.
    if !matches!(result, Err(ServersError::UnknownService(_))) {
        api.changes
            .server_list_changed(&name, ChangeResult::of(&result));
    }
    match result {
        Ok(status) => {
            info!(service = %name, servers = ?servers, peer = %conn.peer, "server list replaced through the API");
            let service = status.services.into_iter().find(|s| s.name == name);
            Json(service).into_response()
        }
        Err(err @ ServersError::UnknownService(_)) => error(StatusCode::NOT_FOUND, err.to_string()),
        Err(err @ ServersError::Invalid(_)) => error(StatusCode::BAD_REQUEST, err.to_string()),
        Err(err @ ServersError::Apply(_)) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
        }
    }
}

/// Counts a refused server list for `name` if a service has that name (an
/// unknown name is not counted, see `Changes::server_lists`).
async fn count_rejected_if_configured(api: &Api, name: &str) {
    let Ok(status) = api.controller.status().await else {
        return;
    };
    if status.services.iter().any(|s| s.name == name) {
        api.changes
            .server_list_changed(name, ChangeResult::Rejected);
    }
}

async fn put_kernel_log(
    State(api): State<Api>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    body: Result<Json<String>, JsonRejection>,
) -> Response {
    let level = match body {
        Ok(Json(word)) => word.trim().parse::<KernelLog>(),
        Err(rejection) => Err(rejection.body_text()),
    };
    let level = match level {
        Ok(level) => level,
        Err(problem) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "expected the JSON string \"off\", \"warn\" or \"debug\" (at most {MAX_BODY} \
                     bytes): {problem}"
                ),
            );
        }
    };
    match api.controller.set_kernel_log(level).await {
        Ok(()) => {
            info!(level = %level, peer = %conn.peer, "kernel programs' log level set through the API");
            Json(serde_json::json!({ "kernel_log": level })).into_response()
        }
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}")),
    }
}

async fn reload(State(api): State<Api>, ConnectInfo(conn): ConnectInfo<Conn>) -> Response {
    info!(peer = %conn.peer, "reload requested through the API");
    match api.reload().await {
        Ok(origin) => {
            info!(path = %origin, "configuration reloaded");
            Json(serde_json::json!({ "reloaded": origin })).into_response()
        }
        Err(err) => {
            let message = format!("{err:#}");
            warn!(error = %message, "configuration NOT reloaded; keeping the running one");
            error(
                StatusCode::BAD_REQUEST,
                format!("configuration NOT reloaded; keeping the running one: {message}"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reloads_have_both_results_from_the_start() {
        let changes = Changes::default();
        assert_eq!(
            changes.reloads(),
            [(ChangeResult::Applied, 0), (ChangeResult::Rejected, 0)]
        );
        changes.reloaded(ChangeResult::Rejected);
        changes.reloaded(ChangeResult::Rejected);
        changes.reloaded(ChangeResult::Applied);
        assert_eq!(
            changes.reloads(),
            [(ChangeResult::Applied, 1), (ChangeResult::Rejected, 2)]
        );
    }

    #[test]
    fn server_lists_are_zero_for_configured_services_and_keep_removed_ones() {
        let changes = Changes::default();
        let key = |service: &str, result| (service.to_owned(), result);
        assert_eq!(
            changes.server_lists(["b", "a"]),
            [
                (key("a", ChangeResult::Applied), 0),
                (key("a", ChangeResult::Rejected), 0),
                (key("b", ChangeResult::Applied), 0),
                (key("b", ChangeResult::Rejected), 0),
            ]
        );
        changes.server_list_changed("a", ChangeResult::Applied);
        changes.server_list_changed("gone", ChangeResult::Rejected);
        assert_eq!(
            changes.server_lists(["a"]),
            [
                (key("a", ChangeResult::Applied), 1),
                (key("a", ChangeResult::Rejected), 0),
                (key("gone", ChangeResult::Rejected), 1),
            ]
        );
        assert_eq!(changes.server_lists(Vec::<String>::new()).len(), 2);
    }
}
