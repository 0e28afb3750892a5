//! Streaming scanner for the top level of a JSON object.
//!
//! Bodies arrive in chunks of any size and must flow on at once, so the scanner keeps a few bytes
//! of state and never holds the document. It records the raw bytes of the values of a few
//! top-level keys (`model`, `stream`, `usage`, ...) up to a per-key cap and skips everything else:
//! a `messages` array of megabytes costs one pass and no allocation. Nesting is tracked with a
//! counter, not recursion, so hostile depth cannot overflow the stack.
//!
//! The scanner is not a validator: it follows well-formed JSON exactly and stops (state
//! `Invalid`) at the first byte that cannot start or continue the expected token. Values
//! recorded before that point stay available. A key seen twice keeps its last value, as most
//! JSON parsers (and the providers') do.

/// Longest key compared against the wanted keys; longer keys are never wanted.
const MAX_KEY: usize = 64;

/// One wanted top-level key and what was recorded for it.
#[derive(Debug)]
struct Capture {
    key: &'static str,
    max: usize,
    value: Vec<u8>,
    complete: bool,
    overflow: bool,
    /// The key appeared at the top level, whatever became of its value.
    seen: bool,
    /// Where its last value starts and ends in the whole input (offsets of the first byte and
    /// past the last), and how many values it has had: a caller that edits the body in place
    /// finds the value there (see `exchange`, "the hold").
    start: u64,
    end: u64,
    values: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    BeforeRoot,
    /// After `{`: a key or `}`.
    ObjectStart,
    /// After `,`: a key.
    BeforeKey,
    Key {
        escape: bool,
    },
    AfterKey,
    BeforeValue,
    Str {
        escape: bool,
    },
    /// A number, `true`, `false` or `null`: ends at the first delimiter.
    Scalar,
    Nested {
        depth: u32,
        in_str: bool,
        escape: bool,
    },
    AfterValue,
    Done,
    Invalid,
}

/// Records chosen top-level values of a JSON object fed in chunks.
#[derive(Debug)]
pub struct TopLevelScanner {
    state: State,
    captures: Vec<Capture>,
    key: Vec<u8>,
    key_overflow: bool,
    key_escaped: bool,
    current: Option<usize>,
    /// Bytes fed before the current chunk.
    base: u64,
}

