//! The one session behind `troupe serve`, shared by every HTTP request and every one-shot
//! command over the socket: a task owns the [`Session`], gives each submission its own id,
//! routes the session's events back to the submitter, and cancels a submission whose submitter
//! went away (an HTTP client that disconnected, a `troupe explain` stopped with Ctrl-C), which
//! frees its model sequence at once.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::agents::Session;
use crate::protocol::{Event, EventMsg, Op, Submission};

/// How long a stop waits for the session to finish.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);
/// How long a status request waits for the engine's figures.
const STATUS_WAIT: Duration = Duration::from_secs(5);

/// A cloneable handle to the session task.
#[derive(Clone, Debug)]
pub struct Hub {
    tx: mpsc::UnboundedSender<Command>,
}

/// The hub's counters and the engine's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    /// Requests being answered now.
    pub running: usize,
    /// The most requests answered at the same time so far.
    pub max_running: usize,
    /// Requests answered to their end.
    pub finished: u64,
    /// Requests cancelled because their client went away.
    pub cancelled: u64,
    /// The engine's `EngineMetrics` now (`None` for a back end without figures).
    pub engine: Option<EventMsg>,
}

#[derive(Debug)]
enum Command {
    Submit {
        op: Box<Op>,
        /// The id the submitter knows its request by (its events carry it).
        client_id: String,
        reply: mpsc::UnboundedSender<Event>,
    },
    Gone(String),
    Counters(oneshot::Sender<Status>),
    Shutdown(oneshot::Sender<()>),
}

impl Hub {
    /// Starts the task that owns `session`. It ends on [`Hub::shutdown`], or when the session
    /// stops (every waiting submitter then gets an `Error`).
    pub fn start(session: Session) -> Hub {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(session, rx, tx.downgrade()));
        Hub { tx }
    }

    /// Submits `op`; its events arrive on the returned receiver, ending with its final event
    /// (then the channel closes). Dropping the receiver earlier cancels the request.
    pub fn submit(&self, op: Op) -> mpsc::UnboundedReceiver<Event> {
        let (reply, rx) = mpsc::unbounded_channel();
        self.forward(String::new(), op, reply);
        rx
    }

    /// Submits `op` for a client that knows it as `client_id`; the events go to `reply` with
    /// that id. A closed `reply` cancels the request.
    pub fn forward(&self, client_id: String, op: Op, reply: mpsc::UnboundedSender<Event>) {
        let sent = self.tx.send(Command::Submit {
            op: Box::new(op),
            client_id: client_id.clone(),
            reply: reply.clone(),
        });
        if sent.is_err() {
            let _ = reply.send(Event {
                id: client_id,
                agent: None,
                msg: stopping(),
            });
        }
    }

    /// The counters and the engine's figures.
    pub async fn status(&self) -> Status {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Counters(tx)).is_err() {
            return Status::default();
        }
        let mut status = rx.await.unwrap_or_default();
        let mut events = self.submit(Op::EngineStatus);
        if let Ok(Some(event)) = tokio::time::timeout(STATUS_WAIT, events.recv()).await
            && matches!(event.msg, EventMsg::EngineMetrics { .. })
        {
            status.engine = Some(event.msg);
        }
        status
    }

    /// Cancels every running request (its client gets an `Error`), then stops the session;
    /// bounded.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown(tx)).is_ok() {
            let _ = tokio::time::timeout(SHUTDOWN_WAIT + Duration::from_secs(1), rx).await;
        }
    }
}

/// A running request: who asked, by which id, and whether it is counted (status requests are
/// not).
struct Route {
    client_id: String,
    reply: mpsc::UnboundedSender<Event>,
    counted: bool,
}

