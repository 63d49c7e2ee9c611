//! The OpenAI API's shapes: reading a request body into a protocol [`CompletionRequest`] (every
//! field checked, a bad one named in the error with its fix) and writing responses, stream
//! chunks and error objects as OpenAI clients expect them. Pure functions over JSON values.

use serde_json::{Map, Value, json};

use crate::protocol::{
    ChatTurn, CompletionFinish, CompletionPrompt, CompletionRequest, OutputConstraint, RequestPart,
    RequestStats,
};

/// An error answered as `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: u16,
    pub message: String,
    /// `invalid_request_error`, `not_found_error` or `server_error`.
    pub kind: &'static str,
    /// The request field at fault (`messages[0].content`), if one is.
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 about `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.into()),
            code: Some("invalid_value"),
        }
    }

    /// A 400 about the request as a whole.
    pub fn bad_body(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    /// A 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: 404,
            message: message.into(),
            kind: "not_found_error",
            param: None,
            code: Some("not_found"),
        }
    }

    /// A 500: the server failed, not the request.
    pub fn server(message: impl Into<String>) -> Self {
        Self {
            status: 500,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// The error object.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

/// Which endpoint a completion came through; it decides the response shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Text,
}

/// A completion request read from its body.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub kind: Kind,
    pub request: CompletionRequest,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with the usage.
    pub include_usage: bool,
    /// The field a constraint came from (for errors about it).
    pub constraint_param: Option<&'static str>,
}

impl Parsed {
    /// The request field a rejection of `part` is about.
    pub fn param_of(&self, part: RequestPart) -> &'static str {
        match (part, self.kind) {
            (RequestPart::Prompt, Kind::Chat) => "messages",
            (RequestPart::Prompt, Kind::Text) => "prompt",
            (RequestPart::Constraint, _) => self.constraint_param.unwrap_or("grammar"),
        }
    }
}

/// Reads a `/v1/chat/completions` body.
pub fn parse_chat(body: &[u8]) -> Result<Parsed, ApiError> {
    let obj = object(body)?;
    let messages = match obj.get("messages") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                "messages",
                "`messages` is missing; pass an array of {\"role\", \"content\"} objects",
            ));
        }
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(ApiError::invalid(
                "messages",
                "`messages` is empty; pass at least one message",
            ));
        }
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, m)| message(i, m))
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => {
            return Err(ApiError::invalid(
                "messages",
                "`messages` must be an array of {\"role\", \"content\"} objects",
            ));
        }
    };
    for field in ["tools", "functions"] {
        if obj
            .get(field)
            .is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty()))
        {
            return Err(ApiError::invalid(
                field,
                format!("`{field}`: function calling is not supported; leave it out"),
            ));
        }
    }
    common(&obj, Kind::Chat, CompletionPrompt::Messages { messages })
}

/// Reads a `/v1/completions` body.
pub fn parse_text(body: &[u8]) -> Result<Parsed, ApiError> {
    let obj = object(body)?;
    let text = match obj.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
            items[0].as_str().unwrap_or_default().to_string()
        }
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                "prompt",
                "`prompt` is missing; pass the text to continue",
            ));
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "prompt",
                "`prompt` must be one string (arrays of several prompts and token ids are not supported)",
            ));
        }
    };
    if obj.get("echo").is_some_and(|v| v != &Value::Bool(false)) {
        return Err(ApiError::invalid(
            "echo",
            "`echo` is not supported; leave it out",
        ));
    }
    if obj
        .get("suffix")
        .is_some_and(|v| v.as_str().is_none_or(|s| !s.is_empty()) && !v.is_null())
    {
        return Err(ApiError::invalid(
            "suffix",
            "`suffix` (fill in the middle) is not supported; leave it out",
        ));
    }
    if let Some(v) = obj.get("best_of").filter(|v| !v.is_null())
        && v.as_u64() != Some(1)
    {
        return Err(ApiError::invalid(
            "best_of",
            "`best_of` other than 1 is not supported; leave it out",
        ));
    }
    common(&obj, Kind::Text, CompletionPrompt::Text { text })
}

/// Reads a `/v1/embeddings` body: the texts to embed.
pub fn parse_embeddings(body: &[u8]) -> Result<Vec<String>, ApiError> {
    let obj = object(body)?;
    let input = match obj.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::invalid(
                        format!("input[{i}]"),
                        format!("`input[{i}]` must be a string (token ids are not supported)"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid(
                "input",
                "`input` is empty; pass a string or an array of strings",
            ));
        }
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                "input",
                "`input` is missing; pass a string or an array of strings",
            ));
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "input",
                "`input` must be a string or an array of strings",
            ));
        }
    };
    model_name(&obj)?;
    match obj.get("encoding_format") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "float" => {}
        Some(_) => {
            return Err(ApiError::invalid(
                "encoding_format",
                "`encoding_format` must be \"float\" (base64 is not supported)",
            ));
        }
    }
    if obj.get("dimensions").is_some_and(|v| !v.is_null()) {
        return Err(ApiError::invalid(
            "dimensions",
            "`dimensions` is not supported (the model's vectors have a fixed length); leave it out",
        ));
    }
    Ok(input)
}

/// The response shapes of one completion.
#[derive(Debug, Clone)]
pub struct Shape {
    pub kind: Kind,
    /// `chatcmpl-...` or `cmpl-...`.
    pub id: String,
    /// Seconds since the epoch.
    pub created: u64,
    pub model: String,
}

impl Shape {
    /// The shapes of completion number `n` through `kind`.
    pub fn new(kind: Kind, n: u64, created: u64, model: &str) -> Self {
        let id = match kind {
            Kind::Chat => format!("chatcmpl-troupe-{n}"),
            Kind::Text => format!("cmpl-troupe-{n}"),
        };
        Self {
            kind,
            id,
            created,
            model: model.to_string(),
        }
    }

    /// The whole answer of a request without `stream`.
    pub fn whole(&self, text: &str, finish: CompletionFinish, stats: &RequestStats) -> Value {
        let choice = match self.kind {
            Kind::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": finish_name(finish),
            }),
            Kind::Text => json!({
                "index": 0,
                "text": text,
                "logprobs": null,
                "finish_reason": finish_name(finish),
            }),
        };
        let mut v = self.head(self.object(false));
        v["choices"] = json!([choice]);
        v["usage"] = usage(stats);
        v["timings"] = timings(stats);
        v
    }

    /// The first chunk of a chat stream (the assistant's role); none for text completions.
    pub fn opening(&self) -> Option<Value> {
        match self.kind {
            Kind::Chat => Some(self.chunk(json!({"role": "assistant", "content": ""}), None)),
            Kind::Text => None,
        }
    }

    /// A chunk carrying `text`.
    pub fn delta(&self, text: &str) -> Value {
        match self.kind {
            Kind::Chat => self.chunk(json!({"content": text}), None),
            Kind::Text => self.chunk(json!(text), None),
        }
    }

    /// The chunk saying why generation stopped (with llama.cpp's `timings`).
    pub fn finish(&self, finish: CompletionFinish, stats: &RequestStats) -> Value {
        let mut v = match self.kind {
            Kind::Chat => self.chunk(json!({}), Some(finish)),
            Kind::Text => self.chunk(json!(""), Some(finish)),
        };
        v["timings"] = timings(stats);
        v
    }

    /// The last chunk when the client asked for the usage (`stream_options.include_usage`).
    pub fn usage_chunk(&self, stats: &RequestStats) -> Value {
        let mut v = self.head(self.object(true));
        v["choices"] = json!([]);
        v["usage"] = usage(stats);
        v
    }

    fn chunk(&self, delta: Value, finish: Option<CompletionFinish>) -> Value {
        let finish = finish.map(finish_name);
        let choice = match self.kind {
            Kind::Chat => json!({"index": 0, "delta": delta, "logprobs": null,
                "finish_reason": finish}),
            Kind::Text => json!({"index": 0, "text": delta, "logprobs": null,
                "finish_reason": finish}),
        };
        let mut v = self.head(self.object(true));
        v["choices"] = json!([choice]);
        v
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Text, _) => "text_completion",
        }
    }

    fn head(&self, object: &str) -> Value {
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": format!("troupe-{}", env!("CARGO_PKG_VERSION")),
        })
    }
}

/// The answer of `/v1/embeddings`.
pub fn embeddings_response(model: &str, vectors: &[Vec<f32>], prompt_tokens: u32) -> Value {
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v}))
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    })
}

/// OpenAI's `usage`, with the prompt tokens reused from the cache.
pub fn usage(stats: &RequestStats) -> Value {
    json!({
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.generated_tokens,
        "total_tokens": stats.prompt_tokens + stats.generated_tokens,
        "prompt_tokens_details": {"cached_tokens": stats.cached_tokens},
    })
}

/// llama.cpp's `timings` (its clients, troupe's own HTTP back end among them, read them).
pub fn timings(stats: &RequestStats) -> Value {
    json!({
        "cache_n": stats.cached_tokens,
        "prompt_n": stats.prompt_tokens.saturating_sub(stats.cached_tokens),
        "predicted_n": stats.generated_tokens,
        "predicted_per_second": stats.decode_tok_s,
        "queue_ms": stats.queue_ms,
        "ttft_ms": stats.ttft_ms,
    })
}

fn finish_name(f: CompletionFinish) -> &'static str {
    match f {
        CompletionFinish::Stop => "stop",
        CompletionFinish::Length => "length",
    }
}

/// The body as a JSON object.
fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(_) => Err(ApiError::bad_body(
            "the request body must be a JSON object; see the OpenAI API reference for its fields",
        )),
        Err(e) => Err(ApiError::bad_body(format!(
            "the request body is not JSON ({e}); send one JSON object with Content-Type: application/json"
        ))),
    }
}

/// One chat message.
fn message(i: usize, m: &Value) -> Result<ChatTurn, ApiError> {
    let at = |field: &str| format!("messages[{i}].{field}");
    let Some(obj) = m.as_object() else {
        return Err(ApiError::invalid(
            format!("messages[{i}]"),
            format!("`messages[{i}]` must be an object with \"role\" and \"content\""),
        ));
    };
    let role = match obj.get("role").and_then(Value::as_str) {
        Some("system" | "developer") => "system",
        Some("user") => "user",
        Some("assistant") => "assistant",
        Some(other) => {
            return Err(ApiError::invalid(
                at("role"),
                format!(
                    "`{}` is `{other}`; use system, developer, user or assistant (tool messages are not supported)",
                    at("role")
                ),
            ));
        }
        None => {
            return Err(ApiError::invalid(
                at("role"),
                format!(
                    "`{}` is missing; use system, developer, user or assistant",
                    at("role")
                ),
            ));
        }
    };
    let content = match obj.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                let is_text = part.get("type").and_then(Value::as_str) == Some("text");
                match part.get("text").and_then(Value::as_str) {
                    Some(t) if is_text => text.push_str(t),
                    _ => {
                        return Err(ApiError::invalid(
                            format!("messages[{i}].content[{j}]"),
                            format!(
                                "`messages[{i}].content[{j}]`: only text parts ({{\"type\": \"text\", \"text\": ...}}) are supported"
                            ),
                        ));
                    }
                }
            }
            text
        }
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                at("content"),
                format!("`{}` is missing; pass the message text", at("content")),
            ));
        }
        Some(_) => {
            return Err(ApiError::invalid(
                at("content"),
                format!(
                    "`{}` must be a string or an array of text parts",
                    at("content")
                ),
            ));
        }
    };
    Ok(ChatTurn {
        role: role.to_string(),
        content,
    })
}

/// The fields both endpoints share.
fn common(
    obj: &Map<String, Value>,
    kind: Kind,
    prompt: CompletionPrompt,
) -> Result<Parsed, ApiError> {
    model_name(obj)?;
    if let Some(n) = obj.get("n").filter(|v| !v.is_null())
        && n.as_u64() != Some(1)
    {
        return Err(ApiError::invalid(
            "n",
            "`n` other than 1 is not supported; send one request per answer",
        ));
    }
    for field in ["logprobs", "top_logprobs"] {
        if obj
            .get(field)
            .is_some_and(|v| !v.is_null() && v != &Value::Bool(false))
        {
            return Err(ApiError::invalid(
                field,
                format!("`{field}` is not supported; leave it out"),
            ));
        }
    }
    if obj
        .get("logit_bias")
        .is_some_and(|v| v.as_object().is_none_or(|m| !m.is_empty()) && !v.is_null())
    {
        return Err(ApiError::invalid(
            "logit_bias",
            "`logit_bias` is not supported; leave it out",
        ));
    }
    let max_tokens = match (
        int(obj, "max_completion_tokens", 1, u32::MAX as i64)?,
        int(obj, "max_tokens", 1, u32::MAX as i64)?,
    ) {
        (Some(n), _) | (None, Some(n)) => Some(n as u32),
        (None, None) => None,
    };
    let seed = match int(obj, "seed", -1, u32::MAX as i64)? {
        // llama.cpp's convention: -1 picks a random seed.
        Some(-1) => Some(random_seed()),
        Some(n) => Some(n as u32),
        None => None,
    };
    let (constraint, constraint_param) = constraint(obj)?;
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::invalid(
                "stream",
                "`stream` must be true or false",
            ));
        }
    };
    let include_usage = match obj.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::invalid(
                    "stream_options.include_usage",
                    "`stream_options.include_usage` must be true or false",
                ));
            }
        },
        Some(_) => {
            return Err(ApiError::invalid(
                "stream_options",
                "`stream_options` must be an object such as {\"include_usage\": true}",
            ));
        }
    };
    let ignore_eos = match obj.get("ignore_eos") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::invalid(
                "ignore_eos",
                "`ignore_eos` must be true or false",
            ));
        }
    };
    let request = CompletionRequest {
        prompt,
        max_tokens,
        temperature: number(obj, "temperature", 0.0, 2.0)?,
        top_p: number(obj, "top_p", 0.0, 1.0)?,
        top_k: int(obj, "top_k", 0, i32::MAX as i64)?.map(|k| k as i32),
        min_p: number(obj, "min_p", 0.0, 1.0)?,
        seed,
        repeat_penalty: number(obj, "repeat_penalty", 0.0, 10.0)?,
        frequency_penalty: number(obj, "frequency_penalty", -2.0, 2.0)?,
        presence_penalty: number(obj, "presence_penalty", -2.0, 2.0)?,
        stop: stop(obj)?,
        ignore_eos,
        constraint,
    };
    Ok(Parsed {
        kind,
        request,
        stream,
        include_usage,
        constraint_param,
    })
}

/// `model`, when given, must be a string; any name is served by the one loaded model.
fn model_name(obj: &Map<String, Value>) -> Result<(), ApiError> {
    match obj.get("model") {
        None | Some(Value::Null) | Some(Value::String(_)) => Ok(()),
        Some(_) => Err(ApiError::invalid(
            "model",
            "`model` must be a string (any name: the server has one model, see GET /v1/models)",
        )),
    }
}

/// A number field within `min..=max`.
fn number(
    obj: &Map<String, Value>,
    field: &str,
    min: f64,
    max: f64,
) -> Result<Option<f32>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if (min..=max).contains(&x) => Ok(Some(x as f32)),
            _ => Err(ApiError::invalid(
                field,
                format!("`{field}` must be a number from {min} to {max}; got {v}"),
            )),
        },
    }
}

/// An integer field within `min..=max`.
fn int(obj: &Map<String, Value>, field: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(x) if (min..=max).contains(&x) => Ok(Some(x)),
            _ => Err(ApiError::invalid(
                field,
                format!("`{field}` must be an integer from {min} to {max}; got {v}"),
            )),
        },
    }
}

/// `stop`: a string or an array of non-empty strings.
fn stop(obj: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let bad = || {
        ApiError::invalid(
            "stop",
            "`stop` must be a non-empty string or an array of non-empty strings",
        )
    };
    match obj.get("stop") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if !s.is_empty() => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .ok_or_else(bad)
            })
            .collect(),
        Some(_) => Err(bad()),
    }
}

/// The output constraint: `response_format` (OpenAI), or `grammar` / `json_schema`
/// (llama.cpp's fields); at most one of them.
fn constraint(
    obj: &Map<String, Value>,
) -> Result<(Option<OutputConstraint>, Option<&'static str>), ApiError> {
    let mut found: Vec<(OutputConstraint, &'static str)> = Vec::new();
    match obj.get("grammar") {
        None | Some(Value::Null) => {}
        Some(Value::String(g)) if !g.trim().is_empty() => {
            found.push((OutputConstraint::Gbnf { grammar: g.clone() }, "grammar"))
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "grammar",
                "`grammar` must be a GBNF grammar as a string, with a `root` rule",
            ));
        }
    }
    match obj.get("json_schema") {
        None | Some(Value::Null) => {}
        Some(schema @ (Value::Object(_) | Value::Bool(_))) => found.push((
            OutputConstraint::JsonSchema {
                schema: schema.clone(),
            },
            "json_schema",
        )),
        Some(_) => {
            return Err(ApiError::invalid(
                "json_schema",
                "`json_schema` must be a JSON schema object",
            ));
        }
    }
    match obj.get("response_format") {
        None | Some(Value::Null) => {}
        Some(Value::Object(rf)) => match rf.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => {
                // llama.cpp lets a schema ride along; without one, any JSON object.
                let schema = rf
                    .get("schema")
                    .filter(|s| s.is_object())
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object"}));
                found.push((OutputConstraint::JsonSchema { schema }, "response_format"));
            }
            Some("json_schema") => {
                let schema = rf
                    .get("json_schema")
                    .and_then(|j| j.get("schema"))
                    .filter(|s| s.is_object() || s.is_boolean())
                    .cloned()
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "response_format.json_schema.schema",
                            "`response_format.json_schema.schema` is missing; pass {\"type\": \"json_schema\", \"json_schema\": {\"name\": ..., \"schema\": {...}}}",
                        )
                    })?;
                found.push((OutputConstraint::JsonSchema { schema }, "response_format"));
            }
            other => {
                return Err(ApiError::invalid(
                    "response_format.type",
                    format!(
                        "`response_format.type` is {}; use text, json_object or json_schema",
                        other.map_or("missing".to_string(), |t| format!("`{t}`"))
                    ),
                ));
            }
        },
        Some(_) => {
            return Err(ApiError::invalid(
                "response_format",
                "`response_format` must be an object such as {\"type\": \"json_schema\", \"json_schema\": {...}}",
            ));
        }
    }
    if found.len() > 1 {
        let names: Vec<&str> = found.iter().map(|(_, p)| *p).collect();
        return Err(ApiError::invalid(
            names[1],
            format!("pass one of `{}`, not several", names.join("`, `")),
        ));
    }
    Ok(match found.pop() {
        Some((c, p)) => (Some(c), Some(p)),
        None => (None, None),
    })
}

fn random_seed() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() ^ d.as_secs() as u32);
    nanos.wrapping_mul(2_654_435_761)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: Value) -> Result<Parsed, ApiError> {
        parse_chat(body.to_string().as_bytes())
    }

    fn text(body: Value) -> Result<Parsed, ApiError> {
        parse_text(body.to_string().as_bytes())
    }

    fn param_of(e: ApiError) -> String {
        assert_eq!(e.status, 400, "{e:?}");
        e.param.unwrap_or_default()
    }

    #[test]
    fn a_chat_request_maps_every_supported_field() {
        let p = chat(json!({
            "model": "anything",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
            ],
            "max_tokens": 12, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05,
            "seed": 7, "stop": "\n", "repeat_penalty": 1.1, "frequency_penalty": 0.5,
            "presence_penalty": -0.5, "stream": true, "stream_options": {"include_usage": true},
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
            "user": "ignored", "n": 1,
        }))
        .unwrap();
        assert_eq!(p.kind, Kind::Chat);
        assert!(p.stream && p.include_usage);
        let r = &p.request;
        assert_eq!(
            r.prompt,
            CompletionPrompt::Messages {
                messages: vec![
                    ChatTurn {
                        role: "system".into(),
                        content: "Be brief.".into()
                    },
                    ChatTurn {
                        role: "user".into(),
                        content: "Hi there".into()
                    },
                ]
            }
        );
        assert_eq!(r.max_tokens, Some(12));
        assert_eq!(
            (r.temperature, r.top_p, r.top_k, r.min_p),
            (Some(0.7), Some(0.9), Some(40), Some(0.05))
        );
        assert_eq!(r.seed, Some(7));
        assert_eq!(r.stop, vec!["\n".to_string()]);
        assert_eq!(
            (r.repeat_penalty, r.frequency_penalty, r.presence_penalty),
            (Some(1.1), Some(0.5), Some(-0.5))
        );
        assert_eq!(
            r.constraint,
            Some(OutputConstraint::JsonSchema {
                schema: json!({"type": "object"})
            })
        );
        assert_eq!(p.param_of(RequestPart::Constraint), "response_format");
        assert_eq!(p.param_of(RequestPart::Prompt), "messages");
    }

    #[test]
    fn a_text_request_takes_its_prompt_and_a_llama_cpp_grammar() {
        let p = text(
            json!({"prompt": ["Once"], "grammar": "root ::= \"a\"", "max_completion_tokens": 3}),
        )
        .unwrap();
        assert_eq!(
            p.request.prompt,
            CompletionPrompt::Text {
                text: "Once".into()
            }
        );
        assert_eq!(
            p.request.constraint,
            Some(OutputConstraint::Gbnf {
                grammar: "root ::= \"a\"".into()
            })
        );
        assert_eq!(p.request.max_tokens, Some(3));
        assert!(!p.stream);
        assert_eq!(p.param_of(RequestPart::Constraint), "grammar");
        assert_eq!(p.param_of(RequestPart::Prompt), "prompt");
    }

    #[test]
    fn bad_fields_are_named_with_their_fix() {
        let cases = [
            (json!({}), "messages"),
            (json!({"messages": []}), "messages"),
            (json!({"messages": "hi"}), "messages"),
            (
                json!({"messages": [{"role": "tool", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"messages": [{"role": "user"}]}),
                "messages[0].content",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
                "messages[0].content[0]",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "temperature": 3}),
                "temperature",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}),
                "temperature",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
                "max_tokens",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "top_k": -1}),
                "top_k",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "n": 2}),
                "n",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "stop": [""]}),
                "stop",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
                "stream",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "logprobs": true}),
                "logprobs",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "tools": [{}]}),
                "tools",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "model": 3}),
                "model",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}}),
                "response_format.type",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema"}}),
                "response_format.json_schema.schema",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "grammar": "root ::= \"a\"", "response_format": {"type": "json_object"}}),
                "response_format",
            ),
        ];
        for (body, param) in cases {
            let e = chat(body.clone()).expect_err(&body.to_string());
            assert!(
                e.message.contains(&format!("`{param}")) || e.message.contains(param),
                "{e:?}"
            );
            assert_eq!(param_of(e), param, "{body}");
        }
        for (body, param) in [
            (json!({}), "prompt"),
            (json!({"prompt": [1, 2]}), "prompt"),
            (json!({"prompt": "x", "echo": true}), "echo"),
            (json!({"prompt": "x", "best_of": 3}), "best_of"),
        ] {
            assert_eq!(
                param_of(text(body.clone()).expect_err(&body.to_string())),
                param
            );
        }
    }

    #[test]
    fn a_body_that_is_not_a_json_object_is_a_bad_request() {
        let e = parse_chat(b"{not json").unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (400, None));
        assert!(e.message.contains("not JSON"), "{}", e.message);
        let e = parse_chat(b"[1]").unwrap_err();
        assert!(e.message.contains("JSON object"), "{}", e.message);
        let body = e.body();
        for key in ["message", "type", "param", "code"] {
            assert!(body["error"].get(key).is_some(), "{body}");
        }
    }

    #[test]
    fn embeddings_take_a_string_or_strings() {
        assert_eq!(parse_embeddings(br#"{"input": "a"}"#).unwrap(), vec!["a"]);
        assert_eq!(
            parse_embeddings(br#"{"input": ["a", "b"], "model": "m", "encoding_format": "float"}"#)
                .unwrap(),
            vec!["a", "b"]
        );
        for (body, param) in [
            (&br#"{}"#[..], "input"),
            (br#"{"input": []}"#, "input"),
            (br#"{"input": [[1, 2]]}"#, "input[0]"),
            (
                br#"{"input": "a", "encoding_format": "base64"}"#,
                "encoding_format",
            ),
        ] {
            assert_eq!(param_of(parse_embeddings(body).unwrap_err()), param);
        }
    }

    #[test]
    fn responses_and_chunks_have_openai_shapes() {
        let stats = RequestStats {
            prompt_tokens: 10,
            cached_tokens: 4,
            generated_tokens: 3,
            ..Default::default()
        };
        let chat = Shape::new(Kind::Chat, 1, 5, "m");
        let whole = chat.whole("hi", CompletionFinish::Stop, &stats);
        assert_eq!(whole["object"], "chat.completion");
        assert_eq!(whole["choices"][0]["message"]["content"], "hi");
        assert_eq!(whole["choices"][0]["finish_reason"], "stop");
        assert_eq!(whole["usage"]["total_tokens"], 13);
        assert_eq!(whole["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
        assert_eq!(whole["timings"]["prompt_n"], 6);
        assert_eq!(
            chat.opening().unwrap()["choices"][0]["delta"]["role"],
            "assistant"
        );
        assert_eq!(chat.delta("x")["choices"][0]["delta"]["content"], "x");
        assert_eq!(chat.delta("x")["object"], "chat.completion.chunk");
        let fin = chat.finish(CompletionFinish::Length, &stats);
        assert_eq!(fin["choices"][0]["finish_reason"], "length");
        assert_eq!(chat.usage_chunk(&stats)["choices"], json!([]));

        let text = Shape::new(Kind::Text, 2, 5, "m");
        assert!(text.opening().is_none());
        assert_eq!(text.delta("x")["choices"][0]["text"], "x");
        assert_eq!(
            text.whole("y", CompletionFinish::Stop, &stats)["object"],
            "text_completion"
        );
        assert_eq!(text.id, "cmpl-troupe-2");
    }
}
