//! Proving alongside inference, end to end on loopback with the tiny random
//! Gemma 3: two shard nodes (the head one proves), sampled generation with
//! the nonce-derived r, challenged positions proven and collected, then
//! `zkinfer verify --transcript` on what the client wrote — and on tampered
//! copies of it. One real proof (k = 17) is made.

use std::fs::File;
use std::io::BufReader;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use candle_core::quantized::gguf_file;
use candle_core::Device;
use circuits::{CircuitShape, FixedPoint};
use client::generation::{generate, Backend, GenerationOptions, ModelInfo, Prompt, Quiet};
use client::session::SessionConfig;
use client::Hop;
use harness::loopback::{spawn_node, test_prover};
use models::model_id::{model_id, ModelId};
use models::testing::{tiny_gemma3_config, write_random_gemma3};
use models::Model;
use node::NodeConfig;
use serde_json::Value;
use transcript::{Nonce, ProvingPolicy, Transcript};
use verifier::answer::{check_answer, LogitOpening, Verdict};
use verifier::receipt::SecretKey;
use verifier::ParamsCache;
use wire::Encoding;

const SPLIT: usize = 4;
const TOKENS: usize = 6;
const CHALLENGES: usize = 2;

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zkinfer-prove-alongside-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn shard(path: &Path, layers: Range<usize>) -> (ModelId, Model) {
    let mut reader = BufReader::new(File::open(path).expect("open"));
    let content = gguf_file::Content::read(&mut reader).expect("gguf");
    let id = model_id(&content, &mut reader).expect("model id");
    let model = Model::from_gguf(&content, &mut reader, &Device::Cpu, layers).expect("load");
    (id, model)
}

/// Starts the two nodes on a runtime of their own; returns their hops.
fn start_nodes(path: &Path, shape: CircuitShape) -> (tokio::runtime::Runtime, Vec<Hop>, ModelId) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    let layers = tiny_gemma3_config().layers;
    let mut hops = Vec::new();
    let mut id = None;
    for range in [0..SPLIT, SPLIT..layers] {
        let (model_id, model) = shard(path, range.clone());
        id = Some(model_id);
        let proving = model
            .has_head()
            .then(|| test_prover(shape, ParamsCache::default_dir()));
        // Each node signs its hops' receipts with a key of its own.
        let signer = SecretKey::from_seed(&[range.start as u8 + 1; 32]).map(Arc::new);
        let config = NodeConfig {
            proving,
            signer,
            ..NodeConfig::new(model_id, range.clone())
        };
        hops.push(spawn_node(&runtime, model, config).expect("a node"));
    }
    (runtime, hops, id.expect("a shard"))
}

