//! Incremental reader for a response that is one JSON array of objects, as Gemini's
//! `streamGenerateContent` answers without `alt=sse` (on the Gemini API and on Vertex AI):
//!
//! ```text
//! stream   = [ bom ] ws "[" ws [ element *( ws "," ws element ) ] ws "]" ws
//!          / [ bom ] ws element ws          ; a lone object (an error body)
//! element  = object                          ; a GenerateContentResponse
//! ws       = *( %x20 / %x09 / %x0A / %x0D )
//! ```
//!
//! The array arrives in pieces split anywhere (Google sends `[{...}\n,\r\n{...}\n]`, each
//! element pretty-printed, but nothing here depends on that). Between elements only the
//! separators above are read; each element is handed byte for byte to a [`TopLevelScanner`],
//! which records the wanted top-level values (`usageMetadata`, `modelVersion`, `error`) within
//! their caps and finds where the element ends, strings and escapes respected. So memory stays
//! what the scanner keeps, whatever the size of an element or of the stream, and the meter reads
//! each element as it would read one SSE event.
//!
//! Like the scanner, this is not a validator: at the first byte that cannot come where it does
//! (an element that is not an object, garbage between elements) it stops, keeping what the
//! elements before gave.

use crate::scan::TopLevelScanner;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the document.
    Start,
    /// After `[` (`first`) or after `,`: an element, or `]` right after `[`.
    BeforeElement {
        first: bool,
    },
    /// Inside an element (or a lone object): its bytes go to the scanner.
    Element {
        lone: bool,
    },
    /// After an element: `,` or `]`.
    AfterElement,
    Done,
    Invalid,
}

/// Finds each top-level element of a JSON array fed in chunks and scans it.
#[derive(Debug)]
pub struct ArrayScanner {
    state: State,
    doc: TopLevelScanner,
    /// The document is one object, not an array.
    lone: bool,
}

