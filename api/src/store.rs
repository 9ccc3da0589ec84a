//! Answers kept for download: each answer's transcript and, once its proofs
//! are done, their bundle. Kept for a retention time, up to a count and a
//! byte budget, the oldest dropped first, so a stranger's requests cannot
//! grow the server without bound.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use transcript::Transcript;

/// Where an answer's proofs stand.
#[derive(Debug, Clone, PartialEq)]
pub enum ProofState {
    /// No proofs were asked for.
    None,
    /// Asked for `positions`; the head node is proving.
    Pending { positions: Vec<u64> },
    /// Finished: the bundle (when any proof came back) and the positions
    /// that failed, with why.
    Done {
        positions: Vec<u64>,
        bundle: Option<Vec<u8>>,
        failures: Vec<(u64, String)>,
    },
    /// Collecting them failed as a whole.
    Failed { positions: Vec<u64>, reason: String },
}

impl ProofState {
    /// Positions asked for.
    pub fn positions(&self) -> &[u64] {
        match self {
            ProofState::None => &[],
            ProofState::Pending { positions }
            | ProofState::Done { positions, .. }
            | ProofState::Failed { positions, .. } => positions,
        }
    }
}

/// One answer.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The transcript; it gains the head's proof receipts once the proofs
    /// are done.
    pub transcript: Transcript,
    pub proofs: ProofState,
    /// When it was kept.
    pub created: Instant,
    /// What it holds, as counted against the byte budget.
    bytes: usize,
}

impl Stored {
    fn measure(&mut self) {
        let bundle = match &self.proofs {
            ProofState::Done {
                bundle: Some(b), ..
            } => b.len(),
            _ => 0,
        };
        self.bytes = serde_json::to_vec(&self.transcript).map_or(0, |j| j.len()) + bundle;
    }
}

/// Answers by id.
pub struct Store {
    entries: Mutex<HashMap<String, Stored>>,
    retention: Duration,
    capacity: usize,
    max_bytes: usize,
}

impl Store {
    pub fn new(retention: Duration, capacity: usize, max_bytes: usize) -> Store {
        Store {
            entries: Mutex::new(HashMap::new()),
            retention,
            capacity: capacity.max(1),
            max_bytes,
        }
    }

    pub fn retention(&self) -> Duration {
        self.retention
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Stored>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `transcript` under `id`, dropping expired answers and, past
    /// the count or the byte budget, the oldest.
    pub fn insert(&self, id: &str, transcript: Transcript, proofs: ProofState) {
        let now = Instant::now();
        let mut stored = Stored {
            transcript,
            proofs,
            created: now,
            bytes: 0,
        };
        stored.measure();
        let mut entries = self.lock();
        entries.retain(|_, e| now.duration_since(e.created) < self.retention);
        entries.insert(id.to_string(), stored);
        self.evict(&mut entries, id);
    }

    /// Drops the oldest answers but `keep` while over the count or the
    /// budget (`keep` itself goes too if it alone is over the budget).
    fn evict(&self, entries: &mut HashMap<String, Stored>, keep: &str) {
        loop {
            let bytes: usize = entries.values().map(|e| e.bytes).sum();
            if entries.len() <= self.capacity && bytes <= self.max_bytes {
                return;
            }
            let oldest = entries
                .iter()
                .filter(|(k, _)| k.as_str() != keep || entries.len() == 1)
                .min_by_key(|(_, e)| e.created)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(oldest) => entries.remove(&oldest),
                None => return,
            };
        }
    }

    /// The answer under `id`, unless it expired or was dropped.
    pub fn get(&self, id: &str) -> Option<Stored> {
        let entries = self.lock();
        entries
            .get(id)
            .filter(|e| e.created.elapsed() < self.retention)
            .cloned()
    }

    /// Records the proofs' outcome and the transcript with the head's proof
    /// receipts (nothing if the answer is gone).
    pub fn settle(&self, id: &str, transcript: Option<Transcript>, proofs: ProofState) {
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(id) {
            if let Some(transcript) = transcript {
                entry.transcript = transcript;
            }
            entry.proofs = proofs;
            entry.measure();
            self.evict(&mut entries, id);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript(request_id: u64) -> Transcript {
        serde_json::from_value(serde_json::json!({
            "version": transcript::VERSION,
            "model_id": "00",
            "prompt": "",
            "prompt_tokens": [2],
            "sampler": {"greedy": {}},
            "client_nonce": "00000000000000000000000000000000",
            "request_id": request_id,
            "tokens": [],
            "hops": [],
            "proving": null,
        }))
        .expect("a transcript")
    }

    #[test]
    fn past_the_capacity_the_oldest_answer_goes() {
        let store = Store::new(Duration::from_secs(60), 2, 1 << 20);
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            store.insert(id, transcript(i as u64), ProofState::None);
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(store.len(), 2);
        assert!(store.get("a").is_none());
        assert_eq!(store.get("c").expect("kept").transcript.request_id, 2);
    }

    #[test]
    fn an_expired_answer_is_gone_and_settling_it_does_nothing() {
        let store = Store::new(Duration::from_millis(20), 8, 1 << 20);
        store.insert(
            "a",
            transcript(1),
            ProofState::Pending { positions: vec![3] },
        );
        assert_eq!(store.get("a").expect("fresh").proofs.positions(), [3]);
        std::thread::sleep(Duration::from_millis(30));
        assert!(store.get("a").is_none());
        store.insert("b", transcript(2), ProofState::None);
        assert_eq!(store.len(), 1, "the expired one is dropped on insert");
        store.settle("a", None, ProofState::None);
        assert!(store.get("a").is_none());
    }

    #[test]
    fn past_the_byte_budget_the_oldest_answers_go_and_one_too_big_goes_too() {
        let one = serde_json::to_vec(&transcript(0)).expect("json").len();
        let store = Store::new(Duration::from_secs(60), 100, 2 * one + one / 2);
        for id in ["a", "b", "c"] {
            store.insert(id, transcript(0), ProofState::None);
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(store.len(), 2);
        assert!(store.get("a").is_none());
        // A bundle that does not fit with the others pushes them out, and
        // one that does not fit at all is not kept.
        let done = |bytes: usize| ProofState::Done {
            positions: vec![1],
            bundle: Some(vec![0; bytes]),
            failures: vec![],
        };
        store.settle("c", None, done(one));
        assert!(store.get("b").is_none());
        assert!(store.get("c").is_some());
        store.settle("c", None, done(3 * one));
        assert!(store.is_empty());
    }

    #[test]
    fn settling_replaces_the_transcript_and_the_proof_state() {
        let store = Store::new(Duration::from_secs(60), 8, 1 << 20);
        store.insert(
            "a",
            transcript(1),
            ProofState::Pending { positions: vec![4] },
        );
        let done = ProofState::Done {
            positions: vec![4],
            bundle: Some(vec![1, 2, 3]),
            failures: vec![],
        };
        store.settle("a", Some(transcript(9)), done.clone());
        let stored = store.get("a").expect("kept");
        assert_eq!(stored.transcript.request_id, 9);
        assert_eq!(stored.proofs, done);
    }
}