fn zkinfer(args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_zkinfer"))
        .args(args)
        .output()
        .expect("run zkinfer");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn challenged_tokens_are_proven_by_the_head_node_and_verified_against_the_transcript() {
    let dir = scratch();
    let model_path = dir.join("tiny.gguf");
    let config = tiny_gemma3_config();
    write_random_gemma3(&model_path, &config, 5).expect("model");
    let shape =
        CircuitShape::new(config.vocab, FixedPoint::default(), CHALLENGES, 1).expect("shape");
    let (_nodes, hops, id) = start_nodes(&model_path, shape);

    let session = SessionConfig {
        encoding: Encoding::F32,
        io_timeout: Duration::from_secs(30),
        activation_bytes: config.hidden * 4,
        ..SessionConfig::default()
    };
    let mut backend = Backend::remote(hops, config.layers, id, session).expect("chain");
    let nonce = Nonce::from_seed(3);
    let options = GenerationOptions {
        max_tokens: TOKENS,
        temperature: Some(0.8),
        nonce,
        request_id: nonce.request_id(),
        stops: Vec::new(),
        proving: Some(ProvingPolicy::Challenged {
            challenges: CHALLENGES,
        }),
        // The logits are kept to tamper with them below; the same transcript
        // without them is what a default generation writes.
        keep_logits: true,
        observe_logits: false,
    };
    let model = ModelInfo {
        id: Some(id),
        layers: config.layers,
        vocab: config.vocab,
        context: config.context,
    };
    let prompt = Prompt {
        text: "(token ids)".into(),
        tokens: vec![2, 17, 101, 45],
    };
    let generation =
        generate(&mut backend, model, None, prompt, &options, &mut Quiet).expect("generate");
    let transcript = generation.transcript;
    assert_eq!(transcript.tokens.len(), TOKENS);
    let proofs = generation.proofs.expect("proofs were asked for");
    let challenged = transcript.challenged_positions(CHALLENGES);
    assert_eq!(proofs.asked, challenged);
    assert!(proofs.failures.is_empty(), "{:?}", proofs.failures);
    let bundle = proofs.bundle.expect("a bundle");
    let proven: Vec<u64> = bundle.steps().map(|(_, s)| s.position).collect();
    assert_eq!(proven, challenged);

    let transcript_path = dir.join("answer.json");
    let bundle_path = dir.join("answer.zkp");
    let write = |t: &Transcript, path: &Path| {
        std::fs::write(path, serde_json::to_vec(t).expect("json")).expect("write")
    };
    write(&transcript, &transcript_path);
    std::fs::write(&bundle_path, bundle.to_bytes()).expect("write bundle");
    let require = format!("challenged:{CHALLENGES}");
    let verify = |t: &Path, extra: &[&str]| {
        let mut args = vec![
            "verify",
            "--transcript",
            t.to_str().expect("utf-8"),
            "--bundle",
            bundle_path.to_str().expect("utf-8"),
            "--json",
        ];
        if !extra.contains(&"--require") {
            args.extend_from_slice(&["--require", &require]);
        }
        args.extend_from_slice(extra);
        zkinfer(&args)
    };

    let id_hex = id.to_string();
    let (code, report, err) = verify(&transcript_path, &["--model-id", &id_hex]);
    assert_eq!(code, 0, "{report} {err}");
    assert_eq!(report["proved"], CHALLENGES);
    assert_eq!(report["not_proved"], TOKENS - CHALLENGES);
    assert_eq!(report["invalid"], 0);
    for token in report["tokens"].as_array().expect("tokens") {
        let position = token["position"].as_u64().expect("position");
        let required = challenged.contains(&position);
        assert_eq!(token["required"], required);
        assert_eq!(
            token["verdict"],
            if required { "proved" } else { "not proved" }
        );
    }

    // Every hop is signed, by two nodes, and the aggregate checks.
    assert_eq!(
        report["receipts"]["signed_hops"],
        transcript.hops.len(),
        "{report}"
    );
    assert_eq!(report["receipts"]["nodes"], 2);
    assert_eq!(report["receipts"]["unsigned_hops"], 0);

    // A hop digest changed after the fact breaks the aggregate signature.
    let mut rehashed = transcript.clone();
    rehashed.hops[1].output_blake3 = "ab".repeat(32);
    let path = dir.join("tampered-hop.json");
    write(&rehashed, &path);
    let (code, report, _) = verify(&path, &[]);
    assert_eq!(code, 1, "{report}");
    let problems = report["problems"].to_string();
    assert!(problems.contains("aggregate signature"), "{problems}");

    // What a hostile client could change without any proof noticing: each
    // is refused by the check that binds that field to a signature.
    let unproven = transcript
        .token_positions()
        .find(|p| !challenged.contains(p))
        .expect("an unproven position");
    let failed_checks = |tampered: &Transcript, name: &str| -> Vec<String> {
        let path = dir.join(format!("tampered-{name}.json"));
        write(tampered, &path);
        let (code, report, err) = verify(&path, &[]);
        assert_eq!(code, 1, "{name}: {report} {err}");
        assert_eq!(report["valid"], false, "{name}");
        report["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .filter(|c| c["passed"] == false)
            .map(|c| c["name"].as_str().expect("name").to_string())
            .collect()
    };
    // (a) An unproven token changed in the tokens and the records, with the
    // proving policy removed: the next forward was signed for the real token,
    // and the head's logits do not pick the new one.
    let mut swapped = transcript.clone();
    let index = (unproven - swapped.prompt_tokens.len() as u64) as usize;
    swapped.tokens[index] = (swapped.tokens[index] + 1) % config.vocab as u32;
    if let Some(transcript::RecordsRef::Inline(records)) = &mut swapped.records {
        for step in records.steps.iter_mut().filter(|s| s.position == unproven) {
            step.token = swapped.tokens[index];
        }
    }
    swapped.proving = None;
    let failed = failed_checks(&swapped, "unproven-token");
    assert!(
        failed.contains(&"first hops signed for the transcript's tokens".to_string()),
        "{failed:?}"
    );
    assert!(
        failed.contains(&"tokens follow from the recorded logits".to_string()),
        "{failed:?}"
    );
    // (b) One byte of one hop's own signature (the aggregate left as it was).
    let mut resigned = transcript.clone();
    let receipt = resigned.hops[2].receipt.as_mut().expect("signed hop");
    let mut bytes = verifier::parse_hex(&receipt.signature, 32).expect("hex");
    bytes[5] ^= 0x20;
    receipt.signature = verifier::hex(&bytes);
    let failed = failed_checks(&resigned, "hop-signature");
    assert!(
        failed.contains(&"each hop's signature".to_string()),
        "{failed:?}"
    );
    // (c) One logit of an unproven record.
    let mut relogited = transcript.clone();
    if let Some(transcript::RecordsRef::Inline(records)) = &mut relogited.records {
        let step = records
            .steps
            .iter_mut()
            .find(|s| s.position == unproven)
            .expect("step");
        step.logits[3] -= 0.25;
    }
    let failed = failed_checks(&relogited, "unproven-logit");
    assert!(
        failed.contains(&"records open the head's signed logits".to_string()),
        "{failed:?}"
    );
    // The caller, not the transcript, says what must be proven.
    let (code, report, _) = verify(&transcript_path, &["--require", "all"]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["required"].as_array().map(Vec::len), Some(TOKENS));
    let (code, report, _) = verify(&transcript_path, &["--require", "none"]);
    assert_eq!(code, 0, "{report}");

    // Another model id than the expected one.
    let (code, report, _) = verify(&transcript_path, &["--model-id", &"0".repeat(64)]);
    assert_eq!(code, 1, "{report}");

    // The rest is checked in this process, with the same library calls the
    // CLI makes.
    let (params, proofs) = verifier::verify_bundle_keeping_params(
        &bundle,
        &ParamsCache::new(ParamsCache::default_dir()),
    )
    .expect("verifies");
    let check = |t: &Transcript| {
        let expected = t
            .expected_steps(&dir, shape.fixed_point, shape.vocab)
            .expect("expected steps");
        let openings = t.proof_openings(&bundle, &params, &expected.logits);
        let mut answer = check_answer(
            &bundle,
            &proofs,
            &openings,
            &expected.steps,
            &t.required_positions(t.proving),
        );
        answer.problems.extend(expected.problems);
        answer
    };
    let invalid_reasons = |answer: &verifier::answer::AnswerReport| -> Vec<String> {
        answer
            .tokens
            .iter()
            .filter_map(|t| match &t.verdict {
                Verdict::Invalid(reason) => Some(reason.clone()),
                _ => None,
            })
            .collect()
    };
    assert!(check(&transcript).valid());

    // A proven token changed in the transcript.
    let mut tampered = transcript.clone();
    let index = (challenged[0] - tampered.prompt_tokens.len() as u64) as usize;
    tampered.tokens[index] = (tampered.tokens[index] + 1) % config.vocab as u32;
    let answer = check(&tampered);
    assert!(!answer.valid());
    assert!(!answer.problems.is_empty() || !invalid_reasons(&answer).is_empty());

    // Another nonce: r is recomputed, so the proven samplers no longer match.
    let mut renonced = transcript.clone();
    renonced.client_nonce = Nonce::from_seed(4).to_hex();
    let answer = check(&renonced);
    assert!(!answer.valid());

    // Other logits in the records: the proofs commit to the node's.
    let mut relogited = transcript.clone();
    if let Some(transcript::RecordsRef::Inline(records)) = &mut relogited.records {
        let step = records
            .steps
            .iter_mut()
            .find(|s| s.position == challenged[1])
            .expect("step");
        step.logits[0] += 0.5;
    }
    let answer = check(&relogited);
    assert!(!answer.valid());
    let reasons = invalid_reasons(&answer);
    assert!(
        reasons.iter().any(|r| r.contains("other logits")),
        "{reasons:?}"
    );

    // Without the logits the head's proof receipts tie the proofs to its
    // signed logits digests, on the command line too.
    let mut digests_only = transcript.clone();
    digests_only.records = None;
    assert_eq!(digests_only.proof_receipts.len(), bundle.proofs.len());
    assert!(check(&digests_only).valid());
    let slim_path = dir.join("slim.json");
    write(&digests_only, &slim_path);
    let (code, report, err) = verify(&slim_path, &[]);
    assert_eq!(code, 0, "{report} {err}");
    assert_eq!(report["proved"], CHALLENGES);
    // A receipt with one signature bit changed, or none at all.
    let mut forged = digests_only.clone();
    let mut bytes = verifier::parse_hex(&forged.proof_receipts[0].signature, 32).expect("hex");
    bytes[3] ^= 0x10;
    forged.proof_receipts[0].signature = verifier::hex(&bytes);
    let reasons = invalid_reasons(&check(&forged));
    assert!(
        reasons.iter().any(|r| r.contains("other logits")),
        "{reasons:?}"
    );
    let mut unattested = digests_only.clone();
    unattested.proof_receipts.clear();
    let reasons = invalid_reasons(&check(&unattested));
    assert_eq!(reasons.len(), CHALLENGES, "{reasons:?}");
    assert!(
        reasons.iter().all(|r| r.contains("nothing ties")),
        "{reasons:?}"
    );
    // The audit asks the head for the logits it signed and opens the proofs
    // against them: the honest bundle opens, one proven with another seed
    // than it states does not.
    let audit = |bundle: &Path| {
        zkinfer(&[
            "audit",
            "--transcript",
            slim_path.to_str().expect("utf-8"),
            "--model",
            model_path.to_str().expect("utf-8"),
            "--bundle",
            bundle.to_str().expect("utf-8"),
            "--json",
        ])
    };
    let (code, report, err) = audit(&bundle_path);
    assert_eq!(code, 0, "{report} {err}");
    let openings: Vec<&str> = report["proofs"]
        .as_array()
        .expect("proofs")
        .iter()
        .map(|p| p["opening"].as_str().expect("opening"))
        .collect();
    assert_eq!(openings, vec!["opens"; bundle.proofs.len()], "{report}");
    let mut reseeded = bundle.clone();
    reseeded.proofs[0].seed[0] ^= 1;
    let reseeded_path = dir.join("reseeded.zkp");
    std::fs::write(&reseeded_path, reseeded.to_bytes()).expect("write bundle");
    let (code, report, err) = audit(&reseeded_path);
    assert_eq!(code, 1, "{report} {err}");
    assert_eq!(report["verdict"], "reject", "{report}");
    assert_eq!(report["proofs"][0]["opening"], "other logits", "{report}");
    // The head's proof receipt signs the seed: the reseeded bundle is not what
    // it attested, so a third party cannot make an honest opening look false.
    let attested = digests_only.attested_openings(&bundle);
    assert!(
        attested.iter().all(|o| *o == LogitOpening::Attested),
        "{attested:?}"
    );
    let attested = digests_only.attested_openings(&reseeded);
    assert_eq!(attested[0], LogitOpening::Differs, "{attested:?}");
    // An auditor that signs verdicts accuses nobody for a bundle the head never
    // attested, and the head when it signed a receipt for the false opening.
    let (ledger, result) = (format!("0x{}", "ab".repeat(20)), "cd".repeat(32));
    let auditor = dir.join("auditor.key");
    std::fs::write(
        &auditor,
        SecretKey::from_seed(&[9; 32]).expect("key").to_hex(),
    )
    .expect("key");
    let audit_signing = |transcript: &Path, bundle: &Path| {
        zkinfer(&[
            "audit",
            "--transcript",
            transcript.to_str().expect("utf-8"),
            "--model",
            model_path.to_str().expect("utf-8"),
            "--bundle",
            bundle.to_str().expect("utf-8"),
            "--sign-verdict",
            auditor.to_str().expect("utf-8"),
            "--ledger",
            &ledger,
            "--result",
            &result,
            "--json",
        ])
    };
    let (code, report, err) = audit_signing(&slim_path, &reseeded_path);
    assert_eq!(code, 1, "{report} {err}");
    assert_eq!(report["verdicts"], serde_json::json!([]), "{report}");
    let head_key = SecretKey::from_seed(&[SPLIT as u8 + 1; 32]).expect("the head's key");
    let mut lying = digests_only.clone();
    let steps: Vec<(u64, [u8; 32])> = reseeded.proofs[0]
        .steps
        .iter()
        .map(|s| {
            let hop = lying.head_hop_before(s.position).expect("head hop");
            let digest = verifier::parse_hex(&hop.output_blake3, 32).expect("hex");
            (s.position, digest.try_into().expect("32 bytes"))
        })
        .collect();
    let request_id = lying
        .head_hop_before(steps[0].0)
        .and_then(|h| h.receipt.as_ref())
        .expect("a signed head hop")
        .request_id;
    let commitments =
        circuits::opening::proof_commitments_digest(reseeded.shape, &reseeded.proofs[0].bytes)
            .expect("commitments");
    let receipt = verifier::receipt::ProofReceipt {
        model_id: verifier::parse_hex(&lying.model_id, 32)
            .expect("hex")
            .try_into()
            .expect("32"),
        request_id,
        commitments,
        seed: reseeded.proofs[0].seed,
        steps,
    };
    lying.proof_receipts[0].signature = head_key.sign(&receipt).to_hex();
    let lying_path = dir.join("lying.json");
    std::fs::write(&lying_path, serde_json::to_vec(&lying).expect("json")).expect("write");
    let (code, report, err) = audit_signing(&lying_path, &reseeded_path);
    assert_eq!(code, 1, "{report} {err}");
    let verdicts = report["verdicts"].as_array().expect("verdicts");
    assert_eq!(verdicts.len(), 1, "{report}");
    let verdict = std::fs::read(verdicts[0].as_str().expect("path")).expect("verdict");
    let verdict = ledger::SignedVerdict::parse(&verdict).expect("a verdict");
    assert!(verdict.verifies());
    assert_eq!(verdict.verdict.accused, head_key.public());

    // A head hop's logits digest changed: its receipt no longer verifies,
    // and neither does the proof receipt that names it.
    let mut redigested = digests_only.clone();
    let head = redigested
        .head_hop_before(challenged[0])
        .expect("head hop")
        .position;
    let last = redigested
        .hops
        .iter()
        .map(|h| h.layers[1])
        .max()
        .expect("hops");
    let hop = redigested
        .hops
        .iter_mut()
        .find(|h| h.position == head && h.layers[1] == last)
        .expect("hop");
    hop.output_blake3 = blake3::hash(b"other logits").to_hex().to_string();
    let reasons = invalid_reasons(&check(&redigested));
    assert!(
        reasons.iter().any(|r| r.contains("other logits")),
        "{reasons:?}"
    );

    // A policy of `all`: the tokens without proofs are now required.
    let mut all = transcript.clone();
    all.proving = Some(ProvingPolicy::All);
    let answer = check(&all);
    assert!(!answer.valid());
    assert_eq!(answer.counts().2, 0);

    let _ = std::fs::remove_dir_all(&dir);
}
