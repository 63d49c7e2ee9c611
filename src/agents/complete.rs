//! Raw model access for `troupe serve`: a completion request sent straight to the shared back
//! end (no repository context, no tools, no prompt of troupe's own), and embeddings from the
//! embedding model.
//!
//! A completion is one model request like any agent's: it shares the engine's batches and its
//! prefix cache with whatever else runs. Its task holds the request's stream, so cancelling the
//! task (`Op::Cancel`) drops the stream and frees the sequence at once.
//!
//! The embedding model loads on the first `Embed` and stays loaded; it runs on a blocking
//! thread, one call at a time, beside the engine thread.

use std::sync::{Arc, Mutex};

use crate::engine::embed::Embedder;
use crate::engine::{
    Backend, ChatMessage, Constraint, FinishReason, GenerateEvent, GenerateRequest, Prompt,
    Sampling,
};
use crate::protocol::{
    CompletionFinish, CompletionPrompt, CompletionRequest, EventMsg, OutputConstraint, RequestPart,
};

/// Generates `request` on `backend`, streaming `CompletionDelta`s through `emit`, then one
/// `CompletionComplete`, `CompletionRejected` or `Error`.
pub async fn complete(
    backend: &dyn Backend,
    request: CompletionRequest,
    emit: &(dyn Fn(EventMsg) + Send + Sync),
) {
    let mut stream = backend.generate(generate_request(request));
    let mut text = String::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(GenerateEvent::Delta { text: delta, .. }) => {
                if !delta.is_empty() {
                    text.push_str(&delta);
                    emit(EventMsg::CompletionDelta { delta });
                }
            }
            Ok(GenerateEvent::Done {
                stats,
                finish_reason,
            }) => {
                let finish_reason = match finish_reason {
                    FinishReason::Stop => CompletionFinish::Stop,
                    FinishReason::Length => CompletionFinish::Length,
                    // Only a cancel of this request's own task gets here, and that drops it.
                    FinishReason::Cancelled => {
                        return emit(EventMsg::Error {
                            message: "the completion was cancelled".into(),
                            fix: None,
                        });
                    }
                };
                return emit(EventMsg::CompletionComplete {
                    text,
                    finish_reason,
                    stats: super::orchestrator::convert_stats(&stats),
                });
            }
            Err(e) => {
                return emit(match rejected_part(&e) {
                    Some(part) => EventMsg::CompletionRejected {
                        message: e.to_string(),
                        part,
                    },
                    None => EventMsg::Error {
                        message: e.to_string(),
                        fix: None,
                    },
                });
            }
        }
    }
}

/// The engine request for a raw completion request: unset settings are greedy and unlimited.
pub fn generate_request(r: CompletionRequest) -> GenerateRequest {
    let prompt = match r.prompt {
        CompletionPrompt::Messages { messages } => Prompt::Messages(
            messages
                .into_iter()
                .map(|m| ChatMessage::new(m.role, m.content))
                .collect(),
        ),
        CompletionPrompt::Text { text } => Prompt::Text(text),
    };
    let greedy = Sampling::greedy();
    let sampling = Sampling {
        temperature: r.temperature.unwrap_or(greedy.temperature),
        top_p: r.top_p.unwrap_or(greedy.top_p),
        top_k: r.top_k.unwrap_or(greedy.top_k),
        min_p: r.min_p.unwrap_or(greedy.min_p),
        repeat_penalty: r.repeat_penalty.unwrap_or(greedy.repeat_penalty),
        frequency_penalty: r.frequency_penalty.unwrap_or(greedy.frequency_penalty),
        presence_penalty: r.presence_penalty.unwrap_or(greedy.presence_penalty),
        seed: r.seed.unwrap_or(greedy.seed),
        ..greedy
    };
    let mut request = GenerateRequest::new(prompt).with_sampling(sampling);
    request.max_tokens = r.max_tokens;
    request.stop = r.stop;
    request.ignore_eos = r.ignore_eos;
    request.constraint = r.constraint.map(|c| match c {
        OutputConstraint::Gbnf { grammar } => Constraint::Gbnf(grammar),
        OutputConstraint::JsonSchema { schema } => Constraint::JsonSchema(schema.to_string()),
    });
    request
}

/// Which part of the request an engine error blames, when the request (not the server) is at
/// fault.
fn rejected_part(e: &crate::engine::Error) -> Option<RequestPart> {
    use crate::engine::Error as E;
    match e {
        E::InvalidRequest(_) | E::PromptTooLong { .. } | E::ChatTemplate(_) => {
            Some(RequestPart::Prompt)
        }
        E::Grammar(_) => Some(RequestPart::Constraint),
        _ => None,
    }
}

/// The embedding model, loaded on first use.
pub struct Embeddings {
    /// `model.embed`: a catalog name or a path.
    name: String,
    threads: i32,
    loaded: Arc<Mutex<Option<(String, Embedder)>>>,
}