async fn run(
    mut session: Session,
    mut commands: mpsc::UnboundedReceiver<Command>,
    me: mpsc::WeakUnboundedSender<Command>,
) {
    let mut routes: HashMap<String, Route> = HashMap::new();
    let mut next = 0u64;
    let mut status = Status::default();
    loop {
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { break };
                match command {
                    Command::Submit { op, client_id, reply } => {
                        next += 1;
                        let id = format!("serve-{next}");
                        let counted = !matches!(*op, Op::EngineStatus);
                        if counted {
                            status.running += 1;
                            status.max_running = status.max_running.max(status.running);
                        }
                        // When the submitter stops listening, cancel its request.
                        if let Some(me) = me.upgrade() {
                            let (watch, gone) = (reply.clone(), id.clone());
                            tokio::spawn(async move {
                                watch.closed().await;
                                let _ = me.send(Command::Gone(gone));
                            });
                        }
                        routes.insert(id.clone(), Route { client_id, reply, counted });
                        if session.submit(Submission { id: id.clone(), op: *op }).is_err()
                            && let Some(route) = routes.remove(&id)
                        {
                            finish(&mut status, &route);
                            let _ = route.reply.send(Event {
                                id: route.client_id,
                                agent: None,
                                msg: stopping(),
                            });
                        }
                    }
                    Command::Gone(id) => {
                        if let Some(route) = routes.remove(&id) {
                            tracing::info!("the client of {id} went away; cancelling it");
                            finish(&mut status, &route);
                            if route.counted {
                                status.cancelled += 1;
                            }
                            let _ = session.submit(Submission {
                                id: format!("cancel-{id}"),
                                op: Op::Cancel { id },
                            });
                        }
                    }
                    Command::Counters(tx) => {
                        let _ = tx.send(status.clone());
                    }
                    Command::Shutdown(done) => {
                        for (id, route) in routes.drain() {
                            let _ = session.submit(Submission {
                                id: format!("cancel-{id}"),
                                op: Op::Cancel { id },
                            });
                            let _ = route.reply.send(Event {
                                id: route.client_id,
                                agent: None,
                                msg: stopping(),
                            });
                        }
                        stop(&mut session).await;
                        let _ = done.send(());
                        return;
                    }
                }
            }
            event = session.next_event() => {
                let Some(event) = event else {
                    // The session stopped: nobody will answer what waits.
                    for (_, route) in routes.drain() {
                        let _ = route.reply.send(Event {
                            id: route.client_id,
                            agent: None,
                            msg: EventMsg::Error {
                                message: "the session stopped".into(),
                                fix: Some("restart `troupe serve` (see .troupe/logs for the cause)".into()),
                            },
                        });
                    }
                    break;
                };
                let last = is_final(&event.msg);
                let Some(route) = routes.get(&event.id) else { continue };
                let _ = route.reply.send(Event { id: route.client_id.clone(), ..event });
                if last && let Some(route) = routes.remove(&event.id) {
                    finish(&mut status, &route);
                    if route.counted {
                        status.finished += 1;
                    }
                }
            }
        }
    }
    stop(&mut session).await;
}

fn finish(status: &mut Status, route: &Route) {
    if route.counted {
        status.running = status.running.saturating_sub(1);
    }
}

/// Shuts the session down, waiting a bounded time for it to finish.
async fn stop(session: &mut Session) {
    let _ = session.submit(Submission {
        id: "shutdown".into(),
        op: Op::Shutdown,
    });
    let drain = async {
        while let Some(e) = session.next_event().await {
            if matches!(e.msg, EventMsg::ShutdownComplete) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(SHUTDOWN_WAIT, drain).await;
}

fn stopping() -> EventMsg {
    EventMsg::Error {
        message: "troupe serve is stopping".into(),
        fix: Some("send the request again once it runs".into()),
    }
}

/// Whether `msg` ends the request it answers.
fn is_final(msg: &EventMsg) -> bool {
    crate::editor::instance::is_final(msg)
        || matches!(
            msg,
            EventMsg::CompletionComplete { .. }
                | EventMsg::CompletionRejected { .. }
                | EventMsg::Embeddings { .. }
                | EventMsg::EngineMetrics { .. }
        )
}
