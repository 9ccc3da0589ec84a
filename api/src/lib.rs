//! `zkinfer api`: an OpenAI-compatible HTTP endpoint (axum) whose answers
//! carry their own verification.
//!
//! - `POST /v1/chat/completions`, `POST /v1/completions`: OpenAI's request
//!   and response shapes, streamed as server-sent events when asked, each
//!   answer with a `verification` object ([`verification`]).
//! - `GET /v1/transcripts/{id}`, `GET /v1/proofs/{id}`: the answer's
//!   transcript and proof bundle, as `zkinfer verify` reads them, kept for
//!   the retention time ([`store`]).
//! - `POST /v1/verify`: what `zkinfer verify --transcript --bundle --json`
//!   prints ([`transcript::answer`]).
//! - `GET /v1/models`, `GET /health` (503 until the model or the chain of
//!   nodes is ready), `GET /metrics` ([`metrics`]).
//!
//! Generations run on threads of their own, at most `max_concurrent` at a
//! time; past that a request gets 429 with `Retry-After`, nothing queues.

pub mod audits;
pub mod chat;
pub mod engine;
pub mod metrics;
pub mod openai;
pub mod stop;
pub mod store;
pub mod verification;

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use client::generation::Prompt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};
use transcript::{ProvingPolicy, Transcript};
use verifier::{Bundle, ParamsCache};

use crate::chat::Turn;
use crate::engine::{Engine, Event, Finished, Permits, TokenOut};
use crate::metrics::Metrics;
use crate::openai::{ApiError, ChatRequest, Checked, CompletionRequest, PromptInput};
use crate::store::{ProofState, Store};

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Generations at a time; more get 429.
    pub max_concurrent: usize,
    /// Answers still waiting for proofs at a time; more get 429.
    pub max_proving: usize,
    /// The largest `max_tokens` a request may ask for.
    pub max_tokens: usize,
    /// How long transcripts and proofs stay downloadable.
    pub retention: Duration,
    /// How many answers are kept at most (the oldest go first).
    pub max_stored: usize,
    /// Bytes of transcripts and bundles kept at most (the oldest go first).
    pub max_stored_bytes: usize,
    /// Public parameters and verifying keys for `POST /v1/verify`.
    pub params_dir: PathBuf,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_concurrent: 4,
            max_proving: 64,
            max_tokens: 1024,
            retention: Duration::from_secs(3600),
            max_stored: 1024,
            max_stored_bytes: 256 << 20,
            params_dir: ParamsCache::default_dir(),
        }
    }
}

/// The server's state, shared by every request.
pub struct AppState {
    config: ApiConfig,
    engine: OnceLock<Arc<Engine>>,
    /// Why the engine is not ready (loading, nodes unreachable).
    not_ready: Mutex<String>,
    generation_slots: Arc<Semaphore>,
    proving_slots: Arc<Semaphore>,
    /// One verification at a time: each may build a verifying key.
    verify_slot: Arc<Semaphore>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
}

impl AppState {
    pub fn new(config: ApiConfig) -> Arc<AppState> {
        Arc::new(AppState {
            generation_slots: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            proving_slots: Arc::new(Semaphore::new(config.max_proving.max(1))),
            verify_slot: Arc::new(Semaphore::new(1)),
            store: Arc::new(Store::new(
                config.retention,
                config.max_stored,
                config.max_stored_bytes,
            )),
            metrics: Arc::new(Metrics::default()),
            engine: OnceLock::new(),
            not_ready: Mutex::new("starting".into()),
            config,
        })
    }

    /// The engine is ready: requests are served from now on.
    pub fn ready(&self, engine: Engine) {
        let _ = self.engine.set(Arc::new(engine));
    }

