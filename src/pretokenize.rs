//! The encodings' pre-tokenizers, written out by hand: text is cut into the pieces that
//! tiktoken's patterns match, before each piece is byte-pair merged ([`crate::vocab`]).
//!
//! tiktoken-rs runs these patterns through fancy-regex and regex-automata, whose code made up
//! most of what the tokenizer added to each VM's memory (every function is compiled at load,
//! counting or not). The patterns are small, and their backtracking can be followed exactly with
//! one forward scan per piece; the character classes come from regex-syntax's tables at build
//! time (`build.rs`), so they are the ones the regex engine uses. Tests check every piece
//! against tiktoken-rs itself.
//!
//! `cl100k_base` (tiktoken's pattern, with its possessive quantifiers):
//! `'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s`
//!
//! `o200k_base`, where U is `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]`, L is `[\p{Ll}\p{Lm}\p{Lo}\p{M}]`
//! and C is `(?i:'s|'t|'re|'ve|'m|'ll|'d)`:
//! `[^\r\n\p{L}\p{N}]?U*L+C?|[^\r\n\p{L}\p{N}]?U+L*C?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+`
//!
//! Matches are leftmost-first, tried from where the last one ended; every character is matched
//! by some alternative, so the pieces cover the text.

use crate::measure::Encoding;

mod tables {
    include!(concat!(env!("OUT_DIR"), "/unicode.rs"));
}

