//! The HTTP API end to end on the tiny random Gemma 3 in this process:
//! answers equal the library's own generation, streams equal whole answers,
//! logprobs, stop sequences, reproducible seeds, errors in OpenAI's shape,
//! 429 past the generation slots, and a reader that goes away stops its
//! generation.

use std::fs::File;
use std::io::BufReader;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::chat::ChatTemplate;
use api::engine::{Backend, Engine};
use api::{router, ApiConfig, AppState};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use candle_core::quantized::gguf_file;
use candle_core::Device;
use client::generation::{
    generate, Backend as Generation, GenerationOptions, ModelInfo, Prompt, Quiet,
};
use http_body_util::BodyExt;
use models::generate::Generator;
use models::model_id::model_id;
use models::testing::{tiny_gemma3_config, write_random_gemma3_with_tokenizer, TempDir};
use models::tokenizer::Tokenizer;
use models::Model;
use serde_json::{json, Value};
use tower::ServiceExt;
use transcript::{Nonce, Transcript};

struct Tiny {
    _dir: TempDir,
    model: Arc<Model>,
    tokenizer: Tokenizer,
    info: ModelInfo,
}

fn tiny(name: &str) -> Tiny {
    let dir = TempDir::new(name).expect("scratch");
    let path = dir.path().join("tiny.gguf");
    let config = tiny_gemma3_config();
    write_random_gemma3_with_tokenizer(&path, &config, 11).expect("model");
    let mut reader = BufReader::new(File::open(&path).expect("open"));
    let content = gguf_file::Content::read(&mut reader).expect("gguf");
    let tokenizer = Tokenizer::from_gguf(&content).expect("tokenizer");
    let id = model_id(&content, &mut reader).expect("id");
    let model =
        Model::from_gguf(&content, &mut reader, &Device::Cpu, 0..config.layers).expect("load");
    Tiny {
        _dir: dir,
        model: Arc::new(model),
        tokenizer,
        info: ModelInfo {
            id: Some(id),
            layers: config.layers,
            vocab: config.vocab,
            context: config.context,
        },
    }
}

fn app(tiny: &Tiny, config: ApiConfig) -> (Router, Arc<AppState>) {
    let state = AppState::new(config);
    let router = router(Arc::clone(&state));
    let tokenizer = Tokenizer::clone(&tiny.tokenizer);
    state.ready(Engine {
        name: "tiny".into(),
        model: tiny.info,
        tokenizer,
        template: ChatTemplate::Gemma,
        backend: Backend::Local(Arc::clone(&tiny.model)),
        proving: None,
        auditor: None,
    });
    (router, state)
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value, Vec<u8>) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("answered");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, json, bytes)
}

fn chat_body(extra: Value) -> Value {
    let mut body = json!({
        "model": "tiny",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "the fox"}],
        "max_tokens": 8,
    });
    body.as_object_mut()
        .expect("object")
        .extend(extra.as_object().expect("object").clone());
    body
}

/// What the library generates for the same prompt and sampler.
fn library_tokens(
    tiny: &Tiny,
    prompt: &str,
    temperature: Option<f64>,
    nonce: Nonce,
    max_tokens: usize,
) -> Vec<u32> {
    let mut backend = Generation::Local(Generator::new(&tiny.model).expect("generator"));
    let options = GenerationOptions {
        max_tokens,
        temperature,
        nonce,
        request_id: nonce.request_id(),
        stops: tiny.tokenizer.stop_tokens(),
        proving: None,
        keep_logits: false,
        observe_logits: false,
    };
    let prompt = Prompt::encode(&tiny.tokenizer, prompt);
    generate(&mut backend, tiny.info, None, prompt, &options, &mut Quiet)
        .expect("generates")
        .transcript
        .tokens
}

