//! End to end: the real `invoicing` binary on a free port, a fresh
//! database per test (SQLite always; PostgreSQL and MySQL when
//! `IDEM_TEST_POSTGRES` / `IDEM_TEST_MYSQL` are set, and required in CI),
//! spoken to over HTTP.

mod support;

use std::collections::BTreeMap;

use serde_json::{json, Value};
use support::{on_every_backend, Api, Db, Server};

on_every_backend!(
    creating_an_invoice_needs_a_key_and_a_retry_returns_the_same_invoice,
    an_invoice_is_created_once_even_when_its_key_record_is_gone,
    transitions_follow_the_state_machine_and_leave_a_history,
    an_invoice_is_paid_once_whatever_keys_the_requests_carry,
    payment_events_go_through_the_inbox_once,
    bad_input_is_a_problem_and_writes_nothing,
    the_storm_pays_each_invoice_exactly_once,
    two_servers_on_one_database_still_pay_each_invoice_once,
    a_restarted_server_keeps_its_data_and_installs_its_schema_again,
    an_event_redelivered_after_its_marker_expired_still_pays_once,
    clients_and_keys_that_differ_only_in_case_never_share_an_invoice,
    event_ids_that_differ_only_in_case_space_or_accents_are_different_events,
);

fn invoice_body(amount_cents: i64) -> Value {
    json!({"customer": "ACME", "amount_cents": amount_cents, "currency": "EUR"})
}

async fn creating_an_invoice_needs_a_key_and_a_retry_returns_the_same_invoice(db: Db) {
    let server = Server::start(&db);
    let api = Api::new(&server);

    let missing = api.post("/invoices", None, &invoice_body(1250)).await;
    missing.assert_problem(400, "Idempotency-Key");

    let first = api
        .post("/invoices", Some("order-1"), &invoice_body(1250))
        .await;
    assert_eq!(first.status, 201, "{}", first.text);
    assert!(!first.replayed());
    let id = first.json["id"].as_i64().unwrap();
    assert_eq!(
        first.header("location"),
        Some(format!("/invoices/{id}").as_str())
    );
    assert_eq!(first.json["customer"], "ACME");
    assert_eq!(first.json["amount_cents"], 1250);
    assert_eq!(first.json["currency"], "EUR");
    assert_eq!(first.json["status"], "draft");

    let retry = api
        .post("/invoices", Some("order-1"), &invoice_body(1250))
        .await;
    assert_eq!(retry.status, 201);
    assert!(retry.replayed(), "a retry is a replay");
    assert_eq!(retry.json, first.json);

    // The same key with another body is a client bug, not a retry.
    let reused = api
        .post("/invoices", Some("order-1"), &invoice_body(999))
        .await;
    reused.assert_problem(422, "already used");

    // Another client's key space is its own.
    let other = api
        .post_raw(
            "/invoices",
            &[
                ("content-type", "application/json"),
                ("idempotency-key", "order-1"),
                ("x-client-id", "globex"),
            ],
            &invoice_body(1250).to_string(),
        )
        .await;
    assert_eq!(other.status, 201, "{}", other.text);
    assert!(!other.replayed());
    assert_ne!(other.json["id"], first.json["id"]);

    assert_eq!(db.count("invoices").await, 2);
    let fetched = api.get(&format!("/invoices/{id}")).await;
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.json, first.json);
}

async fn an_invoice_is_created_once_even_when_its_key_record_is_gone(db: Db) {
    let server = Server::start(&db);
    let api = Api::new(&server);
    let first = api
        .post("/invoices", Some("purged"), &invoice_body(900))
        .await;
    assert_eq!(first.status, 201, "{}", first.text);

    // The key store forgets (retention purge, or a crashed request's lease
    // taken over): the unique business key still holds.
    db.execute("DELETE FROM idem_keys").await;
    let retry = api
        .post("/invoices", Some("purged"), &invoice_body(900))
        .await;
    assert_eq!(retry.status, 201, "{}", retry.text);
    assert!(!retry.replayed(), "the layer ran the handler again");
    assert_eq!(retry.json, first.json);

    db.execute("DELETE FROM idem_keys").await;
    let other = api
        .post("/invoices", Some("purged"), &invoice_body(901))
        .await;
    other.assert_problem(422, "different invoice");
    assert_eq!(db.count("invoices").await, 1);
}

