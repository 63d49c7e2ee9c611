//! The HTTP routes (axum): each request becomes one protocol submission to the [`Hub`]; its
//! events become one JSON answer or a stream of server-sent events. A stream waits for the
//! request's first event before it answers, so a request the engine rejects still gets a 400.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::api::{self, ApiError, Parsed, Shape};
use super::hub::Hub;
use crate::protocol::{Event, EventMsg, Op};

/// The largest request body read: far more than any prompt that fits a sequence's context.
const BODY_LIMIT: usize = 16 << 20;

/// What every route shares.
#[derive(Debug)]
pub struct AppState {
    pub hub: Hub,
    /// The model's name, as `/v1/models` lists it.
    pub model: String,
    /// When the server started (seconds since the epoch).
    pub created: u64,
    pub next: AtomicU64,
}

/// The routes of `troupe serve`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/models/{*id}", get(model))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(text))
        .route("/v1/embeddings", post(embeddings))
        .route("/health", get(health))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

async fn models(State(st): State<Arc<AppState>>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": [model_object(&st)]}),
    )
}

async fn model(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if id == st.model {
        json_response(StatusCode::OK, &model_object(&st))
    } else {
        error_response(&ApiError::not_found(format!(
            "no model `{id}`; this server has one model, `{}` (GET /v1/models)",
            st.model
        )))
    }
}

fn model_object(st: &AppState) -> Value {
    json!({"id": st.model, "object": "model", "created": st.created, "owned_by": "troupe"})
}

/// A request body, or the error answer when it cannot be read (too large, cut off).
type BodyResult = Result<Bytes, axum::extract::rejection::BytesRejection>;

async fn chat(State(st): State<Arc<AppState>>, body: BodyResult) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(e) => return unreadable(e),
    };
    match api::parse_chat(&body) {
        Ok(parsed) => complete(st, parsed).await,
        Err(e) => error_response(&e),
    }
}

async fn text(State(st): State<Arc<AppState>>, body: BodyResult) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(e) => return unreadable(e),
    };
    match api::parse_text(&body) {
        Ok(parsed) => complete(st, parsed).await,
        Err(e) => error_response(&e),
    }
}

async fn embeddings(State(st): State<Arc<AppState>>, body: BodyResult) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(e) => return unreadable(e),
    };
    let input = match api::parse_embeddings(&body) {
        Ok(input) => input,
        Err(e) => return error_response(&e),
    };
    let mut events = st.hub.submit(Op::Embed { input });
    while let Some(event) = events.recv().await {
        match event.msg {
            EventMsg::Embeddings {
                model,
                vectors,
                prompt_tokens,
            } => {
                let body = api::embeddings_response(&model, &vectors, prompt_tokens);
                return json_response(StatusCode::OK, &body);
            }
            EventMsg::Error { message, fix } => {
                return error_response(&ApiError::server(with_fix(message, fix)));
            }
            _ => {}
        }
    }
    error_response(&ApiError::server("the embedding request got no answer"))
}

/// `GET /health`: the server's counters and the engine's figures (troupe's own route).
async fn health(State(st): State<Arc<AppState>>) -> Response {
    let s = st.hub.status().await;
    let engine = match s.engine {
        Some(EventMsg::EngineMetrics {
            active_sequences,
            cached_prompt_tokens,
            kv_used,
            kv_total,
            ..
        }) => json!({
            "active_sequences": active_sequences,
            "cached_prompt_tokens": cached_prompt_tokens,
            "kv_used": kv_used,
            "kv_total": kv_total,
        }),
        _ => Value::Null,
    };
    json_response(
        StatusCode::OK,
        &json!({
            "status": "ok",
            "model": st.model,
            "requests": {
                "running": s.running,
                "max_running": s.max_running,
                "finished": s.finished,
                "cancelled": s.cancelled,
            },
            "engine": engine,
        }),
    )
}

async fn not_found(method: Method, uri: Uri) -> Response {
    error_response(&ApiError::not_found(format!(
        "no route {method} {}; troupe serve answers GET /v1/models, POST /v1/chat/completions, POST /v1/completions, POST /v1/embeddings and GET /health",
        uri.path()
    )))
}