impl TopLevelScanner {
    /// `keys` pairs each wanted key with the most raw bytes kept of its value; a longer value is
    /// dropped whole (a truncated value would parse as something else).
    pub fn new(keys: &[(&'static str, usize)]) -> Self {
        TopLevelScanner {
            state: State::BeforeRoot,
            captures: keys
                .iter()
                .map(|&(key, max)| Capture {
                    key,
                    max,
                    value: Vec::new(),
                    complete: false,
                    overflow: false,
                    seen: false,
                    start: 0,
                    end: 0,
                    values: 0,
                })
                .collect(),
            key: Vec::with_capacity(16),
            key_overflow: false,
            key_escaped: false,
            current: None,
            base: 0,
        }
    }

    /// Start again on a new document, keeping the allocations.
    pub fn reset(&mut self) {
        self.state = State::BeforeRoot;
        for c in &mut self.captures {
            c.value.clear();
            c.complete = false;
            c.overflow = false;
            c.seen = false;
            c.values = 0;
        }
        self.key.clear();
        self.current = None;
        self.base = 0;
    }

    /// True once the closing `}` of the top-level object has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// True when the input stopped being JSON (or was not an object).
    pub fn is_invalid(&self) -> bool {
        self.state == State::Invalid
    }

    /// The raw JSON bytes of a wanted key's value, if it was seen whole and within its cap.
    pub fn raw(&self, key: &str) -> Option<&[u8]> {
        self.captures
            .iter()
            .find(|c| c.key == key && c.complete)
            .map(|c| c.value.as_slice())
    }

    /// Whether a wanted key appeared at the top level (even with a value too long to keep).
    pub fn saw_key(&self, key: &str) -> bool {
        self.captures.iter().any(|c| c.key == key && c.seen)
    }

    /// A wanted value decoded as a JSON string.
    pub fn string(&self, key: &str) -> Option<String> {
        json_string(self.raw(key)?).ok().flatten()
    }

    /// A wanted value decoded as a JSON boolean.
    pub fn boolean(&self, key: &str) -> Option<bool> {
        match self.raw(key)? {
            b"true" => Some(true),
            b"false" => Some(false),
            _ => None,
        }
    }

    /// Where a wanted key's last complete value lies in the whole input (see [`Capture`]), and
    /// how many complete values it has had.
    pub fn span(&self, key: &str) -> Option<(u64, u64, u32)> {
        self.captures
            .iter()
            .find(|c| c.key == key && c.values > 0)
            .map(|c| (c.start, c.end, c.values))
    }

    /// Where the value of `key` that is being read began, while it is.
    pub fn open_value(&self, key: &str) -> Option<u64> {
        let c = self.captures.get(self.current?)?;
        let in_value = matches!(
            self.state,
            State::Str { .. } | State::Scalar | State::Nested { .. }
        );
        (in_value && c.key == key).then_some(c.start)
    }

    /// Bytes fed so far.
    pub fn fed(&self) -> u64 {
        self.base
    }

    /// Scan a chunk. Returns the offset in `chunk` of the object's closing `}` when this chunk
    /// holds it, so a caller can edit the end of a body it never held.
    pub fn feed(&mut self, chunk: &[u8]) -> Option<usize> {
        let close = self.feed_chunk(chunk);
        self.base += chunk.len() as u64;
        close
    }

    fn feed_chunk(&mut self, chunk: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < chunk.len() {
            let b = chunk[i];
            match self.state {
                State::Done | State::Invalid => return None,
                State::BeforeRoot => match b {
                    b'{' => self.state = State::ObjectStart,
                    // A UTF-8 byte order mark is tolerated before the document.
                    0xEF | 0xBB | 0xBF => {}
                    _ if is_ws(b) => {}
                    _ => self.state = State::Invalid,
                },
                State::ObjectStart | State::BeforeKey => match b {
                    b'"' => self.start_key(),
                    b'}' if self.state == State::ObjectStart => {
                        self.state = State::Done;
                        return Some(i);
                    }
                    _ if is_ws(b) => {}
                    _ => self.state = State::Invalid,
                },
                State::Key { escape: true } => {
                    self.push_key(&chunk[i..=i]);
                    self.state = State::Key { escape: false };
                }
                State::Key { escape: false } => {
                    // The rest of the key in one search, not byte by byte.
                    match memchr::memchr2(b'"', b'\\', &chunk[i..]) {
                        None => {
                            self.push_key(&chunk[i..]);
                            return None;
                        }
                        Some(off) => {
                            let j = i + off;
                            self.push_key(&chunk[i..=j]);
                            if chunk[j] == b'"' {
                                self.key.pop();
                                self.end_key();
                            } else {
                                self.key_escaped = true;
                                self.state = State::Key { escape: true };
                            }
                            i = j + 1;
                            continue;
                        }
                    }
                }
                State::AfterKey => match b {
                    b':' => self.state = State::BeforeValue,
                    _ if is_ws(b) => {}
                    _ => self.state = State::Invalid,
                },
                State::BeforeValue => {
                    if is_ws(b) {
                        i += 1;
                        continue;
                    }
                    self.begin_value(i);
                    match b {
                        b'"' => self.state = State::Str { escape: false },
                        b'{' | b'[' => {
                            self.state = State::Nested {
                                depth: 1,
                                in_str: false,
                                escape: false,
                            }
                        }
                        b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => self.state = State::Scalar,
                        _ => {
                            self.state = State::Invalid;
                            return None;
                        }
                    }
                    self.record(&chunk[i..=i]);
                }
                State::Str { escape } => {
                    let start = i;
                    let (end, esc) = string_end(chunk, i, escape);
                    match end {
                        Some(e) => {
                            self.record(&chunk[start..=e]);
                            self.end_value(e + 1);
                            i = e + 1;
                        }
                        None => {
                            self.record(&chunk[start..]);
                            self.state = State::Str { escape: esc };
                            i = chunk.len();
                        }
                    }
                    continue;
                }
                State::Scalar => {
                    let start = i;
                    while i < chunk.len() && class(chunk[i]) == SCALAR {
                        i += 1;
                    }
                    self.record(&chunk[start..i]);
                    // A scalar may go on in the next chunk.
                    let &d = chunk.get(i)?;
                    if is_ws(d) || d == b',' || d == b'}' {
                        self.end_value(i);
                        // The delimiter belongs to the object: look at it again.
                        continue;
                    }
                    self.state = State::Invalid;
                    return None;
                }
                State::Nested {
                    depth,
                    in_str,
                    escape,
                } => {
                    let start = i;
                    let (mut depth, mut in_str, mut escape) = (depth, in_str, escape);
                    let mut closed = false;
                    while i < chunk.len() {
                        if in_str {
                            // Strings (most of a `messages` array) are skipped in one search.
                            match string_end(chunk, i, escape) {
                                (Some(e), _) => {
                                    in_str = false;
                                    escape = false;
                                    i = e + 1;
                                }
                                (None, esc) => {
                                    escape = esc;
                                    i = chunk.len();
                                }
                            }
                            continue;
                        }
                        // Everything but quotes and brackets is skipped in a tight loop.
                        while i < chunk.len() && class(chunk[i]) < STRUCTURAL {
                            i += 1;
                        }
                        let Some(&c) = chunk.get(i) else {
                            break;
                        };
                        i += 1;
                        match c {
                            b'"' => in_str = true,
                            b'{' | b'[' => depth = depth.saturating_add(1),
                            b'}' | b']' => {
                                depth -= 1;
                                if depth == 0 {
                                    closed = true;
                                    break;
                                }
                            }
                            _ => {}
                        }
                    }
                    self.record(&chunk[start..i]);
                    if closed {
                        self.end_value(i);
                    } else {
                        self.state = State::Nested {
                            depth,
                            in_str,
                            escape,
                        };
                    }
                    continue;
                }
                State::AfterValue => match b {
                    b',' => self.state = State::BeforeKey,
                    b'}' => {
                        self.state = State::Done;
                        return Some(i);
                    }
                    _ if is_ws(b) => {}
                    _ => self.state = State::Invalid,
                },
            }
            i += 1;
        }
        None
    }

    fn start_key(&mut self) {
        self.key.clear();
        self.key_overflow = false;
        self.key_escaped = false;
        self.state = State::Key { escape: false };
    }

    /// Keys past [`MAX_KEY`] bytes are never wanted: only the overflow is remembered.
    fn push_key(&mut self, bytes: &[u8]) {
        let room = MAX_KEY + 1 - self.key.len().min(MAX_KEY + 1);
        if bytes.len() > room {
            self.key_overflow = true;
        }
        self.key.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn end_key(&mut self) {
        self.state = State::AfterKey;
        self.current = None;
        if self.key_overflow {
            return;
        }
        let decoded;
        let key: &[u8] = if self.key_escaped {
            // Rare: `"mod\u0065l"`. Let serde_json apply the escape rules.
            let mut quoted = Vec::with_capacity(self.key.len() + 2);
            quoted.push(b'"');
            quoted.extend_from_slice(&self.key);
            quoted.push(b'"');
            match serde_json::from_slice::<String>(&quoted) {
                Ok(s) => {
                    decoded = s;
                    decoded.as_bytes()
                }
                Err(_) => return,
            }
        } else {
            &self.key
        };
        self.current = self.captures.iter().position(|c| c.key.as_bytes() == key);
    }

    fn begin_value(&mut self, at: usize) {
        let start = self.base + at as u64;
        if let Some(c) = self.current.and_then(|i| self.captures.get_mut(i)) {
            c.start = start;
            c.seen = true;
            c.value.clear();
            c.complete = false;
            c.overflow = false;
        }
    }

    fn record(&mut self, bytes: &[u8]) {
        if let Some(c) = self.current.and_then(|i| self.captures.get_mut(i)) {
            if c.overflow {
                return;
            }
            if c.value.len() + bytes.len() > c.max {
                c.overflow = true;
                c.value = Vec::new();
            } else {
                c.value.extend_from_slice(bytes);
            }
        }
    }

    fn end_value(&mut self, at: usize) {
        let end = self.base + at as u64;
        if let Some(c) = self.current.and_then(|i| self.captures.get_mut(i)) {
            c.complete = !c.overflow;
            if c.complete {
                c.end = end;
                c.values += 1;
            }
        }
        self.current = None;
        self.state = State::AfterValue;
    }
}

/// From `i`, inside a JSON string (just after a backslash when `escape`), the offset of the
/// closing quote; or `None` and whether the chunk ends just after a backslash. Jumps from
/// backslash to backslash with a fast search, instead of looking at every byte.
fn string_end(chunk: &[u8], mut i: usize, mut escape: bool) -> (Option<usize>, bool) {
    loop {
        if escape {
            if i >= chunk.len() {
                return (None, true);
            }
            // The escaped byte (`"`, `\\`, `u`...) ends nothing.
            i += 1;
            escape = false;
            continue;
        }
        match memchr::memchr2(b'"', b'\\', chunk.get(i..).unwrap_or(&[])) {
            None => return (None, false),
            Some(off) => {
                let j = i + off;
                if chunk[j] == b'"' {
                    return (Some(j), false);
                }
                escape = true;
                i = j + 1;
            }
        }
    }
}

/// Hand `f` each member of the JSON object `raw` (a value the scanner recorded, such as a
/// `usage` object): its key as written between the quotes (escapes left as they are, so an
/// escaped key matches no name), and its value's raw text. Read as the scanner reads a document:
/// the object's own structure is checked, nested values are only delimited, and a repeated key
/// is handed over again (so the last one wins). False, after whatever members came before, when
/// `raw` is not such an object.
pub fn for_each_member(raw: &[u8], mut f: impl FnMut(&[u8], &[u8])) -> bool {
    let ws = |mut i: usize| {
        while raw.get(i).is_some_and(|&b| is_ws(b)) {
            i += 1;
        }
        i
    };
    let mut i = ws(0);
    if raw.get(i) != Some(&b'{') {
        return false;
    }
    i = ws(i + 1);
    if raw.get(i) == Some(&b'}') {
        return ws(i + 1) == raw.len();
    }
    loop {
        if raw.get(i) != Some(&b'"') {
            return false;
        }
        let key_start = i + 1;
        let Some(key_end) = string_end(raw, key_start, false).0 else {
            return false;
        };
        i = ws(key_end + 1);
        if raw.get(i) != Some(&b':') {
            return false;
        }
        let value_start = ws(i + 1);
        let Some(value_end) = value_end(raw, value_start) else {
            return false;
        };
        f(&raw[key_start..key_end], &raw[value_start..value_end]);
        i = ws(value_end);
        match raw.get(i) {
            Some(b',') => i = ws(i + 1),
            Some(b'}') => return ws(i + 1) == raw.len(),
            _ => return false,
        }
    }
}

/// Where the value starting at `i` ends (one past its last byte).
fn value_end(raw: &[u8], i: usize) -> Option<usize> {
    match *raw.get(i)? {
        b'"' => string_end(raw, i + 1, false).0.map(|e| e + 1),
        b'{' | b'[' => {
            let (mut depth, mut j) = (0u32, i);
            while j < raw.len() {
                match raw[j] {
                    b'"' => j = string_end(raw, j + 1, false).0?,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let end = i + raw[i..].iter().take_while(|&&b| class(b) == SCALAR).count();
            (end > i).then_some(end)
        }
    }
}

/// A value of a type other than the one asked for.
#[derive(Debug, PartialEq, Eq)]
pub struct WrongType;

/// A value read as serde reads an `Option<String>`: `null` is `None`, a string its text, anything
/// else an error.
pub fn json_string(v: &[u8]) -> Result<Option<String>, WrongType> {
    if v == b"null" {
        return Ok(None);
    }
    // The usual string has no escape and no control character: its bytes are the text.
    if let [b'"', text @ .., b'"'] = v {
        if !text.iter().any(|&b| b == b'\\' || b == b'"' || b < 0x20) {
            return String::from_utf8(text.to_vec())
                .map(Some)
                .map_err(|_| WrongType);
        }
    }
    serde_json::from_slice::<String>(v)
        .map(Some)
        .map_err(|_| WrongType)
}

/// A member value read as serde reads an `Option<u64>`: `null` is `None`; an unsigned integer
/// that fits is its value; anything else (a sign, a fraction, an exponent, a string, a number
/// past `u64`, a leading zero) is an error.
pub fn json_u64(v: &[u8]) -> Result<Option<u64>, WrongType> {
    match v {
        b"null" => Ok(None),
        [b'0'] => Ok(Some(0)),
        [b'1'..=b'9', ..] if v.iter().all(u8::is_ascii_digit) => v
            .iter()
            .try_fold(0u64, |n, &d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
            .map(Some)
            .ok_or(WrongType),
        _ => Err(WrongType),
    }
}

/// A cheap test for whether a document may hold one of a few keys: false only when no `"key"`
/// appears in it literally and no `\\u` escape could spell one. It lets a stream event that
/// cannot matter skip the scan; when in doubt, it says yes.
///
/// One pass for all keys: a key can only start where a quote is followed by the first letter of
/// some key, and an escape where a backslash is followed by `u`; only those places are compared.
/// The pass looks at 16 bytes at a time (wasm SIMD, or SSE2 natively), where most stream events
/// have no such place.
pub struct KeyProbe {
    /// The keys in quotes, as they appear in JSON.
    quoted: &'static [&'static str],
    /// The letter after each key's opening quote, repeated to fill the four slots.
    #[cfg_attr(
        not(any(
            all(target_arch = "wasm32", target_feature = "simd128"),
            target_arch = "x86_64"
        )),
        allow(dead_code)
    )]
    firsts: [u8; 4],
    /// Every key is quoted and at most four letters open them: the one-pass search applies.
    one_pass: bool,
}

impl KeyProbe {
    pub const fn new(quoted: &'static [&'static str]) -> Self {
        let mut firsts = [0u8; 4];
        let (mut n, mut k, mut one_pass) = (0, 0, !quoted.is_empty());
        while k < quoted.len() && one_pass {
            let b = quoted[k].as_bytes();
            if b.len() < 2 || b[0] != b'"' {
                one_pass = false;
                break;
            }
            let mut j = 0;
            while j < n && firsts[j] != b[1] {
                j += 1;
            }
            if j == n {
                if n == firsts.len() {
                    one_pass = false;
                    break;
                }
                firsts[n] = b[1];
                n += 1;
            }
            k += 1;
        }
        while n > 0 && n < firsts.len() {
            firsts[n] = firsts[0];
            n += 1;
        }
        KeyProbe {
            quoted,
            firsts,
            one_pass,
        }
    }

    pub fn may_hold(&self, data: &[u8]) -> bool {
        self.first_place(data).is_some()
    }

    /// Where the first key or `\\u` escape starts in `data`, if any: nothing before it can be a
    /// wanted key, so a caller may pass over what precedes it.
    pub fn first_place(&self, data: &[u8]) -> Option<usize> {
        if !self.one_pass {
            return std::iter::once(&"\\u")
                .chain(self.quoted)
                .filter_map(|q| {
                    memchr::memmem::find_iter(data, q.as_bytes())
                        .find(|&at| self.starts_here(data, at))
                })
                .min();
        }
        let from = match self.vector_pass(data) {
            Ok(at) => return Some(at),
            Err(from) => from,
        };
        let tail = data.get(from..).unwrap_or(&[]);
        if tail.len() > 32 {
            return memchr::memchr2_iter(b'"', b'\\', tail)
                .map(|off| from + off)
                .find(|&at| self.starts_here(data, at));
        }
        // The few bytes after the blocks: a plain loop costs less than setting up a search.
        (from..data.len())
            .find(|&at| matches!(data[at], b'"' | b'\\') && self.starts_here(data, at))
    }

    /// Whether a key or a `\\u` escape starts at `at`. A key whose value is `null` does not
    /// count: every meter reads `null` as absent, and an OpenAI stream that reports usage carries
    /// `"usage":null` in every chunk before the last.
    fn starts_here(&self, data: &[u8], at: usize) -> bool {
        let rest = data.get(at..).unwrap_or(&[]);
        rest.starts_with(b"\\u")
            || self.quoted.iter().any(|q| {
                // The letter after the quote first: most places are no key at all.
                q.as_bytes().get(1).is_none_or(|b| rest.get(1) == Some(b))
                    && rest
                        .strip_prefix(q.as_bytes())
                        .is_some_and(|after| !is_null_member_value(after))
            })
    }

    /// The 16-byte blocks: `Ok` with where the first key or escape starts, or `Err` with where
    /// the bytes the blocks did not cover begin.
    /// `places(i)` is the bitmask of the block at `i` (bit k: a quote before a first letter, or
    /// a backslash before `u`, at i + k); it is only asked where i + 17 <= data.len(), since each
    /// block also needs the byte after it.
    #[cfg_attr(
        not(any(
            all(target_arch = "wasm32", target_feature = "simd128"),
            target_arch = "x86_64"
        )),
        allow(dead_code)
    )]
    #[inline(always)]
    fn blocks(&self, data: &[u8], places: impl Fn(usize) -> u32) -> Result<usize, usize> {
        let mut i = 0;
        while i + 17 <= data.len() {
            let mut bits = places(i);
            while bits != 0 {
                let at = i + bits.trailing_zeros() as usize;
                if self.starts_here(data, at) {
                    return Ok(at);
                }
                bits &= bits - 1;
            }
            i += 16;
        }
        Err(i)
    }

    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    fn vector_pass(&self, data: &[u8]) -> Result<usize, usize> {
        use core::arch::wasm32::{
            u8x16_bitmask, u8x16_eq, u8x16_splat, v128, v128_and, v128_load, v128_or,
        };
        let [f0, f1, f2, f3] = self.firsts.map(|c| u8x16_splat(c));
        let (quote, backslash, u) = (u8x16_splat(b'"'), u8x16_splat(b'\\'), u8x16_splat(b'u'));
        self.blocks(data, |i| {
            // SAFETY: `blocks` asks only where i + 17 <= data.len(), so the 16 bytes at i and
            // at i + 1 are in bounds; v128_load has no alignment requirement.
            let (here, next) = unsafe {
                let p = data.as_ptr().add(i);
                (
                    v128_load(p.cast::<v128>()),
                    v128_load(p.add(1).cast::<v128>()),
                )
            };
            let first = v128_or(
                v128_or(u8x16_eq(next, f0), u8x16_eq(next, f1)),
                v128_or(u8x16_eq(next, f2), u8x16_eq(next, f3)),
            );
            u32::from(u8x16_bitmask(v128_or(
                v128_and(u8x16_eq(here, quote), first),
                v128_and(u8x16_eq(here, backslash), u8x16_eq(next, u)),
            )))
        })
    }

