//! Reuse of a running instance: `troupe lsp` and the terminal UI listen on a Unix domain socket
//! in the repository's `.troupe/editor.sock`, and the one-shot commands (`ask`, `explain`,
//! `edit`, `review`, `search`) send their request there when it answers, instead of loading the
//! model (and opening the index) again.
//!
//! The wire format is the protocol itself, one JSON object per line: the client writes a
//! [`Submission`], the server writes back every [`Event`] of it (same id), ending with its
//! `AskComplete`/`ExplainComplete`/`EditComplete`/`ReviewComplete`/`SearchResults` or `Error`
//! ([`is_final`]). Only those five ops are served.
//! A client keeps the connection open until its answers are complete: when it closes it (or
//! dies), its unfinished requests are cancelled and their model sequences freed.
//!
//! A socket file nobody listens on (a killed server) is stale: the client and the next server
//! remove it. The server removes its socket when it stops. Unix only (the module is compiled
//! on Unix; elsewhere the commands always run in-process).

use std::path::{Path, PathBuf};

use crate::protocol::{Event, EventMsg, Op, Submission};

/// Where the instance of `repo` listens.
pub fn socket_path(repo: &Path) -> PathBuf {
    crate::paths::state_dir(repo).join("editor.sock")
}

/// Whether `op` may be sent to a running instance.
pub fn served(op: &Op) -> bool {
    matches!(
        op,
        Op::Ask { .. }
            | Op::Explain { .. }
            | Op::Edit { .. }
            | Op::Review { .. }
            | Op::Search { .. }
    )
}

/// Whether `msg` is the last event a served request gets.
pub fn is_final(msg: &EventMsg) -> bool {
    matches!(
        msg,
        EventMsg::AskComplete { .. }
            | EventMsg::ExplainComplete { .. }
            | EventMsg::EditComplete { .. }
            | EventMsg::ReviewComplete { .. }
            | EventMsg::SearchResults { .. }
            | EventMsg::Error { .. }
    )
}

pub use unix::{Incoming, Listener, Relay, Remote, Request, connect, listen};

mod unix {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
    use tokio::net::{UnixListener, UnixStream};
    use tokio::sync::mpsc;

    /// A connection to a running instance.
    pub struct Remote {
        lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
        writer: OwnedWriteHalf,
    }

    /// Connects to the instance of `repo`, if one is listening; removes a stale socket file.
    pub async fn connect(repo: &Path) -> Option<Remote> {
        let path = socket_path(repo);
        if !path.exists() {
            return None;
        }
        match UnixStream::connect(&path).await {
            Ok(stream) => {
                let (read, writer) = stream.into_split();
                Some(Remote {
                    lines: BufReader::new(read).lines(),
                    writer,
                })
            }
            Err(e) => {
                tracing::info!("removing the stale socket {} ({e})", path.display());
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    impl Remote {
        /// Sends a submission.
        pub async fn submit(&mut self, sub: &Submission) -> std::io::Result<()> {
            let mut line = serde_json::to_vec(sub)?;
            line.push(b'\n');
            self.writer.write_all(&line).await?;
            self.writer.flush().await
        }

        /// The next event; `None` when the instance closed the connection.
        pub async fn next_event(&mut self) -> std::io::Result<Option<Event>> {
            loop {
                let Some(line) = self.lines.next_line().await? else {
                    return Ok(None);
                };
                if line.trim().is_empty() {
                    continue;
                }
                return serde_json::from_str(&line).map(Some).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("the running instance sent a bad event: {e}"),
                    )
                });
            }
        }
    }

    /// A request from a client: its submission and where its events go.
    #[derive(Debug)]
    pub struct Request {
        pub submission: Submission,
        pub reply: mpsc::UnboundedSender<Event>,
    }

