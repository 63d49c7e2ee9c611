//! A request's own reply channel: deltas, then exactly one terminal event.
//!
//! The producer (the engine thread or an HTTP back end's reader thread) sends on an unbounded
//! tokio channel, so it never blocks on a slow consumer. Dropping the stream before its terminal
//! event cancels the request.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::mpsc;

use super::request::{Completion, GenerateEvent, RequestId};
use super::{Error, Result};

/// The sending half used by back ends.
pub(crate) type EventSender = mpsc::UnboundedSender<Result<GenerateEvent>>;

/// Streams the events of one request: [`GenerateEvent::Delta`]s, then exactly one terminal item
/// ([`GenerateEvent::Done`] or an `Err`), then `None`. If the producer disappears without a
/// terminal item, the stream yields [`Error::EngineStopped`] once, so a consumer always sees an
/// ending. Dropping the stream early cancels the request and frees its sequence.
pub struct GenerationStream {
    id: RequestId,
    rx: mpsc::UnboundedReceiver<Result<GenerateEvent>>,
    on_drop: Option<Box<dyn FnOnce() + Send>>,
    finished: bool,
}

impl std::fmt::Debug for GenerationStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerationStream")
            .field("id", &self.id)
            .field("finished", &self.finished)
            .finish()
    }
}

impl GenerationStream {
    /// Creates a stream and its sender. `on_drop` runs if the stream is dropped before its
    /// terminal event (it should cancel the request).
    pub(crate) fn channel(
        id: RequestId,
        on_drop: Box<dyn FnOnce() + Send>,
    ) -> (EventSender, GenerationStream) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            tx,
            GenerationStream {
                id,
                rx,
                on_drop: Some(on_drop),
                finished: false,
            },
        )
    }

    /// A stream that yields one error and ends (for requests rejected before they start).
    pub(crate) fn failed(id: RequestId, error: Error) -> GenerationStream {
        let (tx, mut stream) = Self::channel(id, Box::new(|| {}));
        // The receiver is alive (we hold it), so this cannot fail.
        let _ = tx.send(Err(error));
        stream.on_drop = None;
        stream
    }

    /// The request's id (for [`super::Engine::cancel`]).
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The next event; `None` after the terminal one.
    pub async fn next(&mut self) -> Option<Result<GenerateEvent>> {
        if self.finished {
            return None;
        }
        let item = self.rx.recv().await;
        self.observe(item)
    }

    /// Blocking variant of [`Self::next`] for code outside an async runtime. Must not be called
    /// from inside an async task.
    pub fn blocking_next(&mut self) -> Option<Result<GenerateEvent>> {
        if self.finished {
            return None;
        }
        let item = self.rx.blocking_recv();
        self.observe(item)
    }

    /// Reads the stream to its end and gathers the text, tokens and stats. A cancelled request
    /// comes back as `Ok` with [`super::FinishReason::Cancelled`].
    pub async fn collect(mut self) -> Result<Completion> {
        let mut text = String::new();
        let mut tokens = Vec::new();
        while let Some(event) = self.next().await {
            match event? {
                GenerateEvent::Delta { text: t, tokens: k } => {
                    text.push_str(&t);
                    tokens.extend(k);
                }
                GenerateEvent::Done {
                    stats,
                    finish_reason,
                } => {
                    return Ok(Completion {
                        text,
                        tokens,
                        finish_reason,
                        stats,
                    });
                }
            }
        }
        Err(Error::EngineStopped)
    }

    fn observe(&mut self, item: Option<Result<GenerateEvent>>) -> Option<Result<GenerateEvent>> {
        match item {
            Some(Ok(GenerateEvent::Delta { text, tokens })) => {
                Some(Ok(GenerateEvent::Delta { text, tokens }))
            }
            Some(terminal) => {
                self.finished = true;
                self.on_drop = None;
                Some(terminal)
            }
            None => {
                // The producer vanished without a terminal event: report it once.
                self.finished = true;
                self.on_drop = None;
                Some(Err(Error::EngineStopped))
            }
        }
    }
}

impl futures::Stream for GenerationStream {
    type Item = Result<GenerateEvent>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(item) => Poll::Ready(this.observe(item)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for GenerationStream {
    fn drop(&mut self) {
        if let Some(cancel) = self.on_drop.take() {
            cancel();
        }
    }
}
