//! The simple query protocol has no parameters: a statement goes out with
//! each `$n` replaced by a typed literal of its value. Every literal is
//! wrapped in `CAST(... AS <type>)`, so it has the type the prepared
//! statement would have bound (an untyped `'7'` would compare with an
//! integer column as 7), and binds as tightly as a parameter.
//!
//! Text is written `E'...'` with every `\` and `'` escaped: in an `E`
//! string a backslash is an escape whatever `standard_conforming_strings`
//! says, so the literal means the same on every server. A NUL character
//! cannot be written (PostgreSQL text cannot hold it): [`Error::Nul`].

use std::fmt::Write as _;

use crate::key::mixed_families;
use crate::{Error, KeyValue};

/// A value idem binds on PostgreSQL, with what it is for error messages.
#[derive(Debug, Clone)]
pub(crate) enum Param<'a> {
    /// `int8`.
    Int8(i64),
    /// `int4`.
    Int4(i32),
    /// `text`, and what it holds ("the scope", ...).
    Text(&'a str, &'static str),
    /// `bytea`.
    Bytea(&'a [u8]),
    /// A row key, cast to its family's type.
    Key(KeyValue<'a>),
    /// The keys of a batch, one array of their family's type.
    Keys(Vec<KeyValue<'a>>),
}

/// The statement `sql` with each `$n` (outside string literals, quoted
/// identifiers, dollar quotes and comments) replaced by the literal of
/// `params[n - 1]`.
pub(crate) fn render(sql: &str, params: &[Param<'_>]) -> Result<String, Error> {
    let mut out = String::with_capacity(sql.len() + 32 * params.len());
    let bytes = sql.as_bytes();
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' => i = after_quoted(bytes, i, b'\''),
            b'"' => i = after_quoted(bytes, i, b'"'),
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = bytes[i..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(bytes.len(), |n| i + n + 1);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => i = after_comment(bytes, i),
            b'$' if i > 0 && is_ident(bytes[i - 1]) => i += 1,
            b'$' => {
                let digits = bytes[i + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                if digits == 0 {
                    i = after_dollar_quote(sql, i);
                    continue;
                }
                let n: usize = sql[i + 1..i + 1 + digits].parse().unwrap_or(0);
                let param = n
                    .checked_sub(1)
                    .and_then(|at| params.get(at))
                    .ok_or_else(|| {
                        Error::Database(sqlx::Error::Protocol(format!(
                            "the statement refers to ${n}, and {} values were given",
                            params.len()
                        )))
                    })?;
                out.push_str(&sql[copied..i]);
                write_param(&mut out, param)?;
                i += 1 + digits;
                copied = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(&sql[copied..]);
    Ok(out)
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// The position after the quoted string or identifier opening at `start`
/// (a doubled quote stands for one). The statements idem renders hold no
/// backslash in their own literals (the derive refuses one), so a quote
/// is never escaped by a backslash here.
fn after_quoted(bytes: &[u8], start: usize, quote: u8) -> usize {
    let mut i = start + 1;
    while i < bytes.len() {
        if bytes[i] == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    bytes.len()
}

/// The position after the (nested) block comment opening at `start`.
fn after_comment(bytes: &[u8], start: usize) -> usize {
    let mut depth = 0;
    let mut i = start;
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    bytes.len()
}

/// The position after the dollar-quoted string opening at `start`
/// (`$$...$$`, `$tag$...$tag$`), or after the `$` when it opens none.
fn after_dollar_quote(sql: &str, start: usize) -> usize {
    let rest = &sql[start + 1..];
    let tag_len = rest
        .bytes()
        .take_while(|&b| b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80)
        .count();
    if rest.as_bytes().get(tag_len) != Some(&b'$') {
        return start + 1;
    }
    let delimiter = &sql[start..start + tag_len + 2];
    let body = start + delimiter.len();
    sql[body..]
        .find(delimiter)
        .map_or(sql.len(), |end| body + end + delimiter.len())
}

fn write_param(out: &mut String, param: &Param<'_>) -> Result<(), Error> {
    match param {
        Param::Int8(i) => write_cast(out, "int8", |out| write_int(out, *i)),
        Param::Int4(i) => write_cast(out, "int4", |out| write_int(out, i64::from(*i))),
        Param::Text(s, what) => write_cast(out, "text", |out| write_text(out, s, what)),
        Param::Bytea(b) => {
            out.push_str("decode('");
            for byte in *b {
                let _ = write!(out, "{byte:02x}");
            }
            out.push_str("', 'hex')");
            Ok(())
        }
        Param::Key(key) => write_cast(out, key_type(*key), |out| write_key(out, *key)),
        Param::Keys(keys) => {
            let Some(first) = keys.first() else {
                return Err(Error::Database(sqlx::Error::Protocol(
                    "an empty batch has no array literal".to_owned(),
                )));
            };
            let ty = key_type(*first);
            out.push_str("CAST(ARRAY[");
            for (i, key) in keys.iter().enumerate() {
                if key.family() != first.family() {
                    return Err(mixed_families());
                }
                if i > 0 {
                    out.push_str(", ");
                }
                write_key(out, *key)?;
            }
            let _ = write!(out, "] AS {ty}[])");
            Ok(())
        }
    }
}

fn write_cast(
    out: &mut String,
    ty: &str,
    value: impl FnOnce(&mut String) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push_str("CAST(");
    value(out)?;
    let _ = write!(out, " AS {ty})");
    Ok(())
}

fn write_int(out: &mut String, i: i64) -> Result<(), Error> {
    let _ = write!(out, "{i}");
    Ok(())
}

fn write_text(out: &mut String, s: &str, what: &'static str) -> Result<(), Error> {
    if s.contains('\0') {
        return Err(Error::Nul { what });
    }
    out.push_str("E'");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("''"),
            c => out.push(c),
        }
    }
    out.push('\'');
    Ok(())
}

/// PostgreSQL's type for a key of `key`'s family.
pub(crate) fn key_type(key: KeyValue<'_>) -> &'static str {
    match key {
        KeyValue::Int(_) => "int8",
        KeyValue::Text(_) => "text",
        #[cfg(feature = "uuid")]
        KeyValue::Uuid(_) => "uuid",
    }
}

/// The key's literal without its cast (inside a cast array).
fn write_key(out: &mut String, key: KeyValue<'_>) -> Result<(), Error> {
    match key {
        KeyValue::Int(i) => write_int(out, i),
        KeyValue::Text(s) => write_text(out, s, "the key"),
        #[cfg(feature = "uuid")]
        KeyValue::Uuid(u) => {
            let _ = write!(out, "'{}'", u.hyphenated());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> String {
        render("$1", &[Param::Text(s, "the value")]).unwrap()
    }

    #[test]
    fn text_escapes_backslashes_and_quotes_in_an_e_string() {
        assert_eq!(text("o'clock"), "CAST(E'o''clock' AS text)");
        assert_eq!(text("a\\b"), "CAST(E'a\\\\b' AS text)");
        assert_eq!(text("\\'"), "CAST(E'\\\\''' AS text)");
        assert_eq!(text("é\t\n"), "CAST(E'é\t\n' AS text)");
    }

    #[test]
    fn a_nul_in_text_is_a_typed_error() {
        let error = render("$1", &[Param::Text("a\0b", "the scope")]).unwrap_err();
        assert!(
            matches!(error, Error::Nul { what: "the scope" }),
            "{error:?}"
        );
        let error = render("$1", &[Param::Key(KeyValue::Text("\0"))]).unwrap_err();
        assert!(matches!(error, Error::Nul { what: "the key" }), "{error:?}");
    }

    #[test]
    fn numbers_bytes_and_keys_are_cast_to_their_type() {
        let params = [
            Param::Int8(i64::MIN),
            Param::Int4(-7),
            Param::Bytea(&[0, 0xab, 0xff]),
            Param::Bytea(&[]),
            Param::Key(KeyValue::Int(7)),
            Param::Keys(vec![KeyValue::Int(1), KeyValue::Int(-2)]),
            Param::Keys(vec![KeyValue::Text("a'"), KeyValue::Text("b")]),
        ];
        assert_eq!(
            render("$1 $2 $3 $4 $5 $6 $7", &params).unwrap(),
            "CAST(-9223372036854775808 AS int8) CAST(-7 AS int4) decode('00abff', 'hex') \
             decode('', 'hex') CAST(7 AS int8) CAST(ARRAY[1, -2] AS int8[]) \
             CAST(ARRAY[E'a''', E'b'] AS text[])"
        );
    }

    #[test]
    fn a_batch_of_several_families_is_refused() {
        let keys = Param::Keys(vec![KeyValue::Int(1), KeyValue::Text("1")]);
        assert!(render("$1", &[keys]).is_err());
    }

    #[test]
    fn only_parameters_outside_literals_identifiers_and_comments_are_replaced() {
        let sql =
            "SELECT '$1', \"$1\", a$1, $$ $1 $$, $t$ $1 $t$, $1 -- $1\n, /* $1 /* $1 */ */ $2";
        let out = render(sql, &[Param::Int8(5), Param::Int4(6)]).unwrap();
        assert_eq!(
            out,
            "SELECT '$1', \"$1\", a$1, $$ $1 $$, $t$ $1 $t$, CAST(5 AS int8) -- $1\n, \
             /* $1 /* $1 */ */ CAST(6 AS int4)"
        );
        assert_eq!(
            render("SELECT 'it''s $1', $1", &[Param::Int8(1)]).unwrap(),
            "SELECT 'it''s $1', CAST(1 AS int8)"
        );
    }

    /// pgx's and pgjdbc's simple modes wrote `-$1` with `-1` as `--1`, a
    /// comment that let a later string on the line inject SQL
    /// (CVE-2024-27289, CVE-2024-1597): every literal here is wrapped in
    /// `CAST(...)`.
    #[test]
    fn a_negative_number_after_a_minus_never_opens_a_comment() {
        let params = [
            Param::Int8(-1),
            Param::Text("\nWHERE false --", "the value"),
        ];
        assert_eq!(
            render("SELECT -$1, $2", &params).unwrap(),
            "SELECT -CAST(-1 AS int8), CAST(E'\nWHERE false --' AS text)"
        );
    }

    #[test]
    fn a_parameter_without_a_value_is_an_error() {
        assert!(render("$2", &[Param::Int8(1)]).is_err());
        assert!(render("$0", &[Param::Int8(1)]).is_err());
    }
}
