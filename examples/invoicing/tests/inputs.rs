//! Client input the idempotency layer accepts is either stored the same on
//! every backend or refused with a 4xx problem on every backend — never a
//! 500 on one of them — and the shutdown never abandons a claimed request
//! (SQLite always; PostgreSQL and MySQL with `IDEM_TEST_POSTGRES` /
//! `IDEM_TEST_MYSQL`).

mod support;

use std::time::Duration;

use idem::keys::Scope;
use serde_json::json;
use support::{on_every_backend, Api, Db, Server};

on_every_backend!(
    the_longest_client_id_a_scope_takes_creates_an_invoice_and_a_longer_one_is_400,
    a_repeated_client_id_is_400_and_never_reads_another_clients_response,
    a_quoted_key_and_its_bare_form_are_one_key_on_every_endpoint,
    names_every_backend_stores_round_trip_and_control_characters_are_422,
    event_ids_with_control_characters_are_422_and_write_nothing,
    sigterm_lets_a_claimed_request_whose_client_hung_up_finish,
);

/// The longest `X-Client-Id` a scope of the example takes: client and
/// operation (`invoicing`) encoded in at most `Scope::MAX_LEN` bytes.
fn longest_client_id() -> usize {
    (1..=Scope::MAX_LEN)
        .rev()
        .find(|len| Scope::new("c".repeat(*len), "invoicing").is_ok())
        .unwrap()
}

fn invoice() -> String {
    json!({"customer": "ACME", "amount_cents": 100, "currency": "EUR"}).to_string()
}

async fn the_longest_client_id_a_scope_takes_creates_an_invoice_and_a_longer_one_is_400(db: Db) {
    let server = Server::start(&db);
    let api = Api::new(&server);
    let longest = longest_client_id();
    for (len, created) in [
        (255, true),
        (256, true),
        (longest, true),
        (longest + 1, false),
    ] {
        let client = "c".repeat(len);
        let headers = [
            ("content-type", "application/json"),
            ("idempotency-key", "long-client"),
            ("x-client-id", client.as_str()),
        ];
        let reply = api.post_raw("/invoices", &headers, &invoice()).await;
        if created {
            assert_eq!(reply.status, 201, "{:?} {len}: {}", db.backend, reply.text);
            let retry = api.post_raw("/invoices", &headers, &invoice()).await;
            assert!(retry.replayed(), "{:?} {len}: {}", db.backend, retry.text);
        } else {
            reply.assert_problem(400, "client");
        }
    }
    assert_eq!(db.count("invoices").await, 3);
}

async fn a_repeated_client_id_is_400_and_never_reads_another_clients_response(db: Db) {
    let server = Server::start(&db);
    let api = Api::new(&server);
    let victim = [
        ("content-type", "application/json"),
        ("idempotency-key", "order-1"),
        ("x-client-id", "victim"),
    ];
    assert_eq!(
        api.post_raw("/invoices", &victim, &invoice()).await.status,
        201
    );
    for (first, second) in [
        ("victim", "mallory"),
        ("mallory", "victim"),
        ("victim", "victim"),
    ] {
        let headers = [
            ("content-type", "application/json"),
            ("idempotency-key", "order-1"),
            ("x-client-id", first),
            ("x-client-id", second),
        ];
        let reply = api.post_raw("/invoices", &headers, &invoice()).await;
        assert!(!reply.replayed(), "{:?}: {}", db.backend, reply.text);
        reply.assert_problem(400, "client");
    }
    assert_eq!(db.count("invoices").await, 1);
}

/// `Idempotency-Key: "k"` (a structured-field string) is the key `k`:
/// the invoice's request key and the payment's reference are `k`, and the
/// bare form is a retry of the same request.
async fn a_quoted_key_and_its_bare_form_are_one_key_on_every_endpoint(db: Db) {
    let server = Server::start(&db);
    let api = Api::new(&server);
    let key = "k".repeat(255);
    let quoted = format!("\"{key}\"");
    let create = |key: &str| {
        [
            ("content-type", "application/json"),
            ("idempotency-key", key),
        ]
        .map(|(name, value)| (name, value.to_owned()))
    };
    let send = |headers: [(&'static str, String); 2], path: String, body: String| {
        let api = api.clone();
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            api.post_raw(&path, &headers, &body).await
        }
    };
    let first = send(create(&quoted), "/invoices".into(), invoice()).await;
    assert_eq!(first.status, 201, "{:?}: {}", db.backend, first.text);
    let bare = send(create(&key), "/invoices".into(), invoice()).await;
    assert!(bare.replayed(), "{:?}: {}", db.backend, bare.text);
    assert_eq!(bare.json["id"], first.json["id"]);
    let id = first.json["id"].as_i64().unwrap();
    assert_eq!(api.transition(id, "issue").await.status, 200);

    // One scope for the whole API: the payment needs a key of its own.
    let key = "p".repeat(255);
    let quoted = format!("\"{key}\"");
    let pay = json!({"amount_cents": 100}).to_string();
    let path = format!("/invoices/{id}/pay");
    let paid = send(create(&quoted), path.clone(), pay.clone()).await;
    assert_eq!(paid.status, 200, "{:?}: {}", db.backend, paid.text);
    let again = send(create(&key), path, pay).await;
    assert!(again.replayed(), "{:?}: {}", db.backend, again.text);
    let payments = api.get(&format!("/invoices/{id}/payments")).await;
    assert_eq!(payments.json.as_array().map(Vec::len), Some(1));
    assert_eq!(payments.json[0]["reference"].as_str(), Some(key.as_str()));
}