    /// Says why the engine is not ready yet (`/health` shows it).
    pub fn not_ready(&self, reason: impl Into<String>) {
        *self.not_ready.lock().unwrap_or_else(|e| e.into_inner()) = reason.into();
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn engine(&self) -> Result<Arc<Engine>, ApiError> {
        self.engine.get().cloned().ok_or_else(|| {
            let reason = self.not_ready.lock().unwrap_or_else(|e| e.into_inner());
            ApiError::unavailable(format!("the model is not ready: {reason}"))
        })
    }
}

/// The largest request body: a verification request carries a transcript
/// and a bundle.
pub const MAX_BODY_BYTES: usize = 16 << 20;

/// The server's routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/transcripts/{id}", get(transcript_file))
        .route("/v1/proofs/{id}", get(proof_file))
        .route("/v1/verify", post(verify))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serves `router(state)` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AppState>) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}

/// Counts a finished request in the metrics.
fn counted(state: &AppState, endpoint: &'static str, response: Response) -> Response {
    state.metrics.request(endpoint, response.status().as_u16());
    response
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    match state.engine() {
        Ok(_) => Json(json!({"status": "ok"})).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading", "message": e.message})),
        )
            .into_response(),
    }
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    let response = match state.engine() {
        Ok(engine) => Json(json!({
            "object": "list",
            "data": [{
                "id": engine.name,
                "object": "model",
                "created": 0,
                "owned_by": "zkinfer",
                "zkinfer": {
                    "model_id": engine.model.id.map(|id| id.to_string()),
                    "layers": engine.model.layers,
                    "vocab": engine.model.vocab,
                    "context": engine.model.context,
                    "proving": engine.proving,
                    "max_tokens": state.config.max_tokens,
                    "retention_seconds": state.config.retention.as_secs(),
                },
            }],
        }))
        .into_response(),
        Err(e) => e.into_response(),
    };
    counted(&state, "/v1/models", response)
}

/// Which endpoint an answer is for: the shapes differ.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completion,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completion => "/v1/completions",
        }
    }
}