impl ArrayScanner {
    /// `keys`: the top-level keys of each element to record, as [`TopLevelScanner::new`] takes.
    pub fn new(keys: &[(&'static str, usize)]) -> Self {
        ArrayScanner {
            state: State::Start,
            doc: TopLevelScanner::new(keys),
            lone: false,
        }
    }

    /// True once the array (or the lone object) has closed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// True when the input stopped being an array of objects.
    pub fn is_invalid(&self) -> bool {
        self.state == State::Invalid
    }

    /// True once the document has turned out to be one object, not an array: a JSON body
    /// (an error answered before any stream), not a stream of documents.
    pub fn is_lone_object(&self) -> bool {
        self.lone
    }

    /// Read a chunk. `on_element` gets each element that closes in it, with the offset in
    /// `chunk` of its closing `}`.
    pub fn feed(&mut self, chunk: &[u8], on_element: &mut dyn FnMut(&TopLevelScanner, usize)) {
        let mut i = 0;
        while i < chunk.len() {
            let b = chunk[i];
            match self.state {
                State::Done | State::Invalid => return,
                State::Start => match b {
                    b'[' => self.state = State::BeforeElement { first: true },
                    // The object's `{` is the scanner's: not consumed here.
                    b'{' => {
                        self.state = State::Element { lone: true };
                        self.lone = true;
                        continue;
                    }
                    0xEF | 0xBB | 0xBF => {}
                    _ if is_ws(b) => {}
                    _ => self.state = State::Invalid,
                },
                State::BeforeElement { first } => match b {
                    b'{' => {
                        self.state = State::Element { lone: false };
                        continue;
                    }
                    b']' if first => self.state = State::Done,
                    _ if is_ws(b) => {}
                    _ => self.state = State::Invalid,
                },
                State::Element { lone } => {
                    let rest = &chunk[i..];
                    match self.doc.feed(rest) {
                        Some(close) => {
                            on_element(&self.doc, i + close);
                            self.doc.reset();
                            self.state = if lone {
                                State::Done
                            } else {
                                State::AfterElement
                            };
                            i += close + 1;
                        }
                        None => {
                            if self.doc.is_invalid() {
                                self.state = State::Invalid;
                            }
                            return;
                        }
                    }
                    continue;
                }
                State::AfterElement => match b {
                    b',' => self.state = State::BeforeElement { first: false },
                    b']' => self.state = State::Done,
                    _ if is_ws(b) => {}
                    _ => self.state = State::Invalid,
                },
            }
            i += 1;
        }
    }

    /// The body ended: an element cut short still gives what it recorded (values seen whole),
    /// as a JSON body cut short does.
    pub fn finish(&mut self, on_element: &mut dyn FnMut(&TopLevelScanner)) {
        if let State::Element { .. } = self.state {
            on_element(&self.doc);
        }
        if self.state != State::Invalid {
            self.state = State::Done;
        }
    }
}

/// Each whole element of a recorded array, parsed (elements that are not valid JSON, and one cut
/// short at the end, are skipped): used only to count output when no usage arrived.
pub fn documents(data: &[u8]) -> Vec<serde_json::Value> {
    let mut docs = Vec::new();
    let mut from = 0;
    let mut scanner = ArrayScanner::new(&[]);
    scanner.feed(data, &mut |_, close| {
        // Between elements there are only `[`, `,` and white space: the element is the bytes
        // from the next `{` to its closing brace.
        if let Some(start) = memchr::memchr(b'{', &data[from..close]).map(|s| from + s) {
            if let Ok(v) = serde_json::from_slice(&data[start..=close]) {
                docs.push(v);
            }
        }
        from = close + 1;
    });
    docs
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &[(&str, usize)] = &[("usageMetadata", 256), ("modelVersion", 64)];

    /// What each element recorded: (modelVersion, usageMetadata), and whether the array closed.
    type Seen = (Vec<(Option<String>, Option<String>)>, bool, bool);

    fn scan(chunks: &[&[u8]]) -> Seen {
        let mut s = ArrayScanner::new(KEYS);
        let mut seen = Vec::new();
        let mut take = |d: &TopLevelScanner| {
            seen.push((
                d.string("modelVersion"),
                d.raw("usageMetadata")
                    .map(|r| String::from_utf8_lossy(r).into_owned()),
            ))
        };
        for c in chunks {
            s.feed(c, &mut |d, _| take(d));
        }
        let done = s.is_done();
        let invalid = s.is_invalid();
        s.finish(&mut take);
        (seen, done, invalid)
    }

    fn every_split(doc: &[u8]) -> Seen {
        let whole = scan(&[doc]);
        for at in 0..=doc.len() {
            assert_eq!(scan(&[&doc[..at], &doc[at..]]), whole, "split at {at}");
        }
        let bytes: Vec<&[u8]> = doc.chunks(1).collect();
        assert_eq!(scan(&bytes), whole, "byte by byte");
        whole
    }

    fn el(model: &str, usage: Option<&str>) -> (Option<String>, Option<String>) {
        (Some(model.to_string()), usage.map(str::to_string))
    }

    #[test]
    fn elements_split_anywhere_strings_and_escapes_respected() {
        let doc = b"\xEF\xBB\xBF [{\n  \"candidates\": [{\"content\": {\"parts\": [{\"text\": \"a ]}, {\\\" [ \\\\\"}]}}],\n  \"usageMetadata\": {\"trafficType\": \"ON_DEMAND\"},\n  \"modelVersion\": \"m1\"\n}\n,\r\n{\"modelVersion\":\"m\\u0032\",\"usageMetadata\":{\"promptTokenCount\":2}}\r\n]\r\n";
        let (seen, done, invalid) = every_split(doc);
        assert_eq!(
            seen,
            vec![
                el("m1", Some(r#"{"trafficType": "ON_DEMAND"}"#)),
                el("m2", Some(r#"{"promptTokenCount":2}"#)),
            ]
        );
        assert!(done && !invalid);
    }

    #[test]
    fn empty_array_lone_object_and_cut_short() {
        assert_eq!(every_split(b" [ ] "), (vec![], true, false));
        // An error body sent as one object, not in an array.
        let lone = br#" {"error":{"code":400},"modelVersion":"x"}"#;
        let (seen, done, _) = every_split(lone);
        assert_eq!((seen, done), (vec![el("x", None)], true));
        let mut s = ArrayScanner::new(KEYS);
        s.feed(b" ", &mut |_, _| {});
        assert!(!s.is_lone_object());
        s.feed(&lone[1..2], &mut |_, _| {});
        assert!(s.is_lone_object());
        let mut s = ArrayScanner::new(KEYS);
        s.feed(b"[{}]", &mut |_, _| {});
        assert!(!s.is_lone_object());
        // Cut inside the second element: what it recorded whole is still given.
        let (seen, done, _) = every_split(
            br#"[{"modelVersion":"a"},{"modelVersion":"b","usageMetadata":{"promptTok"#,
        );
        assert_eq!((seen, done), (vec![el("a", None), el("b", None)], false));
    }

    #[test]
    fn not_an_array_of_objects_stops_keeping_what_came() {
        let (seen, _, invalid) = every_split(br#"[{"modelVersion":"a"}, 7, {"modelVersion":"b"}]"#);
        assert_eq!(seen, vec![el("a", None)]);
        assert!(invalid);
        let (seen, _, invalid) = every_split(br#"[{"modelVersion":"a"} {"modelVersion":"b"}]"#);
        assert_eq!(seen, vec![el("a", None)]);
        assert!(invalid);
        assert_eq!(every_split(b"data: {}"), (vec![], false, true));
        // Anything after the array's end is not read.
        let (seen, done, _) = every_split(br#"[{"modelVersion":"a"}] [{"modelVersion":"b"}]"#);
        assert_eq!((seen, done), (vec![el("a", None)], true));
    }

    #[test]
    fn huge_elements_keep_only_the_wanted_values() {
        let text = "x\\\"]}".repeat(200_000);
        let doc = format!(
            r#"[{{"candidates":[{{"content":{{"parts":[{{"text":"{text}"}}]}}}}],"modelVersion":"big"}}]"#
        );
        let mut s = ArrayScanner::new(KEYS);
        let mut models = Vec::new();
        for c in doc.as_bytes().chunks(4096) {
            s.feed(c, &mut |d, _| models.push(d.string("modelVersion")));
        }
        assert_eq!(models, vec![Some("big".to_string())]);
        assert!(s.is_done());
    }

    #[test]
    fn documents_of_a_recorded_array() {
        let data = b"[{\"a\":1}\n,\r\n{\"b\":\"}\"},{\"c\":[{}]},{\"cut\":";
        assert_eq!(
            documents(data),
            vec![
                serde_json::json!({"a": 1}),
                serde_json::json!({"b": "}"}),
                serde_json::json!({"c": [{}]})
            ]
        );
        assert!(documents(b"").is_empty());
    }
}
