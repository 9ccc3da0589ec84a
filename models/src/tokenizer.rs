//! The SentencePiece-style BPE tokenizer stored in a GGUF file's metadata
//! (`tokenizer.ggml.model = "llama"`), as llama.cpp implements it
//! (`llm_tokenizer_spm`).
//!
//! Encoding, for each call:
//! 1. user-defined tokens (type 4: newline, space and tab runs, html tags) are
//!    split out of the raw text first and stay atomic;
//! 2. in every remaining fragment spaces become `▁` (U+2581);
//! 3. the fragment is split into characters, and the adjacent pair whose
//!    concatenation is a vocabulary token with the highest score is merged,
//!    again and again (ties go to the left-most pair);
//! 4. each final symbol maps to its token, or, when it is not in the
//!    vocabulary, to one byte-fallback token `<0xXX>` per UTF-8 byte.
//!
//! Decoding is the inverse: `▁` becomes a space, byte tokens are reassembled
//! into UTF-8, and control tokens (`<bos>`, `<eos>`, ...) produce no text.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;

use candle_core::quantized::gguf_file::{Content, Value};

/// What SentencePiece writes for a space inside a token.
const SPACE_MARKER: char = '\u{2581}';

/// GGUF metadata keys read by [`Tokenizer::from_gguf`].
mod keys {
    pub const MODEL: &str = "tokenizer.ggml.model";
    pub const TOKENS: &str = "tokenizer.ggml.tokens";
    pub const SCORES: &str = "tokenizer.ggml.scores";
    pub const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
    pub const BOS: &str = "tokenizer.ggml.bos_token_id";
    pub const EOS: &str = "tokenizer.ggml.eos_token_id";
    pub const UNK: &str = "tokenizer.ggml.unknown_token_id";
    pub const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
    pub const ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
}

/// Why a tokenizer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A required GGUF metadata key is absent.
    #[error("GGUF metadata has no `{0}`")]
    MissingKey(&'static str),
    /// A GGUF metadata key holds a value of the wrong type or range.
    #[error("GGUF metadata `{key}` should be {expected}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
    },
    /// The file's tokenizer is not the SentencePiece-style one implemented here.
    #[error(
        "unsupported tokenizer model `{0}` (only `llama`, SentencePiece-style BPE, is supported)"
    )]
    UnsupportedModel(String),
    /// The vocabulary's parts disagree with each other.
    #[error("inconsistent tokenizer vocabulary: {0}")]
    InvalidVocabulary(String),
}

/// Token types as GGUF stores them (`tokenizer.ggml.token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
    /// Any other code; such tokens produce no text, as in llama.cpp.
    Undefined,
}

impl TokenType {
    fn from_code(code: i64) -> Self {
        match code {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => Self::Undefined,
        }
    }
}

/// A SentencePiece-style BPE tokenizer (llama.cpp's "SPM" vocabulary type).
///
/// Built once per model; encoding and decoding take `&self`, so one tokenizer
/// can serve many threads.
#[derive(Clone)]
pub struct Tokenizer {
    tokens: Vec<String>,
    scores: Vec<f32>,
    types: Vec<TokenType>,
    /// Token text to id; for duplicated texts, the lowest id.
    token_to_id: HashMap<String, u32>,
    /// User-defined tokens indexed by their first byte, longest first, so the
    /// splitter tries only the few that can match at a position.
    user_defined: Vec<Vec<u32>>,
    /// Control tokens (`<bos>`, `<start_of_turn>`) the same way, for
    /// [`Tokenizer::encode_special`].
    control: Vec<Vec<u32>>,
    /// The `<0xXX>` token of every byte, where the vocabulary has it.
    byte_tokens: [Option<u32>; 256],
    bos: u32,
    eos: u32,
    unk: Option<u32>,
    add_bos: bool,
    add_space_prefix: bool,
}