async fn chat_completions(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let answer = async {
        let request: ChatRequest = openai::parse_body(&body)?;
        let engine = state.engine()?;
        check_model(&engine, request.sampling.model.as_deref())?;
        let checked = request.check(state.config.max_tokens)?;
        let turns = request
            .messages
            .iter()
            .map(|m| {
                Ok(Turn {
                    role: m.role.clone(),
                    text: m.text()?,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        let text = engine.template.render(&turns)?;
        let prompt = chat_prompt(&engine, text);
        start(&state, engine, Endpoint::Chat, prompt, checked).await
    };
    let response = answer.await.unwrap_or_else(IntoResponse::into_response);
    counted(&state, Endpoint::Chat.path(), response)
}

async fn completions(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let answer = async {
        let request: CompletionRequest = openai::parse_body(&body)?;
        let engine = state.engine()?;
        check_model(&engine, request.sampling.model.as_deref())?;
        let checked = request.check(state.config.max_tokens)?;
        let prompt = match request.prompt {
            PromptInput::Text(text) => Prompt::encode(&engine.tokenizer, &text),
            PromptInput::Texts(mut texts) if texts.len() == 1 => {
                Prompt::encode(&engine.tokenizer, &texts.remove(0))
            }
            PromptInput::Tokens(tokens) => token_prompt(&engine, tokens)?,
            PromptInput::TokenLists(mut lists) if lists.len() == 1 => {
                token_prompt(&engine, lists.remove(0))?
            }
            PromptInput::Texts(_) | PromptInput::TokenLists(_) => {
                return Err(ApiError::invalid(
                    Some("prompt"),
                    "one prompt per request: each is its own proven generation",
                ))
            }
        };
        start(&state, engine, Endpoint::Completion, prompt, checked).await
    };
    let response = answer.await.unwrap_or_else(IntoResponse::into_response);
    counted(&state, Endpoint::Completion.path(), response)
}

/// A request may name the model by its name or its id.
fn check_model(engine: &Engine, asked: Option<&str>) -> Result<(), ApiError> {
    match asked {
        None => Ok(()),
        Some(name)
            if name == engine.name
                || engine
                    .model
                    .id
                    .is_some_and(|id| id.to_string().eq_ignore_ascii_case(name)) =>
        {
            Ok(())
        }
        Some(name) => Err(ApiError::not_found(format!(
            "the model {name:?} does not exist here: this server has {:?}",
            engine.name
        ))
        .with_code("model_not_found")),
    }
}

/// A rendered chat template into a prompt: its turn markers are the
/// model's control tokens, and it starts with one BOS (a template may have
/// written it already).
fn chat_prompt(engine: &Engine, text: String) -> Prompt {
    let tokenizer = &engine.tokenizer;
    let bos = tokenizer.token(tokenizer.bos()).unwrap_or_default();
    let has_bos = !bos.is_empty() && text.starts_with(bos);
    Prompt {
        tokens: tokenizer.encode_special(&text, !has_bos),
        text,
    }
}

fn token_prompt(engine: &Engine, tokens: Vec<u32>) -> Result<Prompt, ApiError> {
    let vocab = engine.model.vocab;
    if tokens.is_empty() {
        return Err(ApiError::invalid(
            Some("prompt"),
            "the prompt has no tokens",
        ));
    }
    if let Some(bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::invalid(
            Some("prompt"),
            format!("token {bad} is outside the vocabulary of {vocab}"),
        ));
    }
    Ok(Prompt {
        text: engine.tokenizer.decode(&tokens),
        tokens,
    })
}

/// Takes a generation slot (and a proving slot when proofs are made) and
/// starts the generation; answers whole or as a stream.
async fn start(
    state: &Arc<AppState>,
    engine: Arc<Engine>,
    endpoint: Endpoint,
    prompt: Prompt,
    checked: Checked,
) -> Result<Response, ApiError> {
    if prompt.tokens.len() >= engine.model.context {
        return Err(ApiError::invalid(
            Some(match endpoint {
                Endpoint::Chat => "messages",
                Endpoint::Completion => "prompt",
            }),
            format!(
                "the prompt is {} tokens and the model's context holds {}",
                prompt.tokens.len(),
                engine.model.context
            ),
        )
        .with_code("context_length_exceeded"));
    }
    let generation = Arc::clone(&state.generation_slots)
        .try_acquire_owned()
        .map_err(|_| ApiError::busy(state.config.max_concurrent))?;
    let proving = match engine.proving {
        None => None,
        Some(_) => Some(
            Arc::clone(&state.proving_slots)
                .try_acquire_owned()
                .map_err(|_| ApiError::busy(state.config.max_proving))?,
        ),
    };
    let id = format!(
        "{}-{}",
        match endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completion => "cmpl",
        },
        transcript::Nonce::fresh().to_hex()
    );
    let answer = Answer {
        id: id.clone(),
        endpoint,
        model: engine.name.clone(),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        logprobs: checked.logprobs,
        retention_s: state.config.retention.as_secs(),
        started: Instant::now(),
    };
    let stream = checked.stream;
    let events = engine.spawn(
        id,
        prompt,
        checked,
        Permits {
            generation,
            proving,
        },
        Arc::clone(&state.store),
        Arc::clone(&state.metrics),
    );
    if stream {
        Ok(answer.stream(events, Arc::clone(&engine), Arc::clone(&state.metrics)))
    } else {
        answer.whole(events, &engine, &state.metrics).await
    }
}

/// One answer being written.
struct Answer {
    id: String,
    endpoint: Endpoint,
    model: String,
    created: u64,
    logprobs: Option<usize>,
    retention_s: u64,
    started: Instant,
}

impl Answer {
    /// Waits for every token, then answers in one body.
    async fn whole(
        self,
        mut events: mpsc::Receiver<Event>,
        engine: &Engine,
        metrics: &Metrics,
    ) -> Result<Response, ApiError> {
        let mut tokens = Vec::new();
        let mut text = String::new();
        loop {
            match events.recv().await {
                Some(Event::Token(token)) => {
                    if tokens.is_empty() {
                        metrics.first_token(self.started.elapsed());
                    }
                    text.push_str(&token.text);
                    tokens.push(token);
                }
                Some(Event::Done(finished)) => {
                    text.push_str(&finished.tail);
                    let choice = match self.endpoint {
                        Endpoint::Chat => json!({
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "logprobs": self.chat_logprobs(engine, &tokens),
                            "finish_reason": finished.finish_reason.as_str(),
                        }),
                        Endpoint::Completion => json!({
                            "index": 0,
                            "text": text,
                            "logprobs": self.completion_logprobs(engine, &tokens),
                            "finish_reason": finished.finish_reason.as_str(),
                        }),
                    };
                    let mut body = self.envelope(match self.endpoint {
                        Endpoint::Chat => "chat.completion",
                        Endpoint::Completion => "text_completion",
                    });
                    body["choices"] = json!([choice]);
                    body["usage"] = usage(&finished.transcript);
                    body["verification"] = self.verification(&finished);
                    return Ok(Json(body).into_response());
                }
                Some(Event::Failed(e)) => return Err(e),
                None => return Err(ApiError::server("the generation ended without an answer")),
            }
        }
    }

    /// Streams the answer as server-sent events: a chunk per token, a last
    /// chunk with the finish reason, usage and verification, then
    /// `data: [DONE]`. A reader that goes away stops the generation.
    fn stream(
        self,
        mut events: mpsc::Receiver<Event>,
        engine: Arc<Engine>,
        metrics: Arc<Metrics>,
    ) -> Response {
        let (sse, out) = mpsc::channel::<SseEvent>(64);
        tokio::spawn(async move {
            let object = match self.endpoint {
                Endpoint::Chat => "chat.completion.chunk",
                Endpoint::Completion => "text_completion",
            };
            let chunk = |choice: Value| {
                let mut body = self.envelope(object);
                body["choices"] = json!([choice]);
                body
            };
            let data = |value: &Value| SseEvent::default().data(value.to_string());
            if self.endpoint == Endpoint::Chat {
                let first = chunk(json!({
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": null,
                    "finish_reason": null,
                }));
                if sse.send(data(&first)).await.is_err() {
                    return;
                }
            }
            let mut first_token = true;
            loop {
                let value = match events.recv().await {
                    Some(Event::Token(token)) => {
                        if first_token {
                            first_token = false;
                            metrics.first_token(self.started.elapsed());
                        }
                        let tokens = std::slice::from_ref(&token);
                        chunk(match self.endpoint {
                            Endpoint::Chat => json!({
                                "index": 0,
                                "delta": {"content": token.text},
                                "logprobs": self.chat_logprobs(&engine, tokens),
                                "finish_reason": null,
                            }),
                            Endpoint::Completion => json!({
                                "index": 0,
                                "text": token.text,
                                "logprobs": self.completion_logprobs(&engine, tokens),
                                "finish_reason": null,
                            }),
                        })
                    }
                    Some(Event::Done(finished)) => {
                        let mut last = chunk(match self.endpoint {
                            Endpoint::Chat => json!({
                                "index": 0,
                                "delta": {"content": finished.tail},
                                "logprobs": null,
                                "finish_reason": finished.finish_reason.as_str(),
                            }),
                            Endpoint::Completion => json!({
                                "index": 0,
                                "text": finished.tail,
                                "logprobs": null,
                                "finish_reason": finished.finish_reason.as_str(),
                            }),
                        });
                        last["usage"] = usage(&finished.transcript);
                        last["verification"] = self.verification(&finished);
                        let _ = sse.send(data(&last)).await;
                        break;
                    }
                    Some(Event::Failed(e)) => {
                        let _ = sse.send(data(&e.body())).await;
                        break;
                    }
                    None => {
                        let e = ApiError::server("the generation ended without an answer");
                        let _ = sse.send(data(&e.body())).await;
                        break;
                    }
                };
                if sse.send(data(&value)).await.is_err() {
                    // The reader is gone: dropping `events` stops the generation.
                    return;
                }
            }
            let _ = sse.send(SseEvent::default().data("[DONE]")).await;
        });
        let stream = futures_util::stream::unfold(out, |mut out| async move {
            out.recv()
                .await
                .map(|event| (Ok::<_, Infallible>(event), out))
        });
        Sse::new(stream)
            .keep_alive(KeepAlive::default())
            .into_response()
    }

    fn envelope(&self, object: &str) -> Value {
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
        })
    }

    fn verification(&self, finished: &Finished) -> Value {
        let proofs = if finished.transcript.proving.is_some() {
            ProofState::Pending {
                positions: finished.proof_positions.clone(),
            }
        } else {
            ProofState::None
        };
        verification::verification(
            &self.id,
            &finished.transcript,
            &finished.receipts,
            &proofs,
            self.retention_s,
        )
    }

    /// Chat's `logprobs`: `{"content": [...]}` when asked for.
    fn chat_logprobs(&self, engine: &Engine, tokens: &[TokenOut]) -> Value {
        let Some(_) = self.logprobs else {
            return Value::Null;
        };
        let piece = |id: u32| {
            let text = engine.tokenizer.decode(&[id]);
            let bytes: Vec<u8> = text.as_bytes().to_vec();
            (text, bytes)
        };
        let content: Vec<Value> = tokens
            .iter()
            .map(|t| {
                let (text, bytes) = piece(t.token);
                let top: Vec<Value> = t
                    .top
                    .iter()
                    .map(|&(id, logprob)| {
                        let (text, bytes) = piece(id);
                        json!({"token": text, "logprob": logprob, "bytes": bytes, "token_id": id, "proven": false})
                    })
                    .collect();
                json!({
                    "token": text,
                    "logprob": t.logprob,
                    "bytes": bytes,
                    "top_logprobs": top,
                    "token_id": t.token,
                    "position": t.position,
                    "proven": true,
                })
            })
            .collect();
        json!({"content": content})
    }

    /// The legacy completions' `logprobs` when asked for.
    fn completion_logprobs(&self, engine: &Engine, tokens: &[TokenOut]) -> Value {
        let Some(_) = self.logprobs else {
            return Value::Null;
        };
        let mut offset = 0;
        let mut text_offset = Vec::new();
        for t in tokens {
            text_offset.push(offset);
            offset += t.text.len();
        }
        json!({
            "tokens": tokens.iter().map(|t| engine.tokenizer.decode(&[t.token])).collect::<Vec<_>>(),
            "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
            "top_logprobs": tokens.iter().map(|t| {
                t.top.iter().map(|&(id, lp)| (engine.tokenizer.decode(&[id]), json!(lp))).collect::<serde_json::Map<_, _>>()
            }).collect::<Vec<_>>(),
            "text_offset": text_offset,
            "token_ids": tokens.iter().map(|t| t.token).collect::<Vec<_>>(),
            "proven": "token_logprobs are what the proofs state; top_logprobs are not proven",
        })
    }
}