/// Runs a completion and answers it whole or as a stream.
async fn complete(st: Arc<AppState>, parsed: Parsed) -> Response {
    let n = st.next.fetch_add(1, Ordering::Relaxed) + 1;
    let shape = Shape::new(parsed.kind, n, unix_now(), &st.model);
    let mut events = st.hub.submit(Op::Complete {
        request: parsed.request.clone(),
    });
    if parsed.stream {
        // The first event decides the status: a rejection is still a 400.
        let first = events.recv().await;
        if let Some(e) = first.as_ref().and_then(|e| failure(&parsed, &e.msg)) {
            return error_response(&e);
        }
        let Some(first) = first else {
            return error_response(&ApiError::server("the completion got no answer"));
        };
        return sse(shape, parsed.include_usage, first, events);
    }
    while let Some(event) = events.recv().await {
        if let Some(e) = failure(&parsed, &event.msg) {
            return error_response(&e);
        }
        if let EventMsg::CompletionComplete {
            text,
            finish_reason,
            stats,
        } = &event.msg
        {
            return json_response(StatusCode::OK, &shape.whole(text, *finish_reason, stats));
        }
    }
    error_response(&ApiError::server("the completion got no answer"))
}

/// The error answer for a failed completion's event, if it is one.
fn failure(parsed: &Parsed, msg: &EventMsg) -> Option<ApiError> {
    match msg {
        EventMsg::CompletionRejected { message, part } => {
            let param = parsed.param_of(*part);
            Some(ApiError::invalid(param, format!("`{param}`: {message}")))
        }
        EventMsg::Error { message, fix } => {
            Some(ApiError::server(with_fix(message.clone(), fix.clone())))
        }
        _ => None,
    }
}

/// A stream of server-sent events: chunks, then `data: [DONE]`. Dropping it (the client went
/// away) drops the event receiver, which cancels the request.
fn sse(
    shape: Shape,
    include_usage: bool,
    first: Event,
    events: mpsc::UnboundedReceiver<Event>,
) -> Response {
    struct State {
        shape: Shape,
        include_usage: bool,
        pending: std::collections::VecDeque<Bytes>,
        events: mpsc::UnboundedReceiver<Event>,
        done: bool,
    }
    let mut st = State {
        shape,
        include_usage,
        pending: Default::default(),
        events,
        done: false,
    };
    if let Some(opening) = st.shape.opening() {
        st.pending.push_back(data(&opening));
    }
    on_event(
        &mut st.pending,
        &mut st.done,
        &st.shape,
        st.include_usage,
        first,
    );
    let stream = futures::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(bytes) = st.pending.pop_front() {
                return Some((Ok::<_, Infallible>(bytes), st));
            }
            if st.done {
                return None;
            }
            match st.events.recv().await {
                Some(event) => on_event(
                    &mut st.pending,
                    &mut st.done,
                    &st.shape,
                    st.include_usage,
                    event,
                ),
                None => {
                    let e = ApiError::server("the completion ended without an answer");
                    st.pending.push_back(data(&e.body()));
                    st.pending
                        .push_back(Bytes::from_static(b"data: [DONE]\n\n"));
                    st.done = true;
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| error_response(&ApiError::server("could not build the stream")))
}

/// The server-sent events for one of the request's events.
fn on_event(
    out: &mut std::collections::VecDeque<Bytes>,
    done: &mut bool,
    shape: &Shape,
    include_usage: bool,
    event: Event,
) {
    match event.msg {
        EventMsg::CompletionDelta { delta } => out.push_back(data(&shape.delta(&delta))),
        EventMsg::CompletionComplete {
            finish_reason,
            stats,
            ..
        } => {
            out.push_back(data(&shape.finish(finish_reason, &stats)));
            if include_usage {
                out.push_back(data(&shape.usage_chunk(&stats)));
            }
            out.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
            *done = true;
        }
        EventMsg::CompletionRejected { message, .. } => {
            out.push_back(data(&ApiError::bad_body(message).body()));
            out.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
            *done = true;
        }
        EventMsg::Error { message, fix } => {
            out.push_back(data(&ApiError::server(with_fix(message, fix)).body()));
            out.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
            *done = true;
        }
        _ => {}
    }
}

/// The error answer for a body that could not be read, with axum's status (413 for too large).
fn unreadable(e: axum::extract::rejection::BytesRejection) -> Response {
    let mut error = ApiError::bad_body(format!(
        "cannot read the request body: {}; send at most {} MiB of JSON",
        e.body_text(),
        BODY_LIMIT >> 20
    ));
    error.status = e.status().as_u16();
    error_response(&error)
}

fn data(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

fn with_fix(message: String, fix: Option<String>) -> String {
    match fix {
        Some(fix) => format!("{message}; {fix}"),
        None => message,
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error_response(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &e.body())
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