impl fmt::Debug for Tokenizer {
    // The derived form would print all 262,144 tokens.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("unk", &self.unk)
            .field("add_bos", &self.add_bos)
            .field("add_space_prefix", &self.add_space_prefix)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Builds the tokenizer from GGUF metadata.
    ///
    /// Requires `tokenizer.ggml.model = "llama"`, the `tokens`, `scores` and
    /// `token_type` arrays (of one length) and the BOS and EOS ids; the unknown
    /// token id, `add_bos_token` (default true) and `add_space_prefix`
    /// (default true, as in llama.cpp) are optional.
    ///
    /// # Errors
    ///
    /// Never panics; returns [`TokenizerError`] when a key is missing,
    /// ill-typed or out of range, when the arrays' lengths differ, or when the
    /// tokenizer model is not `llama`.
    pub fn from_gguf(content: &Content) -> Result<Tokenizer, TokenizerError> {
        let metadata = &content.metadata;
        let model = string_value(metadata, keys::MODEL)?;
        if model != "llama" {
            return Err(TokenizerError::UnsupportedModel(model.to_owned()));
        }

        let tokens = array_value(metadata, keys::TOKENS)?
            .iter()
            .map(|value| match value {
                Value::String(text) => Ok(text.clone()),
                _ => Err(wrong_type(keys::TOKENS, "an array of strings")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let scores = array_value(metadata, keys::SCORES)?
            .iter()
            .map(|value| match value {
                Value::F32(score) => Ok(*score),
                Value::F64(score) => Ok(*score as f32),
                _ => Err(wrong_type(keys::SCORES, "an array of floats")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let types = array_value(metadata, keys::TOKEN_TYPE)?
            .iter()
            .map(|value| {
                integer(value)
                    .and_then(|code| i32::try_from(code).ok())
                    .ok_or(wrong_type(keys::TOKEN_TYPE, "an array of 32-bit integers"))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let bos = id_value(metadata, keys::BOS)?;
        let eos = id_value(metadata, keys::EOS)?;
        let unk = match metadata.get(keys::UNK) {
            Some(_) => Some(id_value(metadata, keys::UNK)?),
            None => None,
        };

        let mut tokenizer = Self::from_parts(tokens, scores, types, bos, eos, unk)?;
        tokenizer.add_bos = bool_value(metadata, keys::ADD_BOS, true)?;
        tokenizer.add_space_prefix = bool_value(metadata, keys::ADD_SPACE_PREFIX, true)?;
        Ok(tokenizer)
    }

    /// Builds the tokenizer from plain vectors: token texts, scores (merge
    /// priorities, higher merges first) and GGUF type codes, all of one
    /// length. `add_bos` starts true and `add_space_prefix` false.
    pub(crate) fn from_parts(
        tokens: Vec<String>,
        scores: Vec<f32>,
        types: Vec<i32>,
        bos: u32,
        eos: u32,
        unk: Option<u32>,
    ) -> Result<Tokenizer, TokenizerError> {
        if scores.len() != tokens.len() || types.len() != tokens.len() {
            return Err(TokenizerError::InvalidVocabulary(format!(
                "{} tokens but {} scores and {} types",
                tokens.len(),
                scores.len(),
                types.len()
            )));
        }
        if u32::try_from(tokens.len()).is_err() {
            return Err(TokenizerError::InvalidVocabulary(format!(
                "{} tokens do not fit 32-bit ids",
                tokens.len()
            )));
        }
        for (name, id) in [("BOS", Some(bos)), ("EOS", Some(eos)), ("unknown", unk)] {
            if let Some(id) = id.filter(|&id| id as usize >= tokens.len()) {
                return Err(TokenizerError::InvalidVocabulary(format!(
                    "{name} id {id} is outside the {} tokens",
                    tokens.len()
                )));
            }
        }
        let types: Vec<TokenType> = types
            .into_iter()
            .map(|code| TokenType::from_code(code.into()))
            .collect();

        let mut token_to_id = HashMap::with_capacity(tokens.len());
        for (id, text) in (0u32..).zip(&tokens) {
            token_to_id.entry(text.clone()).or_insert(id);
        }

        let by_first_byte = |wanted: TokenType| {
            let mut table = vec![Vec::new(); 256];
            for (id, (text, kind)) in (0u32..).zip(tokens.iter().zip(&types)) {
                // An empty token would match everywhere and split nothing.
                if let (true, Some(&first)) = (*kind == wanted, text.as_bytes().first()) {
                    table[usize::from(first)].push(id);
                }
            }
            for candidates in &mut table {
                candidates.sort_by_key(|&id| (std::cmp::Reverse(tokens[id as usize].len()), id));
            }
            table
        };
        let user_defined = by_first_byte(TokenType::UserDefined);
        let control = by_first_byte(TokenType::Control);

        let mut byte_tokens = [None; 256];
        for (byte, slot) in (0..=u8::MAX).zip(byte_tokens.iter_mut()) {
            *slot = token_to_id.get(&format!("<0x{byte:02X}>")).copied();
        }

        Ok(Tokenizer {
            tokens,
            scores,
            types,
            token_to_id,
            user_defined,
            control,
            byte_tokens,
            bos,
            eos,
            unk,
            add_bos: true,
            add_space_prefix: false,
        })
    }

    /// Encodes `text` into token ids, with BOS first when `add_bos` is true.
    ///
    /// Never panics, and every id is below [`Tokenizer::vocab_size`].
    /// [`Tokenizer::decode`] maps the ids back to `text` when the vocabulary
    /// has `▁` and all 256 byte tokens (Gemma's does), no space prefix is
    /// configured, and `text` has no `▁` of its own: that one decodes as a
    /// space, as in SentencePiece. The empty text gives no ids (just BOS when
    /// asked for).
    pub fn encode(&self, text: &str, add_bos: bool) -> Vec<u32> {
        self.encode_with(text, add_bos, false)
    }

    /// [`Tokenizer::encode`], with control tokens written as text
    /// (`<start_of_turn>`, `<end_of_turn>`) taken as those tokens, as
    /// llama.cpp tokenizes a rendered chat template (`parse_special`). Not
    /// for text that should reach the model as written.
    pub fn encode_special(&self, text: &str, add_bos: bool) -> Vec<u32> {
        self.encode_with(text, add_bos, true)
    }

    fn encode_with(&self, text: &str, add_bos: bool, special: bool) -> Vec<u32> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos {
            ids.push(self.bos);
        }
        // llama.cpp adds the space prefix at the start and after each
        // user-defined token, when the vocabulary asks for it.
        let mut after_token = true;
        let mut escaped = String::new();
        self.split_user_defined(text, special, |fragment| match fragment {
            Fragment::Token(id) => {
                ids.push(id);
                after_token = true;
            }
            Fragment::Text(raw) => {
                escaped.clear();
                if self.add_space_prefix && after_token {
                    escaped.push(SPACE_MARKER);
                }
                escaped.extend(raw.chars().map(|c| if c == ' ' { SPACE_MARKER } else { c }));
                self.encode_fragment(&escaped, &mut ids);
                after_token = false;
            }
        });
        ids
    }

    /// Decodes ids into text.
    ///
    /// Normal tokens have `▁` turned back into spaces, user-defined tokens
    /// appear verbatim, byte tokens `<0xXX>` are reassembled into UTF-8 (an
    /// invalid sequence becomes U+FFFD), and control, unknown and unused
    /// tokens, as well as ids outside the vocabulary, produce nothing.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            self.append_piece(id, &mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// A decoder for streaming, which yields text as tokens arrive; see
    /// [`StreamDecoder`].
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder {
            tokenizer: self,
            pending: Vec::new(),
        }
    }

    /// The beginning-of-sequence token id.
    pub fn bos(&self) -> u32 {
        self.bos
    }

    /// The end-of-sequence token id.
    pub fn eos(&self) -> u32 {
        self.eos
    }

    /// Whether the model expects BOS at the start of a prompt
    /// (`tokenizer.ggml.add_bos_token`, true when absent).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// The number of tokens; every valid id is below it.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The stored text of token `id` (with `▁` for spaces and `<0xXX>` for
    /// byte tokens), or `None` when `id` is outside the vocabulary.
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The tokens that end a generation: end-of-sequence, and Gemma's
    /// `<end_of_turn>` when the vocabulary has it.
    pub fn stop_tokens(&self) -> Vec<u32> {
        std::iter::once(self.eos())
            .chain(self.token_id("<end_of_turn>"))
            .collect()
    }

    /// The id of the token whose stored text is exactly `text` (the lowest
    /// id when several share it), e.g. to find a stop token.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    /// Calls `emit` on the pieces of `text` in order: each user-defined token
    /// found, and the text between them (never empty). At each position the
    /// longest user-defined token that matches wins, scanning left to right.
    ///
    /// llama.cpp instead splits out the longest tokens first wherever they are;
    /// the two differ only when two different user-defined tokens can overlap,
    /// which none of Gemma's do (they are runs of one character and html tags).
    /// With `special`, control tokens are split out the same way.
    fn split_user_defined<'t>(
        &self,
        text: &'t str,
        special: bool,
        mut emit: impl FnMut(Fragment<'t>),
    ) {
        let bytes = text.as_bytes();
        let mut fragment_start = 0;
        let mut pos = 0;
        let no_control: &[Vec<u32>] = &[];
        let control = if special {
            &self.control[..]
        } else {
            no_control
        };
        while pos < bytes.len() {
            let first = usize::from(bytes[pos]);
            let longest_match = |table: &[Vec<u32>]| {
                table
                    .get(first)
                    .into_iter()
                    .flatten()
                    .map(|&id| (id, self.tokens[id as usize].as_bytes()))
                    .find(|(_, token)| bytes[pos..].starts_with(token))
            };
            let matched = match (longest_match(&self.user_defined), longest_match(control)) {
                (Some(a), Some(b)) if b.1.len() > a.1.len() => Some(b),
                (Some(a), _) => Some(a),
                (None, b) => b,
            };
            match matched {
                Some((id, token)) => {
                    if fragment_start < pos {
                        emit(Fragment::Text(&text[fragment_start..pos]));
                    }
                    emit(Fragment::Token(id));
                    pos += token.len();
                    fragment_start = pos;
                }
                // A token's first byte is never a UTF-8 continuation byte, so
                // every match starts, and every fragment ends, on a char
                // boundary; stepping one byte is safe.
                None => pos += 1,
            }
        }
        if fragment_start < bytes.len() {
            emit(Fragment::Text(&text[fragment_start..]));
        }
    }

    /// Encodes one fragment (spaces already escaped) by BPE merges, appending
    /// the ids to `ids`. Mirrors `llm_tokenizer_spm_session::tokenize`.
    fn encode_fragment(&self, text: &str, ids: &mut Vec<u32>) {
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (start, c) in text.char_indices() {
            let index = symbols.len();
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: index.checked_sub(1),
                next: Some(index + 1),
            });
        }
        let Some(last) = symbols.last_mut() else {
            return;
        };
        last.next = None;

        let mut queue = BinaryHeap::with_capacity(symbols.len());
        for left in 1..symbols.len() {
            self.push_bigram(text, &symbols, &mut queue, left - 1, left);
        }

        while let Some(bigram) = queue.pop() {
            let (left, right) = (symbols[bigram.left], symbols[bigram.right]);
            // A pair is stale once either side took part in another merge:
            // the consumed side is empty, and a grown side changes the length.
            if left.len == 0 || right.len == 0 || left.len + right.len != bigram.len {
                continue;
            }
            symbols[bigram.left].len += right.len;
            symbols[bigram.left].next = right.next;
            symbols[bigram.right].len = 0;
            if let Some(next) = right.next {
                symbols[next].prev = Some(bigram.left);
            }
            if let Some(prev) = left.prev {
                self.push_bigram(text, &symbols, &mut queue, prev, bigram.left);
            }
            if let Some(next) = right.next {
                self.push_bigram(text, &symbols, &mut queue, bigram.left, next);
            }
        }

        // Merged symbols are always tokens; only single characters may be
        // missing from the vocabulary, and those fall back to bytes.
        let mut current = Some(0);
        while let Some(index) = current {
            let symbol = symbols[index];
            let piece = &text[symbol.start..symbol.start + symbol.len];
            match self.token_to_id.get(piece) {
                Some(&id) => ids.push(id),
                None => ids.extend(
                    piece
                        .bytes()
                        .filter_map(|byte| self.byte_tokens[usize::from(byte)].or(self.unk)),
                ),
            }
            current = symbol.next;
        }
    }

    /// Queues the merge of `left` with its right neighbour `right` when their
    /// concatenation is a token.
    fn push_bigram(
        &self,
        text: &str,
        symbols: &[Symbol],
        queue: &mut BinaryHeap<Bigram>,
        left: usize,
        right: usize,
    ) {
        // Adjacent symbols are contiguous in `text`, so the pair is a slice of
        // it and the lookup needs no allocation.
        let start = symbols[left].start;
        let len = symbols[left].len + symbols[right].len;
        if let Some(&id) = self.token_to_id.get(&text[start..start + len]) {
            queue.push(Bigram {
                score: self.scores[id as usize],
                left,
                right,
                len,
            });
        }
    }

    /// Appends the bytes that token `id` stands for (see [`Tokenizer::decode`]).
    fn append_piece(&self, id: u32, out: &mut Vec<u8>) {
        let index = id as usize;
        let (Some(text), Some(kind)) = (self.tokens.get(index), self.types.get(index)) else {
            return;
        };
        match kind {
            TokenType::Normal => {
                for (i, part) in text.split(SPACE_MARKER).enumerate() {
                    if i > 0 {
                        out.push(b' ');
                    }
                    out.extend_from_slice(part.as_bytes());
                }
            }
            TokenType::UserDefined => out.extend_from_slice(text.as_bytes()),
            TokenType::Byte => out.extend(parse_byte_token(text)),
            TokenType::Control | TokenType::Unknown | TokenType::Unused | TokenType::Undefined => {}
        }
    }
}

/// Turns ids into text one token at a time, for printing while generating.
///
/// A character split over several byte tokens is held back until it is
/// complete, so every returned string is whole characters. The strings
/// returned by [`StreamDecoder::push`] and then [`StreamDecoder::finish`],
/// concatenated, equal [`Tokenizer::decode`] of all the ids pushed.
#[derive(Debug, Clone)]
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    /// Bytes of an incomplete UTF-8 character still awaiting its other bytes.
    pending: Vec<u8>,
}

impl StreamDecoder<'_> {
    /// Adds token `id` and returns the text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        self.tokenizer.append_piece(id, &mut self.pending);
        let mut text = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(valid) => {
                    text.push_str(valid);
                    self.pending.clear();
                    return text;
                }
                Err(error) => {
                    let valid_len = error.valid_up_to();
                    // The prefix is valid UTF-8 by `valid_up_to`'s definition,
                    // so this borrows without replacing anything.
                    text.push_str(&String::from_utf8_lossy(&self.pending[..valid_len]));
                    match error.error_len() {
                        // Bytes that no continuation can fix: replaced as
                        // `from_utf8_lossy` would replace them.
                        Some(invalid_len) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid_len + invalid_len);
                        }
                        // A character cut short: keep it for the next token.
                        None => {
                            self.pending.drain(..valid_len);
                            return text;
                        }
                    }
                }
            }
        }
    }

    /// Returns what is still held back (an incomplete character becomes
    /// U+FFFD) and empties the decoder, which can then start a new stream.
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

