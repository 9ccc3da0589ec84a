//! The frame codec against hostile input: thousands of mutated frames, each
//! refused with the error the spec calls for (and answerable with an error
//! frame), oversized claims refused without allocating, and blocking streams
//! that end early or stall.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{self, Cursor, Read};

use models::model_id::ModelId;
use verifier::receipt::Step;
use wire::{
    read_frame, write_frame, Activations, Boundary, Encoding, ErrorCode, ErrorReply, Forward,
    ForwardInput, Frame, HeadReply, Hello, HelloAck, Limits, Message, Output, Ping, ProofFailure,
    ProofsReply, ProveStep, ProvenBundle, Sampled, SignedStep, TokenSampler, WireError,
    CHECKSUM_LEN, HEADER_LEN,
};

/// Records the largest single allocation made by the current thread, so a
/// test can show that a frame claiming gigabytes never gets them. Per thread
/// because the test harness runs tests in parallel.
struct PeakAlloc;

thread_local! {
    // Const-initialised and without a destructor: safe to touch from inside
    // the allocator.
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = PEAK.try_with(|p| p.set(p.get().max(size)));
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// Runs `f` and returns its result with the largest allocation it made.
fn peak_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
    PEAK.with(|p| p.set(0));
    let out = f();
    (out, PEAK.with(Cell::get))
}

/// SplitMix64: deterministic, so a failure names a reproducible mutation.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The error kinds a test can expect; `WireError` itself is not `PartialEq`
/// (it can hold an `io::Error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    BadMagic,
    UnsupportedVersion,
    TooLarge,
    Truncated,
    Checksum,
    UnknownType,
    Malformed,
    Closed,
    Other,
}

fn kind(err: &WireError) -> Kind {
    match err {
        WireError::BadMagic(_) => Kind::BadMagic,
        WireError::UnsupportedVersion(_) => Kind::UnsupportedVersion,
        WireError::TooLarge { .. } => Kind::TooLarge,
        WireError::Truncated { .. } => Kind::Truncated,
        WireError::Checksum => Kind::Checksum,
        WireError::UnknownType(_) => Kind::UnknownType,
        WireError::Malformed(_) => Kind::Malformed,
        WireError::Closed => Kind::Closed,
        _ => Kind::Other,
    }
}

fn model(seed: &[u8]) -> ModelId {
    ModelId(*blake3::hash(seed).as_bytes())
}

fn values(rows: u32, cols: u32, rng: &mut Rng) -> Vec<f32> {
    (0..rows * cols)
        .map(|_| (rng.next() >> 40) as f32 / (1u64 << 24) as f32 * 20.0 - 10.0)
        .collect()
}