    /// The same pass with SSE2 (part of every x86-64), so that native builds (tests, fuzzing,
    /// `examples/exchange_cost` under callgrind) run what the module runs.
    #[cfg(target_arch = "x86_64")]
    fn vector_pass(&self, data: &[u8]) -> Result<usize, usize> {
        // SAFETY: SSE2 is part of x86-64: every CPU this build can run on has it.
        unsafe { self.vector_pass_sse2(data) }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "sse2")]
    fn vector_pass_sse2(&self, data: &[u8]) -> Result<usize, usize> {
        use core::arch::x86_64::{
            __m128i, _mm_and_si128, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8,
            _mm_or_si128, _mm_set1_epi8,
        };
        let [f0, f1, f2, f3] = self.firsts.map(|c| _mm_set1_epi8(c as i8));
        let (quote, backslash, u) = (
            _mm_set1_epi8(b'"' as i8),
            _mm_set1_epi8(b'\\' as i8),
            _mm_set1_epi8(b'u' as i8),
        );
        self.blocks(data, |i| {
            // SAFETY: as in the wasm pass; _mm_loadu_si128 has no alignment requirement.
            let (here, next) = unsafe {
                let p = data.as_ptr().add(i);
                (
                    _mm_loadu_si128(p.cast::<__m128i>()),
                    _mm_loadu_si128(p.add(1).cast::<__m128i>()),
                )
            };
            let first = _mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi8(next, f0), _mm_cmpeq_epi8(next, f1)),
                _mm_or_si128(_mm_cmpeq_epi8(next, f2), _mm_cmpeq_epi8(next, f3)),
            );
            _mm_movemask_epi8(_mm_or_si128(
                _mm_and_si128(_mm_cmpeq_epi8(here, quote), first),
                _mm_and_si128(_mm_cmpeq_epi8(here, backslash), _mm_cmpeq_epi8(next, u)),
            )) as u32
        })
    }

    #[cfg(not(any(
        all(target_arch = "wasm32", target_feature = "simd128"),
        target_arch = "x86_64"
    )))]
    fn vector_pass(&self, _data: &[u8]) -> Result<usize, usize> {
        Err(0)
    }
}