/// A piece of input text after user-defined tokens are split out.
enum Fragment<'t> {
    Token(u32),
    Text(&'t str),
}

/// A run of bytes of the fragment being merged, linked to its live neighbours.
#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    /// Zero once merged into its left neighbour.
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge of two adjacent symbols.
#[derive(Debug)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    /// The merged length in bytes, to spot pairs made stale by other merges.
    len: usize,
}

impl Ord for Bigram {
    /// The highest score first, then the left-most pair (llama.cpp's order).
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

/// The byte of a `<0xXX>` token text, if it is one.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

fn wrong_type(key: &'static str, expected: &'static str) -> TokenizerError {
    TokenizerError::WrongType { key, expected }
}

fn required<'m>(
    metadata: &'m HashMap<String, Value>,
    key: &'static str,
) -> Result<&'m Value, TokenizerError> {
    metadata.get(key).ok_or(TokenizerError::MissingKey(key))
}

fn string_value<'m>(
    metadata: &'m HashMap<String, Value>,
    key: &'static str,
) -> Result<&'m str, TokenizerError> {
    match required(metadata, key)? {
        Value::String(text) => Ok(text),
        _ => Err(wrong_type(key, "a string")),
    }
}

fn array_value<'m>(
    metadata: &'m HashMap<String, Value>,
    key: &'static str,
) -> Result<&'m [Value], TokenizerError> {
    match required(metadata, key)? {
        Value::Array(values) => Ok(values),
        _ => Err(wrong_type(key, "an array")),
    }
}

