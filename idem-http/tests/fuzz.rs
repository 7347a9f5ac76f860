//! Property tests of everything a client controls: `Idempotency-Key`
//! headers (any bytes), scopes, event ids, JSON bodies (deep, huge numbers,
//! duplicate keys, invalid UTF-8), the canonicaliser, and the layer end to
//! end against a model.
//!
//! The number of cases per property comes from `IDEM_FUZZ_CASES` (default
//! 32, so `cargo test --workspace` stays fast). A longer run:
//!
//! ```text
//! IDEM_FUZZ_CASES=1000 cargo test -p idem-http --test fuzz
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, Request, StatusCode};
use axum::routing::post;
use axum::Router;
use http_body_util::BodyExt;
use idem_core::inbox::EventId;
use idem_core::keys::{Fingerprint, IdempotencyKey, MemoryStore, Scope};
use idem_core::{Error, Excerpt};
use idem_http::IdempotencyLayer;
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::Value;
use tower::ServiceExt;

fn config() -> Config {
    let cases = std::env::var("IDEM_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(32);
    Config {
        cases,
        ..Config::default()
    }
}

/// The longest message or problem detail any hostile input may produce.
const MAX_MESSAGE: usize = 600;

// ---------------------------------------------------------------------------
// JSON trees and their many spellings.

/// A JSON value whose numbers are kept as text; object keys are distinct.
#[derive(Debug, Clone)]
enum Json {
    Null,
    Bool(bool),
    Number(String),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        "-?(0|[1-9][0-9]{0,5})(\\.[0-9]{1,6})?([eE][+-]?[0-9]{1,3})?",
        // Beyond u64 and f64: integers and decimals of up to 400 digits.
        "-?[1-9][0-9]{19,400}",
        "-?0\\.[0-9]{17,400}",
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{0,8}",
        any::<String>(),
        Just("\"\\/\u{0}\u{1f}\u{7f}é\u{1f600}e\u{301}".to_owned()),
    ]
}

fn json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        number().prop_map(Json::Number),
        text().prop_map(Json::String),
    ];
    leaf.prop_recursive(8, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            prop::collection::btree_map(text(), inner, 0..6)
                .prop_map(|members| Json::Object(members.into_iter().collect())),
        ]
    })
}

/// A tiny deterministic generator for the spelling choices.
struct Choices(u64);

impl Choices {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    fn space(&mut self, out: &mut String) {
        for _ in 0..self.next(3) {
            out.push([' ', '\t', '\n', '\r'][self.next(4) as usize]);
        }
    }
}

/// Writes `value` as JSON text: members in an order and with whitespace
/// and string escapes picked by `seed`. Every spelling is the same value
/// to every JSON parser.
fn spell(value: &Json, seed: u64) -> String {
    let mut choices = Choices(seed | 1);
    let mut out = String::new();
    spell_into(value, &mut choices, &mut out);
    out
}

fn spell_into(value: &Json, choices: &mut Choices, out: &mut String) {
    choices.space(out);
    match value {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Number(n) => out.push_str(n),
        Json::String(s) => spell_string(s, choices, out),
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                spell_into(item, choices, out);
            }
            choices.space(out);
            out.push(']');
        }
        Json::Object(members) => {
            let mut order: Vec<usize> = (0..members.len()).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, choices.next(i as u64 + 1) as usize);
            }
            out.push('{');
            for (i, &m) in order.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                choices.space(out);
                spell_string(&members[m].0, choices, out);
                choices.space(out);
                out.push(':');
                spell_into(&members[m].1, choices, out);
            }
            choices.space(out);
            out.push('}');
        }
    }
    choices.space(out);
}

fn spell_string(s: &str, choices: &mut Choices, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        let must_escape = c == '"' || c == '\\' || c < ' ';
        match (must_escape, choices.next(4)) {
            (false, 0 | 1) => out.push(c),
            (_, 2) if matches!(c, '"' | '\\' | '/' | '\n' | '\t') => {
                out.push('\\');
                out.push(match c {
                    '\n' => 'n',
                    '\t' => 't',
                    c => c,
                });
            }
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04X}"));
                }
            }
        }
    }
    out.push('"');
}