async fn transitions_follow_the_state_machine_and_leave_a_history(db: Db) {
    let server = Server::start(&db);
    let api = Api::new(&server);

    let diagram = api.get("/diagram").await;
    assert_eq!(diagram.status, 200);
    assert!(
        diagram.text.starts_with("stateDiagram-v2"),
        "{}",
        diagram.text
    );
    assert!(
        diagram.text.contains("Issued --> Paid: pay"),
        "{}",
        diagram.text
    );

    let id = api.create("lifecycle", 500).await;
    let early_refund = api.transition(id, "refund").await;
    early_refund.assert_problem(409, "it is draft");
    assert_eq!(early_refund.json["current_state"], "draft");

    let issued = api.transition(id, "issue").await;
    assert_eq!(issued.status, 200, "{}", issued.text);
    assert_eq!(issued.json["status"], "issued");
    assert_eq!(issued.header("transition-outcome"), Some("applied"));
    let again = api.transition(id, "issue").await;
    assert_eq!(again.status, 200);
    assert_eq!(again.header("transition-outcome"), Some("already_applied"));

    let paid = api
        .post(
            &format!("/invoices/{id}/pay"),
            None,
            &json!({"amount_cents": 500}),
        )
        .await;
    assert_eq!(paid.status, 200, "{}", paid.text);
    assert_eq!(paid.json["status"], "paid");
    assert!(
        paid.json["paid_at"]
            .as_str()
            .is_some_and(|at| at.ends_with('Z')),
        "{}",
        paid.text
    );

    let void = api.transition(id, "void").await;
    void.assert_problem(409, "it is paid");
    let refunded = api.transition(id, "refund").await;
    assert_eq!(refunded.status, 200);
    assert_eq!(refunded.json["status"], "refunded");

    let history = api.get(&format!("/invoices/{id}/history")).await;
    assert_eq!(history.status, 200);
    let steps: Vec<(String, String, String)> = history
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["transition"].as_str().unwrap().to_owned(),
                h["from"].as_str().unwrap().to_owned(),
                h["to"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("issue", "draft", "issued"),
        ("pay", "issued", "paid"),
        ("refund", "paid", "refunded"),
    ]
    .map(|(t, f, to)| (t.to_owned(), f.to_owned(), to.to_owned()));
    assert_eq!(steps, expected, "no history for no-ops or rejections");

    let voided = api.create("to-void", 700).await;
    assert_eq!(api.transition(voided, "issue").await.status, 200);
    let void = api.transition(voided, "void").await;
    assert_eq!(void.status, 200);
    assert_eq!(void.json["status"], "void");
    let pay_void = api
        .post(
            &format!("/invoices/{voided}/pay"),
            None,
            &json!({"amount_cents": 700}),
        )
        .await;
    pay_void.assert_problem(409, "it is void");

    for path in [
        "/invoices/999999",
        "/invoices/999999/history",
        "/invoices/999999/payments",
    ] {
        api.get(path).await.assert_problem(404, "no invoice 999999");
    }
    api.transition(999_999, "issue")
        .await
        .assert_problem(404, "no invoice 999999");
}

