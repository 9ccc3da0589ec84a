//! The auditor: re-executes the hops of a transcript on its own hardware
//! and bisects a disputed hop to the first wrong step.
//!
//! For each hop the transcript holds a signed receipt: "on these input bytes
//! my layers answered these output bytes". The auditor
//!
//! 1. checks what the transcript binds by itself ([`transcript::binding`]): every
//!    hop signed, each signature and the aggregate, every token fed to a
//!    signed first hop, and the decode records' logits equal to the head's
//!    signed output (the logits the proofs' `C_z` commit to) with each token
//!    the sampler's pick from them (when the transcript keeps the logits);
//! 2. asks each node for its trace of the request (signed step receipts:
//!    enter, every layer, exit; see [`node::trail`]), checks it against the
//!    hop receipts, and has the node reveal its input, the hidden states
//!    entering and leaving its span, and its output, each checked against
//!    the signed digests;
//! 3. re-executes enter, the span and exit ([`Replayer`]) from the node's
//!    own input and compares ([`crate::fraud`] tolerances): accept, reject
//!    or ambiguous per hop, with the numbers; at the head, the revealed
//!    (signed) logits must also pick the transcript's next token with the
//!    transcript's sampler, so unproven tokens are checked without the
//!    transcript keeping the logits;
//! 4. for a rejected span, bisects over its layers (revealing the hidden
//!    states between them) to the first layer whose re-execution rejects,
//!    and writes that as a [`FraudProof`]; a rejected enter or exit is a
//!    fraud proof on its own.
//!
//! Nodes keep what this needs for their audit window (`zkinfer serve
//! --audit-window`): an audit runs while the nodes are up.

pub mod fraud;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use halo2_proofs::{pasta::EqAffine, poly::commitment::Params};
use verifier::answer::LogitOpening;
use verifier::bundle::Bundle;
use verifier::parse_hex_array;
use verifier::receipt::{self, PublicKey, Signature, Step, StepReceipt};

use crate::fraud::{
    compare, describe, AtPosition, Comparison, FraudProof, Replayer, Value, Verdict,
    FRAUD_PROOF_VERSION, HIDDEN,
};
use node::trail::f32_digest;
use transcript::binding::{self, BindingCheck};
use transcript::Transcript;
use wire::transport::{Dial, NodeAddr, NodeLink};
use wire::{Boundary, ForwardInput, Frame, Message, SignedStep};

/// `k` distinct positions of `all`, drawn with the system's randomness, so
/// that a node cannot know which of its forwards will be re-executed.
pub fn sample_positions(
    all: &BTreeSet<u64>,
    k: usize,
) -> Result<BTreeSet<u64>, <rand::rngs::SysRng as rand_core::TryRng>::Error> {
    use rand_core::TryRng;
    let mut left: Vec<u64> = all.iter().copied().collect();
    let mut chosen = BTreeSet::new();
    while chosen.len() < k && !left.is_empty() {
        let mut bytes = [0u8; 8];
        rand::rngs::SysRng.try_fill_bytes(&mut bytes)?;
        let i = (u64::from_le_bytes(bytes) % left.len() as u64) as usize;
        chosen.insert(left.swap_remove(i));
    }
    Ok(chosen)
}

/// What to audit.
#[derive(Clone, Debug, Default)]
pub struct AuditOptions {
    /// Forward positions to re-execute; `None`: all.
    pub positions: Option<BTreeSet<u64>>,
    /// Time allowed per question to a node (zero: 30 s).
    pub io_timeout: Duration,
    /// The libp2p host that reaches nodes named `/p2p/<peer id>` (each must
    /// answer with the receipt key the transcript names); `None`: such
    /// nodes are unreachable.
    pub peers: Option<Arc<dyn Dial>>,
}

/// One hop's audit: a hop of the transcript, with the numbers that decided.
#[derive(Clone, Debug, Serialize)]
pub struct HopAudit {
    pub node: String,
    pub layers: [usize; 2],
    pub position: u64,
    /// Re-executing the step into the first layer.
    pub enter: Option<Comparison>,
    /// Re-executing the span's layers from the node's own input.
    pub span: Option<Comparison>,
    /// Re-executing the step out of the last layer.
    pub exit: Option<Comparison>,
    pub verdict: Verdict,
    /// Why the hop could not be re-executed, or what contradicted itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The first step whose re-execution rejects (bisection).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad: Option<Step>,
}

