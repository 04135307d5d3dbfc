//! HTTP endpoints, served on `api_addr` and `metrics_addr` alike:
//!
//! - `GET /status`: the status document (JSON);
//! - `GET /metrics`: Prometheus text;
//! - `PUT /services/{name}/servers`: replaces a service's server list with
//!   the JSON list of `"IP:port"` strings in the body; answers with the
//!   service's new status, `400` naming the bad entry, or `404`.

use std::net::SocketAddr;

use anyhow::Context as _;
use axum::{
    Json, Router,
    extract::{Path, State, rejection::JsonRejection},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, put},
};
use tokio::net::TcpListener;
use tracing::info;

use crate::{
    controller::{Controller, ServersError},
    metrics,
    status::Status,
};

async fn status(State(controller): State<Controller>) -> Json<Status> {
    Json(tokio::task::block_in_place(|| controller.status()))
}

async fn metrics_text(State(controller): State<Controller>) -> impl IntoResponse {
    let body = tokio::task::block_in_place(|| {
        metrics::render(&controller.status(), &controller.counters())
    });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn put_servers(
    State(controller): State<Controller>,
    Path(name): Path<String>,
    body: Result<Json<Vec<String>>, JsonRejection>,
) -> Response {
    let Json(servers) = match body {
        Ok(body) => body,
        Err(rejection) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "expected a JSON list of \"IP:port\" strings: {}",
                    rejection.body_text()
                ),
            );
        }
    };
    let result = tokio::task::block_in_place(|| {
        controller.set_servers(&name, &servers)?;
        Ok::<_, ServersError>(controller.status())
    });
    match result {
        Ok(status) => {
            info!(service = %name, servers = ?servers, "server list replaced through the API");
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

/// The router with every endpoint.
pub fn router(controller: Controller) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics_text))
        .route("/services/{name}/servers", put(put_servers))
        .with_state(controller)
}

/// Binds `addr` (before anything is attached, so a busy port fails early).
pub async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {what} on {addr}"))
}

/// Serves the router on a bound listener until the task is aborted.
pub async fn serve(listener: TcpListener, controller: Controller) -> anyhow::Result<()> {
    axum::serve(listener, router(controller))
        .await
        .context("HTTP server")
}