/// One valid frame of every kind, activations in every encoding.
fn sample_frames() -> Vec<Frame> {
    let mut rng = Rng(7);
    let id = model(b"gemma");
    let mut frames = vec![
        Frame::new(
            0,
            0,
            Message::Hello(Hello {
                model_id: id,
                layers: 0..9,
            }),
        ),
        Frame::new(
            0,
            0,
            Message::HelloAck(HelloAck {
                span: Hello {
                    model_id: id,
                    layers: 9..18,
                },
                signer: None,
            }),
        ),
        Frame::new(
            41,
            0,
            Message::Forward(Forward {
                model_id: id,
                layers: 0..9,
                reply: Encoding::F32,
                head: HeadReply::LastLogits,
                input: ForwardInput::Tokens(vec![2, 818, 5279, 529, 7001]),
            }),
        ),
        Frame::new(41, 17, Message::End),
        Frame::new(
            41,
            6,
            Message::Forward(Forward {
                model_id: id,
                layers: 0..18,
                reply: Encoding::Q6o,
                head: HeadReply::Sample(TokenSampler::Sample {
                    temperature: 0.7,
                    r: 0x0123_4567_89AB_CDEF,
                }),
                input: ForwardInput::Tokens(vec![818]),
            }),
        ),
        Frame::new(
            41,
            6,
            Message::Sampled(Sampled {
                token: 262_143,
                logprob: -3.25,
                logits_blake3: [6; 32],
                signature: Some([8; 32]),
            }),
        ),
        Frame::new(
            41,
            7,
            Message::Sampled(Sampled {
                token: 0,
                logprob: 0.0,
                logits_blake3: [1; 32],
                signature: None,
            }),
        ),
        Frame::new(
            0,
            0,
            Message::Ping(Ping {
                sent_at_micros: 1_700_000_000_000_000,
                payload: vec![0x5A; 48],
            }),
        ),
        Frame::new(
            0,
            0,
            Message::Pong(Ping {
                sent_at_micros: 1_700_000_000_000_000,
                payload: vec![],
            }),
        ),
        Frame::new(
            41,
            5,
            Message::Error(ErrorReply {
                code: ErrorCode::WrongModel,
                message: "this node serves another model".into(),
            }),
        ),
        Frame::new(
            41,
            0,
            Message::Prove(vec![
                ProveStep {
                    position: 9,
                    token: 17,
                    sampler: TokenSampler::Greedy,
                },
                ProveStep {
                    position: 10,
                    token: 3,
                    sampler: TokenSampler::Sample {
                        temperature: 0.8,
                        r: 1 << 60,
                    },
                },
            ]),
        ),
        Frame::new(
            41,
            0,
            Message::Proofs(ProofsReply {
                pending: 2,
                bundles: vec![
                    ProvenBundle {
                        bytes: vec![7; 40],
                        signatures: vec![[4; 32], [5; 32]],
                    },
                    ProvenBundle::default(),
                ],
                failures: vec![ProofFailure {
                    position: 9,
                    message: "token does not follow".into(),
                }],
            }),
        ),
        Frame::new(41, 0, Message::TraceRequest),
        Frame::new(
            41,
            0,
            Message::Trace(
                [
                    Step::Enter(9),
                    Step::Layer(9),
                    Step::Layer(10),
                    Step::Exit(11),
                ]
                .into_iter()
                .enumerate()
                .map(|(i, step)| SignedStep {
                    position: 5,
                    step,
                    input: [i as u8; 32],
                    output: [i as u8 + 1; 32],
                    signature: [9; 32],
                })
                .collect(),
            ),
        ),
        Frame::new(41, 5, Message::Reveal(Boundary::Input)),
        Frame::new(41, 5, Message::Reveal(Boundary::Layer(11))),
        Frame::new(41, 5, Message::Reveal(Boundary::Output)),
        Frame::new(41, 0, Message::Revealed(ForwardInput::Tokens(vec![2, 7]))),
    ];
    for encoding in wire::ENCODINGS {
        let a = Activations::encode(&values(2, 8, &mut rng), 2, 8, encoding).expect("encode");
        frames.push(Frame::new(
            41,
            5,
            Message::Forward(Forward {
                model_id: id,
                layers: 9..18,
                reply: Encoding::F32,
                head: HeadReply::LastLogits,
                input: ForwardInput::Activations(a.clone()),
            }),
        ));
        frames.push(Frame::new(
            41,
            5,
            Message::Revealed(ForwardInput::Activations(a.clone())),
        ));
        frames.push(Frame::new(
            41,
            5,
            Message::Output(Output {
                activations: a,
                signature: Some([3; 32]),
            }),
        ));
    }
    frames
}

/// Decodes `bytes` both as a slice and as a stream; both must agree, and the
/// error must be answerable with an error frame carrying its code.
fn reject(bytes: &[u8], limits: &Limits) -> Result<Frame, Kind> {
    let from_slice = Frame::decode(bytes, limits);
    let from_stream = read_frame(&mut Cursor::new(bytes), limits);
    match (from_slice, from_stream) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b);
            Ok(a)
        }
        (Err(a), Err(b)) => {
            // An empty stream is a clean close, an empty slice a truncation.
            let (ka, kb) = (kind(&a), kind(&b));
            assert!(
                ka == kb || (bytes.is_empty() && kb == Kind::Closed),
                "slice says {a}, stream says {b}"
            );
            let reply = a.to_frame(0, 0).encode().expect("error frame encodes");
            let Message::Error(back) = Frame::decode(&reply, &Limits::default())
                .expect("error frame decodes")
                .message
            else {
                panic!("not an error frame");
            };
            assert_eq!(back.code, a.code());
            Err(ka)
        }
        (a, b) => panic!("slice and stream disagree: {a:?} vs {b:?}"),
    }
}

