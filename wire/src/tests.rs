use super::*;
use crate::activations::q8_scale;
use crate::reader::Reader;
use models::model_id::ModelId;

fn model() -> ModelId {
    ModelId(*blake3::hash(b"test model").as_bytes())
}

/// A deterministic test matrix with values of mixed sign and magnitude.
fn matrix(rows: u32, cols: u32, seed: u32) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| {
            let t = (i.wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1 << 24) as f32;
            (t - 0.5) * 8.0 * if i % 7 == 0 { 10.0 } else { 1.0 }
        })
        .collect()
}

fn round_trip(frame: &Frame) -> Frame {
    let bytes = frame.encode().expect("encode");
    assert_eq!(
        bytes.len(),
        Header::parse(bytes.first_chunk().expect("header"), &Limits::default())
            .expect("header")
            .frame_len()
    );
    Frame::decode(&bytes, &Limits::default()).expect("decode")
}

#[test]
fn wire_round_trips_every_message_and_encoding() {
    let mut frames = vec![
        Frame::new(
            0,
            0,
            Message::Hello(Hello {
                model_id: model(),
                layers: 0..9,
            }),
        ),
        Frame::new(
            0,
            0,
            Message::HelloAck(HelloAck {
                span: Hello {
                    model_id: model(),
                    layers: 9..18,
                },
                signer: Some([5; 64]),
            }),
        ),
        Frame::new(
            7,
            0,
            Message::Forward(Forward {
                model_id: model(),
                layers: 0..9,
                reply: Encoding::F32,
                head: HeadReply::LastLogits,
                input: ForwardInput::Tokens(vec![2, 105, 262_143, u32::MAX]),
            }),
        ),
        Frame::new(7, 12, Message::End),
        Frame::new(
            1,
            2,
            Message::Ping(Ping {
                sent_at_micros: 123_456_789,
                payload: vec![0xAB; 1000],
            }),
        ),
        Frame::new(
            1,
            2,
            Message::Pong(Ping {
                sent_at_micros: u64::MAX,
                payload: vec![],
            }),
        ),
        Frame::new(
            u64::MAX,
            u64::MAX,
            Message::Error(ErrorReply {
                code: ErrorCode::WrongLayers,
                message: "nicht hier — 层".into(),
            }),
        ),
        Frame::new(3, 0, Message::Prove(vec![])),
        Frame::new(
            3,
            0,
            Message::Prove(vec![ProveStep {
                position: u64::MAX,
                token: 262_143,
                sampler: TokenSampler::Sample {
                    temperature: 1.5,
                    r: u64::MAX,
                },
            }]),
        ),
        Frame::new(3, 0, Message::Proofs(ProofsReply::default())),
        Frame::new(
            7,
            9,
            Message::Forward(Forward {
                model_id: model(),
                layers: 0..18,
                reply: Encoding::F32,
                head: HeadReply::Sample(TokenSampler::Greedy),
                input: ForwardInput::Tokens(vec![3]),
            }),
        ),
        Frame::new(
            7,
            9,
            Message::Sampled(Sampled {
                token: 17,
                logprob: -1e-9,
                logits_blake3: [2; 32],
                signature: Some([3; 32]),
            }),
        ),
    ];
    for (i, encoding) in crate::ENCODINGS.into_iter().enumerate() {
        let a = Activations::encode(&matrix(3, 5, i as u32), 3, 5, encoding).expect("encode");
        frames.push(Frame::new(
            7,
            4,
            Message::Forward(Forward {
                model_id: model(),
                layers: 9..18,
                reply: Encoding::F32,
                head: HeadReply::LastLogits,
                input: ForwardInput::Activations(a.clone()),
            }),
        ));
        frames.push(Frame::new(
            7,
            4,
            Message::Output(Output {
                activations: a,
                signature: (i == 1).then_some([9; 32]),
            }),
        ));
    }
    for code in 1..=10 {
        let code = ErrorCode::from_u16(code).expect("known code");
        frames.push(Frame::new(
            3,
            0,
            Message::Error(ErrorReply {
                code,
                message: String::new(),
            }),
        ));
    }
    for frame in &frames {
        assert_eq!(&round_trip(frame), frame);
    }
}

