//! Explaining code (`troupe explain`, the editor's "explain"): the selected lines first, then
//! related code from the index, and the model's explanation streamed back with the code it was
//! given. The same retrieval and packing as [`super::ask`], under its own system prompt.

use crate::protocol::EventMsg;

use super::ask::{self, AskEnv, Excerpt};
use super::target::Target;

/// The embedded system prompt template.
const SYSTEM: &str = include_str!("../../prompts/explain.md");

/// What to explain.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// The file, relative to the repository root.
    pub file: String,
    /// 1-based inclusive lines (`None`: the whole file).
    pub range: Option<(u32, u32)>,
    /// The file's text when it is not the disk's (an unsaved buffer).
    pub content: Option<String>,
}

/// Explains `sel`, streaming through `emit`, then an `ExplainComplete`. A bad location or a
/// failed request comes back as an `Error` event with the fix where there is one.
pub async fn explain(env: &AskEnv, sel: Selection, emit: &(dyn Fn(EventMsg) + Send + Sync)) {
    let target = match Target::load(&env.repo_root, &sel.file, sel.content) {
        Ok(t) => t,
        Err(e) => return emit(location_error(e)),
    };
    let (start, end) = match target.check_range(sel.range) {
        Ok(r) => r,
        Err(e) => return emit(location_error(e)),
    };
    let text: String = target
        .text
        .split_inclusive('\n')
        .skip(start.saturating_sub(1) as usize)
        .take((end + 1).saturating_sub(start) as usize)
        .collect();
    let question = match sel.range {
        Some(_) => format!(
            "Explain what lines {start}-{end} of {} do (excerpt [1]).",
            target.path
        ),
        None => format!("Explain what {} does (excerpt [1]).", target.path),
    };
    let first = Excerpt {
        path: target.path,
        start_line: start,
        end_line: end,
        text,
    };
    match ask::respond(env, SYSTEM, &question, Some(first), emit).await {
        Ok((explanation, citations, stats)) => emit(EventMsg::ExplainComplete {
            explanation,
            citations,
            stats,
        }),
        Err(message) => emit(EventMsg::Error { message, fix: None }),
    }
}

/// The `Error` event of a location that cannot be used.
pub fn location_error(e: super::target::LocationError) -> EventMsg {
    EventMsg::Error {
        message: e.message,
        fix: Some(e.fix),
    }
}
