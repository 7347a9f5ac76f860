//! Storage: one repository written once over any idem backend, with the
//! SQL that differs per backend in [`sql`]. The server holds it as
//! `Arc<dyn Repository>`; [`open`] is the one place that looks at the
//! database URL and picks the backend.

mod payment;
pub mod sql;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use idem::inbox::{Delivery, EventId};
use idem::keys::KeyStore;
use idem::prelude::*;
use idem::sqlx::history;
use idem::sqlx::inbox::{Inbox, InboxBackend, InboxHandler};
use idem::sqlx::keys::{KeyBackend, SqlKeyStore};
use idem::sqlx::{insert_once, BusinessKey, HandlerError, Insert, InsertBackend, TransitionExt};
use sqlx::mysql::{MySql, MySqlConnectOptions};
use sqlx::pool::PoolOptions;
use sqlx::postgres::{PgConnectOptions, Postgres};
use sqlx::sqlite::{Sqlite, SqliteConnectOptions, SqliteJournalMode};
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Pool, Type};

use crate::invoice::{HistoryEntry, Invoice, InvoiceStatus, NewInvoice, Payment};
pub use payment::{EventError, PayFromEvent, PaymentSource, RecordPayment};
use sql::Queries;

/// What can go wrong below the HTTP layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL names no backend this service runs on.
    #[error("unsupported database URL `{0}`: use sqlite://FILE, postgres://... or mysql://...")]
    UnsupportedUrl(String),
    /// A database error.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// An error reported by idem (including transient conflicts it gave up
    /// retrying, and stored states it does not know).
    #[error(transparent)]
    Idem(#[from] idem::sqlx::Error),
}

impl From<HandlerError<sqlx::Error>> for StoreError {
    fn from(error: HandlerError<sqlx::Error>) -> Self {
        match error {
            HandlerError::Handler(e) => StoreError::Database(e),
            HandlerError::Idem(e) => StoreError::Idem(e),
        }
    }
}

/// The data the HTTP handlers need, whatever the backend.
#[async_trait]
pub trait Repository: Send + Sync {
    /// The backend's name (`sqlite`, `postgres`, `mysql`).
    fn backend(&self) -> &'static str;

    /// Creates the app's tables, the invoice history table and idem's
    /// tables (idempotency keys, inbox) if they do not exist; safe from
    /// instances starting together.
    async fn install(&self) -> Result<(), StoreError>;

    /// Inserts a draft invoice for the request `key` of `client`, once:
    /// the same request again returns the invoice it created, with
    /// [`Created::Existing`].
    async fn create_invoice(
        &self,
        client: &str,
        key: &str,
        new: &NewInvoice,
    ) -> Result<Created, StoreError>;

    /// Reads an invoice.
    async fn invoice(&self, id: i64) -> Result<Option<Invoice>, StoreError>;

    /// Applies a transition that has no side effect (`issue`, `void`,
    /// `refund`).
    async fn apply(
        &self,
        transition: &'static Transition<InvoiceStatus>,
        id: i64,
    ) -> Result<Outcome<InvoiceStatus>, StoreError>;

    /// Applies `pay` and, only when this call moved the invoice, records
    /// the payment in the same transaction.
    async fn pay(
        &self,
        id: i64,
        payment: &RecordPayment,
    ) -> Result<Outcome<InvoiceStatus>, StoreError>;

    /// Runs `pay` for one delivery of a `payment.received` event, through
    /// the `payments` consumer's inbox: the marker, the transition and the
    /// payment commit together.
    async fn pay_from_event(
        &self,
        event_id: &EventId,
        pay: &PayFromEvent,
    ) -> Result<Delivery<Outcome<InvoiceStatus>>, EventError>;

    /// Deletes the `payments` consumer's inbox markers older than its
    /// window (24 h); returns how many.
    async fn purge_inbox(&self) -> Result<u64, StoreError>;

    /// An invoice's payments, oldest first.
    async fn payments(&self, id: i64) -> Result<Vec<Payment>, StoreError>;

    /// An invoice's applied transitions, oldest first.
    async fn history(&self, id: i64) -> Result<Vec<HistoryEntry>, StoreError>;
}

