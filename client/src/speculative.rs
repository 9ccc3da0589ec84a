//! Speculative greedy decoding across the pipeline.
//!
//! Every token of plain decoding costs one trip through every node, so on a
//! wide-area network a token costs at least the sum of the hops' round trips.
//! Here a cheap local draft (prompt lookup: the tokens that followed the
//! latest earlier occurrence of the context's last n-gram) proposes up to `k`
//! tokens; one forward of `[next, d1 .. dk]` through the chain returns the
//! greedy token after each of them ([`Session::feed_greedy`]); the drafts are
//! accepted up to the first that differs from the greedy choice, the greedy
//! token after the last accepted one comes for free, and the nodes rewind
//! past the rejected drafts ([`Session::rewind`]). The output is the greedy
//! decoding's, token for token (up to the rounding of batched rows, which
//! may differ from one-row forwards in the last bit).

use crate::session::Session;
use crate::ClientError;

/// How a speculative generation went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpeculativeStats {
    /// Forwards through the chain after the prompt.
    pub forwards: usize,
    /// Draft tokens proposed.
    pub drafted: usize,
    /// Draft tokens accepted.
    pub accepted: usize,
}

impl SpeculativeStats {
    /// Accepted over proposed drafts (0 when none were proposed).
    pub fn acceptance(&self) -> f64 {
        if self.drafted == 0 {
            0.0
        } else {
            self.accepted as f64 / self.drafted as f64
        }
    }
}

/// Up to `k` tokens that followed the latest earlier occurrence of the
/// longest suffix of `context` (from `max_ngram` tokens down to 1) that
/// occurred before. Empty when nothing repeats.
pub fn prompt_lookup_draft(context: &[u32], k: usize, max_ngram: usize) -> Vec<u32> {
    for n in (1..=max_ngram.min(context.len().saturating_sub(1))).rev() {
        let suffix = &context[context.len() - n..];
        // Latest earlier start, not overlapping the suffix itself.
        let found = (0..context.len() - n)
            .rev()
            .find(|&start| &context[start..start + n] == suffix);
        if let Some(start) = found {
            let from = start + n;
            let to = (from + k).min(context.len());
            if from < to {
                return context[from..to].to_vec();
            }
        }
    }
    Vec::new()
}

/// Greedy generation of up to `max_tokens` tokens after `prompt` with drafts
/// of up to `k` tokens (`k = 0`: plain decoding, one token per forward, with
/// the head answering only the greedy token). Stops after a token in
/// `stops`. `on_token` sees each token as it is accepted.
pub async fn generate_greedy(
    session: &mut Session,
    prompt: &[u32],
    max_tokens: usize,
    k: usize,
    stops: &[u32],
    mut on_token: impl FnMut(u32),
) -> Result<(Vec<u32>, SpeculativeStats), ClientError> {
    let mut stats = SpeculativeStats::default();
    let mut out = Vec::new();
    if max_tokens == 0 {
        return Ok((out, stats));
    }
    let greedy = session.feed_greedy(prompt).await?;
    let mut next = *greedy
        .last()
        .ok_or(ClientError::Usage("empty prompt".into()))?;
    let mut context = prompt.to_vec();
    loop {
        out.push(next);
        context.push(next);
        on_token(next);
        if stops.contains(&next) || out.len() >= max_tokens {
            return Ok((out, stats));
        }
        // One token is always produced by the forward itself; drafts beyond
        // what is still wanted would be wasted.
        let wanted = max_tokens - out.len() - 1;
        let draft = prompt_lookup_draft(&context, k.min(wanted), 3);
        let base = session.position();
        let mut chunk = Vec::with_capacity(1 + draft.len());
        chunk.push(next);
        chunk.extend_from_slice(&draft);
        let greedy = session.feed_greedy(&chunk).await?;
        stats.forwards += 1;
        stats.drafted += draft.len();
        let accepted = draft
            .iter()
            .zip(&greedy)
            .take_while(|(d, g)| d == g)
            .count();
        stats.accepted += accepted;
        for &token in &draft[..accepted] {
            out.push(token);
            context.push(token);
            on_token(token);
            if stops.contains(&token) || out.len() >= max_tokens {
                session.rewind(base + 1 + accepted as u64);
                return Ok((out, stats));
            }
        }
        next = greedy[accepted];
        session.rewind(base + 1 + accepted as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drafts_continue_the_latest_earlier_occurrence_of_the_longest_suffix() {
        // "... 5 6 7 | 9 ... 5 6 7" -> continue with what followed: 9 1 2
        let context = [5, 6, 7, 9, 1, 2, 3, 5, 6, 7];
        assert_eq!(prompt_lookup_draft(&context, 3, 3), [9, 1, 2]);
        assert_eq!(prompt_lookup_draft(&context, 10, 3), [9, 1, 2, 3, 5, 6, 7]);
        // The latest occurrence wins.
        assert_eq!(prompt_lookup_draft(&[1, 4, 1, 8, 1], 1, 3), [8]);
        // Falls back to shorter n-grams; nothing repeats -> no draft.
        assert_eq!(prompt_lookup_draft(&[3, 4, 9, 4], 2, 3), [9, 4]);
        assert!(prompt_lookup_draft(&[1, 2, 3], 4, 3).is_empty());
        assert!(prompt_lookup_draft(&[], 4, 3).is_empty());
        assert!(prompt_lookup_draft(&[1, 2, 1], 0, 3).is_empty());
    }
}