fn is_in(table: &[(u32, u32)], c: char) -> bool {
    let c = u32::from(c);
    table
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// What a character is to the patterns.
#[derive(Clone, Copy)]
struct Class(u8);

const LETTER: u8 = 1;
const NUMBER: u8 = 2;
const UPPER: u8 = 4;
const LOWER: u8 = 8;
const SPACE: u8 = 16;
const NEWLINE: u8 = 32;

impl Class {
    fn of(c: char) -> Class {
        // ASCII by hand (most text), the rest from the tables.
        let bits = if c.is_ascii() {
            match c {
                'a'..='z' => LETTER | LOWER,
                'A'..='Z' => LETTER | UPPER,
                '0'..='9' => NUMBER,
                '\r' | '\n' => SPACE | NEWLINE,
                ' ' | '\t' | '\x0b' | '\x0c' => SPACE,
                _ => 0,
            }
        } else {
            Class::from_tables(c)
        };
        Class(bits)
    }

    /// The class bits by the tables alone (what the ASCII shortcut must agree with).
    fn from_tables(c: char) -> u8 {
        [
            (LETTER, tables::LETTER),
            (NUMBER, tables::NUMBER),
            (UPPER, tables::UPPER),
            (LOWER, tables::LOWER),
            (SPACE, tables::SPACE),
        ]
        .into_iter()
        .filter(|(_, table)| is_in(table, c))
        .fold(0, |bits, (bit, _)| bits | bit)
    }

    fn has(self, bits: u8) -> bool {
        self.0 & bits != 0
    }

    /// `[^\r\n\p{L}\p{N}]`: what may come before a word.
    fn leads(self) -> bool {
        !self.has(LETTER | NUMBER | NEWLINE)
    }

    /// `[^\s\p{L}\p{N}]`: punctuation and symbols.
    fn punct(self) -> bool {
        !self.has(SPACE | LETTER | NUMBER)
    }
}

/// The character at byte `i` of `s`, its class and the byte after it.
fn at(s: &str, i: usize) -> Option<(char, Class, usize)> {
    let c = s.get(i..)?.chars().next()?;
    Some((c, Class::of(c), i + c.len_utf8()))
}

/// The end of the run of characters from `i` whose class passes `keep` (`i` if none does).
fn run(s: &str, mut i: usize, keep: impl Fn(char, Class) -> bool) -> usize {
    while let Some((c, k, next)) = at(s, i) {
        if !keep(c, k) {
            break;
        }
        i = next;
    }
    i
}

/// Whether the character at `i` folds to the ASCII `letter`, and the byte after it.
fn folds(s: &str, i: usize, letter: u8) -> Option<usize> {
    let (c, _, next) = at(s, i)?;
    let table = match letter {
        b's' => tables::FOLD_S,
        b'd' => tables::FOLD_D,
        b'm' => tables::FOLD_M,
        b't' => tables::FOLD_T,
        b'l' => tables::FOLD_L,
        b'v' => tables::FOLD_V,
        b'r' => tables::FOLD_R,
        b'e' => tables::FOLD_E,
        _ => return None,
    };
    is_in(table, c).then_some(next)
}

/// A contraction's letters after its apostrophe, at `i`: one of `singles` or a pair of
/// `pairs`, tried in the pattern's order; the byte after them.
fn contraction(s: &str, i: usize, singles: &[u8], pairs: &[[u8; 2]]) -> Option<usize> {
    singles.iter().find_map(|&l| folds(s, i, l)).or_else(|| {
        pairs
            .iter()
            .find_map(|&[a, b]| folds(s, folds(s, i, a)?, b))
    })
}

/// o200k's optional contraction after a word ending at `i`: where the word ends with it.
fn o200k_suffix(s: &str, i: usize) -> usize {
    match at(s, i) {
        Some(('\'', _, next)) => {
            contraction(s, next, b"stmd", &[*b"re", *b"ve", *b"ll"]).unwrap_or(i)
        }
        _ => i,
    }
}

/// Where a maximal run of whitespace from `i` ends, where it ends when cut after its last
/// newline (if it has one), and where its last character starts.
struct Spaces {
    end: usize,
    through_newline: Option<usize>,
    last: usize,
    chars: usize,
}

fn spaces(s: &str, mut i: usize) -> Spaces {
    let mut w = Spaces {
        end: i,
        through_newline: None,
        last: i,
        chars: 0,
    };
    while let Some((_, k, next)) = at(s, i) {
        if !k.has(SPACE) {
            break;
        }
        if k.has(NEWLINE) {
            w.through_newline = Some(next);
        }
        w.last = i;
        w.chars += 1;
        i = next;
    }
    w.end = i;
    w
}

/// cl100k's piece starting at `i` (not at the end): where it ends.
fn cl100k_piece(s: &str, i: usize) -> usize {
    let Some((c, k, next)) = at(s, i) else {
        return s.len();
    };
    // '(?i:[sdmt]|ll|ve|re)
    if c == '\'' {
        if let Some(end) = contraction(s, next, b"sdmt", &[*b"ll", *b"ve", *b"re"]) {
            return end;
        }
    }
    // [^\r\n\p{L}\p{N}]?+\p{L}++ (the optional character is taken whenever it can be)
    let word = if k.leads() { next } else { i };
    let end = run(s, word, |_, k| k.has(LETTER));
    if end > word {
        return end;
    }
    // \p{N}{1,3}+ | ' '?[^\s\p{L}\p{N}]++[\r\n]*+
    if let Some(end) = number_or_punct(s, i, (c, k, next), false) {
        return end;
    }
    // Whitespace: \s++$ | \s*[\r\n] | \s+(?!\S) | \s
    let w = spaces(s, i);
    if w.chars == 0 {
        return next;
    }
    if w.end == s.len() {
        return w.end;
    }
    if let Some(end) = w.through_newline {
        return end;
    }
    if w.chars >= 2 {
        return w.last;
    }
    w.end
}

/// The two alternatives both patterns have after their words: `\p{N}{1,3}`, then
/// ` ?[^\s\p{L}\p{N}]+` and the line ends after it (and slashes, for o200k). (Possessive or
/// not, these match alike: what follows each run cannot continue it.)
fn number_or_punct(
    s: &str,
    i: usize,
    (c, k, next): (char, Class, usize),
    slash: bool,
) -> Option<usize> {
    if k.has(NUMBER) {
        return Some(numbers(s, i));
    }
    let p = if c == ' ' { next } else { i };
    let end = run(s, p, |_, k| k.punct());
    (end > p).then(|| run(s, end, |c, k| k.has(NEWLINE) || (slash && c == '/')))
}

/// `\p{N}{1,3}` from `i`.
fn numbers(s: &str, mut i: usize) -> usize {
    for _ in 0..3 {
        match at(s, i) {
            Some((_, k, next)) if k.has(NUMBER) => i = next,
            _ => break,
        }
    }
    i
}

/// o200k's `U*L+C?` from `i`: where it ends, if it matches. The greedy `U*` gives back
/// characters until `L+` can start: either at the end of the U run, or (backing off) at the
/// last character of the run that is also in L, which then matches alone.
fn o200k_lower_word(s: &str, i: usize) -> Option<usize> {
    let mut p = i;
    let mut last_lower = None;
    while let Some((_, k, next)) = at(s, p) {
        if !k.has(UPPER) {
            break;
        }
        if k.has(LOWER) {
            last_lower = Some(next);
        }
        p = next;
    }
    let end = run(s, p, |_, k| k.has(LOWER));
    let word = if end > p { end } else { last_lower? };
    Some(o200k_suffix(s, word))
}

/// o200k's `U+L*C?` from `i`.
fn o200k_upper_word(s: &str, i: usize) -> Option<usize> {
    let p = run(s, i, |_, k| k.has(UPPER));
    if p == i {
        return None;
    }
    Some(o200k_suffix(s, run(s, p, |_, k| k.has(LOWER))))
}

/// o200k's piece starting at `i` (not at the end): where it ends.
fn o200k_piece(s: &str, i: usize) -> usize {
    let Some((c, k, next)) = at(s, i) else {
        return s.len();
    };
    // Each word alternative first with the optional leading character, then without.
    let lead = k.leads();
    let word = |f: fn(&str, usize) -> Option<usize>| {
        lead.then(|| f(s, next)).flatten().or_else(|| f(s, i))
    };
    if let Some(end) = word(o200k_lower_word).or_else(|| word(o200k_upper_word)) {
        return end;
    }
    // \p{N}{1,3} | ' '?[^\s\p{L}\p{N}]+[\r\n/]*
    if let Some(end) = number_or_punct(s, i, (c, k, next), true) {
        return end;
    }
    // Whitespace: \s*[\r\n]+ | \s+(?!\S) | \s+
    let w = spaces(s, i);
    if w.chars == 0 {
        return next;
    }
    if let Some(end) = w.through_newline {
        return end;
    }
    if w.end == s.len() || w.chars == 1 {
        return w.end;
    }
    w.last
}

/// Each piece of `text` under `enc`'s pattern, in order.
pub fn pieces(enc: Encoding, text: &str, mut each: impl FnMut(&str)) {
    let piece = match enc {
        Encoding::O200k => o200k_piece,
        Encoding::Cl100k => cl100k_piece,
    };
    let mut i = 0;
    while i < text.len() {
        let end = piece(text, i);
        each(&text[i..end]);
        i = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::Vocab;

    /// The ASCII shortcut classes characters as the tables do.
    #[test]
    fn ascii_classes_agree_with_the_tables() {
        for b in 0u8..128 {
            let c = char::from(b);
            let mut want = Class::from_tables(c);
            if c == '\r' || c == '\n' {
                want |= NEWLINE;
            }
            assert_eq!(Class::of(c).0, want, "{c:?}");
        }
        // Outside ASCII: a few of each.
        assert!(Class::of('é').has(LETTER | LOWER) && !Class::of('é').has(UPPER));
        assert!(Class::of('ǅ').has(UPPER) && !Class::of('ǅ').has(LOWER));
        assert!(Class::of('\u{0301}').has(UPPER) && Class::of('\u{0301}').has(LOWER));
        assert!(!Class::of('\u{0301}').has(LETTER));
        assert!(Class::of('٣').has(NUMBER) && Class::of('\u{a0}').has(SPACE));
        assert!(Class::of('\u{2028}').has(SPACE) && !Class::of('\u{2028}').has(NEWLINE));
    }

    fn references() -> [(Vocab, tiktoken_rs::CoreBPE); 2] {
        [
            (
                Vocab::load(
                    Encoding::O200k,
                    crate::vocab::packed(Encoding::O200k).unwrap(),
                )
                .unwrap(),
                tiktoken_rs::o200k_base().unwrap(),
            ),
            (
                Vocab::load(
                    Encoding::Cl100k,
                    crate::vocab::packed(Encoding::Cl100k).unwrap(),
                )
                .unwrap(),
                tiktoken_rs::cl100k_base().unwrap(),
            ),
        ]
    }

    /// Texts that reach each alternative of both patterns, and the edges between them.
    const CASES: &[&str] = &[
        "",
        "Hello, world!",
        "I'm sure they'll say it's what we've done; you'd've known they're right.",
        "I'M SURE THEY'LL SAY IT'S WHAT WE'VE DONE",
        "don'T DON'ſ can'Ŀ 'll 're 've 'x '",
        "HTTPServer XMLHttpRequest getHTTPResponseCode iPhone McDonald's O'Neill",
        "ǅemal ǈubljana ǋeko ʰʱʲ ǅ ǅa aǅ Aǅ",
        "e\u{0301}te\u{0301} E\u{0301}TE\u{0301} \u{0301}\u{0301}x 1\u{0301} \u{0301}",
        "漢字かなカナ 한국어 العربية עברית हिन्दी ไทย",
        "12345 1,234,567.89 ١٢٣٤٥ ⅓ ½ ²³ 0x1F 3.14159e-10",
        "  leading and trailing  ",
        "tabs\tand\t\tmore\t\t\t",
        "lines\nand\r\nmore\n\n\n  \n\t\nend",
        "ends with newline and spaces \n  ",
        "ends with spaces   ",
        "\n",
        " ",
        "  ",
        " \n",
        "\n ",
        "a  b   c    d",
        "a \u{a0}b\u{2028}c\u{2029}d\u{85}e\u{3000}f\u{200b}g\u{feff}h",
        "!!! ??? ... --- *** /// \\\\\\ ||| ~~~",
        " !x !\n/ !/\n !\r\n/\n/x",
        "path/to/file.rs:12:5 https://example.com/a/b?c=d&e=f#g",
        "fn main() { println!(\"{}\", x.iter().map(|y| y * 2).sum::<u64>()); }",
        "emoji 🎉🎉 👩‍👩‍👧 🇫🇷 ❤️ 1️⃣",
        "'s's 's 'S 'ſ",
        "a'sb 'dm 'll'll",
        "\u{0}\u{1}\u{1f}\u{7f}\u{80}\u{9f}",
        "'''''' \"\"\"\"",
        "x\r\r\r\ny",
        " 123 abc 4567 ab12cd34",
    ];

    fn check(ours: &Vocab, theirs: &tiktoken_rs::CoreBPE, text: &str) {
        let mut joined = String::new();
        pieces(ours.encoding(), text, |p| {
            assert!(!p.is_empty());
            joined.push_str(p);
        });
        assert_eq!(joined, text, "the pieces cover the text");
        assert_eq!(
            ours.encode(text),
            theirs.encode_ordinary(text),
            "{:?} on {text:?}",
            ours.encoding()
        );
        assert_eq!(ours.count(text), theirs.encode_ordinary(text).len() as u64);
    }

    #[test]
    fn same_tokens_as_tiktoken_on_every_alternative() {
        for (ours, theirs) in references() {
            for text in CASES {
                check(&ours, &theirs, text);
            }
        }
    }

    /// Random texts over characters from every class the patterns tell apart, with runs of
    /// each, compared with tiktoken-rs token for token.
    #[test]
    fn same_tokens_as_tiktoken_on_random_text() {
        const POOL: &[&str] = &[
            "a", "Z", "é", "É", "ǅ", "ʰ", "漢", "カ", "\u{0301}", "\u{20dd}", "1", "٣", "½", "Ⅻ",
            " ", "  ", "\t", "\n", "\r", "\r\n", "\u{a0}", "\u{2028}", "\u{3000}", "\u{85}", "'",
            "'s", "'S", "'ll", "'RE", "'ve", "'d", "'m", "'t", "'ſ", "!", ".", ",", "/", "-", "\"",
            "(", ")", "€", "🎉", "\u{200d}", "\u{fe0f}", "\u{0}", "the", "The", "THE", "ing",
            "tion", "HTTP", "ﬁ", "ß", "ẞ", "İ", "ı",
        ];
        let refs = references();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..4000 {
            let len = (next() % 40) as usize;
            let text: String = (0..len)
                .map(|_| {
                    let s = POOL[(next() % POOL.len() as u64) as usize];
                    s.repeat(1 + (next() % 4 == 0) as usize * (next() % 4) as usize)
                })
                .collect();
            for (ours, theirs) in &refs {
                check(ours, theirs, &text);
            }
        }
    }

    /// The repository's own fixtures: real provider responses and prompts of every shape.
    #[test]
    fn same_tokens_as_tiktoken_on_the_fixtures() {
        let refs = references();
        let mut dirs = vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")];
        let mut files = 0;
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let Ok(text) = std::fs::read_to_string(&path) else {
                    continue;
                };
                files += 1;
                for (ours, theirs) in &refs {
                    check(ours, theirs, &text);
                }
            }
        }
        assert!(files > 10, "{files} fixtures read");
    }
}
