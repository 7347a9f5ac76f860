//! `invoicing storm`: a load client that pays every invoice many times
//! over, concurrently, the way real clients, networks and brokers do —
//! retries with the same idempotency key, fresh keys, no key at all, and
//! redelivered `payment.received` events — then checks that each invoice
//! was paid exactly once.

use std::collections::BTreeMap;
use std::fmt;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use futures::stream::{self, StreamExt};
use reqwest::{Client, RequestBuilder, Response, StatusCode};
use serde::Serialize;
use serde_json::{json, Value};

use crate::invoice::{Invoice, Payment};
use crate::AnyError;

/// `invoicing storm`.
#[derive(Debug, Clone, Args)]
pub struct StormArgs {
    /// A server to send to. Repeat it to spread the requests round-robin
    /// over several instances of the service on one database.
    #[arg(long = "url", default_value = "http://127.0.0.1:3000")]
    urls: Vec<String>,
    /// How many invoices to create and pay.
    #[arg(long, default_value_t = 100)]
    invoices: usize,
    /// How many times each invoice is paid.
    #[arg(long, default_value_t = 8)]
    duplicates: usize,
    /// How many requests are in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// How one payment attempt is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Kind {
    /// `POST /pay` with the invoice's one shared key: a client retrying.
    SameKey,
    /// `POST /pay` with a fresh key: another client, or a careless retry.
    NewKey,
    /// `POST /pay` without a key.
    NoKey,
    /// `POST /events` with the invoice's one event id: a broker
    /// redelivering.
    Event,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::SameKey, Kind::NewKey, Kind::NoKey, Kind::Event];
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::SameKey => "same key",
            Kind::NewKey => "new key",
            Kind::NoKey => "no key",
            Kind::Event => "event",
        })
    }
}

/// What the attempts of one kind got back.
#[derive(Debug, Default, Clone, Serialize)]
struct Tally {
    /// Attempts made (a retry after 409 in-progress is not a new attempt).
    attempts: u64,
    /// HTTP requests sent, retries included.
    requests: u64,
    /// Final status codes.
    statuses: BTreeMap<u16, u64>,
    /// 409 in-progress answers that were retried after `Retry-After`.
    in_progress_retries: u64,
    /// 503 answers (the key store failed, the request did not run) that
    /// were retried.
    unavailable_retries: u64,
    /// Responses with `Idempotent-Replayed: true`.
    replayed: u64,
    /// Fresh (not replayed) responses whose `pay` moved the invoice.
    applied: u64,
    /// Fresh responses whose `pay` was a duplicate.
    already_applied: u64,
    /// Events the inbox processed.
    processed: u64,
    /// Events the inbox recognised as duplicates.
    duplicate: u64,
    /// Final answers other than 200 (after the retries of 409 in-progress
    /// and 503), and transport errors.
    unexpected: u64,
}

/// One attempt's result.
#[derive(Debug, Default)]
struct Attempt {
    requests: u64,
    status: Option<u16>,
    in_progress_retries: u64,
    unavailable_retries: u64,
    replayed: bool,
    applied: bool,
    already_applied: bool,
    processed: bool,
    duplicate: bool,
    error: Option<String>,
}

/// The storm's report.
#[derive(Debug, Serialize)]
struct Report {
    urls: Vec<String>,
    invoices: usize,
    duplicates: usize,
    concurrency: usize,
    setup_requests: u64,
    setup_seconds: f64,
    payment_requests: u64,
    payment_seconds: f64,
    payment_requests_per_second: f64,
    kinds: BTreeMap<Kind, Tally>,
    /// Invoices by number of payments recorded.
    payments_per_invoice: BTreeMap<usize, usize>,
    /// Invoices not in `paid` after the storm.
    not_paid: usize,
    /// Fresh responses that said this call moved the invoice, all kinds.
    applied_total: u64,
    unexpected_total: u64,
    total_requests: u64,
    total_seconds: f64,
    requests_per_second: f64,
    ok: bool,
    errors: Vec<String>,
}