fn token_ids(answer: &Value) -> Vec<u32> {
    serde_json::from_value(answer["verification"]["token_ids"].clone()).expect("token ids")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chat_answer_is_the_library_generation_and_its_transcript_downloads() {
    let tiny = tiny("api-chat");
    let (app, _) = app(&tiny, ApiConfig::default());
    let (status, answer, _) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(chat_body(json!({"seed": 7}))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["model"], "tiny");
    let choice = &answer["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(["stop", "length"].contains(&choice["finish_reason"].as_str().expect("reason")));

    // The Gemma turns, with the system message folded into the user's.
    let prompt = "<start_of_turn>user\nBe brief.\n\nthe fox<end_of_turn>\n<start_of_turn>model\n";
    let v = &answer["verification"];
    let nonce = Nonce::from_hex(v["nonce"].as_str().expect("nonce")).expect("hex");
    assert_eq!(nonce, Nonce::from_seed(7));
    let tokens = token_ids(&answer);
    assert_eq!(tokens, library_tokens(&tiny, prompt, Some(1.0), nonce, 8));
    assert_eq!(answer["usage"]["completion_tokens"], tokens.len());
    assert_eq!(
        answer["usage"]["total_tokens"].as_u64(),
        Some(answer["usage"]["prompt_tokens"].as_u64().expect("prompt") + tokens.len() as u64)
    );
    let text = tiny.tokenizer.decode(&tokens);
    let stops = tiny.tokenizer.stop_tokens();
    assert!(
        text.starts_with(choice["message"]["content"].as_str().expect("content"))
            || tokens.iter().any(|t| stops.contains(t))
    );
    assert_eq!(v["sampler"], json!({"sample": {"temperature": 1.0}}));
    assert_eq!(v["receipts"]["aggregate_signature"], "unsigned");
    assert_eq!(v["proofs"]["status"], "none");

    let url = v["transcript_url"].as_str().expect("url");
    let (status, transcript, _) = call(&app, "GET", url, None).await;
    assert_eq!(status, StatusCode::OK);
    let transcript: Transcript = serde_json::from_value(transcript).expect("a transcript");
    assert_eq!(transcript.prompt, prompt);
    assert_eq!(transcript.tokens, tokens);
    assert_eq!(
        verifier::hex(&transcript.challenge_digest()),
        v["transcript_digest"].as_str().expect("digest")
    );

    // The same seed gives the same tokens; no proofs were asked for.
    let (_, again, _) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(chat_body(json!({"seed": 7}))),
    )
    .await;
    assert_eq!(token_ids(&again), tokens);
    assert_ne!(again["id"], answer["id"]);
    let id = answer["id"].as_str().expect("id");
    let (status, error, _) = call(&app, "GET", &format!("/v1/proofs/{id}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{error}");
    let (status, _, _) = call(&app, "GET", "/v1/transcripts/chatcmpl-unknown", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn greedy_logprobs_name_the_argmax_proven_and_the_rest_unproven() {
    let tiny = tiny("api-logprobs");
    let (app, _) = app(&tiny, ApiConfig::default());
    let body = chat_body(json!({"temperature": 0, "logprobs": true, "top_logprobs": 3}));
    let (status, answer, _) = call(&app, "POST", "/v1/chat/completions", Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["verification"]["sampler"], json!({"greedy": {}}));
    let content = answer["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("content");
    assert_eq!(content.len(), token_ids(&answer).len());
    for entry in content {
        assert_eq!(entry["proven"], true);
        let top = entry["top_logprobs"].as_array().expect("top");
        assert_eq!(top.len(), 3);
        let values: Vec<f64> = top
            .iter()
            .map(|t| t["logprob"].as_f64().expect("lp"))
            .collect();
        assert!(values.windows(2).all(|w| w[0] >= w[1]), "{values:?}");
        assert!(top.iter().all(|t| t["proven"] == false));
        // Greedy picks the argmax, and the proven value is within the
        // fixed point's bound of the float one.
        assert_eq!(top[0]["token_id"], entry["token_id"]);
        let proven = entry["logprob"].as_f64().expect("lp");
        assert!(
            (proven - values[0]).abs() < 1e-2,
            "{proven} vs {}",
            values[0]
        );
    }
    // Completions: the legacy shape.
    let body = json!({"prompt": "the", "max_tokens": 4, "temperature": 0, "logprobs": 2});
    let (status, answer, _) = call(&app, "POST", "/v1/completions", Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["object"], "text_completion");
    let logprobs = &answer["choices"][0]["logprobs"];
    let n = token_ids(&answer).len();
    assert_eq!(logprobs["token_logprobs"].as_array().expect("lps").len(), n);
    // A map by token text: two tokens that decode alike share an entry.
    let top = logprobs["top_logprobs"][0].as_object().expect("top").len();
    assert!((1..=2).contains(&top), "{logprobs}");
    assert_eq!(
        token_ids(&answer),
        library_tokens(&tiny, "the", None, Nonce::from_seed(0), 4)
    );
}

/// The `data:` payloads of a server-sent event stream.
fn events(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .lines()
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_adds_up_to_the_whole_answer_and_ends_with_usage_and_done() {
    let tiny = tiny("api-stream");
    let (app, _) = app(&tiny, ApiConfig::default());
    let (_, whole, _) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(chat_body(json!({"seed": 3}))),
    )
    .await;
    let (status, _, body) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(chat_body(json!({"seed": 3, "stream": true}))),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let events = events(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("json chunk"))
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        text,
        whole["choices"][0]["message"]["content"]
            .as_str()
            .expect("content")
    );
    let last = chunks.last().expect("a last chunk");
    assert_eq!(
        last["choices"][0]["finish_reason"],
        whole["choices"][0]["finish_reason"]
    );
    assert_eq!(last["usage"], whole["usage"]);
    assert_eq!(token_ids(last), token_ids(&whole));
    assert_eq!(
        last["verification"]["transcript_digest"],
        whole["verification"]["transcript_digest"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_sequence_cuts_the_text_before_it() {
    let tiny = tiny("api-stop");
    let (app, _) = app(&tiny, ApiConfig::default());
    let body = |extra: Value| {
        let mut b = json!({"prompt": "the fox", "max_tokens": 24, "temperature": 0});
        b.as_object_mut()
            .expect("o")
            .extend(extra.as_object().expect("o").clone());
        b
    };
    let (_, whole, _) = call(&app, "POST", "/v1/completions", Some(body(json!({})))).await;
    let text = whole["choices"][0]["text"]
        .as_str()
        .expect("text")
        .to_string();
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 6, "the tiny model wrote {text:?}");
    let stop: String = chars[3..5].iter().collect();
    let expected = &text[..text.find(&stop).expect("the stop is in the text")];
    for stream in [false, true] {
        let (status, answer, raw) = call(
            &app,
            "POST",
            "/v1/completions",
            Some(body(json!({"stop": [stop], "stream": stream}))),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (got, reason) = if stream {
            let chunks: Vec<Value> = events(&raw)
                .iter()
                .filter(|e| *e != "[DONE]")
                .map(|e| serde_json::from_str(e).expect("chunk"))
                .collect();
            let text: String = chunks
                .iter()
                .filter_map(|c| c["choices"][0]["text"].as_str())
                .collect();
            (
                text,
                chunks.last().expect("last")["choices"][0]["finish_reason"].clone(),
            )
        } else {
            (
                answer["choices"][0]["text"]
                    .as_str()
                    .expect("text")
                    .to_string(),
                answer["choices"][0]["finish_reason"].clone(),
            )
        };
        assert_eq!(got, expected, "stream {stream}");
        assert_eq!(reason, "stop");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_openai_errors_with_the_right_status() {
    let tiny = tiny("api-errors");
    let (app, _) = app(
        &tiny,
        ApiConfig {
            max_tokens: 64,
            ..ApiConfig::default()
        },
    );
    let long: Vec<u32> = vec![300; 2100];
    for (uri, body, status, param) in [
        (
            "/v1/chat/completions",
            json!("not an object"),
            StatusCode::BAD_REQUEST,
            Value::Null,
        ),
        (
            "/v1/chat/completions",
            chat_body(json!({"model": "gpt-4"})),
            StatusCode::NOT_FOUND,
            Value::Null,
        ),
        (
            "/v1/chat/completions",
            chat_body(json!({"max_tokens": 65})),
            StatusCode::BAD_REQUEST,
            json!("max_tokens"),
        ),
        (
            "/v1/chat/completions",
            chat_body(json!({"temperature": -1})),
            StatusCode::BAD_REQUEST,
            json!("temperature"),
        ),
        (
            "/v1/completions",
            json!({"prompt": long}),
            StatusCode::BAD_REQUEST,
            json!("prompt"),
        ),
        (
            "/v1/completions",
            json!({"prompt": [320]}),
            StatusCode::BAD_REQUEST,
            json!("prompt"),
        ),
        (
            "/v1/completions",
            json!({"prompt": ["a", "b"]}),
            StatusCode::BAD_REQUEST,
            json!("prompt"),
        ),
        (
            "/v1/verify",
            json!({"transcript": {}, "bundle": ""}),
            StatusCode::BAD_REQUEST,
            Value::Null,
        ),
    ] {
        let (got, error, _) = call(&app, "POST", uri, Some(body.clone())).await;
        assert_eq!(got, status, "{body}: {error}");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{error}"
        );
        assert_eq!(error["error"]["param"], param, "{body}");
    }
    let (_, error, _) = call(
        &app,
        "POST",
        "/v1/completions",
        Some(json!({"prompt": long})),
    )
    .await;
    assert_eq!(error["error"]["code"], "context_length_exceeded");
    let (_, error, _) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(chat_body(json!({"model": "gpt-4"}))),
    )
    .await;
    assert_eq!(error["error"]["code"], "model_not_found");
    let raw = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .body(Body::from("{\"messages\": [tru"))
        .expect("request");
    let response = app.clone().oneshot(raw).await.expect("answered");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_503_until_ready_and_metrics_count_what_happened() {
    let tiny = tiny("api-health");
    let state = AppState::new(ApiConfig::default());
    let app = router(Arc::clone(&state));
    state.not_ready("loading the model");
    let (status, health, _) = call(&app, "GET", "/health", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(health["message"]
        .as_str()
        .expect("message")
        .contains("loading the model"));
    let (status, _, _) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(chat_body(json!({}))),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    let (app, _) = self::app(&tiny, ApiConfig::default());
    let (status, _, _) = call(&app, "GET", "/health", None).await;
    assert_eq!(status, StatusCode::OK);
    let (_, models, _) = call(&app, "GET", "/v1/models", None).await;
    assert_eq!(models["data"][0]["id"], "tiny");
    assert_eq!(
        models["data"][0]["zkinfer"]["model_id"],
        tiny.info.id.expect("id").to_string()
    );
    assert_eq!(models["data"][0]["zkinfer"]["retention_seconds"], 3600);
    call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(chat_body(json!({"max_tokens": 3}))),
    )
    .await;
    let (status, _, text) = call(&app, "GET", "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(text).expect("text");
    assert!(
        text.contains("zkinfer:requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("zkinfer:time_to_first_token_seconds_count 1"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("zkinfer:generation_tokens_total ")
                && l != "zkinfer:generation_tokens_total 0"),
        "{text}"
    );
}

/// Waits until the metrics say no generation runs.
async fn idle(app: &Router) {
    let start = Instant::now();
    loop {
        let (_, _, text) = call(app, "GET", "/metrics", None).await;
        if String::from_utf8_lossy(&text).contains("zkinfer:num_requests_running 0") {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the generation never stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_slots_a_request_gets_429_and_a_reader_gone_stops_its_generation() {
    let tiny = tiny("api-busy");
    let (app, state) = app(
        &tiny,
        ApiConfig {
            max_concurrent: 1,
            max_tokens: 2000,
            ..ApiConfig::default()
        },
    );
    // Greedy on this model writes no stop token for a long while, so only
    // the reader's going can end the generation early.
    let ahead = library_tokens(&tiny, "the", None, Nonce::from_seed(0), 300);
    assert_eq!(ahead.len(), 300, "the model stopped by itself: {ahead:?}");
    let body = json!({"prompt": "the", "max_tokens": 2000, "stream": true, "temperature": 0});
    let request = Request::builder()
        .method("POST")
        .uri("/v1/completions")
        .body(Body::from(body.to_string()))
        .expect("request");
    // Not read: the generation fills its buffers and waits, holding the slot.
    let held = app.clone().oneshot(request).await.expect("answered");
    assert_eq!(held.status(), StatusCode::OK);
    let request = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .body(Body::from(chat_body(json!({})).to_string()))
        .expect("request");
    let busy = app.clone().oneshot(request).await.expect("answered");
    assert_eq!(busy.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(busy.headers()["retry-after"], "1");
    let error: Value =
        serde_json::from_slice(&busy.into_body().collect().await.expect("body").to_bytes())
            .expect("json");
    assert_eq!(error["error"]["type"], "rate_limit_error");

    // The reader goes: the generation stops early and frees its slot.
    drop(held);
    idle(&app).await;
    assert_eq!(state.store().len(), 1);
    let (_, _, metrics) = call(&app, "GET", "/metrics", None).await;
    let generated: u64 = String::from_utf8_lossy(&metrics)
        .lines()
        .find_map(|l| l.strip_prefix("zkinfer:generation_tokens_total "))
        .and_then(|n| n.parse().ok())
        .expect("the token counter");
    assert!(
        generated < 2000,
        "{generated} tokens: the generation ran on"
    );
    let (status, answer, _) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(chat_body(json!({"max_tokens": 2}))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}
