//! The OpenAI request bodies this server takes, checked into one
//! [`Completion`] request, and OpenAI's error object.
//!
//! Fields the proofs cannot cover are refused, not ignored: `top_p`,
//! penalties and `logit_bias` change the sampler, and the circuit proves
//! inverse-CDF sampling over the full vocabulary (or greedy) only. Fields
//! with no bearing on the answer (`user`, `metadata`, ...) are ignored, as
//! OpenAI's own server ignores fields it does not know.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use circuits::fixed_point;
use serde::Deserialize;
use serde_json::{json, Value};
use transcript::Nonce;

/// Temperatures are proven at multiples of this (docs/statement.md).
pub const TEMPERATURE_STEP: f64 = 1.0 / fixed_point::TEMPERATURE_SCALE as f64;
/// The largest temperature a circuit exists for.
pub const MAX_TEMPERATURE: f64 =
    fixed_point::MAX_TEMPERATURE as f64 / fixed_point::TEMPERATURE_SCALE as f64;

/// An error as OpenAI's API answers it: a status and
/// `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// A request that cannot be served as written (400).
    pub fn invalid(param: Option<&'static str>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: None,
            retry_after: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            ..ApiError::invalid(None, message)
        }
    }

    /// Every generation slot is taken (429, retry after a second).
    pub fn busy(limit: usize) -> ApiError {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            kind: "rate_limit_error",
            code: Some("too_many_requests"),
            retry_after: Some(1),
            ..ApiError::invalid(
                None,
                format!("all {limit} generation slots are busy (--max-concurrent); retry later"),
            )
        }
    }

    /// The model or the chain of nodes is not ready (503).
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "server_error",
            retry_after: Some(2),
            ..ApiError::invalid(None, message)
        }
    }

    /// The generation itself failed (a node down for good, a model error).
    pub fn server(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            ..ApiError::invalid(None, message)
        }
    }

    /// The error object, as it goes in a body or a stream event.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

/// Parses a JSON body into `T`; malformed JSON and wrong types are a 400
/// with serde's message (which names the line and column).
pub fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(None, format!("the request body is not valid: {e}")))
}

/// `stop`: one string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// A chat message's content: text, or OpenAI's list of parts (text parts
/// only).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

impl ChatMessage {
    /// The message's text; a part that is not text is refused.
    pub fn text(&self) -> Result<String, ApiError> {
        match &self.content {
            None => Ok(String::new()),
            Some(Content::Text(text)) => Ok(text.clone()),
            Some(Content::Parts(parts)) => parts
                .iter()
                .map(|p| match (p.kind.as_str(), &p.text) {
                    ("text", Some(text)) => Ok(text.as_str()),
                    _ => Err(ApiError::invalid(
                        Some("messages"),
                        format!(
                            "content parts of type {:?} are not supported: text only",
                            p.kind
                        ),
                    )),
                })
                .collect(),
        }
    }
}

/// Sampling and output fields both endpoints share.
#[derive(Debug, Default, Deserialize)]
pub struct Sampling {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub n: Option<u64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    /// zkinfer's own: 32 hex digits that fix every sampled token's `r`, so
    /// that the serving side cannot choose them.
    #[serde(default)]
    pub nonce: Option<String>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub top_logprobs: Option<u64>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// `prompt` of `/v1/completions`: text, token ids, or a list of one of
/// either.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    TokenLists(Vec<Vec<u32>>),
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub prompt: PromptInput,
    /// The legacy API's count of top log-probabilities per token.
    #[serde(default)]
    pub logprobs: Option<u64>,
    #[serde(default)]
    pub echo: Option<bool>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// The most `top_logprobs` asked for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: u64 = 20;

/// What both endpoints' requests come to, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub max_tokens: usize,
    /// `None`: greedy (temperature 0).
    pub temperature: Option<f64>,
    pub nonce: Nonce,
    /// Whether the client fixed the nonce (a seed or its own).
    pub nonce_fixed: bool,
    pub stops: Vec<String>,
    pub stream: bool,
    /// Per-token log-probabilities asked for, and how many top ones.
    pub logprobs: Option<usize>,
}

/// How many tokens a request may ask for when it does not say.
pub const DEFAULT_MAX_TOKENS: u64 = 256;