/// The same tree with its `n`-th number (depth first) spelled as another
/// number: `e0` appended, or a `0` appended to its exponent.
fn other_number(value: &Json, n: &mut usize) -> Json {
    match value {
        Json::Number(text) => {
            let changed = if *n == 0 {
                if text.contains(['e', 'E']) {
                    format!("{text}0")
                } else {
                    format!("{text}e0")
                }
            } else {
                text.clone()
            };
            *n = n.wrapping_sub(1);
            Json::Number(changed)
        }
        Json::Array(items) => Json::Array(items.iter().map(|i| other_number(i, n)).collect()),
        Json::Object(members) => Json::Object(
            members
                .iter()
                .map(|(k, v)| (k.clone(), other_number(v, n)))
                .collect(),
        ),
        leaf => leaf.clone(),
    }
}

fn numbers(value: &Json) -> usize {
    match value {
        Json::Number(_) => 1,
        Json::Array(items) => items.iter().map(numbers).sum(),
        Json::Object(members) => members.iter().map(|(_, v)| numbers(v)).sum(),
        _ => 0,
    }
}

fn text_fp(text: &str) -> Fingerprint {
    Fingerprint::of_json_text(text.as_bytes())
}

proptest! {
    #![proptest_config(config())]

    /// Any bytes: no panic, the same fingerprint every time.
    #[test]
    fn the_canonicaliser_never_panics_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        prop_assert_eq!(Fingerprint::of_json_text(&bytes), Fingerprint::of_json_text(&bytes));
        prop_assert_eq!(
            Fingerprint::of_json_body("POST", "/", &bytes),
            Fingerprint::of_json_body("POST", "/", &bytes)
        );
    }

    /// Valid JSON with a byte changed, removed or inserted: no panic.
    #[test]
    fn the_canonicaliser_never_panics_on_damaged_json(value in json(), seed in any::<u64>(), at in any::<usize>(), byte in any::<u8>(), how in 0..3u8) {
        let mut bytes = spell(&value, seed).into_bytes();
        let at = at % (bytes.len() + 1);
        match how {
            0 if at < bytes.len() => bytes[at] = byte,
            1 if at < bytes.len() => { bytes.remove(at); }
            _ => bytes.insert(at, byte),
        }
        let _ = Fingerprint::of_json_text(&bytes);
    }

    /// Member order, whitespace and string escapes never change the
    /// fingerprint.
    #[test]
    fn every_spelling_of_a_value_has_one_fingerprint(value in json(), a in any::<u64>(), b in any::<u64>()) {
        let (one, other) = (spell(&value, a), spell(&value, b));
        prop_assert_eq!(text_fp(&one), text_fp(&other), "{} / {}", one, other);
    }

    /// Changing the text of any one number changes the fingerprint.
    #[test]
    fn changing_any_numbers_text_changes_the_fingerprint(value in json(), pick in any::<usize>(), a in any::<u64>(), b in any::<u64>()) {
        let value = Json::Array(vec![value, Json::Number("1".into())]);
        let mut n = pick % numbers(&value);
        let changed = other_number(&value, &mut n);
        let (one, other) = (spell(&value, a), spell(&changed, b));
        prop_assert_ne!(text_fp(&one), text_fp(&other), "{} / {}", one, other);
    }

    /// A duplicate key never matches either of its values alone, nor the
    /// two values in the other order.
    #[test]
    fn duplicate_keys_never_match_one_of_their_values(key in text(), x in json(), y in json(), seed in any::<u64>()) {
        let k = spell(&Json::String(key.clone()), seed);
        let (sx, sy) = (spell(&x, seed), spell(&y, seed));
        let both = text_fp(&format!("{{{k}:{sx},{k}:{sy}}}"));
        prop_assert_ne!(both, text_fp(&format!("{{{k}:{sx}}}")));
        prop_assert_ne!(both, text_fp(&format!("{{{k}:{sy}}}")));
        if sx != sy {
            prop_assert_ne!(both, text_fp(&format!("{{{k}:{sy},{k}:{sx}}}")));
        }
    }

    /// Nesting of any depth, inside or beyond the limit: no panic, and
    /// different depths differ.
    #[test]
    fn deep_nesting_is_fingerprinted(depth in 1usize..5_000, object in any::<bool>()) {
        let (open, close) = if object { ("{\"a\":", "}") } else { ("[", "]") };
        let text = format!("{}1{}", open.repeat(depth), close.repeat(depth));
        let deeper = format!("{}1{}", open.repeat(depth + 1), close.repeat(depth + 1));
        prop_assert_ne!(text_fp(&text), text_fp(&deeper));
    }

    /// A value built in code and its serde_json text share a fingerprint.
    #[test]
    fn a_value_and_its_text_share_a_fingerprint(value in json(), seed in any::<u64>()) {
        let parsed: Result<Value, _> = serde_json::from_str(&spell(&value, seed));
        // serde_json refuses numbers beyond f64 and deep nesting.
        prop_assume!(parsed.is_ok());
        let value = parsed.unwrap();
        prop_assert_eq!(
            Fingerprint::of_json(&value),
            Fingerprint::of_json_text(&serde_json::to_vec(&value).unwrap())
        );
    }

    /// Keys: any string is a key iff 1..=255 visible ASCII bytes; errors
    /// never echo it.
    #[test]
    fn any_string_is_a_valid_key_or_a_short_typed_error(key in prop_oneof![any::<String>(), "[!-~]{0,300}"]) {
        let valid = (1..=255).contains(&key.len()) && key.bytes().all(|b| (0x21..=0x7e).contains(&b));
        match IdempotencyKey::new(key.clone()) {
            Ok(k) => { prop_assert!(valid); prop_assert_eq!(k.as_str(), key.as_str()); }
            Err(e) => {
                prop_assert!(!valid);
                prop_assert!(matches!(e, Error::InvalidKey { .. }), "{:?}", e);
                prop_assert!(e.to_string().len() < MAX_MESSAGE);
            }
        }
    }

    /// Scopes: valid iff the encoding fits; two different (client,
    /// operation) pairs never share an encoding.
    #[test]
    fn scopes_are_valid_or_typed_and_never_collide(c1 in any::<String>(), o1 in any::<String>(), c2 in any::<String>(), o2 in any::<String>(), long in 0usize..600) {
        let c1 = format!("{c1}{}", "x".repeat(long));
        match (Scope::new(c1.clone(), o1.clone()), Scope::new(c2.clone(), o2.clone())) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a.as_str() == b.as_str(), (c1, o1) == (c2, o2)),
            (Err(e), _) | (_, Err(e)) => {
                prop_assert!(matches!(e, Error::InvalidScope { .. }), "{:?}", e);
                prop_assert!(e.to_string().len() < MAX_MESSAGE);
            }
        }
    }

    /// Event ids: valid iff 1..=255 bytes without control characters.
    #[test]
    fn any_string_is_a_valid_event_id_or_a_short_typed_error(id in prop_oneof![any::<String>(), ".{200,300}"]) {
        let valid = (1..=255).contains(&id.len()) && !id.chars().any(char::is_control);
        match EventId::new(id.clone()) {
            Ok(e) => { prop_assert!(valid); prop_assert_eq!(e.as_str(), id.as_str()); }
            Err(e) => {
                prop_assert!(!valid);
                prop_assert!(e.to_string().len() < MAX_MESSAGE);
            }
        }
    }

    /// A value of any size in a message is cut to a bounded excerpt.
    #[test]
    fn excerpts_are_bounded(value in any::<String>(), pad in 0usize..100_000) {
        let value = format!("{value}{}", "é".repeat(pad));
        let shown = Excerpt(&value).to_string();
        prop_assert!(shown.len() <= Excerpt::MAX * 10 + 40, "{} bytes", shown.len());
        let error = Error::UnknownState { type_name: "S", value };
        prop_assert!(error.to_string().len() < MAX_MESSAGE * 2);
    }
}