async fn an_invoice_is_paid_once_whatever_keys_the_requests_carry(db: Db) {
    let server = Server::start(&db);
    let api = Api::new(&server);
    let id = api.create("pay-once", 1250).await;
    let pay_path = format!("/invoices/{id}/pay");
    let amount = json!({"amount_cents": 1250});

    let draft = api.post(&pay_path, Some("too-early"), &amount).await;
    draft.assert_problem(409, "it is draft");
    assert_eq!(draft.json["current_state"], "draft");
    assert_eq!(api.transition(id, "issue").await.status, 200);

    let wrong = api
        .post(&pay_path, None, &json!({"amount_cents": 1000}))
        .await;
    wrong.assert_problem(422, "1250");

    let first = api.post(&pay_path, Some("pay-1"), &amount).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.json["status"], "paid");
    assert_eq!(first.header("transition-outcome"), Some("applied"));

    let retry = api.post(&pay_path, Some("pay-1"), &amount).await;
    assert_eq!(retry.status, 200);
    assert!(retry.replayed());
    assert_eq!(retry.json, first.json);

    let other_key = api.post(&pay_path, Some("pay-2"), &amount).await;
    assert_eq!(other_key.status, 200);
    assert!(!other_key.replayed());
    assert_eq!(
        other_key.header("transition-outcome"),
        Some("already_applied")
    );

    let no_key = api.post(&pay_path, None, &amount).await;
    assert_eq!(no_key.status, 200);
    assert_eq!(no_key.header("transition-outcome"), Some("already_applied"));
    assert_eq!(no_key.json["status"], "paid");

    let payments = api.get(&format!("/invoices/{id}/payments")).await;
    assert_eq!(payments.status, 200);
    let payments = payments.json.as_array().unwrap().clone();
    assert_eq!(payments.len(), 1, "{payments:?}");
    assert_eq!(payments[0]["amount_cents"], 1250);
    assert_eq!(payments[0]["source"], "api");
    assert_eq!(payments[0]["reference"], "pay-1");
    assert_eq!(db.payments_per_invoice().await, BTreeMap::from([(id, 1)]));

    api.post("/invoices/424242/pay", None, &amount)
        .await
        .assert_problem(404, "no invoice 424242");
}

fn event(id: &str, invoice_id: i64, amount_cents: i64) -> Value {
    json!({"id": id, "type": "payment.received", "invoice_id": invoice_id, "amount_cents": amount_cents})
}

async fn payment_events_go_through_the_inbox_once(db: Db) {
    let server = Server::start(&db);
    let api = Api::new(&server);
    let id = api.create("evented", 300).await;

    // Too early: refused, and no marker is kept, so the provider's
    // redelivery after the invoice is issued is processed.
    let early = api.post("/events", None, &event("evt-1", id, 300)).await;
    early.assert_problem(409, "it is draft");
    assert_eq!(api.transition(id, "issue").await.status, 200);

    let first = api.post("/events", None, &event("evt-1", id, 300)).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.json["outcome"], "processed");
    assert_eq!(first.json["transition"], "applied");
    assert_eq!(first.json["invoice"]["status"], "paid");

    let again = api.post("/events", None, &event("evt-1", id, 300)).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json["outcome"], "duplicate");

    // Another event for the same invoice: processed, but `pay` is a no-op.
    let second = api.post("/events", None, &event("evt-2", id, 300)).await;
    assert_eq!(second.json["outcome"], "processed");
    assert_eq!(second.json["transition"], "already_applied");

    let payments = api.get(&format!("/invoices/{id}/payments")).await;
    let payments = payments.json.as_array().unwrap().clone();
    assert_eq!(payments.len(), 1, "{payments:?}");
    assert_eq!(payments[0]["source"], "event");
    assert_eq!(payments[0]["reference"], "evt-1");

    api.post("/events", None, &event("evt-3", id, 301))
        .await
        .assert_problem(422, "300");
    api.post("/events", None, &event("evt-4", 777_777, 300))
        .await
        .assert_problem(404, "no invoice 777777");
    api.post("/events", None, &event("", id, 300))
        .await
        .assert_problem(422, "`id`");
    let unknown_type =
        json!({"id": "evt-5", "type": "payment.failed", "invoice_id": id, "amount_cents": 300});
    api.post("/events", None, &unknown_type)
        .await
        .assert_problem(422, "payment.failed");
    assert_eq!(db.payments_per_invoice().await, BTreeMap::from([(id, 1)]));
}

/// `POST /invoices` as `client` with idempotency key `key`.
async fn create_as(api: &Api, client: &str, key: &str, body: &Value) -> support::Reply {
    let headers = [
        ("content-type", "application/json"),
        ("idempotency-key", key),
        ("x-client-id", client),
    ];
    api.post_raw("/invoices", &headers, &body.to_string()).await
}