/// How many times one attempt is retried after a 409 in-progress or a
/// 503 before its answer counts as final.
const MAX_RETRIES: u64 = 100;

/// Runs the storm; the exit code is non-zero unless every invoice ends
/// with exactly one payment.
pub async fn run(args: StormArgs) -> Result<ExitCode, AnyError> {
    if args.urls.is_empty() || args.invoices == 0 || args.duplicates == 0 || args.concurrency == 0 {
        return Err("--url, --invoices, --duplicates and --concurrency must not be zero".into());
    }
    let storm = Storm::new(&args)?;
    let started = Instant::now();

    let ids = storm.create_invoices(&args).await?;
    storm.issue_invoices(&ids, args.concurrency).await?;
    let setup_seconds = started.elapsed().as_secs_f64();
    let setup_requests = storm.retries.requests(2 * ids.len() as u64);

    let pay_started = Instant::now();
    let kinds = storm.pay_all(&ids, &args).await;
    let payment_seconds = pay_started.elapsed().as_secs_f64();
    let payment_requests: u64 = kinds.values().map(|t| t.requests).sum();

    let (payments_per_invoice, not_paid, verify_requests) =
        storm.verify(&ids, args.concurrency).await?;
    let total_seconds = started.elapsed().as_secs_f64();
    let total_requests = setup_requests + payment_requests + verify_requests;

    let applied_total = kinds.values().map(|t| t.applied).sum();
    let unexpected_total = kinds.values().map(|t| t.unexpected).sum();
    let mut errors = Vec::new();
    let wrong: usize = payments_per_invoice
        .iter()
        .filter(|(count, _)| **count != 1)
        .map(|(_, invoices)| invoices)
        .sum();
    if wrong > 0 {
        errors.push(format!("{wrong} invoices do not have exactly one payment"));
    }
    if not_paid > 0 {
        errors.push(format!("{not_paid} invoices are not paid"));
    }
    if applied_total != ids.len() as u64 {
        errors.push(format!(
            "{applied_total} responses said they applied `pay`; expected one per invoice ({})",
            ids.len()
        ));
    }
    if unexpected_total > 0 {
        errors.push(format!(
            "{unexpected_total} unexpected responses or transport errors"
        ));
    }
    let report = Report {
        urls: args.urls.clone(),
        invoices: args.invoices,
        duplicates: args.duplicates,
        concurrency: args.concurrency,
        setup_requests,
        setup_seconds,
        payment_requests,
        payment_seconds,
        payment_requests_per_second: payment_requests as f64 / payment_seconds.max(1e-9),
        kinds,
        payments_per_invoice,
        not_paid,
        applied_total,
        unexpected_total,
        total_requests,
        total_seconds,
        requests_per_second: total_requests as f64 / total_seconds.max(1e-9),
        ok: errors.is_empty(),
        errors,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{report}");
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

struct Storm {
    client: Client,
    urls: Vec<String>,
    /// Unique to this run, so keys and event ids never meet a previous
    /// run's on the same database.
    run: String,
    /// The retries of the setup requests.
    retries: Retries,
}

impl Storm {
    fn new(args: &StormArgs) -> Result<Self, AnyError> {
        let client = Client::builder()
            .pool_max_idle_per_host(args.concurrency)
            .timeout(Duration::from_secs(60))
            .build()?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        Ok(Storm {
            client,
            urls: args
                .urls
                .iter()
                .map(|u| u.trim_end_matches('/').to_owned())
                .collect(),
            run: format!("storm-{}-{nanos:x}", std::process::id()),
            retries: Retries::default(),
        })
    }

    /// The server for the `n`th request: round-robin.
    fn url(&self, n: usize, path: &str) -> String {
        format!("{}{path}", self.urls[n % self.urls.len()])
    }

    fn post(&self, n: usize, path: &str) -> RequestBuilder {
        self.client
            .post(self.url(n, path))
            .header("x-client-id", &self.run)
    }

    async fn create_invoices(&self, args: &StormArgs) -> Result<Vec<Invoice>, AnyError> {
        let created: Vec<Result<Invoice, AnyError>> = stream::iter(0..args.invoices)
            .map(|i| async move {
                let create = || {
                    self.post(i, "/invoices")
                        .header("idempotency-key", format!("create-{i}"))
                        .json(&json!({
                            "customer": format!("Customer {i}"),
                            "amount_cents": 1000 + i as i64,
                            "currency": "EUR",
                        }))
                };
                let response = send(create, &self.retries).await?;
                let invoice: Invoice = expect(response, StatusCode::CREATED).await?.json().await?;
                Ok(invoice)
            })
            .buffer_unordered(args.concurrency)
            .collect()
            .await;
        created.into_iter().collect()
    }

    async fn issue_invoices(
        &self,
        invoices: &[Invoice],
        concurrency: usize,
    ) -> Result<(), AnyError> {
        let issued: Vec<Result<(), AnyError>> = stream::iter(invoices.iter().enumerate())
            .map(|(n, invoice)| async move {
                let issue = || self.post(n, &format!("/invoices/{}/issue", invoice.id));
                let response = send(issue, &self.retries).await?;
                expect(response, StatusCode::OK).await?;
                Ok(())
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        issued.into_iter().collect()
    }

    /// Every invoice's attempts are adjacent, so with a concurrency of at
    /// least `duplicates` they all race each other.
    async fn pay_all(&self, invoices: &[Invoice], args: &StormArgs) -> BTreeMap<Kind, Tally> {
        let attempts = invoices.iter().flat_map(|invoice| {
            (0..args.duplicates).map(move |j| (invoice, j, Kind::ALL[j % Kind::ALL.len()]))
        });
        let results: Vec<(Kind, Attempt)> = stream::iter(attempts.enumerate())
            .map(|(n, (invoice, j, kind))| async move {
                (kind, self.pay_once(n, invoice, j, kind).await)
            })
            .buffer_unordered(args.concurrency)
            .collect()
            .await;
        let mut kinds: BTreeMap<Kind, Tally> = BTreeMap::new();
        for (kind, attempt) in results {
            let tally = kinds.entry(kind).or_default();
            tally.attempts += 1;
            tally.requests += attempt.requests;
            tally.in_progress_retries += attempt.in_progress_retries;
            tally.unavailable_retries += attempt.unavailable_retries;
            if let Some(status) = attempt.status {
                *tally.statuses.entry(status).or_default() += 1;
            }
            tally.replayed += u64::from(attempt.replayed);
            tally.applied += u64::from(attempt.applied);
            tally.already_applied += u64::from(attempt.already_applied);
            tally.processed += u64::from(attempt.processed);
            tally.duplicate += u64::from(attempt.duplicate);
            if attempt.error.is_some() || attempt.status != Some(200) {
                tally.unexpected += 1;
                if let Some(error) = attempt.error {
                    tracing::warn!(%kind, %error, "payment attempt failed");
                }
            }
        }
        kinds
    }

    fn pay_request(&self, n: usize, invoice: &Invoice, j: usize, kind: Kind) -> RequestBuilder {
        let pay = || self.post(n, &format!("/invoices/{}/pay", invoice.id));
        let body = json!({ "amount_cents": invoice.amount_cents });
        match kind {
            Kind::SameKey => pay()
                .header("idempotency-key", format!("pay-{}", invoice.id))
                .json(&body),
            Kind::NewKey => pay()
                .header("idempotency-key", format!("pay-{}-{j}", invoice.id))
                .json(&body),
            Kind::NoKey => pay().json(&body),
            Kind::Event => self.post(n, "/events").json(&json!({
                "id": format!("{}-evt-{}", self.run, invoice.id),
                "type": "payment.received",
                "invoice_id": invoice.id,
                "amount_cents": invoice.amount_cents,
            })),
        }
    }

    async fn pay_once(&self, n: usize, invoice: &Invoice, j: usize, kind: Kind) -> Attempt {
        let mut attempt = Attempt::default();
        let retries = Retries::default();
        let sent = send(|| self.pay_request(n, invoice, j, kind), &retries).await;
        attempt.in_progress_retries = retries.in_progress.load(Ordering::Relaxed);
        attempt.unavailable_retries = retries.unavailable.load(Ordering::Relaxed);
        attempt.requests = retries.requests(1);
        let response = match sent {
            Ok(response) => response,
            Err(error) => {
                attempt.error = Some(error.to_string());
                return attempt;
            }
        };
        let status = response.status();
        attempt.status = Some(status.as_u16());
        attempt.replayed = response
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true");
        let outcome = response
            .headers()
            .get("transition-outcome")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body: Value = match response.json().await {
            Ok(body) => body,
            Err(error) => {
                attempt.error = Some(error.to_string());
                return attempt;
            }
        };
        let outcome = match kind {
            Kind::Event => body
                .get("transition")
                .and_then(Value::as_str)
                .map(str::to_owned),
            _ => outcome,
        };
        if !attempt.replayed {
            attempt.applied = outcome.as_deref() == Some("applied");
            attempt.already_applied = outcome.as_deref() == Some("already_applied");
        }
        match body.get("outcome").and_then(Value::as_str) {
            Some("processed") => attempt.processed = true,
            Some("duplicate") => attempt.duplicate = true,
            _ => {}
        }
        if status != StatusCode::OK {
            attempt.error = Some(format!("{status}: {body}"));
        }
        attempt
    }

    /// Reads every invoice and its payments back.
    async fn verify(
        &self,
        invoices: &[Invoice],
        concurrency: usize,
    ) -> Result<(BTreeMap<usize, usize>, usize, u64), AnyError> {
        let checked: Vec<Result<(usize, bool), AnyError>> =
            stream::iter(invoices.iter().enumerate())
                .map(|(n, invoice)| async move {
                    let payments: Vec<Payment> = expect(
                        self.client
                            .get(self.url(n, &format!("/invoices/{}/payments", invoice.id)))
                            .send()
                            .await?,
                        StatusCode::OK,
                    )
                    .await?
                    .json()
                    .await?;
                    let now: Invoice = expect(
                        self.client
                            .get(self.url(n, &format!("/invoices/{}", invoice.id)))
                            .send()
                            .await?,
                        StatusCode::OK,
                    )
                    .await?
                    .json()
                    .await?;
                    Ok((payments.len(), now.status == "paid"))
                })
                .buffer_unordered(concurrency)
                .collect()
                .await;
        let mut per_invoice = BTreeMap::new();
        let mut not_paid = 0;
        for result in checked {
            let (payments, paid) = result?;
            *per_invoice.entry(payments).or_default() += 1;
            not_paid += usize::from(!paid);
        }
        Ok((per_invoice, not_paid, 2 * invoices.len() as u64))
    }
}

/// The retries [`send`] made.
#[derive(Debug, Default)]
struct Retries {
    /// After a 409 with `Retry-After`: another request held the key.
    in_progress: AtomicU64,
    /// After a 503: the key store failed and the request did not run.
    unavailable: AtomicU64,
}

impl Retries {
    /// The requests sent for `first` requests with these retries.
    fn requests(&self, first: u64) -> u64 {
        first + self.in_progress.load(Ordering::Relaxed) + self.unavailable.load(Ordering::Relaxed)
    }
}

/// Sends the request `build` makes, and sends it again — as a real client
/// does — after a 409 with `Retry-After` (another request holds the key)
/// or a 503 (the key store failed; the request did not run), up to
/// [`MAX_RETRIES`] times. Other answers are returned as they are.
async fn send(
    build: impl Fn() -> RequestBuilder,
    retries: &Retries,
) -> Result<Response, reqwest::Error> {
    let mut count = 0u64;
    loop {
        let response = build().send().await?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let in_progress = status == StatusCode::CONFLICT && retry_after.is_some();
        let unavailable = status == StatusCode::SERVICE_UNAVAILABLE;
        if !(in_progress || unavailable) || count >= MAX_RETRIES {
            return Ok(response);
        }
        if in_progress {
            retries.in_progress.fetch_add(1, Ordering::Relaxed);
        } else {
            retries.unavailable.fetch_add(1, Ordering::Relaxed);
        }
        // Retry-After counts whole seconds (the lease), but the work takes
        // milliseconds: back off from 5 ms, doubling, never past what the
        // server asked.
        let backoff = Duration::from_millis(5 << count.min(8));
        let cap = Duration::from_secs(retry_after.unwrap_or(1).max(1));
        tokio::time::sleep(backoff.min(cap)).await;
        count += 1;
    }
}

/// The response, or an error with its body when the status is not `want`.
async fn expect(response: Response, want: StatusCode) -> Result<Response, AnyError> {
    if response.status() == want {
        return Ok(response);
    }
    let status = response.status();
    let url = response.url().to_string();
    let body = response.text().await.unwrap_or_default();
    Err(format!("{url}: expected {want}, got {status}: {body}").into())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "storm: {} invoices x {} payment attempts, concurrency {}, against {}",
            self.invoices,
            self.duplicates,
            self.concurrency,
            self.urls.join(" + ")
        )?;
        writeln!(
            f,
            "setup: {} requests (create + issue) in {:.2}s",
            self.setup_requests, self.setup_seconds
        )?;
        writeln!(
            f,
            "payments: {} requests in {:.2}s = {:.0} requests/s",
            self.payment_requests, self.payment_seconds, self.payment_requests_per_second
        )?;
        writeln!(
            f,
            "  {:<9} {:>8} {:>8}  {:<14} {:>8} {:>9} {:>8} {:>8} {:>6} {:>9}",
            "kind",
            "attempts",
            "requests",
            "final statuses",
            "409-wait",
            "503-retry",
            "replayed",
            "applied",
            "no-op",
            "processed"
        )?;
        for (kind, tally) in &self.kinds {
            let statuses: Vec<String> = tally
                .statuses
                .iter()
                .map(|(status, count)| format!("{status}x{count}"))
                .collect();
            writeln!(
                f,
                "  {:<9} {:>8} {:>8}  {:<14} {:>8} {:>9} {:>8} {:>8} {:>6} {:>9}",
                kind.to_string(),
                tally.attempts,
                tally.requests,
                statuses.join(" "),
                tally.in_progress_retries,
                tally.unavailable_retries,
                tally.replayed,
                tally.applied,
                tally.already_applied + tally.duplicate,
                tally.processed,
            )?;
        }
        let per_invoice: Vec<String> = self
            .payments_per_invoice
            .iter()
            .map(|(payments, invoices)| format!("{invoices} invoices with {payments} payment(s)"))
            .collect();
        writeln!(f, "payments per invoice: {}", per_invoice.join(", "))?;
        writeln!(
            f,
            "applied: {} (one per invoice expected); not paid: {}; unexpected: {}",
            self.applied_total, self.not_paid, self.unexpected_total
        )?;
        writeln!(
            f,
            "total: {} requests in {:.2}s = {:.0} requests/s",
            self.total_requests, self.total_seconds, self.requests_per_second
        )?;
        if self.ok {
            writeln!(f, "OK: every invoice was paid exactly once")
        } else {
            writeln!(f, "FAILED: {}", self.errors.join("; "))
        }
    }
}