/// What a single corrupted byte at `pos` must produce, per the receive order
/// in the spec.
fn expected_kind(mutated: &[u8], pos: usize, limits: &Limits) -> Kind {
    match pos {
        0..4 => Kind::BadMagic,
        4..6 => Kind::UnsupportedVersion,
        24..28 => {
            let len = u32::from_le_bytes(mutated[24..28].try_into().unwrap()) as usize;
            if len > limits.max_payload {
                Kind::TooLarge
            } else if HEADER_LEN + len + CHECKSUM_LEN > mutated.len() {
                Kind::Truncated
            } else {
                Kind::Checksum
            }
        }
        _ => Kind::Checksum,
    }
}

#[test]
fn wire_thousands_of_mutated_frames_are_rejected_with_the_right_error() {
    let mut rng = Rng(2024);
    let mut checked = 0usize;
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    let mut tally = |k: Kind| *seen.entry(format!("{k:?}")).or_default() += 1;
    let default = Limits::default();
    for frame in sample_frames() {
        let good = frame.encode().expect("encode");
        assert_eq!(reject(&good, &default), Ok(frame.clone()));
        // A limit exactly at this payload: any length increase is too large.
        let tight = Limits {
            max_payload: good.len() - HEADER_LEN - CHECKSUM_LEN,
        };
        assert_eq!(reject(&good, &tight), Ok(frame.clone()));

        // Every single-bit flip, everywhere in the frame.
        for pos in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[pos] ^= 1 << bit;
                for limits in [&default, &tight] {
                    let want = expected_kind(&bad, pos, limits);
                    let got = reject(&bad, limits);
                    assert_eq!(got, Err(want), "flip byte {pos} bit {bit} of {frame:?}");
                    tally(want);
                    checked += 1;
                }
            }
        }

        // Random multi-byte corruption: never accepted, never a panic.
        for _ in 0..100 {
            let mut bad = good.clone();
            for _ in 0..1 + rng.below(4) {
                let pos = rng.below(bad.len());
                bad[pos] ^= 1 + rng.below(255) as u8;
            }
            let got = reject(&bad, &default).expect_err("corrupted frame accepted");
            tally(got);
            checked += 1;
        }

        // Every truncation.
        for len in 0..good.len() {
            let want = Kind::Truncated;
            assert_eq!(
                Frame::decode(&good[..len], &default).map_err(|e| kind(&e)),
                Err(want),
                "truncated to {len}"
            );
            let stream = read_frame(&mut Cursor::new(&good[..len]), &default);
            let want_stream = if len == 0 { Kind::Closed } else { want };
            assert_eq!(stream.map_err(|e| kind(&e)), Err(want_stream), "{len}");
            tally(want);
            checked += 1;
        }

        // Extensions: a slice must hold exactly one frame; a stream reads the
        // frame and then fails on the garbage after it.
        for extra in 1..=40 {
            let mut long = good.clone();
            long.extend((0..extra).map(|_| rng.next() as u8));
            assert_eq!(
                Frame::decode(&long, &default).map_err(|e| kind(&e)),
                Err(Kind::Malformed),
                "{extra} extra bytes"
            );
            let mut stream = Cursor::new(&long);
            assert_eq!(read_frame(&mut stream, &default).expect("first"), frame);
            let next = read_frame(&mut stream, &default).map_err(|e| kind(&e));
            let want = if extra < HEADER_LEN {
                Kind::Truncated
            } else {
                Kind::BadMagic
            };
            assert_eq!(next, Err(want), "{extra} extra bytes, next frame");
            tally(Kind::Malformed);
            checked += 1;
        }

        // Length fields set huge, and just inside the limit.
        let payload_len = good.len() - HEADER_LEN - CHECKSUM_LEN;
        for len in [u32::MAX, 1 << 31, default.max_payload as u32 + 1] {
            let mut bad = good.clone();
            bad[24..28].copy_from_slice(&len.to_le_bytes());
            assert_eq!(reject(&bad, &default), Err(Kind::TooLarge), "length {len}");
            tally(Kind::TooLarge);
            checked += 1;
        }
        for len in [default.max_payload as u32, payload_len as u32 + 1] {
            let mut bad = good.clone();
            bad[24..28].copy_from_slice(&len.to_le_bytes());
            assert_eq!(reject(&bad, &default), Err(Kind::Truncated), "length {len}");
            tally(Kind::Truncated);
            checked += 1;
        }

        // Wrong magic (other protocols, zeros) and versions.
        for magic in [*b"HTTP", *b"GET ", [0; 4], *b"zkiw", *b"ZKIV"] {
            let mut bad = good.clone();
            bad[0..4].copy_from_slice(&magic);
            assert_eq!(reject(&bad, &default), Err(Kind::BadMagic));
            tally(Kind::BadMagic);
            checked += 1;
        }
        for version in [0u16, 2, 3, 0x0100, u16::MAX] {
            let mut bad = good.clone();
            bad[4..6].copy_from_slice(&version.to_le_bytes());
            assert_eq!(reject(&bad, &default), Err(Kind::UnsupportedVersion));
            tally(Kind::UnsupportedVersion);
            checked += 1;
        }
    }
    println!("{checked} mutated frames rejected: {seen:?}");
    assert!(checked >= 1_000, "only {checked} mutations");
}