// ---------------------------------------------------------------------------
// The layer end to end, against a model.

#[derive(Debug, Clone)]
struct Sent {
    client: u8,
    key: Vec<u8>,
    body: Vec<u8>,
}

fn hostile_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(br#"{"amount": 18446744073709551616}"#.to_vec()),
        Just(br#"{"amount": 18446744073709551617}"#.to_vec()),
        Just(br#"{ "amount" : 18446744073709551617 }"#.to_vec()),
        Just(br#"{"amount": 1, "amount": 2}"#.to_vec()),
        Just(br#"{"amount": 2}"#.to_vec()),
        Just(br#"{"amount": 0.1}"#.to_vec()),
        Just(br#"{"amount": 0.1000000000000000055511151231257827}"#.to_vec()),
        Just(b"{\"to\": \"\\u0041\"}".to_vec()),
        Just(b"{\"to\": \"A\"}".to_vec()),
        Just(b"{\"a\": \"\xff\"}".to_vec()),
        Just(format!("{}{}", "[".repeat(300), "]".repeat(300)).into_bytes()),
        Just(vec![b'x'; 5000]),
        (json(), any::<u64>()).prop_map(|(v, seed)| spell(&v, seed).into_bytes()),
        prop::collection::vec(any::<u8>(), 0..64),
    ]
}

fn header_key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::sample::select(vec!["k1", "k2", "\"k1\"", "K1", "k1 "]).prop_map(|k| k.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..300),
        1 => "[!-~]{250,260}".prop_map(String::into_bytes),
    ]
}

fn sent() -> impl Strategy<Value = Sent> {
    (0..3u8, header_key(), hostile_body()).prop_map(|(client, key, body)| Sent {
        client,
        key,
        body,
    })
}

/// The key the layer should see in a header, if any.
fn effective_key(raw: &[u8]) -> Option<String> {
    let text = HeaderValue::from_bytes(raw).ok()?.to_str().ok()?.to_owned();
    let unquoted = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .filter(|t| !t.contains(['"', '\\']))
        .map_or(text.clone(), str::to_owned);
    IdempotencyKey::new(unquoted).ok().map(|k| k.to_string())
}

const BODY_LIMIT: usize = 4096;
const CLIENT_LIMIT: usize = 3;

fn run_layer(requests: Vec<Sent>) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let runs = Arc::new(AtomicUsize::new(0));
        let store = MemoryStore::new(1_000).with_client_limit(CLIENT_LIMIT);
        let layer = IdempotencyLayer::new(store, |parts| {
            let client = parts.headers.get("x-client")?.to_str().ok()?;
            Scope::new(client, "api").ok()
        })
        .body_limit(BODY_LIMIT);
        let app = Router::new()
            .route(
                "/p",
                post(
                    |State(runs): State<Arc<AtomicUsize>>, body: Bytes| async move {
                        let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
                        (
                            StatusCode::CREATED,
                            format!("run {run}: {} bytes", body.len()),
                        )
                    },
                ),
            )
            .layer(layer)
            .with_state(runs.clone());

        // The model: first fingerprint and response body per (client, key).
        let mut first: HashMap<(u8, String), (Fingerprint, Bytes)> = HashMap::new();
        let mut held: BTreeMap<u8, usize> = BTreeMap::new();
        let mut accepted = 0;
        for sent in requests {
            let Ok(value) = HeaderValue::from_bytes(&sent.key) else {
                continue; // no client can send this header
            };
            let request = Request::post("/p")
                .header("x-client", format!("c{}", sent.client))
                .header("idempotency-key", value)
                .header("content-type", "application/json")
                .body(Body::from(sent.body.clone()))
                .unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            let (parts, body) = response.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            let status = parts.status;
            prop_assert!(!status.is_server_error(), "{status}: {body:?}");
            if status.is_client_error() {
                prop_assert_eq!(&parts.headers["content-type"], "application/problem+json");
                let problem: Value = serde_json::from_slice(&body).unwrap();
                prop_assert!(problem["detail"].as_str().unwrap().len() < MAX_MESSAGE);
            }
            let Some(key) = effective_key(&sent.key) else {
                prop_assert_eq!(status, StatusCode::BAD_REQUEST);
                continue;
            };
            if sent.body.len() > BODY_LIMIT {
                prop_assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
                continue;
            }
            let fingerprint = Fingerprint::of_json_body("POST", "/p", &sent.body);
            match first.get(&(sent.client, key.clone())) {
                Some((f, stored)) if *f == fingerprint => {
                    prop_assert_eq!(status, StatusCode::CREATED);
                    prop_assert_eq!(&parts.headers["idempotent-replayed"], "true");
                    prop_assert_eq!(&body, stored);
                }
                Some(_) => prop_assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY),
                None if held.get(&sent.client).copied().unwrap_or(0) >= CLIENT_LIMIT => {
                    prop_assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
                    prop_assert!(parts.headers.contains_key("retry-after"));
                }
                None => {
                    prop_assert_eq!(status, StatusCode::CREATED, "{:?}", body);
                    prop_assert!(!parts.headers.contains_key("idempotent-replayed"));
                    first.insert((sent.client, key), (fingerprint, body));
                    *held.entry(sent.client).or_default() += 1;
                    accepted += 1;
                }
            }
        }
        prop_assert_eq!(runs.load(Ordering::SeqCst), accepted);
        Ok(())
    })
}

