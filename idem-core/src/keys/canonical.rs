//! The canonical form of JSON that fingerprints hash.
//!
//! Two JSON texts get the same canonical form only when every JSON parser
//! reads them as the same value: object members in any order, any
//! insignificant whitespace, and strings that decode to the same characters
//! (`"\u0041"` and `"A"`). Numbers keep their exact source text, so no
//! parser's rounding can merge two requests. A text that has no canonical
//! form (not JSON, not UTF-8, a duplicate object key, deeper than
//! [`MAX_DEPTH`]) is fingerprinted by its exact bytes instead.
//!
//! Both the parser and the writer are iterative (an explicit stack on the
//! heap): no input, however deep, can overflow the thread's stack.

use std::borrow::Cow;

use serde_json::Value;

/// The deepest nesting of arrays and objects a JSON *text* may have to be
/// canonicalised: deeper texts are fingerprinted by their exact bytes. It
/// is serde_json's default recursion limit, so a handler that parses with
/// serde_json cannot read a deeper body anyway; it also bounds the memory
/// the canonicaliser uses to a small multiple of the body's size.
pub(crate) const MAX_DEPTH: usize = 128;

/// Why a JSON text has no canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotCanonical {
    /// The bytes are not UTF-8 (RFC 8259 §8.1 requires it).
    InvalidUtf8,
    /// Not JSON: a syntax error, trailing data, or a control character
    /// inside a string.
    Syntax,
    /// A `\u` escape of an unpaired UTF-16 surrogate: no character at all,
    /// which parsers replace, reject or keep in different ways.
    LoneSurrogate,
    /// An object names the same key twice: parsers disagree on which
    /// member wins (RFC 8259 §4).
    DuplicateKey,
    /// Nested deeper than [`MAX_DEPTH`], or larger than 4 GiB.
    TooLarge,
}

/// The canonical form of a JSON text: UTF-8 bytes with object members
/// sorted by their decoded key bytes, no whitespace, strings re-escaped
/// the way serde_json writes them, and numbers as they were written.
pub(crate) fn of_text(text: &[u8]) -> Result<Vec<u8>, NotCanonical> {
    let text = std::str::from_utf8(text).map_err(|_| NotCanonical::InvalidUtf8)?;
    let tape = Tape::parse(text)?;
    let mut out = Vec::with_capacity(text.len());
    write(TapeNode { tape: &tape, at: 0 }, &mut out)?;
    Ok(out)
}

/// The canonical form of a value built in code. A `Value` has no
/// duplicate keys and holds numbers as serde_json parsed them, so this is
/// serde_json's own compact text with object members sorted.
pub(crate) fn of_value(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // A `Value`'s map never holds a key twice.
    let _ = write(value, &mut out);
    out
}

// ---------------------------------------------------------------------------
// The writer, over any tree that can show its nodes.

/// One node of a JSON tree, as the writer sees it.
enum View<'a, N, I> {
    Null,
    Bool(bool),
    Number(Cow<'a, str>),
    String(&'a str),
    Array(I),
    Object(Vec<(&'a str, N)>),
}

trait Node<'a>: Copy {
    type Items: Iterator<Item = Self>;
    fn view(self) -> View<'a, Self, Self::Items>;
}

enum Open<'a, N, I> {
    Array(I),
    Object(std::vec::IntoIter<(&'a str, N)>),
}

/// Writes the canonical text of `root`, depth first with a heap stack.
fn write<'a, N: Node<'a>>(root: N, out: &mut Vec<u8>) -> Result<(), NotCanonical> {
    let mut stack: Vec<(Open<'a, N, N::Items>, bool)> = Vec::new();
    let mut next = Some(root);
    loop {
        if let Some(node) = next.take() {
            match node.view() {
                View::Null => out.extend_from_slice(b"null"),
                View::Bool(true) => out.extend_from_slice(b"true"),
                View::Bool(false) => out.extend_from_slice(b"false"),
                View::Number(text) => out.extend_from_slice(text.as_bytes()),
                View::String(text) => write_string(text, out),
                View::Array(items) => {
                    out.push(b'[');
                    stack.push((Open::Array(items), true));
                }
                View::Object(mut members) => {
                    // `str` orders by its UTF-8 bytes, i.e. by code point.
                    members.sort_unstable_by(|a, b| a.0.cmp(b.0));
                    if members.windows(2).any(|pair| pair[0].0 == pair[1].0) {
                        return Err(NotCanonical::DuplicateKey);
                    }
                    out.push(b'{');
                    stack.push((Open::Object(members.into_iter()), true));
                }
            }
        }
        let Some((open, first)) = stack.last_mut() else {
            return Ok(());
        };
        let member = match open {
            Open::Array(items) => items.next().map(|item| (None, item)),
            Open::Object(members) => members.next().map(|(key, value)| (Some(key), value)),
        };
        match member {
            Some((key, value)) => {
                if !std::mem::take(first) {
                    out.push(b',');
                }
                if let Some(key) = key {
                    write_string(key, out);
                    out.push(b':');
                }
                next = Some(value);
            }
            None => {
                out.push(match open {
                    Open::Array(_) => b']',
                    Open::Object(_) => b'}',
                });
                stack.pop();
            }
        }
    }
}

/// A string with serde_json's escapes: `"` and `\`, the short forms of
/// backspace, form feed, newline, carriage return and tab, `\u00xx` for
/// the other control characters, every other character as it is.
fn write_string(text: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &byte in text.as_bytes() {
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x00..=0x1f => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ]),
            _ => out.push(byte),
        }
    }
    out.push(b'"');
}

impl<'a> Node<'a> for &'a Value {
    type Items = std::slice::Iter<'a, Value>;

    fn view(self) -> View<'a, Self, Self::Items> {
        match self {
            Value::Null => View::Null,
            Value::Bool(b) => View::Bool(*b),
            Value::Number(n) => View::Number(Cow::Owned(n.to_string())),
            Value::String(s) => View::String(s),
            Value::Array(items) => View::Array(items.iter()),
            Value::Object(map) => View::Object(map.iter().map(|(k, v)| (k.as_str(), v)).collect()),
        }
    }
}