impl std::fmt::Debug for Embeddings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embeddings")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Embeddings {
    /// The embedding model `name` (a catalog name or a GGUF path), run on `threads` threads
    /// (0: one per core). Nothing loads yet.
    pub fn new(name: &str, threads: u32) -> Self {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get() as i32),
            n => i32::try_from(n).unwrap_or(i32::MAX),
        };
        Self {
            name: name.to_string(),
            threads,
            loaded: Arc::new(Mutex::new(None)),
        }
    }

    /// One vector per text of `input` as an `Embeddings` event, or an `Error` naming the fix.
    pub async fn embed(&self, input: Vec<String>) -> EventMsg {
        let (name, threads, loaded) = (self.name.clone(), self.threads, Arc::clone(&self.loaded));
        let done = tokio::task::spawn_blocking(move || {
            let mut slot = loaded
                .lock()
                .map_err(|_| "the embedding model's lock is poisoned".to_string())?;
            if slot.is_none() {
                let resolved = crate::models::Store::default()
                    .resolve(&name, crate::models::Role::Embedding)
                    .map_err(|e| format!("the embedding model `{name}`: {e}"))?;
                let file = resolved
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| name.clone());
                let model = Embedder::load(&resolved.path, threads).map_err(|e| e.to_string())?;
                *slot = Some((file, model));
            }
            let Some((file, model)) = slot.as_mut() else {
                return Err("the embedding model did not load".to_string());
            };
            let texts: Vec<&str> = input.iter().map(String::as_str).collect();
            let tokens: usize = texts.iter().map(|t| model.count_tokens(t)).sum();
            let vectors = model.embed(&texts).map_err(|e| e.to_string())?;
            Ok(EventMsg::Embeddings {
                model: file.clone(),
                vectors,
                prompt_tokens: u32::try_from(tokens).unwrap_or(u32::MAX),
            })
        })
        .await;
        match done {
            Ok(Ok(msg)) => msg,
            Ok(Err(message)) => EventMsg::Error {
                message,
                fix: Some(
                    "run `troupe models pull` (it fetches the embedding model) or pass --embed-model PATH"
                        .into(),
                ),
            },
            Err(e) => EventMsg::Error {
                message: format!("embedding stopped: {e}"),
                fix: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ChatTurn;

    #[test]
    fn unset_settings_map_to_greedy_decoding_without_limits() {
        let r = generate_request(CompletionRequest {
            prompt: CompletionPrompt::Text { text: "hi".into() },
            ..Default::default()
        });
        assert_eq!(r.prompt, Prompt::Text("hi".into()));
        assert_eq!(r.sampling, Sampling::greedy());
        assert_eq!(r.max_tokens, None);
        assert!(r.stop.is_empty() && r.constraint.is_none() && !r.ignore_eos);
    }

    #[test]
    fn every_setting_reaches_the_engine_request() {
        let r = generate_request(CompletionRequest {
            prompt: CompletionPrompt::Messages {
                messages: vec![ChatTurn {
                    role: "user".into(),
                    content: "hi".into(),
                }],
            },
            max_tokens: Some(7),
            temperature: Some(0.5),
            top_p: Some(0.9),
            top_k: Some(40),
            min_p: Some(0.05),
            seed: Some(42),
            repeat_penalty: Some(1.1),
            frequency_penalty: Some(0.2),
            presence_penalty: Some(0.3),
            stop: vec!["\n".into()],
            ignore_eos: true,
            constraint: Some(OutputConstraint::JsonSchema {
                schema: serde_json::json!({"type": "object"}),
            }),
        });
        assert_eq!(r.prompt, Prompt::Messages(vec![ChatMessage::user("hi")]));
        let s = &r.sampling;
        assert_eq!(
            (s.temperature, s.top_p, s.top_k, s.min_p, s.seed),
            (0.5, 0.9, 40, 0.05, 42)
        );
        assert_eq!(
            (s.repeat_penalty, s.frequency_penalty, s.presence_penalty),
            (1.1, 0.2, 0.3)
        );
        assert_eq!(r.max_tokens, Some(7));
        assert_eq!(r.stop, vec!["\n".to_string()]);
        assert!(r.ignore_eos);
        assert_eq!(
            r.constraint,
            Some(Constraint::JsonSchema(r#"{"type":"object"}"#.into()))
        );
    }

    #[test]
    fn request_faults_are_rejections_and_engine_faults_are_errors() {
        use crate::engine::Error as E;
        assert_eq!(
            rejected_part(&E::Grammar("bad".into())),
            Some(RequestPart::Constraint)
        );
        assert_eq!(
            rejected_part(&E::PromptTooLong {
                prompt_tokens: 9,
                ctx_per_seq: 4
            }),
            Some(RequestPart::Prompt)
        );
        assert_eq!(rejected_part(&E::EngineStopped), None);
    }
}
