//! `troupe serve`: the shared engine behind an OpenAI-compatible HTTP API, so existing clients
//! (and troupe's own `engine.backend = "openai"`) use the one loaded model. Concurrent HTTP
//! requests become concurrent model requests of one session, so the engine serves them in
//! shared batches with its prefix cache.
//!
//! Inside a git repository it is also an instance for the one-shot commands: it listens on the
//! repository's `.troupe/editor.sock` as `troupe lsp` does, so `troupe ask`, `explain`, `edit`
//! and `review` from another terminal run on its model instead of loading one.
//!
//! - [`api`]: request bodies in, response shapes out (pure, unit-tested).
//! - [`hub`]: the task owning the session; routes events to requests, cancels abandoned ones.
//! - [`http`]: the axum routes.
//!
//! A front end: speaks only to [`crate::agents`] and [`crate::protocol`] (a test enforces it).
//! Runs its own tokio runtime; the model loads once, before the address is announced.

pub mod api;
pub mod http;
pub mod hub;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::agents::{Session, SessionOptions};
use crate::commands::{Context, exit};
use crate::protocol::{Event, EventMsg};

/// The port `troupe serve` listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 8773;

/// How long a stop waits for open connections to finish after their requests were cancelled.
const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// `troupe serve [--addr 127.0.0.1:PORT]`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Where to listen: IP:PORT (default 127.0.0.1:8773; port 0 picks a free one). An address
    /// other than loopback makes the API, which has no authentication, reachable from other
    /// machines.
    #[arg(long, value_name = "IP:PORT")]
    pub addr: Option<String>,
}

/// Runs the server until Ctrl-C or SIGTERM (exit 0).
pub fn run(ctx: &Context, args: &ServeArgs) -> anyhow::Result<u8> {
    let addr = parse_addr(args.addr.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let code = runtime.block_on(serve(ctx, addr));
    // A model load abandoned by a signal runs on a blocking thread: do not wait for it.
    runtime.shutdown_background();
    code
}

/// The address from `--addr`: `IP:PORT`, or `localhost:PORT`.
pub fn parse_addr(given: Option<&str>) -> anyhow::Result<SocketAddr> {
    let Some(given) = given else {
        return Ok(SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)));
    };
    if let Ok(addr) = given.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Some(port) = given.strip_prefix("localhost:")
        && let Ok(port) = port.parse::<u16>()
    {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    bail!(
        "--addr `{given}` is not an address like 127.0.0.1:{DEFAULT_PORT}; pass IP:PORT (port 0 picks a free port)"
    )
}

