//! Stop sequences over streamed text: text is handed on only once no stop
//! sequence can still begin in it, and the first stop sequence ends it.

/// The generated text so far, as far as it may be shown.
#[derive(Debug, Default)]
pub struct StopText {
    stops: Vec<String>,
    text: String,
    /// Bytes of `text` already handed on.
    sent: usize,
    hit: bool,
}

impl StopText {
    pub fn new(stops: Vec<String>) -> StopText {
        StopText {
            stops,
            ..StopText::default()
        }
    }

    /// Whether a stop sequence was seen: nothing more is handed on.
    pub fn hit(&self) -> bool {
        self.hit
    }

    /// Takes `piece` in; returns the text that may now be shown.
    pub fn push(&mut self, piece: &str) -> String {
        if self.hit {
            return String::new();
        }
        self.text.push_str(piece);
        // A stop sequence may end in this piece and begin in held text.
        let from = self.sent.saturating_sub(self.longest_stop());
        let from = floor_char_boundary(&self.text, from);
        let found = self
            .stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        let end = match found {
            Some(at) => {
                self.hit = true;
                self.text.truncate(at);
                at
            }
            None => self.text.len() - self.held_suffix(),
        };
        self.take_until(end)
    }

    /// The text held back for a stop sequence that never came.
    pub fn finish(&mut self) -> String {
        let end = self.text.len();
        self.take_until(end)
    }

    fn take_until(&mut self, end: usize) -> String {
        let end = end.max(self.sent);
        let out = self.text[self.sent..end].to_string();
        self.sent = end;
        out
    }

    fn longest_stop(&self) -> usize {
        self.stops.iter().map(String::len).max().unwrap_or(0)
    }

    /// Bytes at the end of the text that begin some stop sequence.
    fn held_suffix(&self) -> usize {
        let unsent = &self.text[self.sent..];
        self.stops
            .iter()
            .flat_map(|stop| {
                (1..stop.len().min(unsent.len() + 1))
                    .rev()
                    .filter(|&n| stop.is_char_boundary(n))
                    .find(|&n| unsent.ends_with(&stop[..n]))
            })
            .max()
            .unwrap_or(0)
    }
}

fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, String, bool) {
        let mut text = StopText::new(stops.iter().map(|s| s.to_string()).collect());
        let shown: Vec<String> = pieces.iter().map(|p| text.push(p)).collect();
        let hit = text.hit();
        (shown, text.finish(), hit)
    }

    #[test]
    fn text_without_stops_passes_at_once() {
        let (shown, rest, hit) = run(&[], &["a", "b c"]);
        assert_eq!(shown, ["a", "b c"]);
        assert_eq!(rest, "");
        assert!(!hit);
    }

    #[test]
    fn a_stop_split_across_pieces_is_held_then_cut() {
        let (shown, rest, hit) = run(&["\n\n"], &["one", "\n", "\ntwo"]);
        assert_eq!(shown, ["one", "", ""]);
        assert_eq!(rest, "");
        assert!(hit);
    }

    #[test]
    fn held_text_is_released_when_the_stop_does_not_follow() {
        let (shown, rest, hit) = run(&["END"], &["the E", "N", "d", " x", "EN"]);
        assert_eq!(shown, ["the ", "", "ENd", " x", ""]);
        assert_eq!(rest, "EN");
        assert!(!hit);
    }

    #[test]
    fn the_earliest_of_several_stops_wins_and_nothing_follows() {
        let (shown, _, hit) = run(&["b", "xyz"], &["axyzb", "more"]);
        assert_eq!(shown, ["a", ""]);
        assert!(hit);
    }

    #[test]
    fn multibyte_text_is_never_split_inside_a_character() {
        let (shown, rest, hit) = run(&["é!"], &["café", " ok", "é", "!"]);
        assert_eq!(shown, ["caf", "é ok", "", ""]);
        assert_eq!(rest, "");
        assert!(hit);
    }
}