/// Client ids and request keys compare byte for byte, in idem's key table
/// and in the app's own `invoices (client_id, request_key)`: five requests
/// whose client or key differs only in letter case (same body, so the app
/// would accept another's invoice as "the one this request created") each
/// create an invoice of their own, their retries replay it, and once the
/// key records are gone the unique business key still gives each request
/// its own invoice back. (HTTP header values cannot carry accents, and
/// their trailing spaces are not part of the value; the event ids below
/// carry those.)
async fn clients_and_keys_that_differ_only_in_case_never_share_an_invoice(db: Db) {
    let server = Server::start(&db);
    let api = Api::new(&server);
    let body = invoice_body(4200);
    let requests = [
        ("acme", "order-1"),
        ("ACME", "order-1"),
        ("Acme", "order-1"),
        ("acme", "ORDER-1"),
        ("acme", "Order-1"),
    ];
    let mut ids = Vec::new();
    for (client, key) in requests {
        let created = create_as(&api, client, key, &body).await;
        assert_eq!(created.status, 201, "{client}/{key}: {}", created.text);
        assert!(
            !created.replayed(),
            "{client}/{key} replayed another's invoice"
        );
        ids.push(created.json["id"].as_i64().unwrap());
    }
    let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), requests.len(), "{ids:?}");
    for ((client, key), id) in requests.iter().zip(&ids) {
        let retry = create_as(&api, client, key, &body).await;
        assert!(retry.replayed(), "{client}/{key}");
        assert_eq!(retry.json["id"], *id, "{client}/{key}");
    }
    // Without the key records, the app's own unique (client, request key).
    db.execute("DELETE FROM idem_keys").await;
    for ((client, key), id) in requests.iter().zip(&ids) {
        let retry = create_as(&api, client, key, &body).await;
        assert_eq!(retry.status, 201, "{client}/{key}: {}", retry.text);
        assert!(!retry.replayed());
        assert_eq!(
            retry.json["id"], *id,
            "{client}/{key} got another's invoice"
        );
    }
    assert_eq!(db.count("invoices").await, requests.len() as i64);
}

/// Event ids that differ only in case, trailing spaces or accents
/// (precomposed, or a letter and a combining mark) are six events: each
/// pays its own invoice, and each is a duplicate when redelivered.
async fn event_ids_that_differ_only_in_case_space_or_accents_are_different_events(db: Db) {
    let server = Server::start(&db);
    let api = Api::new(&server);
    let events = [
        "evt-1",
        "EVT-1",
        "Evt-1",
        "evt-1 ",
        "\u{e9}vt-1",
        "e\u{301}vt-1",
    ];
    let mut invoices = Vec::new();
    for n in 0..events.len() {
        let id = api.create(&format!("evented-{n}"), 500).await;
        assert_eq!(api.transition(id, "issue").await.status, 200);
        invoices.push(id);
    }
    for round in ["processed", "duplicate"] {
        for (event_id, invoice) in events.iter().zip(&invoices) {
            let reply = api
                .post("/events", None, &event(event_id, *invoice, 500))
                .await;
            assert_eq!(reply.status, 200, "{event_id:?}: {}", reply.text);
            assert_eq!(reply.json["outcome"], round, "{event_id:?}");
        }
    }
    let paid: BTreeMap<i64, i64> = invoices.iter().map(|id| (*id, 1)).collect();
    assert_eq!(db.payments_per_invoice().await, paid);
    for (event_id, invoice) in events.iter().zip(&invoices) {
        let payments = api.get(&format!("/invoices/{invoice}/payments")).await;
        assert_eq!(payments.json[0]["reference"], *event_id);
    }
}