/// Names with characters some backend treats specially are stored exactly
/// on every backend (200 four-byte characters fit MySQL's `VARCHAR(255)`
/// in `utf8mb4`); control characters, which PostgreSQL's text refuses
/// (U+0000) or a name should not hold, are 422 on every backend and write
/// nothing.
async fn names_every_backend_stores_round_trip_and_control_characters_are_422(db: Db) {
    let server = Server::start(&db);
    let api = Api::new(&server);
    let stored = [
        "\u{1f600}".repeat(200),
        "Ærøskøbing Æble".to_owned(),
        "O'Brien \\ \"Sons\" ; DROP TABLE invoices; --".to_owned(),
        "\u{202e}RTL\u{fffd}\u{ffff}".to_owned(),
    ];
    for (n, customer) in stored.iter().enumerate() {
        let body = json!({"customer": customer, "amount_cents": 100, "currency": "EUR"});
        let reply = api
            .post("/invoices", Some(&format!("name-{n}")), &body)
            .await;
        assert_eq!(
            reply.status, 201,
            "{:?} {customer:?}: {}",
            db.backend, reply.text
        );
        let id = reply.json["id"].as_i64().unwrap();
        let read = api.get(&format!("/invoices/{id}")).await;
        assert_eq!(read.json["customer"].as_str(), Some(customer.as_str()));
    }
    for (n, customer) in [
        "AC\u{0}ME",
        "AC\nME",
        "AC\u{1b}[2JME",
        "AC\u{7f}ME",
        "AC\u{9b}ME",
    ]
    .iter()
    .enumerate()
    {
        let body = json!({"customer": customer, "amount_cents": 100, "currency": "EUR"});
        let reply = api
            .post("/invoices", Some(&format!("control-{n}")), &body)
            .await;
        reply.assert_problem(422, "control characters");
    }
    assert_eq!(db.count("invoices").await, stored.len() as i64);
}

async fn event_ids_with_control_characters_are_422_and_write_nothing(db: Db) {
    let server = Server::start(&db);
    let api = Api::new(&server);
    let id = api.create("for-events", 100).await;
    assert_eq!(api.transition(id, "issue").await.status, 200);
    for event_id in ["evt\u{0}1", "evt\n1", ""] {
        let event = json!({"id": event_id, "type": "payment.received", "invoice_id": id, "amount_cents": 100});
        let reply = api.post("/events", None, &event).await;
        assert_eq!(
            reply.status, 422,
            "{:?} {event_id:?}: {}",
            db.backend, reply.text
        );
    }
    assert_eq!(db.count("payments").await, 0);
}

/// The repro of the attack (`repro/sigterm_abandons_claimed_work.sh`) on
/// every backend: a create whose insert waits on a lock, a client that
/// hangs up after 1 s, then SIGTERM. The server waits for the claimed
/// request (not only for its connections) before it exits: the invoice is
/// created once and its key is completed, not left running.
async fn sigterm_lets_a_claimed_request_whose_client_hung_up_finish(db: Db) {
    let server = Server::start(&db);
    let api = Api::new(&server);
    let lock = db.lock_invoices().await;
    let hasty = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let sent = hasty
        .post(format!("{}/invoices", api.base))
        .header("content-type", "application/json")
        .header("idempotency-key", "sigterm-1")
        .body(invoice())
        .send()
        .await;
    assert!(sent.is_err(), "the request should still wait on the lock");
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        lock.release().await;
    });
    let clean = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    release.await.unwrap();
    assert!(clean, "{:?}: the server did not exit cleanly", db.backend);
    let (records, completed) = db
        .pairs("SELECT COUNT(*), COUNT(completed_at) FROM idem_keys")
        .await[0];
    assert_eq!(
        (records, completed, db.count("invoices").await),
        (1, 1, 1),
        "{:?}: the claimed request was abandoned by the shutdown (records, completed, invoices)",
        db.backend
    );
}
