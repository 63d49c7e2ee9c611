//! The code-aware tokenizer of the full-text index: identifiers are kept whole and also split at
//! camelCase humps, `snake_case` underscores, letter/digit boundaries and path separators, all
//! lowercased. `parseHTTPResponse2` gives `parsehttpresponse2`, `parse`, `http`, `response`, `2`;
//! `src/index/mod.rs` gives `src`, `index`, `mod`, `rs`.
//!
//! Used for every text field at indexing and for queries, so both sides agree. Pure: no I/O, no
//! dependency on the rest of the index.

use tantivy::tokenizer::{Token, TokenStream, Tokenizer};

/// The name the tokenizer is registered under in the tantivy index.
pub const NAME: &str = "troupe_code";

/// Tokens longer than this (in bytes) are dropped: hashes, base64 blobs and the like only bloat
/// the term dictionary.
const MAX_TOKEN_BYTES: usize = 64;

/// The code-aware tokenizer (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct CodeTokenizer;

/// The tokens of one text.
pub struct CodeTokenStream {
    tokens: std::vec::IntoIter<Token>,
    current: Token,
}

impl Tokenizer for CodeTokenizer {
    type TokenStream<'a> = CodeTokenStream;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> CodeTokenStream {
        let mut tokens = Vec::new();
        let mut position = 0;
        for_each_token(text, |from, to, term| {
            tokens.push(Token {
                offset_from: from,
                offset_to: to,
                position,
                text: term,
                position_length: 1,
            });
            position += 1;
        });
        CodeTokenStream {
            tokens: tokens.into_iter(),
            current: Token::default(),
        }
    }
}

impl TokenStream for CodeTokenStream {
    fn advance(&mut self) -> bool {
        match self.tokens.next() {
            Some(token) => {
                self.current = token;
                true
            }
            None => false,
        }
    }

    fn token(&self) -> &Token {
        &self.current
    }

    fn token_mut(&mut self) -> &mut Token {
        &mut self.current
    }
}

/// The terms of `text` as the index sees them, in order, with duplicates (for queries).
pub fn terms(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for_each_token(text, |_, _, term| out.push(term));
    out
}

/// Calls `emit(byte_from, byte_to, term)` for every whole identifier and each of its parts.
fn for_each_token(text: &str, mut emit: impl FnMut(usize, usize, String)) {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        // Words are runs of alphanumerics and underscores (any script: `char::is_alphanumeric`).
        let Some(c) = text[i..].chars().next() else {
            break;
        };
        if !is_word(c) {
            i += c.len_utf8();
            continue;
        }
        let start = i;
        while i < bytes.len() {
            match text[i..].chars().next() {
                Some(c) if is_word(c) => i += c.len_utf8(),
                _ => break,
            }
        }
        let word = &text[start..i];
        let trimmed = word.trim_matches('_');
        if trimmed.is_empty() || word.len() > MAX_TOKEN_BYTES {
            continue;
        }
        let whole = trimmed.to_lowercase();
        let parts = split_parts(word);
        let single = parts.len() == 1 && parts[0].1 - parts[0].0 == trimmed.len();
        emit(start, i, whole);
        if !single {
            for (from, to) in parts {
                emit(start + from, start + to, word[from..to].to_lowercase());
            }
        }
    }
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Byte ranges of the parts of one word: split at underscores, lower-to-upper humps
/// (`fooBar`), the end of an acronym (`HTTPServer` -> `HTTP`, `Server`) and letter/digit
/// boundaries.
fn split_parts(word: &str) -> Vec<(usize, usize)> {
    #[derive(Clone, Copy, PartialEq)]
    enum Class {
        Lower,
        Upper,
        Digit,
        Other,
    }
    let class = |c: char| {
        if c.is_ascii_digit() || c.is_numeric() {
            Class::Digit
        } else if c.is_uppercase() {
            Class::Upper
        } else if c.is_alphabetic() {
            Class::Lower
        } else {
            Class::Other
        }
    };
    let chars: Vec<(usize, char)> = word.char_indices().collect();
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    for (k, &(pos, c)) in chars.iter().enumerate() {
        if c == '_' {
            if let Some(s) = start.take() {
                parts.push((s, pos));
            }
            continue;
        }
        let Some(s) = start else {
            start = Some(pos);
            continue;
        };
        let prev = class(chars[k - 1].1);
        let cur = class(c);
        let next = chars.get(k + 1).map(|&(_, n)| class(n));
        let boundary = match (prev, cur) {
            (Class::Lower, Class::Upper) => true,
            (Class::Digit, Class::Upper | Class::Lower) => true,
            (Class::Upper | Class::Lower, Class::Digit) => true,
            // `HTTPServer`: the last capital of a run starts the next word.
            (Class::Upper, Class::Upper) => next == Some(Class::Lower),
            _ => false,
        };
        if boundary {
            parts.push((s, pos));
            start = Some(pos);
        }
    }
    if let Some(s) = start {
        parts.push((s, word.len()));
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_kept_whole_and_split_into_parts() {
        assert_eq!(
            terms("parseHTTPResponse2"),
            ["parsehttpresponse2", "parse", "http", "response", "2"]
        );
        assert_eq!(
            terms("max_file_bytes"),
            ["max_file_bytes", "max", "file", "bytes"]
        );
        assert_eq!(terms("__init__"), ["init"]);
        assert_eq!(terms("utf8"), ["utf8", "utf", "8"]);
        assert_eq!(terms("IndexWriter"), ["indexwriter", "index", "writer"]);
    }

    #[test]
    fn paths_split_at_separators() {
        assert_eq!(terms("src/index/mod.rs"), ["src", "index", "mod", "rs"]);
        assert_eq!(
            terms("a::b.c->d"),
            ["a", "b", "c", "d"],
            "punctuation separates words"
        );
    }

    #[test]
    fn plain_words_give_one_token_and_long_blobs_none() {
        assert_eq!(terms("hello World"), ["hello", "world"]);
        assert!(terms(&"x".repeat(200)).is_empty());
        assert_eq!(terms("größe Größe"), ["größe", "größe"]);
    }

    #[test]
    fn the_token_stream_reports_offsets_into_the_text() {
        let mut tok = CodeTokenizer;
        let text = "let fooBar = 1;";
        let mut stream = tok.token_stream(text);
        let mut seen = Vec::new();
        while stream.advance() {
            let t = stream.token();
            seen.push((t.text.clone(), &text[t.offset_from..t.offset_to]));
        }
        assert_eq!(
            seen,
            [
                ("let".to_string(), "let"),
                ("foobar".to_string(), "fooBar"),
                ("foo".to_string(), "foo"),
                ("bar".to_string(), "Bar"),
                ("1".to_string(), "1"),
            ]
        );
    }
}