    /// A listening socket; the file is removed when this is dropped.
    pub struct Listener {
        path: PathBuf,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Listener {
        fn drop(&mut self) {
            self.task.abort();
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// Listens for clients of `repo`, handing their requests to `requests`. `None` when another
    /// instance already listens or the socket cannot be made (the caller carries on without).
    pub async fn listen(repo: &Path, requests: mpsc::UnboundedSender<Request>) -> Option<Listener> {
        let path = socket_path(repo);
        if path.exists() {
            if UnixStream::connect(&path).await.is_ok() {
                tracing::info!("another instance listens on {}", path.display());
                return None;
            }
            let _ = std::fs::remove_file(&path);
        }
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let listener = match UnixListener::bind(&path) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("cannot listen on {}: {e}", path.display());
                return None;
            }
        };
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_client(stream, requests.clone()));
            }
        });
        Some(Listener { path, task })
    }

    /// A front end's service of the socket on its own session (the terminal UI): it listens,
    /// hands each request to the front end under an id of its own ([`Relay::next`]), sends
    /// the session's events for it back to its client and nowhere else ([`Relay::route`]),
    /// and reports a client that disconnects so its request is cancelled. The socket file is
    /// removed when the relay is dropped.
    pub struct Relay {
        listener: Option<Listener>,
        requests: mpsc::UnboundedReceiver<Request>,
        /// Session id -> (the client's id, its events).
        clients: std::collections::HashMap<String, (String, mpsc::UnboundedSender<Event>)>,
        next: u64,
        gone_tx: mpsc::UnboundedSender<String>,
        gone_rx: mpsc::UnboundedReceiver<String>,
    }

    /// What comes from the socket.
    #[derive(Debug)]
    #[allow(clippy::large_enum_variant)] // short-lived, one per client line
    pub enum Incoming {
        /// A request, to submit to the session as it is.
        Request(Submission),
        /// The client of this (session) id went away before its answer was complete: cancel it.
        Gone(String),
    }

    impl Relay {
        /// Listens for clients of `repo`; when another instance listens already, carries on
        /// without (no request ever comes).
        pub async fn listen(repo: &Path) -> Relay {
            let (tx, requests) = mpsc::unbounded_channel();
            let listener = listen(repo, tx).await;
            let (gone_tx, gone_rx) = mpsc::unbounded_channel();
            Relay {
                listener,
                requests,
                clients: Default::default(),
                next: 0,
                gone_tx,
                gone_rx,
            }
        }

        /// Whether this relay holds the socket.
        pub fn is_listening(&self) -> bool {
            self.listener.is_some()
        }

        /// The next request or departed client; waits until there is one.
        pub async fn next(&mut self) -> Incoming {
            loop {
                tokio::select! {
                    Some(r) = self.requests.recv() => return Incoming::Request(self.accept(r)),
                    Some(id) = self.gone_rx.recv() => {
                        // A request answered already has nothing left to cancel.
                        if self.clients.remove(&id).is_some() {
                            return Incoming::Gone(id);
                        }
                    }
                    else => std::future::pending::<()>().await,
                }
            }
        }

        fn accept(&mut self, r: Request) -> Submission {
            let Request { submission, reply } = r;
            self.next += 1;
            let id = format!("socket-{}", self.next);
            let (watch, gone, watched) = (reply.clone(), self.gone_tx.clone(), id.clone());
            tokio::spawn(async move {
                watch.closed().await;
                let _ = gone.send(watched);
            });
            self.clients.insert(id.clone(), (submission.id, reply));
            Submission {
                id,
                op: submission.op,
            }
        }

        /// A session event: `None` when it belongs to a request from the socket (it went to
        /// its client), else the event, for the front end itself.
        pub fn route(&mut self, event: Event) -> Option<Event> {
            let Some((id, reply)) = self.clients.get(&event.id) else {
                return Some(event);
            };
            let last = is_final(&event.msg);
            let _ = reply.send(Event {
                id: id.clone(),
                ..event
            });
            if last {
                self.clients.remove(&event.id);
            }
            None
        }

        /// Requests from the socket not answered yet.
        pub fn waiting(&self) -> usize {
            self.clients.len()
        }

        /// Answers the request of session id `id` with an error (its submission failed).
        pub fn fail(&mut self, id: &str, message: &str) {
            if let Some((id, reply)) = self.clients.remove(id) {
                let _ = reply.send(error(id, message));
            }
        }

        /// Answers every waiting request with an error (the session stopped, or never started).
        pub fn fail_all(&mut self, message: &str) {
            for (_, (id, reply)) in self.clients.drain() {
                let _ = reply.send(error(id, message));
            }
        }
    }

    fn error(id: String, message: &str) -> Event {
        Event {
            id,
            agent: None,
            msg: EventMsg::Error {
                message: message.to_string(),
                fix: None,
            },
        }
    }

    async fn serve_client(stream: UnixStream, requests: mpsc::UnboundedSender<Request>) {
        let (read, mut write) = stream.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
        let writer = tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let Ok(mut line) = serde_json::to_vec(&event) else {
                    continue;
                };
                line.push(b'\n');
                if write.write_all(&line).await.is_err() {
                    return;
                }
            }
        });
        let mut lines = BufReader::new(read).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim().is_empty() {
                continue;
            }
            let reply = tx.clone();
            match serde_json::from_str::<Submission>(&line) {
                Ok(submission) if served(&submission.op) => {
                    let _ = requests.send(Request { submission, reply });
                }
                Ok(submission) => {
                    let _ = reply.send(Event {
                        id: submission.id,
                        agent: None,
                        msg: EventMsg::Error {
                            message:
                                "only ask, explain, edit, review and search are served over the editor socket"
                                    .into(),
                            fix: None,
                        },
                    });
                }
                Err(e) => {
                    let _ = reply.send(Event {
                        id: String::new(),
                        agent: None,
                        msg: EventMsg::Error {
                            message: format!("a line is not a submission: {e}"),
                            fix: Some("send one protocol Submission as JSON per line".into()),
                        },
                    });
                }
            }
        }
        // The client closed the connection (it is done, or it was stopped): stop writing to
        // it. Dropping the event channel tells the server, which cancels what still runs.
        drop(tx);
        writer.abort();
    }
}
