//! Attacks on the example service (branch `attack-http`): client input that
//! the idempotency layer accepts but one backend answers with a 500, on
//! every backend the harness runs (SQLite always; PostgreSQL and MySQL with
//! `IDEM_TEST_POSTGRES` / `IDEM_TEST_MYSQL`). Each test fails while the
//! fault is there; none fixes anything.
//!
//! README ("Endpoints"): errors are `application/problem+json` 400, 404,
//! 409 or 422 for bad input, and "Bad input never writes an invoice or a
//! payment"; the service behaves the same on the three backends.

mod support;

use serde_json::json;
use support::{on_every_backend, Api, Db, Server};

on_every_backend!(
    a_client_id_the_layer_accepts_creates_an_invoice,
    a_quoted_key_of_255_characters_pays_once_and_is_the_payments_reference,
    a_customer_name_with_a_nul_character_is_never_a_500,
);

/// `X-Client-Id` of 300 bytes: a valid scope (the layer takes clients up to
/// ~500 bytes: `Scope::MAX_LEN` is 512 for client and operation together),
/// and SQLite and PostgreSQL create the invoice. On MySQL/MariaDB
/// `invoices.client_id` is `VARBINARY(255)`: strict mode refuses the insert,
/// the answer is a 500 on every retry, for ever.
async fn a_client_id_the_layer_accepts_creates_an_invoice(db: Db) {
    let server = Server::start(&db);
    let api = Api::new(&server);
    let client = "c".repeat(300);
    let headers = [
        ("content-type", "application/json"),
        ("idempotency-key", "long-client-1"),
        ("x-client-id", client.as_str()),
    ];
    let body = json!({"customer": "ACME", "amount_cents": 100, "currency": "EUR"}).to_string();
    let created = api.post_raw("/invoices", &headers, &body).await;
    assert_eq!(created.status, 201, "{:?}: {}", db.backend, created.text);
}

/// `Idempotency-Key: "kkk…k"` (a structured-field string, as the IETF draft
/// writes it; 255 characters inside the quotes): the layer takes it as the
/// key `kkk…k` (rustdoc: "A structured-field string is unquoted"). The pay
/// handler records the raw header, quotes included, as the payment's
/// reference: 257 characters, over MySQL's `payments.reference
/// VARCHAR(255)`, so on MySQL/MariaDB the payment fails with 500 on every
/// retry and the invoice can never be paid with that key; on SQLite and
/// PostgreSQL the reference is not the key the layer used (README: the
/// payment's `reference` is the request's key, "9d1e-pay-1").
async fn a_quoted_key_of_255_characters_pays_once_and_is_the_payments_reference(db: Db) {
    let server = Server::start(&db);
    let api = Api::new(&server);
    let id = api.create("create-for-quoted", 100).await;
    assert_eq!(api.transition(id, "issue").await.status, 200);
    let key = "k".repeat(255);
    let quoted = format!("\"{key}\"");
    let headers = [
        ("content-type", "application/json"),
        ("idempotency-key", quoted.as_str()),
    ];
    let path = format!("/invoices/{id}/pay");
    let paid = api
        .post_raw(&path, &headers, r#"{"amount_cents": 100}"#)
        .await;
    assert_eq!(paid.status, 200, "{:?}: {}", db.backend, paid.text);
    let payments = api.get(&format!("/invoices/{id}/payments")).await;
    assert_eq!(payments.json.as_array().map(Vec::len), Some(1));
    assert_eq!(
        payments.json[0]["reference"].as_str(),
        Some(key.as_str()),
        "{:?}: the payment's reference is not the key the layer claimed",
        db.backend
    );
}

/// A customer name with U+0000 (`"AC\u0000ME"`, valid JSON, valid UTF-8,
/// 5 characters): SQLite and MySQL store it; PostgreSQL `TEXT` refuses
/// NUL, and the service answers 500 Internal error (a client input that is
/// never a server failure, and that a retry cannot fix).
async fn a_customer_name_with_a_nul_character_is_never_a_500(db: Db) {
    let server = Server::start(&db);
    let api = Api::new(&server);
    let headers = [
        ("content-type", "application/json"),
        ("idempotency-key", "nul-1"),
    ];
    let created = api
        .post_raw(
            "/invoices",
            &headers,
            r#"{"customer": "AC\u0000ME", "amount_cents": 100, "currency": "EUR"}"#,
        )
        .await;
    assert!(
        created.status.is_success() || created.status.is_client_error(),
        "{:?}: {} {}",
        db.backend,
        created.status,
        created.text
    );
}
