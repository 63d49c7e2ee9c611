//! Reuse of a running instance: `troupe lsp` listens on a Unix domain socket in the repository's
//! `.troupe/editor.sock`, and the one-shot commands (`ask`, `explain`, `edit`, `review`) send
//! their request there when it answers, instead of loading the model again.
//!
//! The wire format is the protocol itself, one JSON object per line: the client writes a
//! [`Submission`], the server writes back every [`Event`] of it (same id), ending with its
//! `AskComplete`/`ExplainComplete`/`EditComplete`/`ReviewComplete` or `Error`. Only those four
//! ops are served.
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
        Op::Ask { .. } | Op::Explain { .. } | Op::Edit { .. } | Op::Review { .. }
    )
}

pub use unix::{Listener, Remote, Request, connect, listen};

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
                                "only ask, explain, edit and review are served over the editor socket"
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