#[test]
fn wire_header_layout_matches_the_spec() {
    let frame = Frame::new(0x0102_0304_0506_0708, 42, Message::End);
    let bytes = frame.encode().expect("encode");
    assert_eq!(bytes.len(), HEADER_LEN + CHECKSUM_LEN);
    assert_eq!(&bytes[0..4], b"ZKIW");
    assert_eq!(&bytes[4..6], &[1, 0]);
    assert_eq!(bytes[6], 5);
    assert_eq!(bytes[7], 0);
    assert_eq!(&bytes[8..16], &[8, 7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(&bytes[16..24], &[42, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&bytes[24..28], &[0, 0, 0, 0]);
    assert_eq!(&bytes[28..], blake3::hash(&bytes[..28]).as_bytes());

    // Hello payload: model id, start, end.
    let hello = Frame::new(
        0,
        0,
        Message::Hello(Hello {
            model_id: model(),
            layers: 3..7,
        }),
    );
    let bytes = hello.encode().expect("encode");
    assert_eq!(&bytes[24..28], &40u32.to_le_bytes());
    assert_eq!(&bytes[28..60], &model().0);
    assert_eq!(&bytes[60..68], &[3, 0, 0, 0, 7, 0, 0, 0]);
}

#[test]
fn wire_f32_is_exact() {
    let values = matrix(4, 33, 1);
    let a = Activations::encode(&values, 4, 33, Encoding::F32).expect("encode");
    assert_eq!(a.byte_len(), 4 * 33 * 4);
    assert_eq!(a.to_f32().expect("decode"), values);
    // Non-finite values travel unchanged as F32.
    let odd = [f32::INFINITY, f32::NEG_INFINITY, -0.0, f32::MIN_POSITIVE];
    let a = Activations::encode(&odd, 1, 4, Encoding::F32).expect("encode");
    assert_eq!(a.to_f32().expect("decode"), odd);
}

#[test]
fn wire_f16_relative_error_is_below_1e_3() {
    // Normal f16 range: 6.1e-5 ..= 65504, both signs.
    let mut values = Vec::new();
    let mut x = 6.2e-5f32;
    while x < 47_000.0 {
        values.push(x);
        values.push(-x * 1.37);
        x *= 1.011;
    }
    values.truncate(values.len() / 16 * 16);
    let rows = (values.len() / 16) as u32;
    let a = Activations::encode(&values, rows, 16, Encoding::F16).expect("encode");
    assert_eq!(a.byte_len(), values.len() * 2);
    let back = a.to_f32().expect("decode");
    let worst = values
        .iter()
        .zip(&back)
        .map(|(x, y)| ((x - y) / x).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-3, "worst relative error {worst}");
    assert!(worst > 0.0, "f16 should be lossy on these values");
}

#[test]
fn wire_f16_refuses_overflow() {
    let err = Activations::encode(&[1.0, 70_000.0], 1, 2, Encoding::F16).unwrap_err();
    assert!(matches!(err, WireError::Encode(_)), "{err:?}");
    // The largest f16 value still encodes.
    let a = Activations::encode(&[65504.0], 1, 1, Encoding::F16).expect("encode");
    assert_eq!(a.to_f32().expect("decode"), [65504.0]);
}

#[test]
fn wire_q8_error_is_at_most_half_a_step() {
    let (rows, cols) = (6u32, 640u32);
    let mut values = matrix(rows, cols, 9);
    // A zero row and a row of one tiny and one huge value.
    values[cols as usize..2 * cols as usize].fill(0.0);
    values[2 * cols as usize] = 1e-30;
    values[2 * cols as usize + 1] = -3e30;
    let a = Activations::encode(&values, rows, cols, Encoding::Q8).expect("encode");
    let back = a.to_f32().expect("decode");
    for (r, (row, got)) in values
        .chunks(cols as usize)
        .zip(back.chunks(cols as usize))
        .enumerate()
    {
        let scale = row.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
        let stored = q8_scale(&a.data[r * (cols as usize + 4)..]);
        assert_eq!(stored, scale, "row {r}");
        for (x, y) in row.iter().zip(got) {
            // Half a step, plus float rounding in x / scale and q * scale.
            assert!(
                (x - y).abs() <= scale * (0.5 + 1e-4),
                "row {r}: {x} -> {y}, scale {scale}"
            );
        }
    }
    assert!(back[cols as usize..2 * cols as usize]
        .iter()
        .all(|&y| y == 0.0));
    assert_eq!(q8_scale(&a.data[cols as usize + 4..]), 0.0);
}

#[test]
fn wire_q8_is_at_most_027_of_f32() {
    for cols in [640u32, 1152, 2560] {
        let values = matrix(3, cols, cols);
        let f32s = Activations::encode(&values, 3, cols, Encoding::F32).expect("f32");
        let q8 = Activations::encode(&values, 3, cols, Encoding::Q8).expect("q8");
        assert_eq!(q8.byte_len(), 3 * (4 + cols as usize));
        let ratio = q8.byte_len() as f64 / f32s.byte_len() as f64;
        assert!(ratio <= 0.27, "cols {cols}: ratio {ratio}");
    }
}

#[test]
fn wire_q8_refuses_non_finite_input() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let err = Activations::encode(&[1.0, bad], 1, 2, Encoding::Q8).unwrap_err();
        assert!(matches!(err, WireError::Encode(_)), "{err:?}");
    }
}

#[test]
fn wire_encode_checks_shape() {
    for (len, rows, cols) in [(5, 2, 3), (0, 0, 3), (0, 3, 0), (1, u32::MAX, u32::MAX)] {
        let values = vec![0.5; len];
        let err = Activations::encode(&values, rows, cols, Encoding::F32).unwrap_err();
        assert!(
            matches!(err, WireError::Encode(_)),
            "{rows}x{cols}: {err:?}"
        );
    }
}

#[test]
fn wire_to_f32_refuses_bad_shapes_without_allocating() {
    // Hand-built values with lying shapes: validation must fail before
    // `rows * cols` (here about 1.8e19) is ever allocated.
    for encoding in crate::ENCODINGS {
        for (rows, cols, len) in [(u32::MAX, u32::MAX, 16), (0, 5, 0), (5, 0, 0), (2, 2, 3)] {
            let a = Activations {
                rows,
                cols,
                encoding,
                data: vec![0; len],
            };
            let err = a.to_f32().unwrap_err();
            assert!(matches!(err, WireError::Malformed(_)), "{err:?}");
        }
    }
    let mut q8 = Activations::encode(&[1.0, -2.0], 1, 2, Encoding::Q8).expect("encode");
    for scale in [f32::NAN, f32::INFINITY, -1.0] {
        q8.data[..4].copy_from_slice(&scale.to_le_bytes());
        assert!(
            matches!(q8.to_f32(), Err(WireError::Malformed(_))),
            "scale {scale}"
        );
    }
}

#[test]
fn wire_encode_refuses_what_decode_would_refuse() {
    let empty_range = Frame::new(
        0,
        0,
        Message::Hello(Hello {
            model_id: model(),
            layers: 4..4,
        }),
    );
    assert!(matches!(empty_range.encode(), Err(WireError::Encode(_))));
    let no_tokens = Frame::new(
        0,
        0,
        Message::Forward(Forward {
            model_id: model(),
            layers: 0..1,
            reply: Encoding::F32,
            head: HeadReply::LastLogits,
            input: ForwardInput::Tokens(vec![]),
        }),
    );
    assert!(matches!(no_tokens.encode(), Err(WireError::Encode(_))));
    let lying = Frame::new(
        0,
        0,
        Message::Output(Output {
            activations: Activations {
                rows: 2,
                cols: 2,
                encoding: Encoding::F32,
                data: vec![0; 15],
            },
            signature: None,
        }),
    );
    assert!(matches!(lying.encode(), Err(WireError::Malformed(_))));
}

#[test]
fn token_ids_travel_exactly_and_nothing_else_reads_as_one() {
    let ids = [0, 1, 262_143, (1 << 24) - 1];
    let answer = Activations::of_token_ids(&ids).expect("encode");
    assert_eq!((answer.rows, answer.cols), (4, 1));
    assert_eq!(answer.to_token_ids().expect("decode"), ids);
    assert!(matches!(
        Activations::of_token_ids(&[1 << 24]),
        Err(WireError::Encode(_))
    ));
    for bad in [-1.0, 2.5, 16_777_216.0, f32::NAN] {
        let a = Activations::encode(&[3.0, bad], 2, 1, Encoding::F32).expect("encode");
        assert!(
            matches!(a.to_token_ids(), Err(WireError::Malformed(_))),
            "{bad} read as a token id"
        );
    }
    let two_columns = Activations::encode(&[1.0, 2.0], 1, 2, Encoding::F32).expect("encode");
    assert!(matches!(
        two_columns.to_token_ids(),
        Err(WireError::Malformed(_))
    ));
}

#[test]
fn wire_error_codes_round_trip_and_map() {
    for n in 0..=20u16 {
        match ErrorCode::from_u16(n) {
            Some(code) => assert_eq!(code.as_u16(), n),
            None => assert!(n == 0 || n > 10),
        }
    }
    let cases: Vec<(WireError, ErrorCode)> = vec![
        (WireError::BadMagic(*b"HTTP"), ErrorCode::Malformed),
        (
            WireError::Truncated {
                needed: 60,
                have: 3,
            },
            ErrorCode::Malformed,
        ),
        (WireError::UnknownType(99), ErrorCode::Malformed),
        (WireError::Malformed("x".into()), ErrorCode::Malformed),
        (WireError::TooLarge { len: 5, max: 4 }, ErrorCode::TooLarge),
        (WireError::Checksum, ErrorCode::Checksum),
        (
            WireError::UnsupportedVersion(2),
            ErrorCode::UnsupportedVersion,
        ),
        (
            WireError::WrongModel {
                served: model(),
                requested: ModelId([0; 32]),
            },
            ErrorCode::WrongModel,
        ),
        (
            WireError::WrongLayers {
                served: 0..9,
                requested: 9..18,
            },
            ErrorCode::WrongLayers,
        ),
        (WireError::UnknownRequest(5), ErrorCode::UnknownRequest),
        (WireError::Internal("oom".into()), ErrorCode::Internal),
        (WireError::Busy("64 requests".into()), ErrorCode::Busy),
        (WireError::NotYours(5), ErrorCode::Forbidden),
    ];
    for (err, code) in cases {
        assert_eq!(err.code(), code, "{err}");
        let frame = err.to_frame(11, 22);
        let back = round_trip(&frame);
        assert_eq!((back.request_id, back.position), (11, 22));
        let Message::Error(reply) = back.message else {
            panic!("not an error frame")
        };
        assert_eq!(reply.code, code);
        assert_eq!(reply.message, err.to_string());
        assert_eq!(reply.into_error().code(), code);
    }
}

#[test]
fn wire_reader_never_reads_past_the_end() {
    let mut r = Reader { buf: &[1, 2, 3] };
    assert!(matches!(r.u32("x"), Err(WireError::Malformed(_))));
    assert_eq!(r.u16("y").expect("two bytes"), 0x0201);
    assert!(matches!(
        r.bytes(usize::MAX, "z"),
        Err(WireError::Malformed(_))
    ));
    assert!(matches!(
        Reader { buf: &[0] }.finish(),
        Err(WireError::Malformed(_))
    ));
}

#[test]
fn wire_sampled_refuses_a_log_probability_that_is_not_one() {
    let good = Sampled {
        token: 5,
        logprob: -0.5,
        logits_blake3: [1; 32],
        signature: None,
    };
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e-12, 3.0] {
        let frame = Frame::new(
            1,
            2,
            Message::Sampled(Sampled {
                logprob: bad,
                ..good
            }),
        );
        let bytes = frame.encode().expect("the encoder writes what it is given");
        let err = Frame::decode(&bytes, &Limits::default()).unwrap_err();
        assert!(
            matches!(&err, WireError::Malformed(m) if m.contains("log-probability")),
            "{bad}: {err}"
        );
    }
}

