//! Turning a request's token pieces into streamed text: never a partial UTF-8 character, never
//! any part of a stop string, even when a character or a stop string is split across tokens.
//! Pure logic, no llama.cpp; owned by one request on the engine thread.

/// Incremental decoder for one request.
#[derive(Debug, Default)]
pub(crate) struct TextDecoder {
    /// Bytes of an incomplete UTF-8 character at the end of the last piece.
    pending: Vec<u8>,
    /// Decoded text held back because it may be the start of a stop string.
    held: String,
    stops: Vec<String>,
}

/// The result of pushing one token's bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Pushed {
    /// Text that is safe to emit now.
    pub text: String,
    /// A stop string matched; `text` is everything before it and generation must end.
    pub stopped: bool,
}

impl TextDecoder {
    /// A decoder that ends at any of `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self {
            pending: Vec::new(),
            held: String::new(),
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
        }
    }

    /// Adds one token's bytes and returns the text that may be emitted.
    pub fn push(&mut self, bytes: &[u8]) -> Pushed {
        self.pending.extend_from_slice(bytes);
        self.decode_pending();

        // A complete stop string: emit what precedes the earliest one and stop.
        let earliest = self
            .stops
            .iter()
            .filter_map(|stop| self.held.find(stop.as_str()))
            .min();
        if let Some(at) = earliest {
            let text = self.held[..at].to_string();
            self.held.clear();
            self.pending.clear();
            return Pushed {
                text,
                stopped: true,
            };
        }

        // Hold back the longest suffix that could still grow into a stop string.
        let keep_from = self.hold_back_start();
        let text = self.held[..keep_from].to_string();
        self.held.replace_range(..keep_from, "");
        Pushed {
            text,
            stopped: false,
        }
    }

    /// Everything still held back, at the end of generation (an incomplete character becomes
    /// U+FFFD).
    pub fn finish(&mut self) -> String {
        let mut text = std::mem::take(&mut self.held);
        if !self.pending.is_empty() {
            text.push_str(&String::from_utf8_lossy(&self.pending));
            self.pending.clear();
        }
        text
    }

    /// Moves every complete character from `pending` to `held`; invalid bytes become U+FFFD.
    fn decode_pending(&mut self) {
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    self.held.push_str(s);
                    self.pending.clear();
                    return;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    if let Ok(s) = std::str::from_utf8(&self.pending[..valid]) {
                        self.held.push_str(s);
                    }
                    match e.error_len() {
                        Some(bad) => {
                            self.held.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                        None => {
                            // An incomplete character at the end: wait for more bytes.
                            self.pending.drain(..valid);
                            return;
                        }
                    }
                }
            }
        }
    }

    /// The byte index in `held` from which the text must be held back.
    fn hold_back_start(&self) -> usize {
        if self.stops.is_empty() {
            return self.held.len();
        }
        for (i, _) in self.held.char_indices() {
            let tail = &self.held[i..];
            if self.stops.iter().any(|stop| stop.starts_with(tail)) {
                return i;
            }
        }
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn multibyte_character_split_across_tokens_is_emitted_whole() {
        let mut d = TextDecoder::new(&[]);
        let euro = "€".as_bytes(); // 3 bytes
        assert_eq!(d.push(&euro[..1]).text, "");
        assert_eq!(d.push(&euro[1..2]).text, "");
        assert_eq!(d.push(&euro[2..]).text, "€");
        assert_eq!(d.finish(), "");
    }

    #[test]
    fn stop_string_split_across_tokens_is_never_emitted() {
        let mut d = TextDecoder::new(&stops(&["END"]));
        let a = d.push(b"hello E");
        assert_eq!(a.text, "hello ");
        assert!(!a.stopped);
        let b = d.push(b"N");
        assert_eq!(b.text, "");
        let c = d.push(b"D and more");
        assert_eq!(c.text, "");
        assert!(c.stopped);
    }

    #[test]
    fn held_back_text_is_released_when_it_diverges_from_the_stop_string() {
        let mut d = TextDecoder::new(&stops(&["END"]));
        assert_eq!(d.push(b"E").text, "");
        assert_eq!(d.push(b"x").text, "Ex");
        assert_eq!(d.push(b"EN").text, "");
        assert_eq!(d.finish(), "EN");
    }

    #[test]
    fn earliest_of_several_stop_strings_wins() {
        let mut d = TextDecoder::new(&stops(&["bb", "a"]));
        let p = d.push(b"xxbb a");
        assert!(p.stopped);
        assert_eq!(p.text, "xx");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut d = TextDecoder::new(&[]);
        assert_eq!(d.push(&[b'a', 0xff, b'b']).text, "a\u{fffd}b");
        assert_eq!(d.push(&[0xe2, 0x82]).text, "");
        assert_eq!(d.finish(), "\u{fffd}");
    }

    #[test]
    fn stop_string_with_multibyte_characters_matches() {
        let mut d = TextDecoder::new(&stops(&["→x"]));
        let arrow = "→".as_bytes();
        assert_eq!(d.push(b"a").text, "a");
        assert_eq!(d.push(&arrow[..2]).text, "");
        assert_eq!(d.push(&arrow[2..]).text, "");
        let p = d.push(b"x");
        assert!(p.stopped);
        assert_eq!(p.text, "");
    }
}