/// Everything an audit found.
#[derive(Clone, Debug, Serialize)]
pub struct AuditReport {
    pub receipts: Vec<BindingCheck>,
    pub hops: Vec<HopAudit>,
    /// Reject if any check failed or any hop was rejected; else ambiguous
    /// if any hop was; else accept.
    pub verdict: Verdict,
    /// One per rejected hop that bisection pinned down, each already
    /// checked with [`FraudProof::check`].
    #[serde(skip)]
    pub fraud_proofs: Vec<FraudProof>,
    /// The logits the head revealed (each hashing to its signed output), by
    /// the position of the token they choose: what the head's proofs must
    /// open to ([`AuditReport::open_proofs`]).
    #[serde(skip)]
    pub head_logits: BTreeMap<u64, Vec<f32>>,
}

impl AuditReport {
    /// Opens each proof of `bundle` against the logits the head revealed:
    /// a proof (and the head's proof receipt for it) about other logits
    /// than the head signed is `Differs`; a proof of a position whose
    /// forward was not audited is `Unknown`.
    pub fn open_proofs(&self, bundle: &Bundle, params: &Params<EqAffine>) -> Vec<LogitOpening> {
        let fixed_point = bundle.shape.fixed_point;
        let logits: BTreeMap<u64, Vec<i64>> = self
            .head_logits
            .iter()
            .filter(|(_, l)| l.len() == bundle.shape.vocab)
            .filter_map(|(p, l)| Some((*p, fixed_point.quantize_all(l).ok()?)))
            .collect();
        verifier::answer::open_proofs(bundle, params, &logits)
    }
}

/// Why an audit could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the transcript is about model {transcript}, the model given is {given}: audit with the transcript's model")]
    WrongModel { transcript: String, given: String },
    #[error("{0}")]
    Transcript(String),
    #[error("re-execution failed: {0}")]
    Model(#[from] models::ModelError),
}

/// Audits `transcript` (whose side files are relative to `dir`) against the
/// model in `replayer`, asking the nodes named in it.
pub async fn audit(
    transcript: &Transcript,
    dir: &Path,
    replayer: &mut Replayer,
    options: &AuditOptions,
) -> Result<AuditReport, AuditError> {
    if transcript.model_id != replayer.model_id().to_string() {
        return Err(AuditError::WrongModel {
            transcript: transcript.model_id.clone(),
            given: replayer.model_id().to_string(),
        });
    }
    let receipts = binding::check(transcript, dir);
    let timeout = if options.io_timeout.is_zero() {
        Duration::from_secs(30)
    } else {
        options.io_timeout
    };
    let mut hops = Vec::new();
    let mut fraud_proofs = Vec::new();
    let mut head_logits = BTreeMap::new();
    for group in node_groups(transcript) {
        let mut audits = audit_node(
            transcript,
            &group,
            replayer,
            options,
            timeout,
            &mut head_logits,
        )
        .await?;
        fraud_proofs.append(&mut audits.1);
        hops.append(&mut audits.0);
    }
    hops.sort_by_key(|h| (h.position, h.layers));
    let verdict = if receipts.iter().any(|c| !c.passed) {
        Verdict::Reject
    } else {
        hops.iter()
            .map(|h| h.verdict)
            .max()
            .unwrap_or(Verdict::Accept)
    };
    Ok(AuditReport {
        receipts,
        hops,
        verdict,
        fraud_proofs,
        head_logits,
    })
}

/// The hops one node served under one request id, over one span.
struct NodeGroup {
    addr: String,
    layers: Range<usize>,
    request_id: u64,
    signer: Option<String>,
    /// The transcript's hops: position → (input, output) digests.
    hops: BTreeMap<u64, ([u8; 32], [u8; 32])>,
}

