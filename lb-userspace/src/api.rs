//! HTTP endpoints: `GET /status` (JSON) and `GET /metrics` (Prometheus text).
//! The same router is served on `api_addr` and `metrics_addr`.

use std::net::SocketAddr;

use anyhow::Context as _;
use axum::{Json, Router, extract::State, http::header, response::IntoResponse, routing::get};
use tokio::net::TcpListener;

use crate::{controller::Controller, metrics, status::Status};

async fn status(State(controller): State<Controller>) -> Json<Status> {
    Json(tokio::task::block_in_place(|| controller.status()))
}

async fn metrics_text(State(controller): State<Controller>) -> impl IntoResponse {
    let body = tokio::task::block_in_place(|| {
        metrics::render(&controller.status(), &controller.selection_changes())
    });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

/// The router with both endpoints.
pub fn router(controller: Controller) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics_text))
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
