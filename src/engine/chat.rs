//! Rendering chat messages with the model's own chat template (GGUF `tokenizer.chat_template`).
//!
//! llama.cpp's built-in renderer recognises the common template families (ChatML, Llama 3,
//! Gemma, ...). A template it does not recognise is rendered as Jinja with minijinja. A model with
//! no template at all is an error naming the fix (send raw text instead). Runs on the caller's
//! thread; only reads the shared, immutable model.

use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};

use super::request::ChatMessage;
use super::{Error, Result};

/// The model's chat template, looked up once at load time.
#[derive(Debug, Clone)]
pub(crate) struct ChatFormatter {
    template: Option<LlamaChatTemplate>,
    bos: String,
    eos: String,
}

impl ChatFormatter {
    /// Reads the template and special tokens from the model.
    pub fn from_model(model: &LlamaModel) -> Self {
        let vocab = model.vocab();
        let piece = |t| String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned();
        Self {
            template: model.chat_template(None).ok(),
            bos: piece(vocab.bos()),
            eos: piece(vocab.eos()),
        }
    }

    /// Whether the model carries a chat template.
    pub fn has_template(&self) -> bool {
        self.template.is_some()
    }

    /// The prompt text for `messages`, ending with the opening of an assistant turn.
    pub fn render(&self, model: &LlamaModel, messages: &[ChatMessage]) -> Result<String> {
        let Some(template) = &self.template else {
            return Err(Error::ChatTemplate(
                "the model file has no chat template (a base model?)".into(),
            ));
        };
        let chat = messages
            .iter()
            .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::InvalidRequest(format!("chat message: {e}")))?;
        match model.apply_chat_template(template, &chat, true) {
            Ok(text) => Ok(text),
            Err(builtin) => {
                let source = template
                    .to_str()
                    .map_err(|e| Error::ChatTemplate(e.to_string()))?;
                render_jinja(source, messages, &self.bos, &self.eos).map_err(|e| {
                    Error::ChatTemplate(format!(
                        "llama.cpp does not know it ({builtin}) and jinja failed ({e})"
                    ))
                })
            }
        }
    }
}

/// Renders a Hugging Face style Jinja chat template.
fn render_jinja(
    source: &str,
    messages: &[ChatMessage],
    bos: &str,
    eos: &str,
) -> std::result::Result<String, minijinja::Error> {
    let mut env = minijinja::Environment::new();
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_template("chat", source)?;
    env.get_template("chat")?.render(minijinja::context! {
        messages => messages,
        add_generation_prompt => true,
        bos_token => bos,
        eos_token => eos,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jinja_fallback_renders_a_chatml_template() {
        let source = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let text = render_jinja(source, &[ChatMessage::user("hi")], "", "").unwrap();
        assert_eq!(
            text,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}