/// Re-signs a mutated frame: the checksum is valid, so the payload parser
/// itself meets the corruption (a buggy or hostile peer).
fn resign(bytes: &mut [u8]) {
    let body = bytes.len() - CHECKSUM_LEN;
    let hash = blake3::hash(&bytes[..body]);
    bytes[body..].copy_from_slice(hash.as_bytes());
}

#[test]
fn wire_validly_signed_garbage_is_malformed_or_canonical() {
    let mut rng = Rng(99);
    let limits = Limits::default();
    let mut checked = 0usize;
    for frame in sample_frames() {
        let good = frame.encode().expect("encode");
        let body_end = good.len() - CHECKSUM_LEN;
        // Every bit of type, flags, ids and payload (not magic, version or
        // length, which are refused before the checksum).
        let positions = (6..24).chain(HEADER_LEN..body_end);
        for pos in positions {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[pos] ^= 1 << bit;
                resign(&mut bad);
                match reject(&bad, &limits) {
                    // Whatever is accepted re-encodes to the same bytes: the
                    // encoding is canonical, so nothing is lost or invented.
                    Ok(decoded) => assert_eq!(decoded.encode().expect("re-encode"), bad),
                    Err(k) => {
                        let want: &[Kind] = match pos {
                            6 => &[Kind::UnknownType, Kind::Malformed],
                            7 => &[Kind::Malformed],
                            _ => &[Kind::Malformed],
                        };
                        assert!(want.contains(&k), "byte {pos} bit {bit}: {k:?}");
                    }
                }
                checked += 1;
            }
        }
        // Random payloads of random lengths under a valid header.
        for _ in 0..200 {
            let len = rng.below(200);
            let mut bad = good[..HEADER_LEN].to_vec();
            bad[24..28].copy_from_slice(&(len as u32).to_le_bytes());
            bad.extend((0..len + CHECKSUM_LEN).map(|_| rng.next() as u8));
            resign(&mut bad);
            match reject(&bad, &limits) {
                Ok(decoded) => assert_eq!(decoded.encode().expect("re-encode"), bad),
                Err(k) => assert_eq!(k, Kind::Malformed, "{len} random payload bytes"),
            }
            checked += 1;
        }
    }
    // Pure noise: always refused.
    for _ in 0..2_000 {
        let len = rng.below(300);
        let noise: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        assert!(reject(&noise, &limits).is_err());
        checked += 1;
    }
    assert!(checked >= 1_000);
}