#[test]
fn wire_forward_refuses_unknown_head_replies_and_samplers() {
    let forward = |head| {
        Frame::new(
            1,
            0,
            Message::Forward(Forward {
                model_id: model(),
                layers: 0..1,
                reply: Encoding::F32,
                head,
                input: ForwardInput::Tokens(vec![1]),
            }),
        )
    };
    // The head reply byte follows model id, layers and the reply encoding.
    let at = HEADER_LEN + 32 + 8 + 1;
    let mut bytes = forward(HeadReply::GreedyTokens).encode().expect("encode");
    bytes[at] = 3;
    let err = Frame::decode(&reseal(bytes), &Limits::default()).unwrap_err();
    assert!(
        matches!(&err, WireError::Malformed(m) if m.contains("head reply 3")),
        "{err}"
    );
    let mut bytes = forward(HeadReply::Sample(TokenSampler::Greedy))
        .encode()
        .expect("encode");
    bytes[at + 1] = 2;
    let err = Frame::decode(&reseal(bytes), &Limits::default()).unwrap_err();
    assert!(
        matches!(&err, WireError::Malformed(m) if m.contains("sampler tag 2")),
        "{err}"
    );
}

/// `bytes` with its checksum recomputed, so the payload parser meets them.
fn reseal(mut bytes: Vec<u8>) -> Vec<u8> {
    let body = bytes.len() - CHECKSUM_LEN;
    let sum = blake3::hash(&bytes[..body]);
    bytes[body..].copy_from_slice(sum.as_bytes());
    bytes
}