async fn bad_input_is_a_problem_and_writes_nothing(db: Db) {
    let server = Server::start(&db);
    let api = Api::new(&server);
    let json_key = |key: &'static str| {
        [
            ("content-type", "application/json"),
            ("idempotency-key", key),
        ]
    };

    let cases: [(&str, &str, u16, &str); 9] = [
        (
            "k1",
            r#"{"customer": "ACME", "amount_cents": 10"#,
            400,
            "parse",
        ),
        (
            "k2",
            r#"{"customer": "ACME", "currency": "EUR"}"#,
            422,
            "missing field `amount_cents`",
        ),
        (
            "k3",
            r#"{"customer": "ACME", "amount_cents": -5, "currency": "EUR"}"#,
            422,
            "positive",
        ),
        (
            "k4",
            r#"{"customer": "ACME", "amount_cents": 0, "currency": "EUR"}"#,
            422,
            "positive",
        ),
        (
            "k5",
            r#"{"customer": "ACME", "amount_cents": 10, "currency": "XYZ"}"#,
            422,
            "EUR, USD, GBP, JPY, CHF",
        ),
        (
            "k6",
            r#"{"customer": "ACME", "amount_cents": "ten", "currency": "EUR"}"#,
            422,
            "amount_cents",
        ),
        (
            "k7",
            r#"{"customer": "", "amount_cents": 10, "currency": "EUR"}"#,
            422,
            "customer",
        ),
        (
            "k8",
            r#"{"customer": "ACME", "amount_cents": 10, "currency": "EUR", "x": 1}"#,
            422,
            "unknown field",
        ),
        ("k9", r#""an invoice""#, 422, "invalid type"),
    ];
    for (key, body, status, needle) in cases {
        api.post_raw("/invoices", &json_key(key), body)
            .await
            .assert_problem(status, needle);
    }
    api.post_raw(
        "/invoices",
        &[("idempotency-key", "k10")],
        &invoice_body(10).to_string(),
    )
    .await
    .assert_problem(415, "application/json");

    let long_key = "k".repeat(256);
    api.post("/invoices", Some(&long_key), &invoice_body(10))
        .await
        .assert_problem(400, "255");
    api.post(
        "/invoices/1/pay",
        Some(&long_key),
        &json!({"amount_cents": 10}),
    )
    .await
    .assert_problem(400, "255");

    for path in [
        "/invoices/abc",
        "/invoices/1.5",
        "/invoices/99999999999999999999",
    ] {
        api.get(path).await.assert_problem(400, "invoice ids");
    }
    api.post("/invoices/abc/pay", None, &json!({"amount_cents": 10}))
        .await
        .assert_problem(400, "invoice ids");
    api.post("/invoices/1/pay", None, &json!({"amount_cents": -1}))
        .await
        .assert_problem(422, "positive");
    api.post(
        "/events",
        None,
        &json!({"id": "e", "type": "payment.received", "invoice_id": "one", "amount_cents": 1}),
    )
    .await
    .assert_problem(422, "invoice_id");
    api.get("/nowhere")
        .await
        .assert_problem(404, "no such route");
    api.get("/invoices").await.assert_problem(405, "method");

    assert_eq!(db.count("invoices").await, 0);
    assert_eq!(db.count("payments").await, 0);
}

/// Every invoice of a storm ended with exactly one payment, per the
/// service and per the database.
async fn assert_one_payment_each(db: &Db, ok: bool, report: &Value, invoices: usize) {
    assert!(ok, "the storm failed: {report:#}");
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["applied_total"], invoices, "{report:#}");
    assert_eq!(report["unexpected_total"], 0, "{report:#}");
    assert_eq!(
        report["payments_per_invoice"],
        json!({"1": invoices}),
        "{report:#}"
    );
    let per_invoice = db.payments_per_invoice().await;
    assert_eq!(per_invoice.len(), invoices);
    assert!(
        per_invoice.values().all(|payments| *payments == 1),
        "{per_invoice:?}"
    );
    let kinds = report["kinds"].as_object().unwrap();
    for kind in ["same-key", "new-key", "no-key", "event"] {
        assert!(
            kinds.contains_key(kind),
            "the storm sent no {kind} attempts: {report:#}"
        );
    }
    assert!(
        kinds["same-key"]["replayed"].as_u64().unwrap() > 0,
        "{report:#}"
    );
    assert_eq!(
        kinds["event"]["processed"], invoices,
        "one processed delivery per event id"
    );
}