fn usage(transcript: &Transcript) -> Value {
    let prompt = transcript.prompt_tokens.len();
    let completion = transcript.tokens.len();
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

async fn transcript_file(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let response = match state.store.get(&id) {
        Some(stored) => Json(stored.transcript).into_response(),
        None => expired(&id, state.store.retention()).into_response(),
    };
    counted(&state, "/v1/transcripts", response)
}

/// `GET /v1/proofs/{id}`: the bundle (`application/octet-stream`, as
/// `zkinfer verify` reads it) once done; 202 with the status while the head
/// node proves; 404 once expired.
async fn proof_file(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let response = match state.store.get(&id) {
        None => expired(&id, state.store.retention()).into_response(),
        Some(stored) => {
            let status = verification::proof_status(&stored.transcript, &stored.proofs);
            match stored.proofs {
                ProofState::Done {
                    bundle: Some(bundle),
                    ..
                } => ([(header::CONTENT_TYPE, "application/octet-stream")], bundle).into_response(),
                ProofState::Pending { .. } => (StatusCode::ACCEPTED, Json(status)).into_response(),
                ProofState::None => {
                    ApiError::not_found(format!("the answer {id} asked for no proofs"))
                        .into_response()
                }
                ProofState::Done { bundle: None, .. } | ProofState::Failed { .. } => (
                    StatusCode::NOT_FOUND,
                    Json(json!({
                        "error": {
                            "message": format!("no proof of the answer {id} came back"),
                            "type": "invalid_request_error",
                            "param": null,
                            "code": "proofs_failed",
                        },
                        "proofs": status,
                    })),
                )
                    .into_response(),
            }
        }
    };
    counted(&state, "/v1/proofs", response)
}

fn expired(id: &str, retention: Duration) -> ApiError {
    ApiError::not_found(format!(
        "no answer {id}: answers are kept for {} s (and at most the newest ones)",
        retention.as_secs()
    ))
}

/// `POST /v1/verify`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyRequest {
    transcript: Transcript,
    /// The bundle's bytes in base64.
    bundle: String,
    /// As `zkinfer verify --model-id`.
    #[serde(default)]
    model_id: Option<String>,
    /// As `zkinfer verify --require`: `all`, `none` or `challenged:K`.
    #[serde(default)]
    require: Option<String>,
}