#[test]
fn a_peer_id_parses_back_to_its_key_and_nothing_else_does() {
    use crate::transport::{NodeAddr, PeerKey};
    let key = PeerKey([7; 32]);
    let text = key.to_string();
    assert!(text.starts_with("12D3KooW"), "{text}");
    assert_eq!(text.parse::<PeerKey>(), Ok(key));
    // Every one-character change, every truncation and extension is refused
    // or names another key.
    for i in 0..text.len() {
        let mut changed = text.clone().into_bytes();
        changed[i] = if changed[i] == b'2' { b'3' } else { b'2' };
        let changed = String::from_utf8(changed).unwrap();
        assert_ne!(changed.parse::<PeerKey>().ok(), Some(key), "{changed}");
        assert!(text[..i].parse::<PeerKey>().is_err(), "{i} characters");
    }
    assert!(format!("{text}1").parse::<PeerKey>().is_err());
    assert!("12D3KooW0OIl".parse::<PeerKey>().is_err(), "not base58");
    // A secp256k1 peer id is a peer id, but not one a node can have.
    assert!("16Uiu2HAmLhLvBoYaoZfaMUKuibM6ac163GwKY74c5kiSLg5KvLpY"
        .parse::<PeerKey>()
        .is_err());

    assert_eq!(
        NodeAddr::parse("10.0.0.1:7001", None, None),
        Ok(NodeAddr::Tcp("10.0.0.1:7001".parse().unwrap()))
    );
    let refused = NodeAddr::parse(&format!("/p2p/{text}"), None, None).unwrap_err();
    assert!(refused.contains("--network"), "{refused}");
    assert!(NodeAddr::parse("node-1", None, None).is_err());
}
