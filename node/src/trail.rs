//! What a signing node keeps of the forwards it served, so that an auditor
//! can bisect a disputed hop (see `audit`).
//!
//! For every forward of a request the node keeps the bytes it was sent, the
//! hidden states entering each layer of its span and after the last one, and
//! the bytes it answered. Asked for a trace, it signs one step receipt per
//! step (`verifier::receipt::StepReceipt`: enter, each layer, exit) binding
//! those values by their blake3 digests; asked to reveal a boundary, it
//! sends the values. A trail lives for the node's audit window after the
//! request's last forward, rewinds with the request (speculative decoding),
//! and holds at most [`MAX_FORWARDS`] forwards per request. All trails
//! together hold at most a byte budget: past it the least recently used
//! requests' trails are dropped whole, and a forward that does not fit even
//! then is not kept (its audit finds no trace).

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use verifier::receipt::{SecretKey, Step, StepReceipt};

use models::model_id::ModelId;
use transcript::f32_bytes;
use wire::{Activations, Boundary, Encoding, ForwardInput, SignedStep, WireError};

/// The most forwards one request's trail holds (later ones are not kept).
pub const MAX_FORWARDS: usize = 512;

/// One forward as the node computed it.
#[derive(Clone, Debug)]
pub struct ForwardTrail {
    /// What the node was sent.
    pub input: ForwardInput,
    /// Hidden states `[rows, d]` entering each layer of the span, then
    /// after its last layer: `span + 1` matrices, row-major.
    pub boundaries: Vec<Vec<f32>>,
    /// Rows of every boundary matrix.
    pub rows: u32,
    /// What the node answered.
    pub output: Activations,
}

impl ForwardTrail {
    /// Bytes the trail holds for this forward.
    fn bytes(&self) -> usize {
        let input = match &self.input {
            ForwardInput::Tokens(tokens) => 4 * tokens.len(),
            ForwardInput::Activations(a) => a.data.len(),
        };
        let boundaries: usize = self.boundaries.iter().map(|b| 4 * b.len()).sum();
        input + boundaries + self.output.data.len()
    }

    fn boundary(&self, i: usize, cols: u32) -> Activations {
        Activations {
            rows: self.rows,
            cols,
            encoding: Encoding::F32,
            data: f32_bytes(&self.boundaries[i]),
        }
    }
}

/// The digest of hidden states inside a hop: blake3 of their F32 encoding.
pub fn f32_digest(values: &[f32]) -> [u8; 32] {
    *blake3::hash(&f32_bytes(values)).as_bytes()
}

/// The context digest of a layer's input after the forward at `position`
/// whose input to that layer has blake3 `input`, given the context before
/// it (zeros before the first forward). A layer step's signed input is this
/// digest: attention reads every earlier position, so the statement binds
/// the whole history the layer saw, not only the last forward's rows.
pub fn chain(context: &[u8; 32], position: u64, input: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"zkinfer.context.v1");
    h.update(context);
    h.update(&position.to_le_bytes());
    h.update(input);
    *h.finalize().as_bytes()
}

/// The steps of a forward over `layers`, in order.
pub fn steps(layers: &Range<usize>) -> impl Iterator<Item = Step> + '_ {
    std::iter::once(Step::Enter(layers.start as u32))
        .chain(layers.clone().map(|l| Step::Layer(l as u32)))
        .chain(std::iter::once(Step::Exit(layers.end as u32)))
}

struct RequestTrail {
    forwards: BTreeMap<u64, ForwardTrail>,
    /// [`ForwardTrail::bytes`] of `forwards`, kept with them.
    bytes: usize,
    last_used: Instant,
}

/// Every request's trail on one node.
pub struct Trails {
    model_id: ModelId,
    layers: Range<usize>,
    hidden: u32,
    keep: Duration,
    max_bytes: usize,
    requests: Mutex<HashMap<u64, RequestTrail>>,
}