proptest! {
    #![proptest_config(config())]

    /// Hostile keys, bodies and clients, in any order: every answer is the
    /// one the model predicts (replay, 400, 413, 422 or 429), nothing is a
    /// 5xx, and the handler ran once per accepted (client, key).
    #[test]
    fn the_layer_answers_every_hostile_sequence_as_the_model_says(requests in prop::collection::vec(sent(), 1..24)) {
        run_layer(requests)?;
    }
}

// ---------------------------------------------------------------------------
// Media types: a replay never answers a spelling the handler reads
// differently.

/// A media type spelled from pieces, well-formed or not: case, spaces and
/// tabs around `;`, empty parameters, quoting, escapes, duplicates.
fn media_type() -> impl Strategy<Value = String> {
    let essence = prop::sample::select(vec![
        "application/json",
        "Application/JSON",
        "application/vnd.api+json",
        "text/plain",
        "application/json ",
        " application/json",
    ]);
    let separator = prop::sample::select(vec![";", "; ", ";   ", " ;", ";;", ";\t", "; ;"]);
    let name = prop::sample::select(vec!["charset", "Charset", "a", "A"]);
    let value = prop::sample::select(vec![
        "utf-8",
        "UTF-8",
        "\"utf-8\"",
        "\"UTF-8\"",
        "iso-8859-1",
        "x",
        "X",
        "\"x\"",
        "\"x y\"",
        "\"\"",
        "\"x\\\"y\"",
        "",
    ]);
    let parameter = (separator, name, value).prop_map(|(s, n, v)| format!("{s}{n}={v}"));
    let trailer = prop::sample::select(vec!["", "", "", ";", " ", "; "]);
    (essence, prop::collection::vec(parameter, 0..3), trailer)
        .prop_map(|(e, ps, t)| format!("{e}{}{t}", ps.concat()))
}