/// A token id stored as any integer type (writers differ), if non-negative
/// and within 32 bits.
fn id_value(metadata: &HashMap<String, Value>, key: &'static str) -> Result<u32, TokenizerError> {
    integer(required(metadata, key)?)
        .and_then(|id| u32::try_from(id).ok())
        .ok_or(wrong_type(key, "a 32-bit unsigned integer"))
}

fn bool_value(
    metadata: &HashMap<String, Value>,
    key: &'static str,
    default: bool,
) -> Result<bool, TokenizerError> {
    match metadata.get(key) {
        None => Ok(default),
        Some(Value::Bool(flag)) => Ok(*flag),
        Some(_) => Err(wrong_type(key, "a boolean")),
    }
}

/// The value of any GGUF integer type, if it fits `i64`.
fn integer(value: &Value) -> Option<i64> {
    match *value {
        Value::U8(v) => Some(v.into()),
        Value::I8(v) => Some(v.into()),
        Value::U16(v) => Some(v.into()),
        Value::I16(v) => Some(v.into()),
        Value::U32(v) => Some(v.into()),
        Value::I32(v) => Some(v.into()),
        Value::U64(v) => i64::try_from(v).ok(),
        Value::I64(v) => Some(v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::VersionedMagic;

    const NORMAL: i32 = 1;
    const CONTROL: i32 = 3;
    const USER_DEFINED: i32 = 4;
    const UNUSED: i32 = 5;
    const BYTE: i32 = 6;
    const BOS: u32 = 2;
    const UNK: u32 = 3;

    /// `<pad> <eos> <bos> <unk>` (ids 0 to 3), the byte tokens when asked
    /// for (ids 4 to 259), then `extra` as (text, score, type).
    fn parts(extra: &[(&str, f32, i32)], with_bytes: bool) -> (Vec<String>, Vec<f32>, Vec<i32>) {
        let mut tokens: Vec<String> = ["<pad>", "<eos>", "<bos>", "<unk>"]
            .map(String::from)
            .into();
        let mut scores = vec![0.0; 4];
        let mut types = vec![CONTROL; 4];
        if with_bytes {
            for byte in 0..=u8::MAX {
                tokens.push(format!("<0x{byte:02X}>"));
                scores.push(0.0);
                types.push(BYTE);
            }
        }
        for &(text, score, kind) in extra {
            tokens.push(text.to_owned());
            scores.push(score);
            types.push(kind);
        }
        (tokens, scores, types)
    }

    fn tokenizer(extra: &[(&str, f32, i32)]) -> Tokenizer {
        let (tokens, scores, types) = parts(extra, true);
        Tokenizer::from_parts(tokens, scores, types, BOS, 1, Some(UNK)).expect("valid vocabulary")
    }

    /// Single characters as normal tokens with score 0.
    fn chars(text: &str) -> Vec<(String, f32, i32)> {
        text.chars().map(|c| (c.to_string(), 0.0, NORMAL)).collect()
    }

    fn with_chars(chars_text: &str, extra: &[(&str, f32, i32)]) -> Tokenizer {
        let owned = chars(chars_text);
        let mut all: Vec<(&str, f32, i32)> =
            owned.iter().map(|(t, s, k)| (t.as_str(), *s, *k)).collect();
        all.extend_from_slice(extra);
        tokenizer(&all)
    }

    /// The token texts `text` encodes to, without BOS.
    fn pieces<'t>(tokenizer: &'t Tokenizer, text: &str) -> Vec<&'t str> {
        tokenizer
            .encode(text, false)
            .into_iter()
            .map(|id| tokenizer.token(id).expect("encode yields valid ids"))
            .collect()
    }

    #[test]
    fn merges_the_highest_scoring_pair_first() {
        let t = with_chars("abc", &[("ab", 1.0, NORMAL), ("bc", 2.0, NORMAL)]);
        assert_eq!(pieces(&t, "abc"), ["a", "bc"]);
        let t = with_chars("abc", &[("ab", 3.0, NORMAL), ("bc", 2.0, NORMAL)]);
        assert_eq!(pieces(&t, "abc"), ["ab", "c"]);
    }

    #[test]
    fn equal_scores_merge_the_left_most_pair() {
        let t = with_chars("abc", &[("ab", 1.0, NORMAL), ("bc", 1.0, NORMAL)]);
        assert_eq!(pieces(&t, "abc"), ["ab", "c"]);
        let t = with_chars("ab", &[("ab", 1.0, NORMAL), ("ba", 1.0, NORMAL)]);
        assert_eq!(pieces(&t, "ababa"), ["ab", "ab", "a"]);
    }

    #[test]
    fn merged_symbols_keep_merging_with_their_new_neighbours() {
        let t = with_chars(
            "abcd",
            &[
                ("bc", 10.0, NORMAL),
                ("ab", 5.0, NORMAL),
                ("abc", 1.0, NORMAL),
                ("abcd", 0.5, NORMAL),
            ],
        );
        // `bc` wins over `ab`, so `ab` can never form; `abc` then `abcd` do.
        assert_eq!(pieces(&t, "abcd"), ["abcd"]);
        assert_eq!(pieces(&t, "abcdabc"), ["abcd", "abc"]);
    }

    #[test]
    fn tokens_need_a_chain_of_merges_to_form() {
        // Like SentencePiece BPE, a token is reached only through tokens.
        let t = with_chars("abcd", &[("abcd", 9.0, NORMAL)]);
        assert_eq!(pieces(&t, "abcd"), ["a", "b", "c", "d"]);
    }

    #[test]
    fn spaces_become_the_marker_and_decode_back() {
        let t = with_chars("ab\u{2581}", &[("\u{2581}b", 1.0, NORMAL)]);
        assert_eq!(pieces(&t, "a b"), ["a", "\u{2581}b"]);
        assert_eq!(pieces(&t, "a  "), ["a", "\u{2581}", "\u{2581}"]);
        assert_eq!(t.decode(&t.encode("a b ", true)), "a b ");
    }

    #[test]
    fn unknown_characters_fall_back_to_byte_tokens() {
        let t = with_chars("a\u{2581}", &[]);
        assert_eq!(pieces(&t, "aé"), ["a", "<0xC3>", "<0xA9>"]);
        assert_eq!(pieces(&t, "😀"), ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]);
        for text in ["aé", "😀 日本", "\u{0}\u{7f}\u{80}"] {
            assert_eq!(t.decode(&t.encode(text, true)), text);
        }
    }

    #[test]
    fn missing_byte_tokens_become_unknown() {
        let (tokens, scores, types) = parts(&[("a", 0.0, NORMAL)], false);
        let t = Tokenizer::from_parts(tokens, scores, types, BOS, 1, Some(UNK)).unwrap();
        assert_eq!(t.encode("aé", false), [4, UNK, UNK]);
    }

    #[test]
    fn user_defined_tokens_are_split_out_first_and_stay_atomic() {
        let t = with_chars(
            "abcx<>\u{2581}",
            &[
                ("\n", 0.0, USER_DEFINED),
                ("\n\n", 0.0, USER_DEFINED),
                ("  ", 0.0, USER_DEFINED),
                ("<b>", 0.0, USER_DEFINED),
                // Would swallow the `<` of `<b>` if merges could cross it.
                ("x<", 100.0, NORMAL),
                ("b\u{2581}", 100.0, NORMAL),
            ],
        );
        assert_eq!(
            pieces(&t, "a\n\n\nb  c<b>x<b>"),
            ["a", "\n\n", "\n", "b", "  ", "c", "<b>", "x", "<b>"]
        );
        // A lone space is not a user-defined token, so it is escaped and merged.
        assert_eq!(pieces(&t, "b c"), ["b\u{2581}", "c"]);
        assert_eq!(pieces(&t, "x<a"), ["x<", "a"]);
        let text = "a\n\n\nb  c<b>x<b> b c\n";
        assert_eq!(t.decode(&t.encode(text, true)), text);
    }

    #[test]
    fn control_tokens_written_as_text_are_tokens_only_when_encoding_specially() {
        let t = with_chars(
            "abx<>/\u{2581}",
            &[("<b>", 0.0, CONTROL), ("<b>x", 0.0, USER_DEFINED)],
        );
        let control = t.token_id("<b>").expect("a control token");
        let plain = t.encode("a<b>b", false);
        assert!(!plain.contains(&control), "{plain:?}");
        assert_eq!(t.encode_special("a<b>b", false)[1], control);
        assert_eq!(
            t.encode_special("a<b>b<b>", true),
            [
                BOS,
                t.token_id("a").unwrap(),
                control,
                t.token_id("b").unwrap(),
                control
            ]
        );
        // The longer user-defined token still wins where both match.
        let user = t.token_id("<b>x").expect("a user-defined token");
        assert_eq!(t.encode_special("<b>x", false), [user]);
    }

    #[test]
    fn the_longest_user_defined_token_at_the_left_most_position_wins() {
        let t = with_chars(
            "abcd",
            &[
                ("ab", 0.0, USER_DEFINED),
                ("bcd", 0.0, USER_DEFINED),
                ("abc", 0.0, USER_DEFINED),
            ],
        );
        assert_eq!(pieces(&t, "abcd"), ["abc", "d"]);
        assert_eq!(pieces(&t, "abd"), ["ab", "d"]);
        assert_eq!(pieces(&t, "dbcd"), ["d", "bcd"]);
    }

    #[test]
    fn space_prefix_is_added_at_the_start_and_after_user_defined_tokens() {
        let mut t = with_chars(
            "ab\u{2581}",
            &[("\n", 0.0, USER_DEFINED), ("\u{2581}a", 1.0, NORMAL)],
        );
        t.add_space_prefix = true;
        assert_eq!(pieces(&t, "a\na"), ["\u{2581}a", "\n", "\u{2581}a"]);
    }

    #[test]
    fn encoding_nothing_gives_only_the_optional_bos() {
        let t = with_chars("a", &[]);
        assert_eq!(t.encode("", false), Vec::<u32>::new());
        assert_eq!(t.encode("", true), [BOS]);
        assert_eq!(t.encode("a", true)[0], BOS);
    }

    #[test]
    fn decode_skips_control_and_unused_tokens_and_is_lossy() {
        let t = tokenizer(&[
            ("\u{2581}hi", 0.0, NORMAL),
            ("<unused0>", 0.0, UNUSED),
            ("<b>", 0.0, USER_DEFINED),
        ]);
        let hi = t.token_id("\u{2581}hi").unwrap();
        let unused = t.token_id("<unused0>").unwrap();
        let tag = t.token_id("<b>").unwrap();
        let byte = |b: u8| 4 + u32::from(b);
        assert_eq!(
            t.decode(&[BOS, hi, unused, tag, 1, UNK, 0, 999_999]),
            " hi<b>"
        );
        assert_eq!(t.decode(&[byte(0xE2), byte(0x82), byte(0xAC)]), "€");
        assert_eq!(
            t.decode(&[byte(0xFF), hi, byte(0xE2)]),
            "\u{FFFD} hi\u{FFFD}"
        );
    }

    #[test]
    fn stream_decoder_holds_back_incomplete_characters() {
        let t = tokenizer(&[("\u{2581}hi", 0.0, NORMAL)]);
        let hi = t.token_id("\u{2581}hi").unwrap();
        let byte = |b: u8| 4 + u32::from(b);
        let mut stream = t.stream_decoder();
        assert_eq!(stream.push(BOS), "");
        assert_eq!(stream.push(hi), " hi");
        assert_eq!(stream.push(byte(0xE2)), "");
        assert_eq!(stream.push(byte(0x82)), "");
        assert_eq!(stream.push(byte(0xAC)), "€");
        assert_eq!(stream.push(byte(0xFF)), "\u{FFFD}");
        assert_eq!(stream.push(byte(0xE2)), "");
        // A character cut off by another token is replaced, then that token shows.
        assert_eq!(stream.push(hi), "\u{FFFD} hi");
        assert_eq!(stream.push(byte(0xF0)), "");
        assert_eq!(stream.finish(), "\u{FFFD}");
        assert_eq!(stream.finish(), "");
    }

    #[test]
    fn stream_decoding_matches_decoding_all_at_once() {
        let t = tokenizer(&[("\u{2581}hi", 0.0, NORMAL), ("<b>", 0.0, USER_DEFINED)]);
        // Mostly byte tokens, whose random mix makes valid, cut and invalid UTF-8.
        let interesting: Vec<u32> = [
            0xC3, 0xA9, 0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x98, 0x80, 0xFF, 0x41, 0x80,
        ]
        .iter()
        .map(|&b| 4 + b)
        .chain([BOS, 260, 261])
        .collect();
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        for _ in 0..2000 {
            let len = (next_random(&mut state) % 12) as usize;
            let ids: Vec<u32> = (0..len)
                .map(|_| interesting[(next_random(&mut state) % interesting.len() as u64) as usize])
                .collect();
            let mut stream = t.stream_decoder();
            let mut streamed: String = ids.iter().map(|&id| stream.push(id)).collect();
            streamed.push_str(&stream.finish());
            assert_eq!(streamed, t.decode(&ids), "ids {ids:?}");
        }
    }

    fn next_random(state: &mut u64) -> u64 {
        // xorshift64*: deterministic and good enough to pick test cases.
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    #[test]
    fn duplicate_texts_map_to_the_lowest_id() {
        let t = tokenizer(&[("a", 0.0, NORMAL), ("a", 5.0, NORMAL)]);
        assert_eq!(t.token_id("a"), Some(260));
        assert_eq!(t.encode("aa", false), [260, 260]);
    }

    #[test]
    fn inconsistent_parts_are_rejected() {
        let (tokens, scores, mut types) = parts(&[], false);
        types.pop();
        assert!(matches!(
            Tokenizer::from_parts(tokens, scores, types, BOS, 1, None),
            Err(TokenizerError::InvalidVocabulary(_))
        ));
        let (tokens, scores, types) = parts(&[], false);
        assert!(matches!(
            Tokenizer::from_parts(tokens, scores, types, 4, 1, None),
            Err(TokenizerError::InvalidVocabulary(_))
        ));
    }

    fn gguf_metadata() -> HashMap<String, Value> {
        let (tokens, scores, types) = parts(&[("a", 0.0, NORMAL)], true);
        HashMap::from([
            (keys::MODEL.to_owned(), Value::String("llama".to_owned())),
            (
                keys::TOKENS.to_owned(),
                Value::Array(tokens.into_iter().map(Value::String).collect()),
            ),
            (
                keys::SCORES.to_owned(),
                Value::Array(scores.into_iter().map(Value::F32).collect()),
            ),
            (
                keys::TOKEN_TYPE.to_owned(),
                Value::Array(types.into_iter().map(Value::I32).collect()),
            ),
            (keys::BOS.to_owned(), Value::U32(BOS)),
            (keys::EOS.to_owned(), Value::U32(1)),
            (keys::UNK.to_owned(), Value::U32(UNK)),
            (keys::ADD_BOS.to_owned(), Value::Bool(false)),
            (keys::ADD_SPACE_PREFIX.to_owned(), Value::Bool(false)),
        ])
    }

    fn content(metadata: HashMap<String, Value>) -> Content {
        Content {
            magic: VersionedMagic::GgufV3,
            metadata,
            tensor_infos: HashMap::new(),
            tensor_data_offset: 0,
        }
    }

    #[test]
    fn from_gguf_reads_the_vocabulary_and_flags() {
        let t = Tokenizer::from_gguf(&content(gguf_metadata())).expect("valid metadata");
        assert_eq!((t.bos(), t.eos(), t.vocab_size()), (BOS, 1, 261));
        assert_eq!(t.unk, Some(UNK));
        assert!(!t.add_bos());
        assert!(!t.add_space_prefix);
        assert_eq!(t.token(260), Some("a"));
        assert_eq!(t.token(261), None);
        assert_eq!(t.encode("a", true), [BOS, 260]);
    }

    #[test]
    fn from_gguf_defaults_optional_keys_like_llama_cpp() {
        let mut metadata = gguf_metadata();
        for key in [keys::UNK, keys::ADD_BOS, keys::ADD_SPACE_PREFIX] {
            metadata.remove(key);
        }
        let t = Tokenizer::from_gguf(&content(metadata)).expect("valid metadata");
        assert_eq!(t.unk, None);
        assert!(t.add_bos());
        assert!(t.add_space_prefix);
    }

    #[test]
    fn from_gguf_reports_bad_metadata() {
        let error = |change: &dyn Fn(&mut HashMap<String, Value>)| {
            let mut metadata = gguf_metadata();
            change(&mut metadata);
            Tokenizer::from_gguf(&content(metadata)).expect_err("bad metadata")
        };
        for key in [
            keys::MODEL,
            keys::TOKENS,
            keys::SCORES,
            keys::TOKEN_TYPE,
            keys::BOS,
            keys::EOS,
        ] {
            assert!(
                matches!(error(&|m| { m.remove(key); }), TokenizerError::MissingKey(k) if k == key),
                "{key}"
            );
        }
        let unsupported = error(&|m| {
            m.insert(keys::MODEL.to_owned(), Value::String("gpt2".to_owned()));
        });
        assert!(matches!(unsupported, TokenizerError::UnsupportedModel(ref m) if m == "gpt2"));
        assert!(unsupported.to_string().contains("gpt2"));

        let wrong = [
            (keys::MODEL, Value::U32(1)),
            (keys::TOKENS, Value::String("a".to_owned())),
            (keys::TOKENS, Value::Array(vec![Value::U32(1)])),
            (
                keys::SCORES,
                Value::Array(vec![Value::String("x".to_owned())]),
            ),
            (keys::TOKEN_TYPE, Value::Array(vec![Value::F32(1.0)])),
            (keys::TOKEN_TYPE, Value::Array(vec![Value::I64(1 << 40)])),
            (keys::BOS, Value::I32(-1)),
            (keys::EOS, Value::String("1".to_owned())),
            (keys::ADD_BOS, Value::U8(1)),
        ];
        for (key, value) in wrong {
            let found = error(&|m| {
                m.insert(key.to_owned(), value.clone());
            });
            assert!(
                matches!(found, TokenizerError::WrongType { key: k, .. } if k == key),
                "{key}: {found}"
            );
        }
        // Well-typed arrays of different lengths.
        let mismatch = error(&|m| {
            m.insert(keys::SCORES.to_owned(), Value::Array(vec![Value::F32(0.0)]));
        });
        assert!(matches!(mismatch, TokenizerError::InvalidVocabulary(_)));
        let out_of_range = error(&|m| {
            m.insert(keys::BOS.to_owned(), Value::U64(1 << 20));
        });
        assert!(matches!(out_of_range, TokenizerError::InvalidVocabulary(_)));
    }
}