impl Trails {
    /// Trails of a shard over `layers` with hidden size `hidden`, kept for
    /// `keep` after a request's last forward, `max_bytes` in all.
    pub fn new(
        model_id: ModelId,
        layers: Range<usize>,
        hidden: usize,
        keep: Duration,
        max_bytes: usize,
    ) -> Trails {
        Trails {
            model_id,
            layers,
            hidden: hidden as u32,
            keep,
            max_bytes,
            requests: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, RequestTrail>> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps the forward of `request` at `position`, dropping any kept at
    /// that position or later (the request rewound).
    pub fn record(&self, request: u64, position: u64, forward: ForwardTrail) {
        let mut requests = self.lock();
        let trail = requests.entry(request).or_insert_with(|| RequestTrail {
            forwards: BTreeMap::new(),
            bytes: 0,
            last_used: Instant::now(),
        });
        let dropped = trail.forwards.split_off(&position);
        trail.bytes -= dropped.values().map(ForwardTrail::bytes).sum::<usize>();
        trail.last_used = Instant::now();
        let size = forward.bytes();
        // Past the budget even with every other trail gone: keep theirs.
        if trail.forwards.len() >= MAX_FORWARDS || trail.bytes + size > self.max_bytes {
            return;
        }
        let mut total: usize = requests.values().map(|t| t.bytes).sum();
        if total + size > self.max_bytes {
            let mut others: Vec<(Instant, u64, usize)> = requests
                .iter()
                .filter(|(id, _)| **id != request)
                .map(|(id, t)| (t.last_used, *id, t.bytes))
                .collect();
            others.sort();
            for (_, id, bytes) in others {
                if total + size <= self.max_bytes {
                    break;
                }
                requests.remove(&id);
                total -= bytes;
            }
        }
        if let Some(trail) = requests.get_mut(&request) {
            trail.forwards.insert(position, forward);
            trail.bytes += size;
        }
    }

    /// Signs a step receipt for every step of every kept forward of
    /// `request` with `key`.
    pub fn trace(&self, request: u64, key: &SecretKey) -> Result<Vec<SignedStep>, WireError> {
        let requests = self.lock();
        let trail = requests
            .get(&request)
            .ok_or(WireError::UnknownRequest(request))?;
        let mut signed = Vec::new();
        // One running context digest per layer of the span.
        let mut contexts = vec![[0u8; 32]; self.layers.len()];
        for (&position, forward) in &trail.forwards {
            let hashes: Vec<[u8; 32]> = forward.boundaries.iter().map(|b| f32_digest(b)).collect();
            let mut digests = Vec::with_capacity(hashes.len() + 2);
            digests.push((*forward.input.digest().as_bytes(), hashes[0]));
            for (context, pair) in contexts.iter_mut().zip(hashes.windows(2)) {
                *context = chain(context, position, &pair[0]);
                digests.push((*context, pair[1]));
            }
            digests.push((
                hashes[hashes.len() - 1],
                *blake3::hash(&forward.output.data).as_bytes(),
            ));
            for (step, (input, output)) in steps(&self.layers).zip(digests) {
                let receipt = StepReceipt {
                    model_id: self.model_id.0,
                    step,
                    request_id: request,
                    position,
                    input,
                    output,
                };
                signed.push(SignedStep {
                    position,
                    step,
                    input,
                    output,
                    signature: key.sign(&receipt).to_bytes(),
                });
            }
        }
        Ok(signed)
    }

    /// The bytes at `boundary` of the forward of `request` at `position`.
    pub fn reveal(
        &self,
        request: u64,
        position: u64,
        boundary: Boundary,
    ) -> Result<ForwardInput, WireError> {
        let requests = self.lock();
        let forward = requests
            .get(&request)
            .ok_or(WireError::UnknownRequest(request))?
            .forwards
            .get(&position)
            .ok_or_else(|| {
                WireError::Malformed(format!(
                    "request {request} has no forward kept at position {position}"
                ))
            })?;
        Ok(match boundary {
            Boundary::Input => forward.input.clone(),
            Boundary::Output => ForwardInput::Activations(forward.output.clone()),
            Boundary::Layer(l) => {
                let (start, end) = (self.layers.start as u32, self.layers.end as u32);
                if !(start..=end).contains(&l) {
                    return Err(WireError::WrongLayers {
                        served: start..end,
                        requested: l..l + 1,
                    });
                }
                ForwardInput::Activations(forward.boundary((l - start) as usize, self.hidden))
            }
        })
    }

    /// Forgets trails unused for longer than the audit window.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.lock()
            .retain(|_, t| now.duration_since(t.last_used) < self.keep);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn forward(value: f32, rows: u32) -> ForwardTrail {
        let d = 2;
        let matrix = vec![value; rows as usize * d];
        ForwardTrail {
            input: ForwardInput::Tokens(vec![7; rows as usize]),
            boundaries: vec![matrix.clone(), matrix.clone(), matrix.clone()],
            rows,
            output: Activations::encode(&matrix, rows, d as u32, Encoding::F32).expect("encode"),
        }
    }

    fn trails() -> Trails {
        Trails::new(ModelId([3; 32]), 0..2, 2, Duration::from_secs(60), 1 << 20)
    }

    #[test]
    fn trails_stay_within_their_byte_budget_least_recently_used_first() {
        let one = forward(1.0, 3).bytes();
        let t = Trails::new(ModelId([3; 32]), 0..2, 2, Duration::from_secs(60), 3 * one);
        let kept = |t: &Trails, r: u64| t.lock().get(&r).map_or(0, |t| t.forwards.len());
        t.record(1, 0, forward(1.0, 3));
        t.record(1, 3, forward(1.0, 3));
        t.record(2, 0, forward(1.0, 3));
        assert_eq!((kept(&t, 1), kept(&t, 2)), (2, 1));
        // A fourth forward does not fit: request 1, the least recently used, goes whole.
        t.record(2, 3, forward(1.0, 3));
        assert_eq!((kept(&t, 1), kept(&t, 2)), (0, 2));
        // A forward larger than the whole budget is not kept, and costs nobody theirs.
        t.record(3, 0, forward(1.0, 30));
        assert_eq!((kept(&t, 2), kept(&t, 3)), (2, 0));
        assert!(t.lock().values().map(|t| t.bytes).sum::<usize>() <= 3 * one);
    }

    #[test]
    fn a_layer_statement_binds_every_earlier_forward_and_rewinds_drop_later_ones() {
        let key = SecretKey::from_seed(&[5; 32]).expect("key");
        let (a, b) = (trails(), trails());
        for t in [&a, &b] {
            t.record(9, 0, forward(1.0, 3));
            t.record(9, 3, forward(2.0, 1));
        }
        // Another history before position 4 changes layer statements there.
        b.record(9, 0, forward(1.5, 3));
        b.record(9, 3, forward(2.0, 1));
        let (ta, tb) = (
            a.trace(9, &key).expect("trace"),
            b.trace(9, &key).expect("trace"),
        );
        let at = |t: &[SignedStep], step| {
            *t.iter()
                .find(|s| s.position == 3 && s.step == step)
                .expect("step")
        };
        assert_ne!(at(&ta, Step::Layer(0)).input, at(&tb, Step::Layer(0)).input);
        // Enter and exit of that forward depend on it alone.
        assert_eq!(at(&ta, Step::Enter(0)).input, at(&tb, Step::Enter(0)).input);
        assert_eq!(at(&ta, Step::Exit(2)), at(&tb, Step::Exit(2)));
        // 2 forwards × (enter, 2 layers, exit).
        assert_eq!(ta.len(), 8);
        // A rewind to position 3 replaces the forward there and drops later ones.
        a.record(9, 4, forward(3.0, 1));
        a.record(9, 3, forward(4.0, 1));
        let positions: BTreeSet<u64> = a
            .trace(9, &key)
            .expect("trace")
            .iter()
            .map(|s| s.position)
            .collect();
        assert_eq!(positions, BTreeSet::from([0, 3]));
        // Boundaries outside the span, unknown requests and positions are refused.
        assert!(a.reveal(9, 0, Boundary::Layer(3)).is_err());
        assert!(a.reveal(8, 0, Boundary::Input).is_err());
        assert!(a.reveal(9, 1, Boundary::Input).is_err());
        assert_eq!(
            a.reveal(9, 0, Boundary::Input).expect("input"),
            ForwardInput::Tokens(vec![7; 3])
        );
    }
}