/// Type, subtype, suffix and parameters of a media type.
type Reading = (String, String, Option<String>, Vec<(String, String)>);

/// How the `mime` crate (axum's `Json`, actix-web, warp) reads a media
/// type: `None` when it refuses it; else type, subtype, suffix and the
/// parameters (names in lower case, `charset` values in lower case,
/// `charset=utf-8` dropped on JSON types, where it means nothing).
fn mime_reading(text: &str) -> Option<Reading> {
    let mime: mime::Mime = text.parse().ok()?;
    let json = mime.subtype() == "json" || mime.suffix().is_some_and(|s| s == "json");
    let mut params: Vec<(String, String)> = mime
        .params()
        .map(|(n, v)| (n.as_str().to_ascii_lowercase(), v.as_str().to_owned()))
        .filter(|(n, v)| !(json && n == "charset" && v.eq_ignore_ascii_case("utf-8")))
        .collect();
    params.sort();
    Some((
        mime.type_().as_str().to_owned(),
        mime.subtype().as_str().to_owned(),
        mime.suffix().map(|s| s.as_str().to_owned()),
        params,
    ))
}

/// Sends `first`, then `second` with the same key, to a handler that
/// reads JSON (axum answers 415 to a media type it refuses); returns the
/// statuses and whether the second was a replay.
fn replay_of(first: &str, second: &str) -> (u16, u16, bool) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let layer = IdempotencyLayer::new(MemoryStore::default(), |_| Scope::new("c", "api").ok());
        let app = Router::new()
            .route(
                "/p",
                post(|axum::Json(v): axum::Json<Value>| async move {
                    (StatusCode::CREATED, v.to_string())
                }),
            )
            .layer(layer);
        let send = |media: String| {
            let request = Request::post("/p")
                .header("idempotency-key", "m")
                .header("content-type", media)
                .body(Body::from(r#"{"a":1}"#))
                .unwrap();
            app.clone().oneshot(request)
        };
        let one = send(first.to_owned()).await.unwrap();
        let two = send(second.to_owned()).await.unwrap();
        (
            one.status().as_u16(),
            two.status().as_u16(),
            two.headers().contains_key("idempotent-replayed"),
        )
    })
}

proptest! {
    #![proptest_config(config())]

    /// Two spellings of a media type share a fingerprint (the second is a
    /// replay) only when the handler reads both alike: axum gives both the
    /// same answer, and the `mime` crate accepts both as the same type
    /// with the same parameters. A spelling it refuses matches only its
    /// own bytes.
    #[test]
    fn a_media_type_replays_only_for_a_spelling_every_parser_reads_alike(a in media_type(), b in media_type()) {
        prop_assume!(HeaderValue::from_str(&a).is_ok() && HeaderValue::from_str(&b).is_ok());
        let (first, second, replayed) = replay_of(&a, &b);
        if replayed && a != b {
            let (ra, rb) = (mime_reading(&a), mime_reading(&b));
            prop_assert!(ra.is_some() && ra == rb, "{:?} / {:?} replayed: {:?} / {:?}", a, b, ra, rb);
            let (_, alone, _) = replay_of(&b, &b);
            prop_assert_eq!(first, alone, "{:?} / {:?}", a, b);
        }
        prop_assert!(replayed || second != 0);
    }
}