#[test]
fn wire_flags_and_unknown_types_are_refused_exactly() {
    let good = Frame::new(1, 2, Message::End).encode().expect("encode");
    for flags in 1..=255u8 {
        let mut bad = good.clone();
        bad[7] = flags;
        resign(&mut bad);
        assert_eq!(reject(&bad, &Limits::default()), Err(Kind::Malformed));
    }
    for ty in (0..=255u8).filter(|t| !(1..=15).contains(t)) {
        let mut bad = good.clone();
        bad[6] = ty;
        resign(&mut bad);
        assert_eq!(reject(&bad, &Limits::default()), Err(Kind::UnknownType));
    }
}

/// A header claiming a 4 GB payload, followed by a few bytes.
fn four_gb_claim() -> Vec<u8> {
    let mut bytes = Frame::new(9, 0, Message::End).encode().expect("encode");
    bytes[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
    bytes.extend_from_slice(&[0; 100]);
    bytes
}

#[test]
fn wire_four_gb_claim_is_refused_without_allocating() {
    let bytes = four_gb_claim();
    let limits = Limits::default();
    let (result, peak) = peak_alloc(|| Frame::decode(&bytes, &limits));
    assert!(
        matches!(result, Err(WireError::TooLarge { len, .. }) if len == u64::from(u32::MAX)),
        "{result:?}"
    );
    assert!(peak < 1 << 20, "decode allocated {peak} bytes");

    let mut cursor = Cursor::new(&bytes);
    let (result, peak) = peak_alloc(|| read_frame(&mut cursor, &limits));
    assert!(
        matches!(result, Err(WireError::TooLarge { .. })),
        "{result:?}"
    );
    assert!(peak < 1 << 20, "read_frame allocated {peak} bytes");
    // Refused from the header alone: the payload was never read.
    assert_eq!(cursor.position(), HEADER_LEN as u64);
}

#[test]
fn wire_unlimited_reader_allocates_only_what_arrives() {
    // With no limit, a 4 GB claim followed by 100 bytes and end of stream
    // is a truncation that costs about what was sent.
    let bytes = four_gb_claim();
    let unlimited = Limits {
        max_payload: usize::MAX,
    };
    let (result, peak) = peak_alloc(|| read_frame(&mut Cursor::new(&bytes), &unlimited));
    assert!(
        matches!(result, Err(WireError::Truncated { have, .. }) if have == bytes.len()),
        "{result:?}"
    );
    assert!(peak < 1 << 20, "read_frame allocated {peak} bytes");
    let (result, peak) = peak_alloc(|| Frame::decode(&bytes, &unlimited));
    assert!(
        matches!(result, Err(WireError::Truncated { .. })),
        "{result:?}"
    );
    assert!(peak < 1 << 20, "decode allocated {peak} bytes");

    // A 60 MB claim (inside the default limit) with 1 MB sent: the buffer
    // grows with the data, not with the claim.
    let mut big = Frame::new(9, 0, Message::End).encode().expect("encode");
    big[24..28].copy_from_slice(&(60u32 << 20).to_le_bytes());
    big.resize(HEADER_LEN + (1 << 20), 0);
    let (result, peak) = peak_alloc(|| read_frame(&mut Cursor::new(&big), &Limits::default()));
    assert!(matches!(result, Err(WireError::Truncated { .. })));
    assert!(
        peak <= 4 << 20,
        "read_frame allocated {peak} bytes for 1 MB"
    );
}

#[test]
fn wire_back_to_back_frames_over_a_stream() {
    let frames = sample_frames();
    let mut stream = Vec::new();
    for frame in &frames {
        write_frame(&mut stream, frame).expect("write");
    }
    let mut cursor = Cursor::new(stream.clone());
    for frame in &frames {
        assert_eq!(
            &read_frame(&mut cursor, &Limits::default()).expect("read"),
            frame
        );
    }
    assert!(matches!(
        read_frame(&mut cursor, &Limits::default()),
        Err(WireError::Closed)
    ));

    // The same stream delivered one byte at a time, with interruptions.
    let mut trickle = Trickle {
        data: Cursor::new(stream.clone()),
        calls: 0,
    };
    for frame in &frames {
        assert_eq!(
            &read_frame(&mut trickle, &Limits::default()).expect("read"),
            frame
        );
    }
    assert!(matches!(
        read_frame(&mut trickle, &Limits::default()),
        Err(WireError::Closed)
    ));

    // Cut inside the last frame: the frames before it read, then an error.
    let cut = stream.len() - 10;
    let mut cursor = Cursor::new(&stream[..cut]);
    for frame in &frames[..frames.len() - 1] {
        assert_eq!(
            &read_frame(&mut cursor, &Limits::default()).expect("read"),
            frame
        );
    }
    let err = read_frame(&mut cursor, &Limits::default()).unwrap_err();
    assert!(
        matches!(err, WireError::Truncated { needed, have } if needed == have + 10),
        "{err:?}"
    );
}

/// Yields one byte per call and an `Interrupted` error every third call.
struct Trickle {
    data: Cursor<Vec<u8>>,
    calls: usize,
}

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.calls += 1;
        if self.calls.is_multiple_of(3) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = buf.len().min(1);
        self.data.read(&mut buf[..n])
    }
}

