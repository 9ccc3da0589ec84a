//! Chat messages into one prompt: the GGUF's own `tokenizer.chat_template`
//! rendered with minijinja (as llama.cpp's server does), or, for a model
//! that has none (the packaged Gemma 3 270M is a base model), Gemma's turn
//! format.

use minijinja::{context, Environment, Error as TemplateError, ErrorKind};

use crate::openai::ApiError;

/// Gemma's turn markers; `<end_of_turn>` ends an answer.
pub const START_OF_TURN: &str = "<start_of_turn>";
pub const END_OF_TURN: &str = "<end_of_turn>";

/// How chat messages become a prompt.
#[derive(Debug, Clone)]
pub enum ChatTemplate {
    /// A Jinja template from the model file.
    Jinja {
        source: String,
        bos_token: String,
        eos_token: String,
    },
    /// Gemma's turns: `<start_of_turn>user\n…<end_of_turn>\n`, a system
    /// message folded into the first user turn, and the model's turn opened.
    Gemma,
}

/// One message: its role and its text.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub role: String,
    pub text: String,
}

impl ChatTemplate {
    /// The template from the GGUF's metadata, checked to parse; Gemma's
    /// turns when the model has none.
    pub fn new(
        source: Option<String>,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<ChatTemplate, TemplateError> {
        match source {
            Some(source) => {
                Environment::new().template_from_str(&source)?;
                Ok(ChatTemplate::Jinja {
                    source,
                    bos_token: bos_token.into(),
                    eos_token: eos_token.into(),
                })
            }
            None => Ok(ChatTemplate::Gemma),
        }
    }

    /// The prompt text for `turns`, ending where the model's answer begins.
    /// It may start with the BOS token's text (a Jinja template's choice);
    /// [`crate::engine`] then adds no BOS of its own.
    pub fn render(&self, turns: &[Turn]) -> Result<String, ApiError> {
        match self {
            ChatTemplate::Gemma => gemma(turns),
            ChatTemplate::Jinja {
                source,
                bos_token,
                eos_token,
            } => {
                let mut env = Environment::new();
                env.add_function("raise_exception", |message: String| -> Result<String, _> {
                    Err(TemplateError::new(ErrorKind::InvalidOperation, message))
                });
                let template = env
                    .template_from_str(source)
                    .map_err(|e| ApiError::server(format!("the model's chat template: {e}")))?;
                let messages: Vec<_> = turns
                    .iter()
                    .map(|t| context! { role => t.role, content => t.text })
                    .collect();
                template
                    .render(context! {
                        messages => messages,
                        add_generation_prompt => true,
                        bos_token => bos_token,
                        eos_token => eos_token,
                    })
                    .map_err(|e| {
                        ApiError::invalid(
                            Some("messages"),
                            format!("the model's chat template refused the messages: {e}"),
                        )
                    })
            }
        }
    }
}

fn gemma(turns: &[Turn]) -> Result<String, ApiError> {
    let mut out = String::new();
    let mut system: Option<&str> = None;
    let mut first_user = true;
    for (i, turn) in turns.iter().enumerate() {
        let role = match turn.role.as_str() {
            "system" | "developer" if i == 0 => {
                system = Some(&turn.text);
                continue;
            }
            "system" | "developer" => {
                return Err(ApiError::invalid(
                    Some("messages"),
                    "a system message must come first",
                ))
            }
            "user" => "user",
            "assistant" => "model",
            other => {
                return Err(ApiError::invalid(
                    Some("messages"),
                    format!("unknown role {other:?}: user, assistant or a first system message"),
                ))
            }
        };
        out.push_str(START_OF_TURN);
        out.push_str(role);
        out.push('\n');
        if role == "user" && first_user {
            first_user = false;
            if let Some(system) = system.take() {
                out.push_str(system);
                out.push_str("\n\n");
            }
        }
        out.push_str(turn.text.trim());
        out.push_str(END_OF_TURN);
        out.push('\n');
    }
    if let Some(system) = system {
        // Only a system message: it is the user's turn.
        out.push_str(START_OF_TURN);
        out.push_str("user\n");
        out.push_str(system.trim());
        out.push_str(END_OF_TURN);
        out.push('\n');
    }
    out.push_str(START_OF_TURN);
    out.push_str("model\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(role: &str, text: &str) -> Turn {
        Turn {
            role: role.into(),
            text: text.into(),
        }
    }

    #[test]
    fn gemma_turns_fold_the_system_message_into_the_first_user_turn() {
        let text = ChatTemplate::Gemma
            .render(&[
                turn("system", "Be brief."),
                turn("user", "Hi"),
                turn("assistant", "Hello."),
                turn("user", "Why?"),
            ])
            .expect("renders");
        assert_eq!(
            text,
            "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n\
             <start_of_turn>model\nHello.<end_of_turn>\n\
             <start_of_turn>user\nWhy?<end_of_turn>\n\
             <start_of_turn>model\n"
        );
    }

    #[test]
    fn gemma_turns_refuse_unknown_roles_and_a_late_system_message() {
        for turns in [
            vec![turn("tool", "x")],
            vec![turn("user", "a"), turn("system", "b")],
        ] {
            let e = ChatTemplate::Gemma.render(&turns).expect_err("refused");
            assert_eq!(e.param, Some("messages"));
        }
    }

    #[test]
    fn a_jinja_template_from_the_model_is_rendered_with_its_tokens() {
        let source =
            "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}\
                      {% if add_generation_prompt %}<|assistant|>{% endif %}";
        let template = ChatTemplate::new(Some(source.into()), "<s>", "</s>").expect("parses");
        let text = template
            .render(&[turn("system", "S"), turn("user", "U")])
            .expect("renders");
        assert_eq!(text, "<s><|system|>S\n<|user|>U\n<|assistant|>");
    }

    #[test]
    fn a_template_that_raises_refuses_the_messages_and_a_broken_one_the_model() {
        let source =
            "{% if messages[0].role != 'user' %}{{ raise_exception('user first') }}{% endif %}";
        let template = ChatTemplate::new(Some(source.into()), "", "").expect("parses");
        let e = template
            .render(&[turn("assistant", "x")])
            .expect_err("raises");
        assert!(e.message.contains("user first"), "{}", e.message);
        assert!(ChatTemplate::new(Some("{% for %}".into()), "", "").is_err());
    }
}