/// A backend the app runs on: idem's backend (with its key store, inbox
/// and idempotent inserts) plus the app's SQL for it.
pub trait AppBackend: KeyBackend + InboxBackend + InsertBackend {
    /// The app's statements in this backend's dialect.
    const QUERIES: &'static Queries;
}

impl AppBackend for Sqlite {
    const QUERIES: &'static Queries = &sql::SQLITE;
}

impl AppBackend for Postgres {
    const QUERIES: &'static Queries = &sql::POSTGRES;
}

impl AppBackend for MySql {
    const QUERIES: &'static Queries = &sql::MYSQL;
}

/// What [`Repository::create_invoice`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// This call inserted the invoice.
    New(Invoice),
    /// The request had created this invoice before.
    Existing(Invoice),
}

/// The inbox consumer that takes payments from `POST /events`.
pub const PAYMENTS_CONSUMER: &str = "payments";

/// The repository on one backend.
pub struct SqlStore<B: AppBackend> {
    pool: Pool<B>,
    inbox: Inbox<B>,
}

impl<B: AppBackend> SqlStore<B> {
    /// A repository on `pool`.
    pub fn new(pool: Pool<B>) -> Result<Self, StoreError> {
        Ok(SqlStore {
            inbox: Inbox::new(pool.clone(), PAYMENTS_CONSUMER)?,
            pool,
        })
    }
}

type InvoiceRow = (i64, String, i64, String, String, Option<String>);

fn invoice_from((id, customer, amount_cents, currency, status, paid_at): InvoiceRow) -> Invoice {
    Invoice {
        id,
        customer,
        amount_cents,
        currency,
        status,
        paid_at,
    }
}

#[async_trait]
impl<B> Repository for SqlStore<B>
where
    B: AppBackend,
    for<'c> &'c mut B::Connection: Executor<'c, Database = B>,
    for<'q> B::Arguments<'q>: IntoArguments<'q, B>,
    for<'q> i64: Encode<'q, B> + Decode<'q, B> + Type<B>,
    for<'q> String: Encode<'q, B> + Decode<'q, B> + Type<B>,
    usize: ColumnIndex<B::Row>,
    i64: idem::sqlx::Key<B>,
    RecordPayment: idem::sqlx::TransitionHandler<InvoiceStatus, B, i64, Error = sqlx::Error>,
    PayFromEvent: InboxHandler<B, Output = Outcome<InvoiceStatus>, Error = EventError>,
{
    fn backend(&self) -> &'static str {
        B::DIALECT.name()
    }

    async fn install(&self) -> Result<(), StoreError> {
        // Each in one transaction that concurrent installs (instances
        // starting together) wait for, rather than race.
        idem::sqlx::install_sql(&self.pool, B::QUERIES.schema).await?;
        history::install::<InvoiceStatus, B>(&self.pool).await?;
        idem::sqlx::install(&self.pool).await?;
        Ok(())
    }

    async fn create_invoice(
        &self,
        client: &str,
        key: &str,
        new: &NewInvoice,
    ) -> Result<Created, StoreError> {
        let insert = sqlx::query(B::QUERIES.insert_invoice)
            .bind(client.to_owned())
            .bind(key.to_owned())
            .bind(new.customer.trim().to_owned())
            .bind(new.amount_cents)
            .bind(new.currency.clone())
            .bind(InvoiceStatus::initial().as_str().to_owned());
        // The unique (client_id, request_key) makes the insert itself
        // idempotent, beyond the key store's record: a request whose key
        // record is gone (purged, or its lease taken over after a crash)
        // still finds the invoice it created.
        let request = BusinessKey::new("invoices", ["client_id", "request_key"])?;
        let inserted = insert_once(&self.pool, &request, insert).await?;
        let row: InvoiceRow = sqlx::query_as(B::QUERIES.select_invoice_by_request)
            .bind(client.to_owned())
            .bind(key.to_owned())
            .fetch_one(&self.pool)
            .await?;
        let invoice = invoice_from(row);
        Ok(match inserted {
            Insert::Inserted(_) => Created::New(invoice),
            Insert::AlreadyExists => Created::Existing(invoice),
        })
    }

    async fn invoice(&self, id: i64) -> Result<Option<Invoice>, StoreError> {
        let row: Option<InvoiceRow> = sqlx::query_as(B::QUERIES.select_invoice)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(invoice_from))
    }

    async fn apply(
        &self,
        transition: &'static Transition<InvoiceStatus>,
        id: i64,
    ) -> Result<Outcome<InvoiceStatus>, StoreError> {
        Ok(transition.apply(&self.pool, id).await?)
    }

    async fn pay(
        &self,
        id: i64,
        payment: &RecordPayment,
    ) -> Result<Outcome<InvoiceStatus>, StoreError> {
        Ok(InvoiceStatus::pay()
            .apply_with(&self.pool, id, payment)
            .await?)
    }

    async fn pay_from_event(
        &self,
        event_id: &EventId,
        pay: &PayFromEvent,
    ) -> Result<Delivery<Outcome<InvoiceStatus>>, EventError> {
        self.inbox
            .process(event_id, pay)
            .await
            .map_err(|e| match e {
                HandlerError::Handler(e) => e,
                HandlerError::Idem(e) => EventError::Idem(e),
            })
    }

    async fn purge_inbox(&self) -> Result<u64, StoreError> {
        Ok(self.inbox.purge().await?)
    }

    async fn payments(&self, id: i64) -> Result<Vec<Payment>, StoreError> {
        let rows: Vec<(i64, i64, i64, String, Option<String>)> =
            sqlx::query_as(B::QUERIES.select_payments)
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, invoice_id, amount_cents, source, reference)| Payment {
                    id,
                    invoice_id,
                    amount_cents,
                    source,
                    reference,
                },
            )
            .collect())
    }

    async fn history(&self, id: i64) -> Result<Vec<HistoryEntry>, StoreError> {
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(B::QUERIES.select_history)
            .bind(id.to_string())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(transition, from, to, at)| HistoryEntry {
                transition,
                from,
                to,
                at,
            })
            .collect())
    }
}