async fn verify(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let answer = async {
        let request: VerifyRequest = openai::parse_body(&body)?;
        if request.transcript.version != transcript::VERSION {
            return Err(ApiError::invalid(
                Some("transcript"),
                format!(
                    "transcript version {}, this server reads version {}",
                    request.transcript.version,
                    transcript::VERSION
                ),
            ));
        }
        let require = request
            .require
            .as_deref()
            .unwrap_or(transcript::answer::DEFAULT_REQUIRED);
        let require: Option<ProvingPolicy> = ProvingPolicy::parse_required(require)
            .map_err(|e| ApiError::invalid(Some("require"), e))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(request.bundle.as_bytes())
            .map_err(|e| ApiError::invalid(Some("bundle"), format!("bundle is not base64: {e}")))?;
        let bundle = Bundle::from_bytes(&bytes)
            .map_err(|e| ApiError::invalid(Some("bundle"), format!("the bundle: {e}")))?;
        let _slot = Arc::clone(&state.verify_slot)
            .acquire_owned()
            .await
            .map_err(|_| ApiError::server("the server is shutting down"))?;
        let cache = ParamsCache::new(state.config.params_dir.clone());
        let checked = tokio::task::spawn_blocking(move || {
            let (params, report) = verifier::verify_bundle_keeping_params(&bundle, &cache)
                .map_err(|e| ApiError::invalid(Some("bundle"), e.to_string()))?;
            // Side files are not uploaded: a transcript that names one is
            // checked as one without it.
            let dir = std::env::temp_dir().join("zkinfer-api-no-side-files");
            transcript::answer::check(
                &request.transcript,
                &dir,
                &bundle,
                &report,
                &params,
                request.model_id.as_deref(),
                require,
            )
            .map_err(|e| ApiError::invalid(Some("transcript"), e.to_string()))
        })
        .await
        .map_err(|e| ApiError::server(format!("verification failed: {e}")))??;
        state.metrics.verdict(checked.valid);
        Ok(Json(checked).into_response())
    };
    let response = answer.await.unwrap_or_else(IntoResponse::into_response);
    counted(&state, "/v1/verify", response)
}