// ---------------------------------------------------------------------------
// The parser: JSON text to a flat tape of tokens.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Null,
    True,
    False,
    /// `a..b` in the text.
    Number,
    /// `a..b` in the text: a string without escapes, quotes excluded.
    Plain,
    /// `a..b` in the tape's decoded strings.
    Decoded,
    /// Its members follow; `b` is the index of the token after them.
    Array,
    /// Keys and values alternate; `b` as for arrays.
    Object,
}

#[derive(Debug, Clone, Copy)]
struct Token {
    kind: Kind,
    a: u32,
    b: u32,
}

/// A parsed JSON text: its tokens in document order, each container
/// followed by its members.
struct Tape<'a> {
    text: &'a str,
    tokens: Vec<Token>,
    decoded: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A value (`[` just opened: a value or `]`).
    Value {
        or_close: bool,
    },
    /// A key (`{` just opened: a key or `}`).
    Key {
        or_close: bool,
    },
    Colon,
    /// After a member: `,` or the container's end.
    CommaOrClose,
    /// After the top-level value: only whitespace.
    End,
}

impl<'a> Tape<'a> {
    fn parse(text: &'a str) -> Result<Self, NotCanonical> {
        if u32::try_from(text.len()).is_err() {
            return Err(NotCanonical::TooLarge);
        }
        let mut tape = Tape {
            text,
            tokens: Vec::new(),
            decoded: String::new(),
        };
        let bytes = text.as_bytes();
        // The open containers: their token index, and whether an object.
        let mut open: Vec<(usize, bool)> = Vec::new();
        let mut expect = Expect::Value { or_close: false };
        let mut pos = 0;
        loop {
            while matches!(bytes.get(pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                pos += 1;
            }
            let Some(&byte) = bytes.get(pos) else {
                return match expect {
                    Expect::End => Ok(tape),
                    _ => Err(NotCanonical::Syntax),
                };
            };
            expect = match (expect, byte) {
                (Expect::End, _) => return Err(NotCanonical::Syntax),
                (Expect::Value { or_close: true }, b']')
                | (Expect::Key { or_close: true }, b'}')
                | (Expect::CommaOrClose, b']' | b'}') => {
                    pos += 1;
                    tape.close(&mut open, byte == b'}')?
                }
                (Expect::Value { .. }, b'[' | b'{') => {
                    pos += 1;
                    if open.len() == MAX_DEPTH {
                        return Err(NotCanonical::TooLarge);
                    }
                    let object = byte == b'{';
                    open.push((tape.tokens.len(), object));
                    tape.push(if object { Kind::Object } else { Kind::Array }, 0, 0);
                    if object {
                        Expect::Key { or_close: true }
                    } else {
                        Expect::Value { or_close: true }
                    }
                }
                (Expect::Value { .. }, _) => {
                    pos = tape.scalar(pos)?;
                    after_value(&open)
                }
                (Expect::Key { .. }, b'"') => {
                    pos = tape.string(pos + 1)?;
                    Expect::Colon
                }
                (Expect::Colon, b':') => {
                    pos += 1;
                    Expect::Value { or_close: false }
                }
                (Expect::CommaOrClose, b',') => {
                    pos += 1;
                    match open.last() {
                        Some((_, true)) => Expect::Key { or_close: false },
                        _ => Expect::Value { or_close: false },
                    }
                }
                _ => return Err(NotCanonical::Syntax),
            };
        }
    }

    fn push(&mut self, kind: Kind, a: usize, b: usize) {
        // Both fit: the text is shorter than 4 GiB, and so are the tape
        // and the decoded strings (never longer than the text).
        self.tokens.push(Token {
            kind,
            a: a as u32,
            b: b as u32,
        });
    }

    /// Closes the innermost container with `]` (or `}` when `object`).
    fn close(
        &mut self,
        open: &mut Vec<(usize, bool)>,
        object: bool,
    ) -> Result<Expect, NotCanonical> {
        match open.pop() {
            Some((at, is_object)) if is_object == object => {
                self.tokens[at].b = self.tokens.len() as u32;
                Ok(after_value(open))
            }
            _ => Err(NotCanonical::Syntax),
        }
    }

    /// A number, a string or a literal starting at `pos`; returns the
    /// position after it.
    fn scalar(&mut self, pos: usize) -> Result<usize, NotCanonical> {
        let rest = &self.text.as_bytes()[pos..];
        for (literal, kind) in [
            (&b"null"[..], Kind::Null),
            (b"true", Kind::True),
            (b"false", Kind::False),
        ] {
            if rest.starts_with(literal) {
                self.push(kind, 0, 0);
                return Ok(pos + literal.len());
            }
        }
        match rest.first() {
            Some(b'"') => self.string(pos + 1),
            Some(b'-' | b'0'..=b'9') => {
                let end = pos + number_len(rest).ok_or(NotCanonical::Syntax)?;
                self.push(Kind::Number, pos, end);
                Ok(end)
            }
            _ => Err(NotCanonical::Syntax),
        }
    }

    /// A string whose opening quote is just before `start`; returns the
    /// position after its closing quote.
    fn string(&mut self, start: usize) -> Result<usize, NotCanonical> {
        let bytes = self.text.as_bytes();
        let mut pos = start;
        // Where the decoded copy starts, once an escape was seen.
        let mut decoded_from: Option<usize> = None;
        // The text not yet copied to `decoded`.
        let mut pending = start;
        loop {
            match bytes.get(pos) {
                None | Some(0x00..=0x1f) => return Err(NotCanonical::Syntax),
                Some(b'"') => {
                    match decoded_from {
                        None => self.push(Kind::Plain, start, pos),
                        Some(from) => {
                            self.decoded.push_str(&self.text[pending..pos]);
                            self.push(Kind::Decoded, from, self.decoded.len());
                        }
                    }
                    return Ok(pos + 1);
                }
                Some(b'\\') => {
                    decoded_from.get_or_insert(self.decoded.len());
                    self.decoded.push_str(&self.text[pending..pos]);
                    let (decoded, len) = unescape(&bytes[pos..])?;
                    self.decoded.push(decoded);
                    pos += len;
                    pending = pos;
                }
                // Multi-byte characters are copied whole with the text
                // around them: the text is valid UTF-8.
                Some(_) => pos += 1,
            }
        }
    }

    fn text_of(&self, token: Token) -> &str {
        let range = token.a as usize..token.b as usize;
        match token.kind {
            Kind::Decoded => &self.decoded[range],
            _ => &self.text[range],
        }
    }

    /// The index of the token after the value at `at`.
    fn skip(&self, at: usize) -> usize {
        let token = self.tokens[at];
        match token.kind {
            Kind::Array | Kind::Object => token.b as usize,
            _ => at + 1,
        }
    }
}

fn after_value(open: &[(usize, bool)]) -> Expect {
    if open.is_empty() {
        Expect::End
    } else {
        Expect::CommaOrClose
    }
}

/// The length of the number at the start of `text`, by RFC 8259's grammar
/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn number_len(text: &[u8]) -> Option<usize> {
    let digits = |from: usize| {
        text[from..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    let mut pos = usize::from(text.first() == Some(&b'-'));
    match text.get(pos) {
        Some(b'0') => pos += 1,
        Some(b'1'..=b'9') => pos += digits(pos),
        _ => return None,
    }
    if text.get(pos) == Some(&b'.') {
        let n = digits(pos + 1);
        if n == 0 {
            return None;
        }
        pos += 1 + n;
    }
    if matches!(text.get(pos), Some(b'e' | b'E')) {
        pos += 1;
        if matches!(text.get(pos), Some(b'+' | b'-')) {
            pos += 1;
        }
        let n = digits(pos);
        if n == 0 {
            return None;
        }
        pos += n;
    }
    Some(pos)
}

/// The character of the escape at the start of `text` (which starts with
/// `\`), and the escape's length.
fn unescape(text: &[u8]) -> Result<(char, usize), NotCanonical> {
    let simple = match text.get(1) {
        Some(b'"') => '"',
        Some(b'\\') => '\\',
        Some(b'/') => '/',
        Some(b'b') => '\u{8}',
        Some(b'f') => '\u{c}',
        Some(b'n') => '\n',
        Some(b'r') => '\r',
        Some(b't') => '\t',
        Some(b'u') => {
            let high = hex4(text.get(2..6))?;
            return match high {
                0xd800..=0xdbff => {
                    let low = match text.get(6..8) {
                        Some(b"\\u") => hex4(text.get(8..12))?,
                        _ => return Err(NotCanonical::LoneSurrogate),
                    };
                    if !(0xdc00..=0xdfff).contains(&low) {
                        return Err(NotCanonical::LoneSurrogate);
                    }
                    let code = 0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00);
                    let c = char::from_u32(code).ok_or(NotCanonical::LoneSurrogate)?;
                    Ok((c, 12))
                }
                0xdc00..=0xdfff => Err(NotCanonical::LoneSurrogate),
                _ => Ok((char::from_u32(high).ok_or(NotCanonical::Syntax)?, 6)),
            };
        }
        _ => return Err(NotCanonical::Syntax),
    };
    Ok((simple, 2))
}

fn hex4(digits: Option<&[u8]>) -> Result<u32, NotCanonical> {
    let digits = digits.ok_or(NotCanonical::Syntax)?;
    digits.iter().try_fold(0u32, |acc, &d| {
        let v = char::from(d).to_digit(16).ok_or(NotCanonical::Syntax)?;
        Ok(acc * 16 + v)
    })
}

/// A value of a tape, for the writer.
#[derive(Clone, Copy)]
struct TapeNode<'t, 'a> {
    tape: &'t Tape<'a>,
    at: usize,
}

/// The members of an array on a tape.
struct TapeItems<'t, 'a> {
    tape: &'t Tape<'a>,
    next: usize,
    end: usize,
}

impl<'t, 'a> Iterator for TapeItems<'t, 'a> {
    type Item = TapeNode<'t, 'a>;

    fn next(&mut self) -> Option<Self::Item> {
        (self.next < self.end).then(|| {
            let at = self.next;
            self.next = self.tape.skip(at);
            TapeNode {
                tape: self.tape,
                at,
            }
        })
    }
}

impl<'t, 'a> Node<'t> for TapeNode<'t, 'a> {
    type Items = TapeItems<'t, 'a>;

    fn view(self) -> View<'t, Self, Self::Items> {
        let tape = self.tape;
        let token = tape.tokens[self.at];
        match token.kind {
            Kind::Null => View::Null,
            Kind::True => View::Bool(true),
            Kind::False => View::Bool(false),
            Kind::Number => View::Number(Cow::Borrowed(tape.text_of(token))),
            Kind::Plain | Kind::Decoded => View::String(tape.text_of(token)),
            Kind::Array => View::Array(TapeItems {
                tape,
                next: self.at + 1,
                end: token.b as usize,
            }),
            Kind::Object => {
                let mut members = Vec::new();
                let mut key = self.at + 1;
                while key < token.b as usize {
                    let value = key + 1;
                    members.push((tape.text_of(tape.tokens[key]), TapeNode { tape, at: value }));
                    key = tape.skip(value);
                }
                View::Object(members)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canonical(text: &str) -> Result<String, NotCanonical> {
        of_text(text.as_bytes()).map(|bytes| String::from_utf8(bytes).unwrap())
    }

    #[test]
    fn members_are_sorted_and_whitespace_dropped_at_every_level() {
        assert_eq!(
            canonical(" { \"b\" : [ 1 , {\"y\":2,\"x\":1} ] ,\n\t\"a\" : null } ").unwrap(),
            r#"{"a":null,"b":[1,{"x":1,"y":2}]}"#
        );
    }

    #[test]
    fn numbers_keep_their_exact_text() {
        for number in [
            "1",
            "1.0",
            "1e0",
            "1E0",
            "1e+0",
            "-0",
            "0",
            "1e2",
            "100",
            "18446744073709551616",
            "18446744073709551617",
            "0.1",
            "0.1000000000000000055511151231257827",
            "-1.5e-300",
        ] {
            assert_eq!(canonical(number).unwrap(), number);
            assert_eq!(
                canonical(&format!("{{\"amount\": {number}}}")).unwrap(),
                format!("{{\"amount\":{number}}}")
            );
        }
    }

    #[test]
    fn numbers_outside_the_json_grammar_have_no_canonical_form() {
        for bad in [
            "01", "+1", ".5", "1.", "1e", "1e+", "-", "0x10", "NaN", "Infinity", "1_000",
        ] {
            assert_eq!(canonical(bad), Err(NotCanonical::Syntax), "{bad}");
        }
    }

    #[test]
    fn strings_are_compared_by_their_decoded_characters() {
        assert_eq!(canonical(r#""\u0041""#).unwrap(), r#""A""#);
        assert_eq!(canonical(r#""\/""#).unwrap(), r#""/""#);
        assert_eq!(canonical(r#""\u00e9""#).unwrap(), "\"\u{e9}\"");
        assert_eq!(canonical(r#""\ud83d\ude00""#).unwrap(), "\"\u{1f600}\"");
        assert_eq!(
            canonical(r#""\u000A\u001f\u007f""#).unwrap(),
            "\"\\n\\u001f\u{7f}\""
        );
        assert_eq!(canonical(r#""a\"b\\c""#).unwrap(), r#""a\"b\\c""#);
        // Different characters stay different, even when they look alike.
        assert_ne!(canonical("\"\u{e9}\""), canonical("\"e\u{301}\""));
        assert_ne!(canonical(r#""A""#), canonical(r#""a""#));
        assert_eq!(canonical(r#"{"\u0061":1}"#).unwrap(), r#"{"a":1}"#);
    }

    #[test]
    fn lone_surrogates_and_raw_control_characters_have_no_canonical_form() {
        for bad in [
            r#""\ud800""#,
            r#""\udc00""#,
            r#""\ud800\u0041""#,
            r#""\ud800x""#,
        ] {
            assert_eq!(canonical(bad), Err(NotCanonical::LoneSurrogate), "{bad}");
        }
        for bad in [
            "\"a\nb\"",
            "\"\u{0}\"",
            r#""\x41""#,
            r#""\u00g1""#,
            r#""\u00"#,
            "\"open",
        ] {
            assert_eq!(canonical(bad), Err(NotCanonical::Syntax), "{bad:?}");
        }
    }

    #[test]
    fn duplicate_keys_have_no_canonical_form_even_when_spelled_differently() {
        for bad in [
            r#"{"amount":1,"amount":2}"#,
            r#"{"amount":1,"amount":1}"#,
            r#"{"a":1,"\u0061":2}"#,
            r#"[{"x":{"k":1,"k":2}}]"#,
        ] {
            assert_eq!(canonical(bad), Err(NotCanonical::DuplicateKey), "{bad}");
        }
    }

    #[test]
    fn malformed_texts_have_no_canonical_form() {
        for bad in [
            "",
            " ",
            "{",
            "}",
            "[1,]",
            "[1 2]",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{1:2}",
            "[}",
            "{]",
            "nul",
            "truex",
            "1 2",
            "[1]]",
            "\u{feff}{}",
        ] {
            assert_eq!(canonical(bad), Err(NotCanonical::Syntax), "{bad:?}");
        }
        assert_eq!(of_text(b"\"\xff\""), Err(NotCanonical::InvalidUtf8));
    }

    #[test]
    fn texts_deeper_than_the_limit_have_no_canonical_form_and_never_overflow_the_stack() {
        let at_limit = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(canonical(&at_limit).unwrap(), at_limit);
        let over = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(canonical(&over), Err(NotCanonical::TooLarge));
        let deep = format!("{}{}", "{\"a\":[".repeat(100_000), "]}".repeat(100_000));
        assert_eq!(canonical(&deep), Err(NotCanonical::TooLarge));
        assert_eq!(canonical(&"[".repeat(100_000)), Err(NotCanonical::TooLarge));
    }

    #[test]
    fn a_value_is_written_as_serde_json_writes_it_with_members_sorted() {
        let value = json!({
            "b": [1, 1.5, -0.0, 1e300, u64::MAX, i64::MIN, "t\u{8}\u{c}\n\r\t\u{1}\"\\/\u{7f}é"],
            "a": {"z": null, "y": true, "x": false},
            "": {}
        });
        let text = String::from_utf8(of_value(&value)).unwrap();
        // serde_json's map is sorted (no `preserve_order` here).
        assert_eq!(text, serde_json::to_string(&value).unwrap());
        // And the text canonicalises to itself.
        assert_eq!(canonical(&text).unwrap(), text);
    }
}