/// Sends some bytes, then times out as a socket with a read timeout does.
struct Stall {
    data: Cursor<Vec<u8>>,
}

impl Read for Stall {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.data.read(buf)? {
            0 => Err(io::ErrorKind::TimedOut.into()),
            n => Ok(n),
        }
    }
}

#[test]
fn wire_stalled_stream_is_an_io_error_not_a_hang() {
    let good = Frame::new(1, 1, Message::End).encode().expect("encode");
    for cut in [5, HEADER_LEN, good.len() - 1] {
        let mut stall = Stall {
            data: Cursor::new(good[..cut].to_vec()),
        };
        let err = read_frame(&mut stall, &Limits::default()).unwrap_err();
        assert!(
            matches!(&err, WireError::Io(e) if e.kind() == io::ErrorKind::TimedOut),
            "cut at {cut}: {err:?}"
        );
        assert_eq!(err.code(), ErrorCode::Internal);
    }
}

#[test]
fn wire_large_activations_round_trip_through_a_stream() {
    let mut rng = Rng(3);
    let (rows, cols) = (64u32, 640u32);
    let x = values(rows, cols, &mut rng);
    for encoding in wire::ENCODINGS {
        let a = Activations::encode(&x, rows, cols, encoding).expect("encode");
        let frame = Frame::new(
            5,
            100,
            Message::Output(Output {
                activations: a,
                signature: None,
            }),
        );
        let mut stream = Vec::new();
        write_frame(&mut stream, &frame).expect("write");
        let back = read_frame(&mut Cursor::new(stream), &Limits::default()).expect("read");
        assert_eq!(back, frame);
        let Message::Output(Output { activations: a, .. }) = back.message else {
            panic!("not an output frame")
        };
        let y = a.to_f32().expect("values");
        assert_eq!(y.len(), x.len());
        let worst = x
            .iter()
            .zip(&y)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        let bound = match encoding {
            Encoding::F32 => 0.0,
            Encoding::F16 => 10.0 * 2f32.powi(-11),
            Encoding::Q8 => 10.0 / 127.0 * 0.5001,
            Encoding::Q6o => 10.0 / 31.0 * 0.5001,
        };
        assert!(worst <= bound, "{encoding:?}: worst error {worst}");
    }
}
