//! Nodes and chains on loopback with the tiny random model: a two-node chain
//! agrees with the single-process model, and nodes survive bad clients.

use std::fs::File;
use std::io::BufReader;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use candle_core::quantized::gguf_file;
use candle_core::Device;
use client::{Chain, ClientError, HeadSample, Hop};
use models::argmax;
use models::gemma3::Gemma3;
use models::generate::Generator;
use models::model_id::{model_id, ModelId};
use models::testing::{tiny_gemma3_config, write_random_gemma3, TempDir};
use models::Model;
use node::{serve, Capacity, NodeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wire::transport;
use wire::{
    Activations, Encoding, ErrorCode, Forward, ForwardInput, Frame, HeadReply, Hello, Limits,
    Message, Ping, TokenSampler,
};

const LAYERS: usize = 7;
const SPLIT: usize = 3;
const PROMPT: [u32; 6] = [2, 17, 101, 45, 300, 7];
const STEPS: usize = 8;
/// Bound on every test: a hang is a failure, not a stuck CI job.
const TEST_LIMIT: Duration = Duration::from_secs(120);
const IO: Duration = Duration::from_secs(10);

struct Fixture {
    _dir: TempDir,
    path: PathBuf,
    id: ModelId,
    hops: Vec<Hop>,
}

fn load(path: &Path, layers: Range<usize>) -> Gemma3 {
    let mut reader = BufReader::new(File::open(path).expect("open"));
    let content = gguf_file::Content::read(&mut reader).expect("gguf");
    Gemma3::from_gguf(&content, &mut reader, &Device::Cpu, layers).expect("load")
}

/// Starts a node serving `layers` of the model at `path`.
async fn start_node(path: &Path, id: ModelId, layers: Range<usize>) -> SocketAddr {
    let model = Arc::new(Model::from(load(path, layers.clone())));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = NodeConfig::new(id, layers);
    tokio::spawn(serve(listener, model, config));
    addr
}

/// Writes the tiny model and starts nodes for layers 0..3 and 3..7.
async fn fixture(name: &str) -> Fixture {
    let dir = TempDir::new(&format!("node-{name}")).expect("temp dir");
    let path = dir.path().join("tiny.gguf");
    write_random_gemma3(&path, &tiny_gemma3_config(), 11).expect("write model");
    let id = {
        let mut reader = BufReader::new(File::open(&path).expect("open"));
        let content = gguf_file::Content::read(&mut reader).expect("gguf");
        model_id(&content, &mut reader).expect("model id")
    };
    let mut hops = Vec::new();
    for layers in [0..SPLIT, SPLIT..LAYERS] {
        let addr = start_node(&path, id, layers.clone()).await;
        hops.push(Hop {
            addr: addr.into(),
            layers,
        });
    }
    Fixture {
        _dir: dir,
        path,
        id,
        hops,
    }
}

/// Single-process reference: the logits after the prompt and after each of
/// `STEPS` greedy tokens, and the tokens.
fn reference(path: &Path, prompt: &[u32]) -> (Vec<u32>, Vec<Vec<f32>>) {
    let model = Model::from(load(path, 0..LAYERS));
    let mut generator = Generator::new(&model).expect("generator");
    let mut logits = vec![generator.feed(prompt).expect("feed")];
    let mut tokens = Vec::new();
    for _ in 0..STEPS {
        let token = argmax(logits.last().expect("logits"));
        tokens.push(token);
        logits.push(generator.feed(&[token]).expect("feed"));
    }
    (tokens, logits)
}

/// The same through a chain, feeding `tokens` (the reference's, so that a
/// lossy encoding cannot change the path) and returning the chain's logits
/// and its own greedy choices.
async fn through_chain(
    chain: &mut Chain,
    request_id: u64,
    prompt: &[u32],
    tokens: &[u32],
) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut logits = vec![chain.forward(request_id, 0, prompt).await.expect("prompt")];
    let mut chosen = Vec::new();
    for (position, &token) in (prompt.len() as u64..).zip(tokens) {
        chosen.push(argmax(logits.last().expect("logits")));
        logits.push(
            chain
                .forward(request_id, position, &[token])
                .await
                .expect("step"),
        );
    }
    (chosen, logits)
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

async fn connect(f: &Fixture, encoding: Encoding) -> Chain {
    Chain::connect(f.hops.clone(), LAYERS, f.id, encoding, IO)
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_matches_the_single_process_model_in_every_encoding() {
    tokio::time::timeout(TEST_LIMIT, async {
        let f = fixture("encodings").await;
        let (tokens, expected) = reference(&f.path, &PROMPT);
        let scale = expected.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
        // F32 is bit-exact (measured 0). F16, Q8 and Q6o measured 2.3e-2,
        // 3.6e-2 and 3.7e-2 (largest |logit| 2.08): nearly the same, because candle's
        // Q8_0 matmuls quantize their input activations too, so any
        // perturbation above ~1e-4 relative flips some of those roundings
        // (a relative perturbation of 1e-4 already moves the logits by 2.4e-2
        // on this model). The tolerances leave about 2x and 4x headroom.
        // Distinct request ids: End has no answer, so an End on one
        // connection is not ordered with a Forward on another.
        for (request_id, (encoding, tolerance)) in (1u64..).zip([
            (Encoding::F32, 1e-4),
            (Encoding::F16, 2e-2 * scale),
            (Encoding::Q8, 8e-2 * scale),
            (Encoding::Q6o, 8e-2 * scale),
        ]) {
            let mut chain = connect(&f, encoding).await;
            let (chosen, logits) = through_chain(&mut chain, request_id, &PROMPT, &tokens).await;
            let diff = max_abs_diff(&logits, &expected);
            let per_step: Vec<f32> = logits
                .iter()
                .zip(&expected)
                .map(|(a, b)| max_abs_diff(std::slice::from_ref(a), std::slice::from_ref(b)))
                .collect();
            println!("{encoding:?} per step: {per_step:?}");
            println!(
                "{encoding:?}: max |logit diff| {diff:.3e} (largest |logit| {scale:.3}), tolerance {tolerance:.3e}"
            );
            assert!(diff <= tolerance, "{encoding:?}: {diff} > {tolerance}");
            if encoding == Encoding::F32 {
                assert_eq!(chosen, tokens, "greedy tokens");
            }
            assert_eq!(chain.ping().await.expect("ping").len(), 2);
            chain.end(request_id).await.expect("end");
        }
    })
    .await
    .expect("test timed out");
}

/// Twin chains on the same nodes, one asking for logits and one for the
/// head's pick: the head picks exactly what the client would from the
/// logits it would have sent, names their digest, and sends a frame of a
/// few dozen bytes instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_picks_what_the_client_would_from_the_logits_it_keeps() {
    tokio::time::timeout(TEST_LIMIT, async {
        let f = fixture("sample").await;
        let mut logits_chain = connect(&f, Encoding::F32).await;
        let mut picking_chain = connect(&f, Encoding::F32).await;
        let tables = circuits::Tables::new(
            circuits::FixedPoint::default(),
            circuits::fixed_point::Temperature::new(0.7).expect("temperature"),
        );
        let mut tokens = PROMPT.to_vec();
        let mut position = 0u64;
        for step in 0..STEPS as u64 {
            let fed = &tokens[position as usize..];
            let sampler = if step % 2 == 0 {
                TokenSampler::Greedy
            } else {
                TokenSampler::Sample {
                    temperature: 0.7,
                    r: step.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                }
            };
            let logits = logits_chain
                .forward(1, position, fed)
                .await
                .expect("logits");
            let sampled = picking_chain
                .forward_for(2, position, fed, HeadSample(sampler))
                .await
                .expect("pick");
            let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
            assert_eq!(sampled.logits_blake3, *blake3::hash(&bytes).as_bytes());
            assert_eq!(
                picking_chain.last_hops().last().expect("hop").output,
                logits_chain.last_hops().last().expect("hop").output
            );
            let z = circuits::FixedPoint::default()
                .quantize_all(&logits)
                .expect("quantize");
            let expected = match sampler {
                TokenSampler::Greedy => circuits::Sampler::Greedy,
                TokenSampler::Sample { r, .. } => circuits::Sampler::Sample {
                    temperature: tables.temperature,
                    r,
                },
            };
            let greedy_tables = circuits::Tables::new(
                circuits::FixedPoint::default(),
                circuits::fixed_point::Temperature::ONE,
            );
            let statement = circuits::pick(
                if step % 2 == 0 {
                    &greedy_tables
                } else {
                    &tables
                },
                &z,
                expected,
            )
            .expect("pick");
            assert_eq!(sampled.token, statement.token, "step {step}");
            let frac_bits = circuits::FixedPoint::default().frac_bits;
            assert_eq!(
                sampled.logprob,
                statement.logprob_nats(frac_bits),
                "step {step}"
            );
            position = tokens.len() as u64;
            tokens.push(sampled.token);
        }
        // The whole answer frame, checksum included.
        let frame = Frame::new(
            2,
            0,
            Message::Sampled(wire::Sampled {
                token: 1,
                logprob: -1.0,
                logits_blake3: [0; 32],
                signature: Some([0; 32]),
            }),
        );
        assert!(frame.encode().expect("encode").len() <= 140);
    })
    .await
    .expect("test timed out");
}

/// Sends one frame on `stream` and reads the answer.
async fn exchange(stream: &mut TcpStream, frame: Frame) -> Frame {
    transport::write_frame(stream, &frame, IO)
        .await
        .expect("write");
    transport::read_frame(stream, &Limits::default(), IO)
        .await
        .expect("read")
}

fn error_code(frame: &Frame) -> Option<ErrorCode> {
    match &frame.message {
        Message::Error(e) => Some(e.code),
        _ => None,
    }
}

fn forward(id: ModelId, layers: Range<u32>, input: ForwardInput) -> Message {
    Message::Forward(Forward {
        model_id: id,
        layers,
        reply: Encoding::F32,
        head: HeadReply::LastLogits,
        input,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_model_layers_and_input_kind_get_errors_and_the_node_goes_on() {
    tokio::time::timeout(TEST_LIMIT, async {
        let f = fixture("wrong").await;
        let other = ModelId([7; 32]);
        let tokens = || ForwardInput::Tokens(PROMPT.to_vec());
        let mut s = TcpStream::connect(f.hops[0].addr.socket().unwrap())
            .await
            .expect("connect");
        let cases = [
            (forward(other, 0..3, tokens()), ErrorCode::WrongModel),
            (forward(f.id, 0..4, tokens()), ErrorCode::WrongLayers),
            (
                Message::Hello(Hello {
                    model_id: other,
                    layers: 0..3,
                }),
                ErrorCode::WrongModel,
            ),
            (
                Message::Hello(Hello {
                    model_id: f.id,
                    layers: 1..3,
                }),
                ErrorCode::WrongLayers,
            ),
            (
                forward(
                    f.id,
                    0..3,
                    ForwardInput::Activations(
                        Activations::encode(&[0.0; 64], 1, 64, Encoding::F32).expect("encode"),
                    ),
                ),
                ErrorCode::Malformed,
            ),
            (
                forward(f.id, 0..3, ForwardInput::Tokens(vec![10_000])),
                ErrorCode::Malformed,
            ),
        ];
        for (message, code) in cases {
            let reply = exchange(&mut s, Frame::new(9, 0, message)).await;
            assert_eq!(error_code(&reply), Some(code), "{reply:?}");
            assert_eq!(reply.request_id, 9);
        }
        // Tokens to a shard that takes hidden states.
        let mut s2 = TcpStream::connect(f.hops[1].addr.socket().unwrap())
            .await
            .expect("connect");
        let reply = exchange(&mut s2, Frame::new(9, 0, forward(f.id, 3..7, tokens()))).await;
        assert_eq!(error_code(&reply), Some(ErrorCode::Malformed));
        // The same connection still serves a valid request.
        let reply = exchange(&mut s, Frame::new(9, 0, forward(f.id, 0..3, tokens()))).await;
        match reply.message {
            Message::Output(o) => assert_eq!(o.activations.shape(), (PROMPT.len(), 64)),
            other => panic!("expected Output, got {other:?}"),
        }
        // A chain that names the wrong model fails at Hello with WrongModel.
        let err = Chain::connect(f.hops.clone(), LAYERS, other, Encoding::F32, IO)
            .await
            .err()
            .expect("wrong model refused");
        assert_eq!(err.remote_code(), Some(ErrorCode::WrongModel), "{err}");
    })
    .await
    .expect("test timed out");
}

/// A tiny xorshift generator: the fuzz cases are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_frames_get_an_error_or_a_close_and_the_node_survives() {
    tokio::time::timeout(TEST_LIMIT, async {
        let f = fixture("fuzz").await;
        let valid: Vec<Vec<u8>> = [
            Frame::new(
                1,
                0,
                forward(f.id, 0..3, ForwardInput::Tokens(PROMPT.to_vec())),
            ),
            Frame::new(
                2,
                0,
                Message::Hello(Hello {
                    model_id: f.id,
                    layers: 0..3,
                }),
            ),
            Frame::new(
                3,
                0,
                Message::Ping(Ping {
                    sent_at_micros: 5,
                    payload: vec![1; 40],
                }),
            ),
            Frame::new(4, 0, Message::End),
        ]
        .iter()
        .map(|frame| frame.encode().expect("encode"))
        .collect();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut errors, mut closed) = (0, 0);
        for case in 0..1000 {
            let mut bytes = valid[case % valid.len()].clone();
            match case % 4 {
                0 => {
                    for _ in 0..1 + rng.below(4) {
                        let bit = rng.below(bytes.len() * 8);
                        bytes[bit / 8] ^= 1 << (bit % 8);
                    }
                }
                1 => bytes.truncate(rng.below(bytes.len())),
                2 => {
                    let len = rng.below(200);
                    bytes = (0..len).map(|_| rng.next() as u8).collect();
                    // Half the garbage starts like a frame, to get past the magic.
                    if case % 8 == 2 && bytes.len() >= 6 {
                        bytes[..6].copy_from_slice(b"ZKIW\x01\x00");
                    }
                }
                _ => {
                    // A valid header with a corrupted body.
                    let at = 28 + rng.below(bytes.len() - 28);
                    bytes[at] = bytes[at].wrapping_add(1 + rng.below(255) as u8);
                }
            }
            let mut s = TcpStream::connect(f.hops[0].addr.socket().unwrap())
                .await
                .expect("connect");
            // The node may close before taking everything: ignore write errors.
            let _ = s.write_all(&bytes).await;
            let _ = s.shutdown().await;
            match transport::read_frame(&mut s, &Limits::default(), IO).await {
                Ok(frame) => {
                    assert!(
                        error_code(&frame).is_some(),
                        "case {case}: a mutated frame was answered {frame:?}"
                    );
                    errors += 1;
                }
                Err(wire::WireError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                    panic!("case {case}: no answer and no close")
                }
                Err(_) => closed += 1,
            }
            // Whatever came, the node must close or be ready for more: drain.
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(IO, s.read_to_end(&mut rest)).await;
        }
        println!("1000 mutated frames: {errors} error frames, {closed} closed connections");
        assert!(errors > 500, "most mutations should be answered ({errors})");
        // Still serving.
        let (tokens, expected) = reference(&f.path, &PROMPT);
        let mut chain = connect(&f, Encoding::F32).await;
        let (_, logits) = through_chain(&mut chain, 77, &PROMPT, &tokens[..2]).await;
        assert!(max_abs_diff(&logits, &expected[..3]) <= 1e-4);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_keep_separate_caches() {
    tokio::time::timeout(TEST_LIMIT, async {
        let f = fixture("concurrent").await;
        let other_prompt = [2, 250, 3, 99];
        let (tokens_a, expected_a) = reference(&f.path, &PROMPT);
        let (tokens_b, expected_b) = reference(&f.path, &other_prompt);
        let mut chain_a = connect(&f, Encoding::F32).await;
        let mut chain_b = connect(&f, Encoding::F32).await;
        let ((_, logits_a), (_, logits_b)) = tokio::join!(
            through_chain(&mut chain_a, 10, &PROMPT, &tokens_a),
            through_chain(&mut chain_b, 11, &other_prompt, &tokens_b),
        );
        assert!(max_abs_diff(&logits_a, &expected_a) <= 1e-4);
        assert!(max_abs_diff(&logits_b, &expected_b) <= 1e-4);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_frees_the_cache() {
    tokio::time::timeout(TEST_LIMIT, async {
        let f = fixture("end").await;
        let mut chain = connect(&f, Encoding::F32).await;
        chain.forward(5, 0, &PROMPT).await.expect("prompt");
        chain.forward(5, 6, &[3]).await.expect("step");
        // A position beyond what the cache holds is refused.
        let err = chain.forward(5, 9, &[3]).await.expect_err("gap");
        assert_eq!(err.remote_code(), Some(ErrorCode::Malformed), "{err}");
        // An earlier one rewinds: the request then holds 4 positions.
        chain.forward(5, 3, &[3]).await.expect("rewind");
        let err = chain
            .forward(5, 7, &[3])
            .await
            .expect_err("past the rewind");
        assert_eq!(err.remote_code(), Some(ErrorCode::Malformed), "{err}");
        chain.forward(5, 4, &[3]).await.expect("after the rewind");
        chain.end(5).await.expect("end");
        let err: ClientError = chain.forward(5, 5, &[3]).await.expect_err("after End");
        assert_eq!(err.remote_code(), Some(ErrorCode::UnknownRequest), "{err}");
        // The id can start over.
        chain.forward(5, 0, &PROMPT).await.expect("restart");
    })
    .await
    .expect("test timed out");
}

/// Nodes serve any architecture behind `Model`: a tiny Llama split over two
/// nodes gives the single-process logits exactly (f32 activations).
#[tokio::test]
async fn nodes_serve_llama_shards() {
    tokio::time::timeout(TEST_LIMIT, async {
        let dir = TempDir::new("node-llama").expect("temp dir");
        let path = dir.path().join("tiny-llama.gguf");
        let config = models::testing::tiny_llama_config();
        models::testing::write_random_llama(&path, &config, 5).expect("write model");
        let open = |layers: Range<usize>| {
            let mut reader = BufReader::new(File::open(&path).expect("open"));
            let content = gguf_file::Content::read(&mut reader).expect("gguf");
            Model::from_gguf(&content, &mut reader, &Device::Cpu, layers).expect("load")
        };
        let id = {
            let mut reader = BufReader::new(File::open(&path).expect("open"));
            let content = gguf_file::Content::read(&mut reader).expect("gguf");
            model_id(&content, &mut reader).expect("model id")
        };
        let whole = open(0..config.layers);
        let mut generator = Generator::new(&whole).expect("generator");
        let prompt = [2u32, 17, 101, 45, 299, 7]; // inside the tiny Llama's vocabulary of 300
        let expected = generator.feed(&prompt).expect("feed");

        let mut hops = Vec::new();
        for layers in [0..2, 2..config.layers] {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let node_config = NodeConfig::new(id, layers.clone());
            tokio::spawn(serve(listener, Arc::new(open(layers.clone())), node_config));
            hops.push(Hop {
                addr: addr.into(),
                layers,
            });
        }
        let mut chain = Chain::connect(hops, config.layers, id, Encoding::F32, IO)
            .await
            .expect("connect");
        let logits = chain.forward(1, 0, &prompt).await.expect("forward");
        assert_eq!(logits, expected);
    })
    .await
    .expect("test finished in time");
}

/// Starts one node serving the whole tiny model with `capacity` and a short
/// frame timeout.
async fn limited_node(name: &str, capacity: Capacity) -> (Fixture, SocketAddr) {
    let f = fixture(name).await;
    let model = Arc::new(Model::from(load(&f.path, 0..LAYERS)));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = NodeConfig {
        capacity,
        io_timeout: Duration::from_millis(300),
        ..NodeConfig::new(f.id, 0..LAYERS)
    };
    tokio::spawn(serve(listener, model, config));
    (f, addr)
}

fn prompt_frame(f: &Fixture, request: u64, position: u64, tokens: &[u32]) -> Frame {
    Frame::new(
        request,
        position,
        forward(
            f.id,
            0..LAYERS as u32,
            ForwardInput::Tokens(tokens.to_vec()),
        ),
    )
}

fn is_output(frame: &Frame) -> bool {
    matches!(frame.message, Message::Output(_))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_request_and_cache_limits_a_node_answers_busy_and_serves_the_others() {
    tokio::time::timeout(TEST_LIMIT, async {
        let per_position =
            Model::from(load(&fixture("kv").await.path, 0..LAYERS)).kv_bytes_per_position();
        let capacity = Capacity {
            requests: 3,
            cache_bytes: 20 * per_position,
            ..Capacity::default()
        };
        let (f, addr) = limited_node("busy", capacity).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        for request in 1..=3 {
            let reply = exchange(&mut s, prompt_frame(&f, request, 0, &PROMPT)).await;
            assert!(is_output(&reply), "request {request}: {reply:?}");
        }
        // A fourth request: busy, and the others still answer.
        let reply = exchange(&mut s, prompt_frame(&f, 4, 0, &PROMPT)).await;
        assert_eq!(error_code(&reply), Some(ErrorCode::Busy), "{reply:?}");
        let reply = exchange(&mut s, prompt_frame(&f, 2, 6, &[3])).await;
        assert!(is_output(&reply), "{reply:?}");
        // 19 positions are cached; two more do not fit, one does.
        let reply = exchange(&mut s, prompt_frame(&f, 1, 6, &[3, 4])).await;
        assert_eq!(error_code(&reply), Some(ErrorCode::Busy), "{reply:?}");
        let reply = exchange(&mut s, prompt_frame(&f, 1, 6, &[3])).await;
        assert!(is_output(&reply), "{reply:?}");
        // Ending a request frees its slot and its cache.
        transport::write_frame(&mut s, &Frame::new(3, 0, Message::End), IO)
            .await
            .expect("end");
        let reply = exchange(&mut s, prompt_frame(&f, 4, 0, &PROMPT)).await;
        assert!(is_output(&reply), "{reply:?}");
        // A flood of new requests is refused one by one; the node goes on.
        for request in 100..200 {
            let reply = exchange(&mut s, prompt_frame(&f, request, 0, &PROMPT)).await;
            assert_eq!(error_code(&reply), Some(ErrorCode::Busy), "{reply:?}");
        }
        // The cache is full (20 positions): ending one request lets another grow.
        let reply = exchange(&mut s, prompt_frame(&f, 4, 6, &[9])).await;
        assert_eq!(error_code(&reply), Some(ErrorCode::Busy), "{reply:?}");
        transport::write_frame(&mut s, &Frame::new(2, 0, Message::End), IO)
            .await
            .expect("end");
        let reply = exchange(&mut s, prompt_frame(&f, 4, 6, &[9])).await;
        assert!(is_output(&reply), "{reply:?}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_past_the_context_are_refused() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (f, addr) = limited_node("context", Capacity::default()).await;
        let context = tiny_gemma3_config().context;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let tokens = vec![5u32; context + 1];
        let reply = exchange(&mut s, prompt_frame(&f, 1, 0, &tokens)).await;
        assert_eq!(error_code(&reply), Some(ErrorCode::Malformed), "{reply:?}");
        let Message::Error(e) = reply.message else {
            unreachable!()
        };
        assert!(
            e.message.contains("past the model's context"),
            "{}",
            e.message
        );
        // A position at the end of u64 does not wrap around.
        let reply = exchange(&mut s, prompt_frame(&f, 2, u64::MAX, &[3])).await;
        assert_eq!(error_code(&reply), Some(ErrorCode::Malformed), "{reply:?}");
        let reply = exchange(&mut s, prompt_frame(&f, 1, 0, &PROMPT)).await;
        assert!(is_output(&reply), "{reply:?}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_per_peer_limit_are_answered_busy() {
    tokio::time::timeout(TEST_LIMIT, async {
        let capacity = Capacity {
            connections_per_peer: 2,
            ..Capacity::default()
        };
        let (f, addr) = limited_node("peers", capacity).await;
        let mut open = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let reply = exchange(&mut s, prompt_frame(&f, open.len() as u64, 0, &PROMPT)).await;
            assert!(is_output(&reply), "{reply:?}");
            open.push(s);
        }
        let mut third = TcpStream::connect(addr).await.expect("connect");
        let reply = transport::read_frame(&mut third, &Limits::default(), IO)
            .await
            .expect("an answer before any frame");
        assert_eq!(error_code(&reply), Some(ErrorCode::Busy), "{reply:?}");
        // A closed connection makes room.
        drop(open.pop());
        let mut again = None;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut s = TcpStream::connect(addr).await.expect("connect");
            transport::write_frame(&mut s, &prompt_frame(&f, 9, 0, &PROMPT), IO)
                .await
                .expect("write");
            let reply = transport::read_frame(&mut s, &Limits::default(), IO).await;
            if let Ok(reply) = reply.as_ref().map(is_output) {
                if reply {
                    again = Some(());
                    break;
                }
            }
        }
        assert!(again.is_some(), "no room after a connection closed");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_frames_hold_no_more_than_the_budget_and_get_an_error() {
    tokio::time::timeout(TEST_LIMIT, async {
        let capacity = Capacity {
            frame_bytes: 64 << 10,
            ..Capacity::default()
        };
        let (_f, addr) = limited_node("budget", capacity).await;
        // A frame of 60 KiB whose last bytes never come.
        let big = Frame::new(
            1,
            0,
            Message::Ping(Ping {
                sent_at_micros: 0,
                payload: vec![1; 60 << 10],
            }),
        )
        .encode()
        .expect("encode");
        let mut staller = TcpStream::connect(addr).await.expect("connect");
        staller
            .write_all(&big[..big.len() - 4096])
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Meanwhile a second frame of 16 KiB does not fit the budget.
        let mut other = TcpStream::connect(addr).await.expect("connect");
        let ping = Frame::new(
            2,
            0,
            Message::Ping(Ping {
                sent_at_micros: 0,
                payload: vec![2; 16 << 10],
            }),
        );
        let reply = exchange(&mut other, ping.clone()).await;
        assert_eq!(error_code(&reply), Some(ErrorCode::Busy), "{reply:?}");
        // The stalled frame is answered with an error once the node stops
        // waiting (300 ms), and its bytes are released.
        let reply = transport::read_frame(&mut staller, &Limits::default(), IO)
            .await
            .expect("an error frame for the stalled frame");
        assert_eq!(error_code(&reply), Some(ErrorCode::Malformed), "{reply:?}");
        let Message::Error(e) = &reply.message else {
            unreachable!()
        };
        assert!(e.message.contains("stalled"), "{}", e.message);
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let reply = exchange(&mut s, ping).await;
        assert!(matches!(reply.message, Message::Pong(_)), "{reply:?}");
    })
    .await
    .expect("test timed out");
}