impl Sampling {
    /// Checks the shared fields; `max_tokens` as the endpoint names it,
    /// `limit` the server's cap.
    pub fn check(
        &self,
        max_tokens: Option<u64>,
        logprobs: Option<usize>,
        limit: usize,
    ) -> Result<Checked, ApiError> {
        if let Some(n) = self.n {
            if n != 1 {
                return Err(ApiError::invalid(
                    Some("n"),
                    "only n = 1 is supported: each choice is its own proven generation",
                ));
            }
        }
        if self.top_p.is_some_and(|p| p != 1.0) {
            return Err(ApiError::invalid(
                Some("top_p"),
                "top_p must be 1: the proof covers sampling over the full vocabulary",
            ));
        }
        for (param, value) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if value.is_some_and(|v| v != 0.0) {
                return Err(ApiError::invalid(
                    Some(param),
                    format!("{param} must be 0: the proof covers the model's own logits"),
                ));
            }
        }
        if self.logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
            return Err(ApiError::invalid(
                Some("logit_bias"),
                "logit_bias is not supported: the proof covers the model's own logits",
            ));
        }
        let max_tokens = max_tokens.unwrap_or(DEFAULT_MAX_TOKENS.min(limit as u64));
        if max_tokens == 0 || max_tokens > limit as u64 {
            return Err(ApiError::invalid(
                Some("max_tokens"),
                format!("max_tokens must be from 1 to {limit}, not {max_tokens}"),
            ));
        }
        let temperature = match self.temperature {
            None => Some(1.0),
            Some(t) if !(0.0..=MAX_TEMPERATURE).contains(&t) => {
                return Err(ApiError::invalid(
                    Some("temperature"),
                    format!("temperature must be from 0 to {MAX_TEMPERATURE}, not {t}"),
                ))
            }
            // Below half a step there is no circuit: greedy is what it means.
            Some(t) if t < TEMPERATURE_STEP / 2.0 => None,
            // Each temperature has its own circuit, at multiples of 0.001.
            Some(t) => Some((t / TEMPERATURE_STEP).round() * TEMPERATURE_STEP),
        };
        let (nonce, nonce_fixed) = match (&self.nonce, self.seed) {
            (Some(hex), _) => (
                Nonce::from_hex(hex).map_err(|e| {
                    ApiError::invalid(Some("nonce"), format!("nonce must be 32 hex digits: {e}"))
                })?,
                true,
            ),
            (None, Some(seed)) => (Nonce::from_seed(seed as u64), true),
            (None, None) => (Nonce::fresh(), false),
        };
        let stops = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(list)) => list.clone(),
        };
        if stops.len() > 4 || stops.iter().any(|s| s.is_empty() || s.len() > 256) {
            return Err(ApiError::invalid(
                Some("stop"),
                "stop takes up to 4 sequences, each of 1 to 256 bytes",
            ));
        }
        Ok(Checked {
            max_tokens: max_tokens as usize,
            temperature,
            nonce,
            nonce_fixed,
            stops,
            stream: self.stream.unwrap_or(false),
            logprobs,
        })
    }
}

impl ChatRequest {
    pub fn check(&self, limit: usize) -> Result<Checked, ApiError> {
        let logprobs = match (self.logprobs.unwrap_or(false), self.top_logprobs) {
            (_, Some(k)) if k > MAX_TOP_LOGPROBS => {
                return Err(ApiError::invalid(
                    Some("top_logprobs"),
                    format!("top_logprobs must be from 0 to {MAX_TOP_LOGPROBS}"),
                ))
            }
            (false, Some(k)) if k > 0 => {
                return Err(ApiError::invalid(
                    Some("logprobs"),
                    "top_logprobs needs logprobs set to true",
                ))
            }
            (true, k) => Some(k.unwrap_or(0) as usize),
            (false, _) => None,
        };
        if self.messages.is_empty() {
            return Err(ApiError::invalid(Some("messages"), "messages is empty"));
        }
        self.sampling.check(
            self.max_completion_tokens.or(self.sampling.max_tokens),
            logprobs,
            limit,
        )
    }
}