async fn the_storm_pays_each_invoice_exactly_once(db: Db) {
    let server = Server::start(&db);
    let (ok, report) = support::storm(&[&server.url], 50, 8, 32).await;
    assert_one_payment_each(&db, ok, &report, 50).await;
    eprintln!(
        "storm on {:?}: {} payment requests at {:.0} requests/s",
        db.backend, report["payment_requests"], report["payment_requests_per_second"]
    );
}

async fn two_servers_on_one_database_still_pay_each_invoice_once(db: Db) {
    // Started together on the fresh database: both install the schema at
    // once.
    let servers = Server::start_together(&db, 2);
    let (first, second) = (&servers[0], &servers[1]);
    // Round-robin: every invoice's duplicates are split between the two.
    let (ok, report) = support::storm(&[&first.url, &second.url], 50, 8, 32).await;
    assert_one_payment_each(&db, ok, &report, 50).await;
}

async fn a_restarted_server_keeps_its_data_and_installs_its_schema_again(db: Db) {
    let id = {
        let server = Server::start(&db);
        let api = Api::new(&server);
        let id = api.create("before-restart", 42).await;
        assert_eq!(api.transition(id, "issue").await.status, 200);
        id
    };
    let server = Server::start(&db);
    let api = Api::new(&server);
    let invoice = api.get(&format!("/invoices/{id}")).await;
    assert_eq!(invoice.status, 200);
    assert_eq!(invoice.json["status"], "issued");
    let replay = api
        .post("/invoices", Some("before-restart"), &invoice_body(42))
        .await;
    assert!(replay.replayed(), "keys survive a restart: {}", replay.text);
    assert_eq!(replay.json["id"], id);
}

async fn an_event_redelivered_after_its_marker_expired_still_pays_once(db: Db) {
    let id = {
        let server = Server::start(&db);
        let api = Api::new(&server);
        let id = api.create("late-redelivery", 250).await;
        assert_eq!(api.transition(id, "issue").await.status, 200);
        let first = api.post("/events", None, &event("evt-late", id, 250)).await;
        assert_eq!(first.json["transition"], "applied", "{}", first.text);
        id
    };
    // A day later: the marker is past the inbox's window.
    db.execute("UPDATE idem_inbox SET processed_at = '2000-01-01 00:00:00'")
        .await;
    // A server purges expired markers when it starts (and every hour).
    let server = Server::start(&db);
    let api = Api::new(&server);
    assert_eq!(
        db.count("idem_inbox").await,
        0,
        "the expired marker is purged"
    );
    let late = api.post("/events", None, &event("evt-late", id, 250)).await;
    assert_eq!(late.status, 200, "{}", late.text);
    assert_eq!(late.json["outcome"], "processed", "the inbox forgot it");
    assert_eq!(
        late.json["transition"], "already_applied",
        "the state did not"
    );
    assert_eq!(db.payments_per_invoice().await, BTreeMap::from([(id, 1)]));
}

#[tokio::test]
async fn the_server_stops_cleanly_on_sigterm_and_reads_database_url_from_the_environment() {
    let db = Db::sqlite();
    let server = Server::start(&db);
    let api = Api::new(&server);
    let id = api.create("before-sigterm", 10).await;
    assert!(server.terminate(), "the server exits with success");
    let server = Server::start_from_env(&db);
    let api = Api::new(&server);
    assert_eq!(api.get(&format!("/invoices/{id}")).await.status, 200);
}

#[test]
fn the_sql_command_prints_the_diagram_and_the_sql_of_each_transition() {
    for (dialect, marker) in [("postgres", "$1"), ("mysql", "`invoices`"), ("sqlite", "?")] {
        let output = std::process::Command::new(support::BIN)
            .args(["sql", "--dialect", dialect])
            .output()
            .unwrap();
        assert!(output.status.success());
        let text = String::from_utf8(output.stdout).unwrap();
        assert!(text.contains("stateDiagram-v2"), "{text}");
        for transition in ["issue", "pay", "void", "refund"] {
            assert!(text.contains(&format!("-- {transition}:")), "{text}");
        }
        assert!(text.contains(marker), "{dialect}: {text}");
        assert!(text.contains("paid_at"), "{text}");
    }
}