/// How the server connects.
#[derive(Debug, Clone)]
pub struct Connect {
    /// `sqlite://FILE`, `postgres://...` or `mysql://...`.
    pub url: String,
    /// The pool's size.
    pub max_connections: u32,
}

/// The idempotency-key store the HTTP layer uses, whatever the backend.
pub type Keys = Arc<dyn KeyStore<Error = idem::sqlx::Error>>;

/// Everything the server needs from the database.
pub struct Services {
    /// The app's data.
    pub repo: Arc<dyn Repository>,
    /// The idempotency keys of `POST` requests.
    pub keys: Keys,
}

impl Services {
    async fn install<B>(pool: Pool<B>) -> Result<Self, StoreError>
    where
        B: AppBackend,
        SqlStore<B>: Repository,
    {
        let repo = SqlStore::new(pool.clone())?;
        repo.install().await?;
        Ok(Services {
            repo: Arc::new(repo),
            keys: Arc::new(SqlKeyStore::new(pool)),
        })
    }
}

/// Opens the pool the URL names (creating the SQLite file if needed),
/// installs every table idempotently, and returns the services on it.
/// The only place that dispatches on the backend.
pub async fn open(connect: &Connect) -> Result<Services, StoreError> {
    let url = connect.url.as_str();
    let scheme = url.split(':').next().unwrap_or_default();
    match scheme {
        "sqlite" => {
            // One writer at a time: WAL lets readers run beside it, and the
            // busy timeout makes writers queue instead of failing.
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(30));
            let pool = pool_options::<Sqlite>(connect)
                .connect_with(options)
                .await?;
            Services::install(pool).await
        }
        "postgres" | "postgresql" => {
            let options = PgConnectOptions::from_str(url)?;
            let pool = pool_options::<Postgres>(connect)
                .connect_with(options)
                .await?;
            Services::install(pool).await
        }
        "mysql" | "mariadb" => {
            let options = MySqlConnectOptions::from_str(&url.replacen("mariadb:", "mysql:", 1))?;
            let pool = pool_options::<MySql>(connect).connect_with(options).await?;
            Services::install(pool).await
        }
        _ => Err(StoreError::UnsupportedUrl(url.to_owned())),
    }
}

/// No hidden ping before each acquire (sqlx's default): it would add a
/// round trip to every request.
fn pool_options<B: sqlx::Database>(connect: &Connect) -> PoolOptions<B> {
    PoolOptions::<B>::new()
        .max_connections(connect.max_connections)
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_secs(30))
}