const OTHER: u8 = 0;
/// Bytes that can continue a number or a literal (`true`, `false`, `null`).
const SCALAR: u8 = 1;
/// Brackets: what nesting depth turns on.
const STRUCTURAL: u8 = 2;
/// Quotes and backslashes: what strings turn on.
const QUOTE_OR_BACKSLASH: u8 = 3;

static CLASSES: [u8; 256] = {
    let mut t = [OTHER; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = match c {
            b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' | b'.' | b'+' | b'-' => SCALAR,
            b'"' | b'\\' => QUOTE_OR_BACKSLASH,
            b'{' | b'}' | b'[' | b']' => STRUCTURAL,
            _ => OTHER,
        };
        b += 1;
    }
    t
};

fn class(b: u8) -> u8 {
    CLASSES[usize::from(b)]
}

/// `after` (what follows a quoted key) is `: null` and a delimiter, whitespace allowed. Bytes cut
/// short say no: the key may have a value.
fn is_null_member_value(after: &[u8]) -> bool {
    fn skip_ws(b: &[u8]) -> &[u8] {
        b.iter().position(|&c| !is_ws(c)).map_or(&[], |p| &b[p..])
    }
    match skip_ws(after) {
        [b':', value @ ..] => matches!(
            skip_ws(value),
            [b'n', b'u', b'l', b'l', d, ..] if is_ws(*d) || matches!(d, b',' | b'}' | b']')
        ),
        _ => false,
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_probe_is_never_wrong_when_it_says_no() {
        let probe = KeyProbe::new(&["\"usage\"", "\"error\""]);
        assert!(probe.may_hold(br#"{"choices":[],"usage":{"prompt_tokens":1}}"#));
        assert!(probe.may_hold(br#"{"error":{}}"#));
        // Escaped key names could spell a wanted key: scanned.
        assert!(probe.may_hold(br#"{"us\u0061ge":{}}"#));
        assert!(
            !probe.may_hold(br#"{"id":"c","choices":[{"delta":{"content":"usage of error\n"}}]}"#)
        );
        assert!(!probe.may_hold(br#"{"usages":1,"errors":2}"#));
        assert!(!probe.may_hold(b"[DONE]"));
        assert!(!probe.may_hold(b"\"usage"));
    }

    /// What the probe must answer: the first offset where a plain search finds a key or `\u`.
    /// (A key followed by `: null` and a delimiter does not count.)
    fn plain(keys: &[&str], d: &[u8]) -> Option<usize> {
        let null_after = |after: &[u8]| {
            let t = String::from_utf8_lossy(after);
            let t = t.trim_start_matches([' ', '\t', '\n', '\r']);
            t.strip_prefix(':').is_some_and(|v| {
                let v = v.trim_start_matches([' ', '\t', '\n', '\r']);
                v.len() > 4
                    && v.starts_with("null")
                    && matches!(
                        v.as_bytes()[4],
                        b' ' | b'\t' | b'\n' | b'\r' | b',' | b'}' | b']'
                    )
            })
        };
        (0..d.len()).find(|&at| {
            let rest = &d[at..];
            rest.starts_with(b"\\u")
                || keys
                    .iter()
                    .any(|k| rest.starts_with(k.as_bytes()) && !null_after(&rest[k.len()..]))
        })
    }

    #[test]
    fn keys_whose_value_is_null_teach_nothing() {
        let probe = KeyProbe::new(&["\"usage\"", "\"error\""]);
        let at = |d: &str| probe.first_place(d.as_bytes());
        assert_eq!(at(r#"{"choices":[],"usage":null}"#), None);
        assert_eq!(at("{\"usage\" :\n null ,\"error\":{}}"), Some(18));
        assert_eq!(
            at(r#"{"usage":null,"usage":{"prompt_tokens":1}}"#),
            Some(14)
        );
        // Cut short, or not quite null: it may be a value.
        assert_eq!(at(r#"{"usage":nul"#), Some(1));
        assert_eq!(at(r#"{"usage":null"#), Some(1));
        assert_eq!(at(r#"{"usage":nullx}"#), Some(1));
        assert_eq!(at(r#"{"usage":"null"}"#), Some(1));
        let slow = KeyProbe::new(&["\"a\"", "\"b\"", "\"c\"", "\"d\"", "\"usage\""]);
        assert_eq!(slow.first_place(br#"{"usage":null,"a":1}"#), Some(14));
    }

    #[test]
    fn key_probe_agrees_with_a_plain_search_wherever_the_key_falls() {
        const KEYS: &[&str] = &["\"usage\"", "\"error\"", "\"response\"", "\"x_groq\""];
        static PROBE: KeyProbe = KeyProbe::new(KEYS);
        let needles = [
            "\"usage\"",
            "\"error\"",
            "\"response\"",
            "\"x_groq\"",
            "\\u0061",
            "\"usag",
            "\"usages\"",
            "\"u",
            "\\",
            "\\n",
            "\"x_gro\"",
            "\"e",
            "\"usage\":null}",
            "\"error\" : null,",
            "\"usage\":null",
            "\"x_groq\":\nnull\n",
        ];
        // Every offset around the 16-byte blocks, and the tail after them.
        for needle in needles {
            for len in [0, 1, 2, 15, 16, 17, 18, 31, 32, 33, 48, 70] {
                for at in 0..=len {
                    let mut d: Vec<u8> = b"{\"id\":\"c\",\"choices\":[{\"delta\":\"ok\"}]}\"ab\"cd\"ef\"gh\"ij\"kl\"mn"
                        .iter()
                        .copied()
                        .cycle()
                        .take(len)
                        .collect();
                    d.splice(at..at, needle.bytes());
                    assert_eq!(
                        PROBE.first_place(&d),
                        plain(KEYS, &d),
                        "{needle} at {at} of {len}"
                    );
                    assert_eq!(PROBE.may_hold(&d), plain(KEYS, &d).is_some());
                }
            }
        }
        // Random documents over the bytes that matter.
        let alphabet = b"\"\\uerxsagpon_:{}o lnul,";
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 90) as usize;
            let d: Vec<u8> = (0..len)
                .map(|i| alphabet[((seed >> (i % 50)) as usize + i * 7) % alphabet.len()])
                .collect();
            assert_eq!(
                PROBE.first_place(&d),
                plain(KEYS, &d),
                "{:?}",
                String::from_utf8_lossy(&d)
            );
        }
    }

    #[test]
    fn key_probe_falls_back_for_keys_it_cannot_search_in_one_pass() {
        // Five opening letters, and keys without quotes: the plain search answers.
        const FIVE: &[&str] = &["\"a\"", "\"b\"", "\"c\"", "\"d\"", "\"e\""];
        const BARE: &[&str] = &["usage"];
        let (five, bare) = (KeyProbe::new(FIVE), KeyProbe::new(BARE));
        assert!(!five.one_pass && !bare.one_pass);
        for d in [
            &b"{\"e\":1}"[..],
            b"{\"f\":1}",
            b"usage",
            b"{\"x\":\"\\u0041\"}",
            b"",
        ] {
            assert_eq!(five.first_place(d), plain(FIVE, d));
            assert_eq!(bare.first_place(d), plain(BARE, d));
        }
        assert!(!KeyProbe::new(&[]).may_hold(b"{\"usage\":1}"));
    }

    const REQ: &[(&str, usize)] = &[("model", 256), ("stream", 16)];

    fn scan_split(doc: &[u8], keys: &[(&'static str, usize)], at: usize) -> TopLevelScanner {
        let mut s = TopLevelScanner::new(keys);
        s.feed(&doc[..at]);
        s.feed(&doc[at..]);
        s
    }

    /// Every split point gives the same answer as feeding the whole document at once.
    fn check_all_splits(doc: &[u8], model: Option<&str>, stream: Option<bool>) {
        for at in 0..=doc.len() {
            let s = scan_split(doc, REQ, at);
            assert_eq!(s.string("model").as_deref(), model, "split at {at}");
            assert_eq!(s.boolean("stream"), stream, "split at {at}");
            assert!(s.is_done(), "split at {at}");
        }
        // One byte at a time.
        let mut s = TopLevelScanner::new(REQ);
        for b in doc {
            s.feed(std::slice::from_ref(b));
        }
        assert_eq!(s.string("model").as_deref(), model);
        assert_eq!(s.boolean("stream"), stream);
    }

    #[test]
    fn model_first() {
        check_all_splits(
            br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
            Some("gpt-4o-mini"),
            Some(true),
        );
    }

    #[test]
    fn model_after_long_messages_with_tricky_strings() {
        let mut doc = String::from(r#"{"messages":["#);
        for i in 0..2000 {
            doc.push_str(&format!(
                r#"{{"role":"user","content":"quote \" brace }} bracket ] model \"model\": {i} \\"}},"#
            ));
        }
        doc.push_str(
            r#"{"role":"assistant","content":[{"type":"text","text":"{\"model\":\"fake\"}"}]}"#,
        );
        doc.push_str(r#"], "temperature": 0.2, "max_tokens": 100, "stream": false, "model" : "claude-sonnet-4-5" }"#);
        let bytes = doc.as_bytes();
        let s = scan_split(bytes, REQ, bytes.len() / 2);
        assert_eq!(s.string("model").as_deref(), Some("claude-sonnet-4-5"));
        assert_eq!(s.boolean("stream"), Some(false));
        assert!(s.is_done());
    }

    #[test]
    fn nested_model_keys_are_not_top_level() {
        check_all_splits(
            br#"{"metadata":{"model":"nested"},"tools":[{"model":"x"}],"model":"gpt-4.1"}"#,
            Some("gpt-4.1"),
            None,
        );
    }

    #[test]
    fn escapes_in_key_and_value() {
        check_all_splits(
            br#"{"mod\u0065l":"gpt-\u0034o\"x\\","stream":true}"#,
            Some("gpt-4o\"x\\"),
            Some(true),
        );
    }

    #[test]
    fn whitespace_everywhere_and_crlf() {
        check_all_splits(
            b"\xEF\xBB\xBF \r\n{ \r\n\t\"stream\" \n:\ttrue ,\r\n \"model\"\r\n:\r\n\"o3\" \r\n}\r\n",
            Some("o3"),
            Some(true),
        );
    }

    #[test]
    fn duplicate_key_last_wins() {
        check_all_splits(
            br#"{"model":"a","stream":true,"model":"b","stream":false}"#,
            Some("b"),
            Some(false),
        );
    }

    #[test]
    fn wrong_types_are_not_taken() {
        let s = scan_split(br#"{"model":{"name":"x"},"stream":"yes"}"#, REQ, 7);
        assert_eq!(s.string("model"), None);
        assert_eq!(s.boolean("stream"), None);
        assert!(s.is_done());
    }

    #[test]
    fn overlong_value_is_dropped_not_truncated() {
        let long = "m".repeat(300);
        let doc = format!(r#"{{"model":"{long}","stream":true}}"#);
        let s = scan_split(doc.as_bytes(), REQ, 100);
        assert_eq!(s.string("model"), None);
        assert_eq!(s.boolean("stream"), Some(true));
    }

    #[test]
    fn not_an_object_or_broken() {
        let s = scan_split(br#"[{"model":"x"}]"#, REQ, 3);
        assert!(s.is_invalid());
        assert_eq!(s.string("model"), None);
        // Garbage after a recorded value keeps what was recorded.
        let s = scan_split(br#"{"model":"x", ?? "#, REQ, 3);
        assert!(s.is_invalid());
        assert_eq!(s.string("model").as_deref(), Some("x"));
    }

    #[test]
    fn deep_nesting_does_not_recurse() {
        let mut doc = String::from(r#"{"a":"#);
        doc.push_str(&"[".repeat(1_000_000));
        doc.push_str(&"]".repeat(1_000_000));
        doc.push_str(r#","model":"deep"}"#);
        let s = scan_split(doc.as_bytes(), REQ, 500_000);
        assert_eq!(s.string("model").as_deref(), Some("deep"));
    }

    #[test]
    fn raw_object_capture() {
        let doc = br#"{"id":"x","usage":{"prompt_tokens":12,"completion_tokens":3},"model":"m"}"#;
        for at in 0..=doc.len() {
            let s = scan_split(doc, &[("usage", 1024)], at);
            assert_eq!(
                s.raw("usage"),
                Some(&br#"{"prompt_tokens":12,"completion_tokens":3}"#[..])
            );
        }
    }

    #[test]
    fn reports_where_the_object_closes() {
        let doc = b"{\"a\":[{}],\"b\":\"}\"} \n";
        let close = doc.len() - 3;
        for at in 0..=doc.len() {
            let mut s = TopLevelScanner::new(&[]);
            let first = s.feed(&doc[..at]);
            let second = s.feed(&doc[at..]);
            match (first, second) {
                (Some(i), None) => assert_eq!(i, close),
                (None, Some(i)) => assert_eq!(at + i, close),
                other => panic!("split {at}: {other:?}"),
            }
        }
        assert_eq!(TopLevelScanner::new(&[]).feed(b" {} "), Some(2));
    }

    #[test]
    fn numbers_and_literals() {
        let doc = br#"{"n":-1.5e+3,"t":true,"z":null,"stream":false}"#;
        for at in 0..=doc.len() {
            let s = scan_split(doc, &[("n", 32), ("z", 8), ("stream", 8)], at);
            assert_eq!(s.raw("n"), Some(&b"-1.5e+3"[..]));
            assert_eq!(s.raw("z"), Some(&b"null"[..]));
            assert_eq!(s.boolean("stream"), Some(false));
        }
    }

    fn members(raw: &[u8]) -> Option<Vec<(String, String)>> {
        let mut out = Vec::new();
        let ok = for_each_member(raw, |k, v| {
            out.push((
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            ))
        });
        ok.then_some(out)
    }

    #[test]
    fn members_of_an_object() {
        let pairs = |p: &[(&str, &str)]| {
            Some(
                p.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<Vec<_>>(),
            )
        };
        let doc = br#" {
  "prompt_tokens": 1117 ,"s":"a \"}] {[\\","n":{"x":[1,{"y":"}"}],"z":null},
  "a":[],"t":true,"f":-1.5e3, "k\u0061":7,"prompt_tokens":2
}
"#;
        assert_eq!(
            members(doc),
            pairs(&[
                ("prompt_tokens", "1117"),
                ("s", r#""a \"}] {[\\""#),
                ("n", r#"{"x":[1,{"y":"}"}],"z":null}"#),
                ("a", "[]"),
                ("t", "true"),
                ("f", "-1.5e3"),
                // Escapes are left as written: no wanted name matches them.
                (r"k\u0061", "7"),
                // A repeated key comes again: the last one wins.
                ("prompt_tokens", "2"),
            ])
        );
        assert_eq!(members(b"{}"), pairs(&[]));
        assert_eq!(members(b" { } "), pairs(&[]));
        for bad in [
            &b""[..],
            b"null",
            b"[1]",
            b"{",
            b"{\"a\"}",
            b"{\"a\":}",
            b"{\"a\":1,}",
            b"{\"a\":1 \"b\":2}",
            b"{\"a\":1}x",
            b"{\"a\":[1,2}",
            b"{\"a\":\"x}",
            b"{\"a:1}",
            b"{a:1}",
        ] {
            assert_eq!(members(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn integers_and_strings_read_as_serde_reads_them() {
        for v in [
            "0",
            "7",
            "1117",
            "18446744073709551615",
            "18446744073709551616",
            "01",
            "-1",
            "1.0",
            "1e2",
            "\"5\"",
            "null",
            "true",
            "",
            "99999999999999999999",
        ] {
            let serde = serde_json::from_str::<Option<u64>>(v).map_err(|_| WrongType);
            assert_eq!(json_u64(v.as_bytes()), serde, "{v:?}");
        }
        for v in [
            r#""gpt-4o""#,
            r#""""#,
            r#""caf\u00e9 \"q\" \\ \n""#,
            "\"caf\u{e9}\"",
            "\"a\tb\"",
            "\"a\u{1}b\"",
            "null",
            "7",
            r#""unterminated"#,
            r#""\x""#,
        ] {
            let serde = serde_json::from_str::<Option<String>>(v).map_err(|_| WrongType);
            assert_eq!(json_string(v.as_bytes()), serde, "{v:?}");
        }
        // Not UTF-8: refused as serde refuses it.
        assert_eq!(json_string(b"\"\xff\""), Err(WrongType));
    }
}