impl CompletionRequest {
    pub fn check(&self, limit: usize) -> Result<Checked, ApiError> {
        if self.echo == Some(true) {
            return Err(ApiError::invalid(Some("echo"), "echo is not supported"));
        }
        let logprobs = match self.logprobs {
            Some(k) if k > MAX_TOP_LOGPROBS => {
                return Err(ApiError::invalid(
                    Some("logprobs"),
                    format!("logprobs must be from 0 to {MAX_TOP_LOGPROBS}"),
                ))
            }
            k => k.map(|k| k as usize),
        };
        self.sampling
            .check(self.sampling.max_tokens, logprobs, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<Checked, ApiError> {
        parse_body::<ChatRequest>(body.as_bytes())?.check(512)
    }

    #[test]
    fn a_plain_chat_request_samples_at_temperature_one_with_a_fresh_nonce() {
        let checked =
            chat(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#).expect("valid");
        assert_eq!(checked.temperature, Some(1.0));
        assert_eq!(checked.max_tokens, 256);
        assert!(!checked.nonce_fixed);
        assert_eq!(checked.logprobs, None);
    }

    #[test]
    fn temperature_zero_is_greedy_and_others_round_to_the_proven_step() {
        let t = |t: &str| {
            chat(&format!(
                r#"{{"messages":[{{"role":"user","content":"hi"}}],"temperature":{t}}}"#
            ))
        };
        assert_eq!(t("0").expect("valid").temperature, None);
        assert_eq!(t("0.0004").expect("valid").temperature, None);
        let rounded = t("0.7004").expect("valid").temperature.expect("sampled");
        assert!((rounded - 0.7).abs() < 1e-12);
        for bad in ["-0.5", "2.5"] {
            let e = t(bad).expect_err(bad);
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert_eq!(e.param, Some("temperature"));
        }
    }

    #[test]
    fn a_seed_fixes_the_nonce_and_a_nonce_wins_over_it() {
        let base = r#"{"messages":[{"role":"user","content":"hi"}],"seed":7"#;
        let a = chat(&format!("{base}}}")).expect("valid");
        let b = chat(&format!("{base}}}")).expect("valid");
        assert!(a.nonce_fixed);
        assert_eq!(a.nonce, b.nonce);
        let nonce = "00112233445566778899aabbccddeeff";
        let c = chat(&format!(r#"{base},"nonce":"{nonce}"}}"#)).expect("valid");
        assert_eq!(c.nonce.to_hex(), nonce);
        let e = chat(&format!(r#"{base},"nonce":"xyz"}}"#)).expect_err("bad nonce");
        assert_eq!(e.param, Some("nonce"));
    }

    #[test]
    fn what_the_proof_cannot_cover_is_refused_by_name() {
        let with = |field: &str| {
            chat(&format!(
                r#"{{"messages":[{{"role":"user","content":"hi"}}],{field}}}"#
            ))
            .expect_err(field)
            .param
        };
        assert_eq!(with(r#""top_p":0.9"#), Some("top_p"));
        assert_eq!(with(r#""presence_penalty":0.5"#), Some("presence_penalty"));
        assert_eq!(with(r#""frequency_penalty":-1"#), Some("frequency_penalty"));
        assert_eq!(with(r#""logit_bias":{"5":10}"#), Some("logit_bias"));
        assert_eq!(with(r#""n":2"#), Some("n"));
        assert_eq!(with(r#""max_tokens":0"#), Some("max_tokens"));
        assert_eq!(with(r#""max_tokens":513"#), Some("max_tokens"));
        assert_eq!(with(r#""top_logprobs":3"#), Some("logprobs"));
        assert_eq!(
            with(r#""logprobs":true,"top_logprobs":21"#),
            Some("top_logprobs")
        );
        assert_eq!(with(r#""stop":["a","b","c","d","e"]"#), Some("stop"));
        assert_eq!(with(r#""stop":"""#), Some("stop"));
        // Values that change nothing are fine.
        chat(r#"{"messages":[{"role":"user","content":"hi"}],"top_p":1,"n":1,"user":"x"}"#)
            .expect("neutral values");
    }

    #[test]
    fn malformed_bodies_are_400_with_the_error_object() {
        for body in [
            "",
            "{",
            "[]",
            r#"{"messages":"hi"}"#,
            r#"{"messages":[{"role":"user","content":5}]}"#,
            r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":-1}"#,
            r#"{"messages":[{"role":"user","content":"hi"}],"temperature":"hot"}"#,
        ] {
            let e = chat(body).expect_err(body);
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(e.body()["error"]["type"], "invalid_request_error");
        }
        let e = chat(r#"{"messages":[]}"#).expect_err("empty");
        assert_eq!(e.param, Some("messages"));
    }

    #[test]
    fn completion_prompts_come_as_text_or_ids_and_echo_is_refused() {
        for body in [
            r#"{"prompt":"once"}"#,
            r#"{"prompt":[2,300,301]}"#,
            r#"{"prompt":["once"]}"#,
            r#"{"prompt":[[2,300]]}"#,
        ] {
            parse_body::<CompletionRequest>(body.as_bytes())
                .expect(body)
                .check(64)
                .expect(body);
        }
        let echo = parse_body::<CompletionRequest>(br#"{"prompt":"a","echo":true}"#)
            .expect("parses")
            .check(64)
            .expect_err("echo");
        assert_eq!(echo.param, Some("echo"));
        let busy = ApiError::busy(2).into_response();
        assert_eq!(busy.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(busy.headers()["retry-after"], "1");
    }
}
