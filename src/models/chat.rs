//! Chat templates: the Jinja template a model ships (`tokenizer.chat_template` in a GGUF
//! file, `chat_template` in `tokenizer_config.json`) rendered as HF transformers'
//! `apply_chat_template` does — Jinja with `trim_blocks` and `lstrip_blocks`, loop controls,
//! Python's string methods, `raise_exception`, and the special tokens in the context.

use minijinja::syntax::SyntaxConfig;
use minijinja::{context, Environment, ErrorKind};
use serde::Serialize;

use crate::{Error, Result};

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: "user".into(),
            content: content.into(),
        }
    }
}

/// Renders `template` for `messages`; with `add_generation_prompt` the text ends where the
/// assistant's answer starts. `bos_token` and `eos_token` are the texts of those tokens.
pub fn render_chat(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    let err = |e: minijinja::Error| Error::Config(format!("chat template: {e:#}"));
    let mut env = Environment::new();
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(err)?,
    );
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |message: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        },
    );
    let template = env.template_from_str(template).map_err(err)?;
    template
        .render(context! {
            messages => minijinja::Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => bos_token,
            eos_token => eos_token,
        })
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_with_trimmed_blocks() {
        let template = "{% for m in messages %}\n<|{{ m.role }}|>{{ m['content'].strip() + '\\n' }}{% endfor %}\n{% if add_generation_prompt %}<|assistant|>{% endif %}";
        let out =
            render_chat(template, &[ChatMessage::user("  hi ")], true, "<s>", "</s>").unwrap();
        assert_eq!(out, "<|user|>hi\n<|assistant|>");
    }

    #[test]
    fn raise_exception_is_an_error() {
        let err = render_chat(
            "{{ raise_exception('no system role') }}",
            &[],
            false,
            "",
            "",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("no system role"), "{err}");
    }
}