fn node_groups(transcript: &Transcript) -> Vec<NodeGroup> {
    let mut groups: Vec<NodeGroup> = Vec::new();
    for hop in &transcript.hops {
        let request_id = hop.receipt.as_ref().map_or(0, |r| r.request_id);
        let signer = hop.receipt.as_ref().map(|r| r.signer.clone());
        let layers = hop.layers[0]..hop.layers[1];
        let digests = (digest_of(&hop.input_blake3), digest_of(&hop.output_blake3));
        let found = groups.iter_mut().find(|g| {
            g.addr == hop.node
                && g.layers == layers
                && g.request_id == request_id
                && g.signer == signer
        });
        match found {
            Some(group) => {
                group.hops.insert(hop.position, digests);
            }
            None => groups.push(NodeGroup {
                addr: hop.node.clone(),
                layers,
                request_id,
                signer,
                hops: BTreeMap::from([(hop.position, digests)]),
            }),
        }
    }
    groups
}

/// A digest from the transcript; one that does not parse (the receipt
/// checks report it) is zeros, which no signed digest equals.
fn digest_of(hex: &str) -> [u8; 32] {
    parse_hex_array(hex).unwrap_or([0; 32])
}

/// Why a node's answers cannot be used in an audit (each becomes a hop's note).
#[derive(Debug, thiserror::Error)]
enum AnswerError {
    #[error("{0}")]
    Address(String),
    #[error("{0}")]
    Connect(#[from] std::io::Error),
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error("answered {got:?} to a {asked}")]
    Unexpected {
        got: wire::MessageType,
        asked: &'static str,
    },
    #[error("the trace has no {step:?} at position {position}")]
    Untraced { step: Step, position: u64 },
    #[error("the revealed {what} at {position} is not the signed one")]
    Unsigned { what: &'static str, position: u64 },
    #[error("the hidden states entering layer {layer} at {position} are not the signed ones")]
    UnsignedStates { layer: u32, position: u64 },
    #[error("the node revealed tokens as {0}")]
    Tokens(&'static str),
    #[error(transparent)]
    Model(#[from] models::ModelError),
    #[error("no forwards")]
    NoForwards,
}

/// The link to one node, for the questions of one request.
struct RequestLink {
    node: NodeLink,
    request_id: u64,
}

impl RequestLink {
    async fn ask(&mut self, position: u64, message: Message) -> Result<Message, AnswerError> {
        let frame = Frame::new(self.request_id, position, message);
        Ok(self.node.call(&frame).await?)
    }

    async fn reveal(
        &mut self,
        position: u64,
        boundary: Boundary,
    ) -> Result<ForwardInput, AnswerError> {
        match self.ask(position, Message::Reveal(boundary)).await? {
            Message::Revealed(input) => Ok(input),
            other => Err(AnswerError::Unexpected {
                got: other.message_type(),
                asked: "Reveal",
            }),
        }
    }
}

/// The hop audits of one node with `note` and no re-execution.
fn unaudited(group: &NodeGroup, verdict: Verdict, note: String) -> Vec<HopAudit> {
    unaudited_at(group, group.hops.keys().copied(), verdict, note)
}

/// [`unaudited`] for some positions only.
fn unaudited_at(
    group: &NodeGroup,
    positions: impl IntoIterator<Item = u64>,
    verdict: Verdict,
    note: String,
) -> Vec<HopAudit> {
    positions
        .into_iter()
        .map(|position| HopAudit {
            node: group.addr.clone(),
            layers: [group.layers.start, group.layers.end],
            position,
            enter: None,
            span: None,
            exit: None,
            verdict,
            note: Some(note.clone()),
            first_bad: None,
        })
        .collect()
}

/// A node's signed trace, checked and indexed by (position, step).
struct Trace {
    signer: PublicKey,
    steps: HashMap<(u64, Step), SignedStep>,
}

impl Trace {
    fn get(&self, position: u64, step: Step) -> Result<&SignedStep, AnswerError> {
        self.steps
            .get(&(position, step))
            .ok_or(AnswerError::Untraced { step, position })
    }
}

/// Audits the hops of one node; returns their audits and fraud proofs.
async fn audit_node(
    transcript: &Transcript,
    group: &NodeGroup,
    replayer: &mut Replayer,
    options: &AuditOptions,
    timeout: Duration,
    head_logits: &mut BTreeMap<u64, Vec<f32>>,
) -> Result<(Vec<HopAudit>, Vec<FraudProof>), AuditError> {
    let Some(signer_hex) = &group.signer else {
        return Ok((
            unaudited(
                group,
                Verdict::Ambiguous,
                "the node signs nothing: nothing to audit".into(),
            ),
            Vec::new(),
        ));
    };
    let Ok(signer) = PublicKey::from_hex(signer_hex) else {
        return Ok((
            unaudited(
                group,
                Verdict::Reject,
                "the receipt's signer key does not parse".into(),
            ),
            Vec::new(),
        ));
    };
    let model_id = digest_of(&transcript.model_id);
    let link = async {
        let addr = NodeAddr::parse(&group.addr, options.peers.as_ref(), Some(signer.to_bytes()))
            .map_err(AnswerError::Address)?;
        let node = NodeLink::connect(addr, timeout).await?;
        Ok::<_, AnswerError>(RequestLink {
            node,
            request_id: group.request_id,
        })
    }
    .await;
    let mut link = match link {
        Ok(link) => link,
        Err(e) => {
            return Ok((
                unaudited(group, Verdict::Ambiguous, format!("node unreachable: {e}")),
                Vec::new(),
            ))
        }
    };
    let trace = match link.ask(0, Message::TraceRequest).await {
        Ok(Message::Trace(steps)) => steps,
        Ok(other) => {
            let note = format!("answered {:?} to a TraceRequest", other.message_type());
            return Ok((unaudited(group, Verdict::Reject, note), Vec::new()));
        }
        Err(e) => {
            let note = format!("the node keeps no trace of the request: {e}");
            return Ok((unaudited(group, Verdict::Ambiguous, note), Vec::new()));
        }
    };
    // Every step must be signed by the hop's key.
    let forged = trace.iter().find(|s| {
        let receipt = StepReceipt {
            model_id,
            step: s.step,
            request_id: group.request_id,
            position: s.position,
            input: s.input,
            output: s.output,
        };
        Signature::from_bytes(&s.signature)
            .map(|sig| !receipt::verify(&signer, &receipt, &sig))
            .unwrap_or(true)
    });
    if let Some(s) = forged {
        let note = format!(
            "the trace's {:?} at {} is not signed by the hop's key",
            s.step, s.position
        );
        return Ok((unaudited(group, Verdict::Reject, note), Vec::new()));
    }
    let trace = Trace {
        signer,
        steps: trace
            .into_iter()
            .map(|s| ((s.position, s.step), s))
            .collect(),
    };
    let (start, end) = (group.layers.start as u32, group.layers.end as u32);
    // The trace must say what the receipts say; a forward the node no
    // longer keeps (audit window passed, or beyond its first 512) cannot be
    // re-executed.
    let mut kept = BTreeSet::new();
    for (&position, &(input, output)) in &group.hops {
        match (
            trace.get(position, Step::Enter(start)),
            trace.get(position, Step::Exit(end)),
        ) {
            (Ok(enter), Ok(exit)) if enter.input == input && exit.output == output => {
                kept.insert(position);
            }
            (Ok(_), Ok(_)) => {
                let note = format!(
                    "the node's signed trace contradicts its signed receipt at position {position}"
                );
                return Ok((unaudited(group, Verdict::Reject, note), Vec::new()));
            }
            _ => {}
        }
    }
    let selected = |p: &u64| options.positions.as_ref().is_none_or(|set| set.contains(p));
    let mut audits = unaudited_at(
        group,
        group
            .hops
            .keys()
            .copied()
            .filter(|p| selected(p) && !kept.contains(p)),
        Verdict::Ambiguous,
        "the node keeps no trace of this forward any more".into(),
    );
    let audited: Vec<u64> = kept.iter().copied().filter(selected).collect();
    let Some(&last) = audited.last() else {
        return Ok((audits, Vec::new()));
    };
    // Every forward the node kept up to the last audited one: attention
    // reads them all.
    let forwards: Vec<u64> = trace
        .steps
        .keys()
        .filter(|(p, s)| *p <= last && *s == Step::Enter(start))
        .map(|(p, _)| *p)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut auditor = Bisector {
        link: &mut link,
        trace: &trace,
        replayer,
        layers: group.layers.clone(),
        forwards: forwards.clone(),
        known: HashMap::new(),
    };
    let revealed = async {
        let mut inputs = BTreeMap::new();
        let mut outputs = BTreeMap::new();
        for &q in &forwards {
            let input = auditor.link.reveal(q, Boundary::Input).await?;
            if *input.digest().as_bytes() != auditor.trace.get(q, Step::Enter(start))?.input {
                return Err(AnswerError::Unsigned {
                    what: "input",
                    position: q,
                });
            }
            inputs.insert(q, input);
            let output = match auditor.link.reveal(q, Boundary::Output).await? {
                ForwardInput::Activations(a) => a,
                ForwardInput::Tokens(_) => return Err(AnswerError::Tokens("its output")),
            };
            if *blake3::hash(&output.data).as_bytes()
                != auditor.trace.get(q, Step::Exit(end))?.output
            {
                return Err(AnswerError::Unsigned {
                    what: "output",
                    position: q,
                });
            }
            outputs.insert(q, output);
        }
        auditor.boundary(start).await?;
        auditor.boundary(end).await?;
        Ok::<_, AnswerError>((inputs, outputs))
    }
    .await;
    let (inputs, outputs) = match revealed {
        Ok(values) => values,
        Err(e) => {
            let note = format!("the node did not reveal what it signed: {e}");
            return Ok((unaudited(group, Verdict::Reject, note), Vec::new()));
        }
    };
    let entering = auditor.known[&start].clone();
    let leaving = auditor.known[&end].clone();
    let span_inputs: Vec<(u64, &[f32])> = forwards
        .iter()
        .map(|q| (*q, entering[q].as_slice()))
        .collect();
    let span_outputs = auditor
        .replayer
        .run_layers(group.layers.clone(), &span_inputs)?;
    let span_outputs: HashMap<u64, Vec<f32>> = forwards.iter().copied().zip(span_outputs).collect();
    let head_end = transcript.hops.iter().map(|h| h.layers[1]).max();
    let head_end = head_end.unwrap_or(usize::MAX);
    let mut proofs = Vec::new();
    for &p in &audited {
        let enter = auditor
            .replayer
            .check_enter(group.layers.start, &inputs[&p], &entering[&p])?;
        let span = compare(&span_outputs[&p], &leaving[&p], HIDDEN);
        let exit = auditor
            .replayer
            .check_exit(group.layers.end, &leaving[&p], &outputs[&p])?;
        let mut verdict = enter.verdict.max(span.verdict).max(exit.verdict);
        // The head's signed logits must pick the transcript's next token:
        // this checks unproven tokens without the transcript keeping logits.
        let next = p + fed(&inputs[&p]);
        let mismatch = (group.layers.end == head_end)
            .then(|| picks_next_token(transcript, &outputs[&p], next))
            .flatten();
        if let (true, Ok(values)) = (group.layers.end == head_end, outputs[&p].to_f32()) {
            head_logits.insert(next, values);
        }
        if mismatch.is_some() {
            verdict = Verdict::Reject;
        }
        let mut audit = HopAudit {
            node: group.addr.clone(),
            layers: [group.layers.start, group.layers.end],
            position: p,
            enter: Some(enter),
            span: Some(span),
            exit: Some(exit),
            verdict,
            note: mismatch,
            first_bad: None,
        };
        // One fraud proof per node: the first rejected hop's.
        if verdict == Verdict::Reject && proofs.is_empty() {
            let found = if enter.verdict == Verdict::Reject {
                Ok(auditor.proof_of(
                    Step::Enter(start),
                    p,
                    vec![AtPosition {
                        position: p,
                        value: Value::of(&inputs[&p]),
                    }],
                    Value::f32(&entering[&p], auditor.d()),
                    enter,
                ))
            } else if span.verdict == Verdict::Reject {
                auditor.bisect(p).await
            } else {
                Ok(auditor.proof_of(
                    Step::Exit(end),
                    p,
                    vec![AtPosition {
                        position: p,
                        value: Value::f32(&leaving[&p], auditor.d()),
                    }],
                    Value::of(&ForwardInput::Activations(outputs[&p].clone())),
                    exit,
                ))
            };
            match found {
                Ok(proof) => {
                    let checked = proof.check(auditor.replayer)?;
                    if checked.valid {
                        audit.first_bad = Some(proof.step);
                        proofs.push(proof);
                    } else {
                        audit.note = Some(format!(
                            "bisection found no provable step: {}",
                            checked.reason
                        ));
                    }
                }
                Err(e) => audit.note = Some(format!("bisection failed: {e}")),
            }
        }
        audits.push(audit);
    }
    Ok((audits, proofs))
}

/// Positions a forward fed.
fn fed(input: &ForwardInput) -> u64 {
    match input {
        ForwardInput::Tokens(tokens) => tokens.len() as u64,
        ForwardInput::Activations(a) => u64::from(a.rows),
    }
}

/// Why the head's revealed logits (signed, for the forward ending before
/// `position`) do not pick the transcript's token at `position`, if they
/// do not; `None` also past the last token (the forward that fed it).
fn picks_next_token(
    transcript: &Transcript,
    logits: &wire::Activations,
    position: u64,
) -> Option<String> {
    let index = position.checked_sub(transcript.prompt_tokens.len() as u64)?;
    let &token = transcript.tokens.get(usize::try_from(index).ok()?)?;
    let picked = transcript
        .nonce()
        .map_err(|e| e.to_string())
        .and_then(|nonce| {
            transcript
                .sampler_at(&nonce, position)
                .map_err(|e| e.to_string())
        })
        .and_then(|sampler| {
            let values = logits.to_f32().map_err(|e| e.to_string())?;
            node::sampling::pick_with(&values, sampler).map_err(|e| e.to_string())
        });
    match picked {
        Ok(pick) if pick.token == token => None,
        Ok(pick) => Some(format!(
            "the head's signed logits pick token {} at position {position}, the transcript has {token}",
            pick.token
        )),
        Err(e) => Some(format!("picking the token at position {position}: {e}")),
    }
}

/// Bisection state for one node: the hidden states revealed so far.
struct Bisector<'a> {
    link: &'a mut RequestLink,
    trace: &'a Trace,
    replayer: &'a mut Replayer,
    layers: Range<usize>,
    /// The forwards up to the last audited position.
    forwards: Vec<u64>,
    /// Layer boundary → forward position → hidden states entering it.
    known: HashMap<u32, HashMap<u64, Vec<f32>>>,
}

impl Bisector<'_> {
    fn d(&self) -> usize {
        self.replayer.hidden_size()
    }

    /// Reveals (once) the hidden states entering layer `l` (`l` = the
    /// span's end: after its last layer) at every forward, checked against
    /// the signed digests.
    async fn boundary(&mut self, l: u32) -> Result<(), AnswerError> {
        if self.known.contains_key(&l) {
            return Ok(());
        }
        let start = self.layers.start as u32;
        let mut values = HashMap::new();
        for &q in &self.forwards {
            let ForwardInput::Activations(a) = self.link.reveal(q, Boundary::Layer(l)).await?
            else {
                return Err(AnswerError::Tokens("hidden states"));
            };
            let v = a.to_f32()?;
            let signed = if l == start {
                self.trace.get(q, Step::Enter(start))?.output
            } else {
                self.trace.get(q, Step::Layer(l - 1))?.output
            };
            if f32_digest(&v) != signed {
                return Err(AnswerError::UnsignedStates {
                    layer: l,
                    position: q,
                });
            }
            values.insert(q, v);
        }
        self.known.insert(l, values);
        Ok(())
    }

    /// Runs layers `from..to` from the node's states entering `from` and
    /// compares with its states entering `to` at position `p`.
    async fn check(&mut self, from: u32, to: u32, p: u64) -> Result<Comparison, AnswerError> {
        self.boundary(from).await?;
        self.boundary(to).await?;
        let forwards: Vec<u64> = self.forwards.iter().copied().filter(|q| *q <= p).collect();
        let inputs: Vec<(u64, &[f32])> = forwards
            .iter()
            .map(|q| (*q, self.known[&from][q].as_slice()))
            .collect();
        let outputs = self
            .replayer
            .run_layers(from as usize..to as usize, &inputs)?;
        let last = outputs.last().ok_or(AnswerError::NoForwards)?;
        Ok(compare(last, &self.known[&to][&p], HIDDEN))
    }

    /// Bisects the span at position `p` (whose end disagrees) to the first
    /// layer that rejects on its own, as a fraud proof.
    async fn bisect(&mut self, p: u64) -> Result<FraudProof, AnswerError> {
        let (mut lo, mut hi) = (self.layers.start as u32, self.layers.end as u32);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.check(lo, mid, p).await?.verdict == Verdict::Accept {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let found = self.check(lo, hi, p).await?;
        let d = self.d();
        let inputs = self
            .forwards
            .iter()
            .filter(|q| **q <= p)
            .map(|q| AtPosition {
                position: *q,
                value: Value::f32(&self.known[&lo][q], d),
            })
            .collect();
        let output = Value::f32(&self.known[&hi][&p], d);
        Ok(self.proof_of(Step::Layer(lo), p, inputs, output, found))
    }

    fn proof_of(
        &self,
        step: Step,
        position: u64,
        inputs: Vec<AtPosition>,
        output: Value,
        found: Comparison,
    ) -> FraudProof {
        let signature = self
            .trace
            .get(position, step)
            .map(|s| s.signature)
            .unwrap_or([0; 32]);
        FraudProof {
            version: FRAUD_PROOF_VERSION,
            model_id: self.replayer.model_id().to_string(),
            signer: self.trace.signer.to_hex(),
            request_id: self.link.request_id,
            position,
            step,
            signature: verifier::hex(&signature),
            inputs,
            output,
            found,
        }
    }
}

impl AuditReport {
    /// One line per hop, for people.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for check in &self.receipts {
            lines.push(format!(
                "{:<9} {}: {}",
                if check.passed { "ok" } else { "FAILED" },
                check.name,
                check.detail
            ));
        }
        for hop in &self.hops {
            let number = |c: &Option<Comparison>| match c {
                None => "-".to_string(),
                Some(c) if c.max_abs_diff == 0.0 => "0".to_string(),
                Some(c) => format!("{:.2e}", c.max_abs_diff),
            };
            let mut line = format!(
                "{:<9} position {:>4} layers {:>2}..{:<2} {} (max |diff| enter {} span {} exit {})",
                format!("{:?}", hop.verdict).to_lowercase(),
                hop.position,
                hop.layers[0],
                hop.layers[1],
                hop.node,
                number(&hop.enter),
                number(&hop.span),
                number(&hop.exit),
            );
            if let Some(step) = hop.first_bad {
                line.push_str(&format!("; first bad step: {}", describe(step)));
            }
            if let Some(note) = &hop.note {
                line.push_str(&format!("; {note}"));
            }
            lines.push(line);
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use transcript::{Nonce, ProvingPolicy, TranscriptSampler};

    fn transcript(tokens: Vec<u32>, sampler: TranscriptSampler) -> Transcript {
        let nonce = Nonce::from_seed(3);
        Transcript {
            version: transcript::VERSION,
            model_id: "ab".repeat(32),
            prompt: String::new(),
            prompt_tokens: vec![2, 3],
            sampler,
            client_nonce: nonce.to_hex(),
            request_id: nonce.request_id(),
            tokens,
            hops: Vec::new(),
            logprobs: Vec::new(),
            records: None,
            proving: Some(ProvingPolicy::All),
            proof_receipts: Vec::new(),
            receipts_signature: None,
        }
    }

    fn logits(values: &[f32]) -> wire::Activations {
        wire::Activations::encode(values, 1, values.len() as u32, wire::Encoding::F32)
            .expect("encode")
    }

    #[test]
    fn the_heads_logits_must_pick_the_transcripts_token() {
        let row = logits(&[0.1, 3.0, -2.0, 1.0]);
        let greedy = transcript(vec![1, 0], TranscriptSampler::Greedy {});
        assert_eq!(picks_next_token(&greedy, &row, 2), None);
        let note = picks_next_token(&greedy, &row, 3).expect("token 0 is not the argmax");
        assert!(note.contains("pick token 1 at position 3"), "{note}");
        // Past the last token (the forward that fed it) and in the prompt.
        assert_eq!(picks_next_token(&greedy, &row, 4), None);
        assert_eq!(picks_next_token(&greedy, &row, 1), None);
        // Sampling: the pick follows r from the transcript's nonce.
        let sampled = TranscriptSampler::Sample { temperature: 1.0 };
        let nonce = Nonce::from_seed(3);
        let sampler = transcript(vec![0], sampled.clone())
            .sampler_at(&nonce, 2)
            .expect("sampler");
        let token = node::sampling::pick_with(&row.to_f32().expect("f32"), sampler)
            .expect("pick")
            .token;
        assert_eq!(
            picks_next_token(&transcript(vec![token], sampled.clone()), &row, 2),
            None
        );
        let other = (token + 1) % 4;
        assert!(picks_next_token(&transcript(vec![other], sampled), &row, 2).is_some());
    }
}