async fn serve(ctx: &Context, addr: SocketAddr) -> anyhow::Result<u8> {
    // Bind first: a port in use fails before the model loads.
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot listen on {addr}; stop what uses it or pass --addr 127.0.0.1:0 for a free port"
        )
    })?;
    let bound = listener.local_addr().context("reading the bound address")?;
    if !bound.ip().is_loopback() {
        eprintln!(
            "warning: troupe serve listens on {bound}, reachable from other machines, and its API has no authentication: anyone who reaches it can use the model; listen on 127.0.0.1 unless that is what you want"
        );
    }
    // Outside a repository there is no socket and no repository context (completions need none).
    let (repo, in_repo) = match &ctx.repo {
        Some(r) => (r.clone(), true),
        None => (
            std::env::current_dir().context("cannot read the current directory")?,
            false,
        ),
    };
    eprintln!("troupe serve: loading the model...");
    let options = SessionOptions::new(&repo, ctx.config.config.clone());
    let mut session = tokio::select! {
        s = Session::start(options) => s.map_err(|e| {
            let fix = match crate::agents::session::error_event(&e) {
                EventMsg::Error { fix: Some(fix), .. } => format!("; {fix}"),
                _ => String::new(),
            };
            anyhow::anyhow!("cannot load the model: {e}{fix}")
        })?,
        () = stop_signal() => return Ok(exit::OK),
    };
    let model = match session.next_event().await {
        Some(Event {
            msg: EventMsg::SessionConfigured { model, .. },
            ..
        }) => model_id(&model),
        _ => bail!("the session did not start; see .troupe/logs/troupe.log"),
    };
    let hub = hub::Hub::start(session);

    #[cfg(unix)]
    let socket = if in_repo {
        let (tx, mut requests) = tokio::sync::mpsc::unbounded_channel();
        let listening = crate::editor::instance::listen(&repo, tx).await;
        let forward = hub.clone();
        tokio::spawn(async move {
            while let Some(r) = requests.recv().await {
                let crate::editor::instance::Request { submission, reply } = r;
                forward.forward(submission.id, submission.op, reply);
            }
        });
        listening.map(|l| (l, crate::editor::instance::socket_path(&repo)))
    } else {
        None
    };
    #[cfg(unix)]
    let socket_path = socket.as_ref().map(|(_, p)| p.display().to_string());
    #[cfg(not(unix))]
    let socket_path: Option<String> = None;
    let _ = in_repo;

    let state = Arc::new(http::AppState {
        hub: hub.clone(),
        model: model.clone(),
        created: http::unix_now(),
        next: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, http::router(state)).with_graceful_shutdown(async {
        let _ = stop_rx.await;
    });
    let mut server = tokio::spawn(async move { server.await });

    let url = format!("http://{bound}/v1");
    eprintln!("troupe serve: {url} (model {model}); Ctrl-C stops it");
    match &socket_path {
        Some(p) => eprintln!(
            "troupe serve: one-shot commands of {} run here ({p})",
            repo.display()
        ),
        None if in_repo => eprintln!(
            "troupe serve: another troupe instance serves this repository's one-shot commands"
        ),
        None => {}
    }
    if ctx.json {
        let line = serde_json::json!({
            "addr": bound.to_string(),
            "url": url,
            "model": model,
            "socket": socket_path,
        });
        println!("{line}");
    }

    tokio::select! {
        () = stop_signal() => {}
        r = &mut server => {
            hub.shutdown().await;
            let reason = match r {
                Ok(Ok(())) => "it ended".to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            bail!("the HTTP server on {bound} stopped: {reason}");
        }
    }
    eprintln!("troupe serve: stopping");
    // Cancel what runs (freeing its sequences), then let the connections close.
    hub.shutdown().await;
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(DRAIN_WAIT, server).await;
    #[cfg(unix)]
    drop(socket);
    Ok(exit::OK)
}

/// Ctrl-C, or SIGTERM on Unix (also how `troupe lsp` learns it is being stopped).
pub(crate) async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The name `/v1/models` gives the model: its file name without `.gguf`, or the remote name.
fn model_id(model: &str) -> String {
    match model.strip_suffix(".gguf") {
        Some(path) => std::path::Path::new(path)
            .file_name()
            .map_or_else(|| path.to_string(), |n| n.to_string_lossy().into_owned()),
        None => model.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_address_is_loopback_and_bad_ones_say_the_form() {
        assert_eq!(
            parse_addr(None).unwrap(),
            "127.0.0.1:8773".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(parse_addr(Some("127.0.0.1:0")).unwrap().port(), 0);
        assert_eq!(
            parse_addr(Some("localhost:9000")).unwrap(),
            "127.0.0.1:9000".parse::<SocketAddr>().unwrap()
        );
        assert!(parse_addr(Some("[::1]:80")).unwrap().ip().is_loopback());
        let e = parse_addr(Some("8080")).unwrap_err().to_string();
        assert!(e.contains("--addr `8080`") && e.contains("IP:PORT"), "{e}");
    }

    #[test]
    fn models_are_named_by_their_file() {
        assert_eq!(
            model_id("/m/smollm2-135m-instruct.gguf"),
            "smollm2-135m-instruct"
        );
        assert_eq!(model_id("qwen at http://h/v1"), "qwen at http://h/v1");
    }
}
