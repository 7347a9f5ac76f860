//! The store's statements on MySQL/MariaDB and SQLite, written once and
//! expanded for each backend's [`KeyBackend`] impl: the backends' query
//! results and executors are concrete types, so a macro keeps one body
//! instead of a wall of generic bounds. PostgreSQL's are in
//! `keys/postgres.rs`. The claim's loop ([`claim`]) and the store itself
//! ([`KeyStore`], `install`, `run_once`) are written once, generic over
//! [`ClaimStatements`] and [`KeyBackend`].

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use idem_core::keys::{
    Claim, Completion, Fingerprint, IdempotencyKey, KeyStore, Lease, Scope, StoredResponse,
};

use super::{KeyBackend, Once, SqlKeyStore, Stale};
use crate::purge::in_chunks;
use crate::retry::{retry_transient, run_transaction, Failure};
use crate::schema::install_scripts;
use crate::{Backend, Error, ErrorKind, HandlerError, Protocol};

/// How many times a claim re-runs its statements when the record vanished
/// or its lease ran out between them, before it answers "in progress".
const MAX_CLAIM_ROUNDS: u32 = 8;

/// Longest duration sent to the database (a century, in microseconds), so
/// `now + lease` never overflows a timestamp type.
const MAX_MICROS: i64 = 100 * 365 * 24 * 3600 * 1_000_000;

pub(super) fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).map_or(MAX_MICROS, |m| m.min(MAX_MICROS))
}

/// A fresh lease token: random, so a key released and claimed again never
/// gets a token an old holder still has.
fn new_token() -> i64 {
    rand::random()
}

/// A record as `read` returns it.
pub(super) type Row = (
    String,
    String,
    Option<i32>,
    Option<String>,
    Option<Vec<u8>>,
    Option<i64>,
);

/// What a claim's insert did.
pub(super) enum Inserted {
    /// A new record.
    New,
    /// An expired lease of this fingerprint, taken over.
    TakenOver,
    /// The key exists: the record, when the statement read it.
    Exists(Option<Row>),
}

/// What one `read` means for a claim.
enum Read {
    /// The record is gone (released or purged since): claim again.
    Vanished,
    /// A running record of this fingerprint whose lease is over.
    Expired,
    /// A definite answer.
    Answer(Claim),
}

fn interpret(row: Option<Row>, fingerprint: &Fingerprint) -> Result<Read, Error> {
    let Some((stored_fp, state, status, headers, body, micros_left)) = row else {
        return Ok(Read::Vanished);
    };
    if stored_fp != fingerprint.to_hex() {
        return Ok(Read::Answer(Claim::KeyReused));
    }
    if state == "done" {
        return decode_response(status, headers, body).map(|r| Read::Answer(Claim::Replay(r)));
    }
    match micros_left {
        Some(left) if left > 0 => Ok(Read::Answer(Claim::InProgress {
            retry_after: Duration::from_micros(left as u64),
        })),
        _ => Ok(Read::Expired),
    }
}

fn decode_error(message: String) -> Error {
    Error::Database(sqlx::Error::Decode(message.into()))
}

fn decode_response(
    status: Option<i32>,
    headers: Option<String>,
    body: Option<Vec<u8>>,
) -> Result<StoredResponse, Error> {
    let status = status
        .and_then(|s| u16::try_from(s).ok())
        .ok_or_else(|| decode_error(format!("idem_keys.status {status:?} is no status code")))?;
    let headers = serde_json::from_str(headers.as_deref().unwrap_or("[]"))
        .map_err(|e| decode_error(format!("idem_keys.headers is not the JSON idem wrote: {e}")))?;
    Ok(StoredResponse {
        status,
        headers,
        body: body.unwrap_or_default(),
    })
}

pub(super) fn encode_headers(response: &StoredResponse) -> String {
    serde_json::to_string(&response.headers).expect("a list of strings and bytes serializes")
}

/// The insert's answer for the `attempt` it returned: 1 is a new record,
/// more is a lease taken over.
pub(super) fn attempted(attempt: i32) -> Inserted {
    if attempt > 1 {
        Inserted::TakenOver
    } else {
        Inserted::New
    }
}

/// The arguments of a claim.
pub(super) struct ClaimArgs<'a> {
    pub scope: &'a Scope,
    pub key: &'a IdempotencyKey,
    pub fingerprint: &'a Fingerprint,
    pub lease: Duration,
    /// How the statements go to PostgreSQL.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub protocol: Protocol,
}

impl ClaimArgs<'_> {
    fn lease(&self, token: i64) -> Lease {
        Lease::new(self.scope.clone(), self.key.clone(), token)
    }
}

/// The statements a claim is made of on one backend; the claim itself
/// ([`claim`]) is written once.
pub(super) trait ClaimStatements {
    /// The backend's connection.
    type Conn: Send;

    /// Whether `insert` also takes over an expired lease of the same
    /// fingerprint (PostgreSQL and SQLite); else `take_over` does, after
    /// `read` saw the lease expired (MySQL).
    const INSERT_TAKES_OVER: bool;

    /// Inserts the record (or takes over an expired lease, see
    /// `INSERT_TAKES_OVER`); on PostgreSQL the same statement also reads
    /// the record it collided with.
    fn insert<'c>(
        conn: &'c mut Self::Conn,
        args: &'c ClaimArgs<'c>,
        token: i64,
    ) -> BoxFuture<'c, Result<Inserted, Error>>;

    /// Reads the record.
    fn read<'c>(
        conn: &'c mut Self::Conn,
        args: &'c ClaimArgs<'c>,
    ) -> BoxFuture<'c, Result<Option<Row>, Error>>;

    /// Takes over an expired lease of this fingerprint (MySQL); `true`
    /// when it did.
    fn take_over<'c>(
        conn: &'c mut Self::Conn,
        args: &'c ClaimArgs<'c>,
        token: i64,
    ) -> BoxFuture<'c, Result<bool, Error>>;
}

/// [`KeyBackend::claim_on`] with the statements of `C`.
pub(super) fn claim_with<'c, C: ClaimStatements>(
    conn: &'c mut C::Conn,
    scope: &'c Scope,
    key: &'c IdempotencyKey,
    fingerprint: &'c Fingerprint,
    lease: Duration,
    protocol: Protocol,
) -> BoxFuture<'c, Result<Claim, Error>> {
    Box::pin(async move {
        let args = ClaimArgs {
            scope,
            key,
            fingerprint,
            lease,
            protocol,
        };
        claim::<C>(conn, &args).await
    })
}

/// Claims `args.key` in `args.scope` with the statements of `C`.
async fn claim<C: ClaimStatements>(
    conn: &mut C::Conn,
    args: &ClaimArgs<'_>,
) -> Result<Claim, Error> {
    for _ in 0..MAX_CLAIM_ROUNDS {
        let token = new_token();
        let seen = match C::insert(conn, args, token).await? {
            Inserted::New => return Ok(Claim::New(args.lease(token))),
            Inserted::TakenOver => return Ok(Claim::Recovered(args.lease(token))),
            Inserted::Exists(seen) => seen,
        };
        let row = match seen {
            Some(row) => Some(row),
            None => C::read(conn, args).await?,
        };
        match interpret(row, args.fingerprint)? {
            Read::Answer(claim) => return Ok(claim),
            // Gone since the insert: insert again.
            Read::Vanished => {}
            // The next insert takes it over.
            Read::Expired if C::INSERT_TAKES_OVER => {}
            Read::Expired => {
                if C::take_over(conn, args, token).await? {
                    return Ok(Claim::Recovered(args.lease(token)));
                }
            }
        }
    }
    // Other requests keep releasing and re-claiming this key between our
    // statements: it is busy, so say so.
    Ok(Claim::InProgress {
        retry_after: Duration::from_secs(1),
    })
}

/// A completion's answer for the number of records it updated.
pub(super) fn completion(updated: u64) -> Completion {
    if updated == 1 {
        Completion::Stored
    } else {
        Completion::LeaseLost
    }
}

/// The key store on MySQL/MariaDB and SQLite: its statements through
/// sqlx, the same body for both (PostgreSQL's, which check tags and may
/// use the simple protocol, are in `keys/postgres.rs`).
macro_rules! sql_key_store {
    ($feature:literal, $db:ty) => {
        #[cfg(feature = $feature)]
        const _: () = {
            use sqlx::Database;

            use super::sql::{for_dialect, KeySql};
            use crate::backend::db_error;
            use crate::upgrade::MYSQL_NOT_VARBINARY;
            use crate::Backend;

            type Conn = <$db as Database>::Connection;

            const SQL: &KeySql = for_dialect(<$db as Backend>::DIALECT);

            struct Statements;

            impl ClaimStatements for Statements {
                type Conn = Conn;

                const INSERT_TAKES_OVER: bool = SQL.takeover.is_empty();

                fn insert<'c>(
                    conn: &'c mut Conn,
                    args: &'c ClaimArgs<'c>,
                    token: i64,
                ) -> BoxFuture<'c, Result<Inserted, Error>> {
                    Box::pin(
                        async move { insert(conn, args, token).await.map_err(db_error::<$db>) },
                    )
                }

                fn read<'c>(
                    conn: &'c mut Conn,
                    args: &'c ClaimArgs<'c>,
                ) -> BoxFuture<'c, Result<Option<Row>, Error>> {
                    Box::pin(async move {
                        sqlx::query_as(SQL.read)
                            .bind(args.scope.as_str())
                            .bind(args.key.as_str())
                            .fetch_optional(&mut *conn)
                            .await
                            .map_err(db_error::<$db>)
                    })
                }

                /// MySQL: run only after a read saw the lease expired, so
                /// duplicates that will replay or wait never ask for the
                /// row's exclusive lock (in a transaction, two of them
                /// upgrading their shared locks would deadlock).
                fn take_over<'c>(
                    conn: &'c mut Conn,
                    args: &'c ClaimArgs<'c>,
                    token: i64,
                ) -> BoxFuture<'c, Result<bool, Error>> {
                    Box::pin(async move {
                        let taken = sqlx::query(SQL.takeover)
                            .bind(token)
                            .bind(micros(args.lease))
                            .bind(args.scope.as_str())
                            .bind(args.key.as_str())
                            .bind(args.fingerprint.to_hex())
                            .execute(&mut *conn)
                            .await
                            .map_err(db_error::<$db>)?
                            .rows_affected();
                        Ok(taken == 1)
                    })
                }
            }

            /// Inserts the record. On SQLite the same statement takes
            /// over an expired lease of this fingerprint.
            async fn insert(
                conn: &mut Conn,
                args: &ClaimArgs<'_>,
                token: i64,
            ) -> Result<Inserted, sqlx::Error> {
                let fingerprint = args.fingerprint.to_hex();
                let lease = micros(args.lease);
                if SQL.takeover.is_empty() {
                    let attempt: Option<i32> = sqlx::query_scalar(SQL.claim)
                        .bind(args.scope.as_str())
                        .bind(args.key.as_str())
                        .bind(fingerprint)
                        .bind(token)
                        .bind(lease)
                        .fetch_optional(&mut *conn)
                        .await?;
                    return Ok(attempt.map_or(Inserted::Exists(None), attempted));
                }
                let inserted = sqlx::query(SQL.claim)
                    .bind(args.scope.as_str())
                    .bind(args.key.as_str())
                    .bind(fingerprint)
                    .bind(token)
                    .bind(lease)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                Ok(if inserted == 1 {
                    Inserted::New
                } else {
                    Inserted::Exists(None)
                })
            }

            impl KeyBackend for $db {
                fn claim_on<'c>(
                    conn: &'c mut Conn,
                    scope: &'c Scope,
                    key: &'c IdempotencyKey,
                    fingerprint: &'c Fingerprint,
                    lease: Duration,
                    protocol: Protocol,
                ) -> BoxFuture<'c, Result<Claim, Error>> {
                    claim_with::<Statements>(conn, scope, key, fingerprint, lease, protocol)
                }

                fn complete_on<'c>(
                    conn: &'c mut Conn,
                    lease: &'c Lease,
                    response: &'c StoredResponse,
                    _: Protocol,
                ) -> BoxFuture<'c, Result<Completion, Error>> {
                    Box::pin(async move {
                        let done = sqlx::query(SQL.complete)
                            .bind(i32::from(response.status))
                            .bind(encode_headers(response))
                            .bind(response.body.as_slice())
                            .bind(lease.scope().as_str())
                            .bind(lease.key().as_str())
                            .bind(lease.token())
                            .execute(&mut *conn)
                            .await
                            .map_err(db_error::<$db>)?
                            .rows_affected();
                        Ok(completion(done))
                    })
                }

                fn release_on<'c>(
                    conn: &'c mut Conn,
                    lease: &'c Lease,
                    _: Protocol,
                ) -> BoxFuture<'c, Result<(), Error>> {
                    Box::pin(async move {
                        sqlx::query(SQL.release)
                            .bind(lease.scope().as_str())
                            .bind(lease.key().as_str())
                            .bind(lease.token())
                            .execute(conn)
                            .await
                            .map_err(db_error::<$db>)?;
                        Ok(())
                    })
                }

                fn purge_chunk_on(
                    conn: &mut Conn,
                    stale: Stale,
                    retention: Duration,
                    limit: i64,
                    _: Protocol,
                ) -> BoxFuture<'_, Result<u64, Error>> {
                    let statement = match stale {
                        Stale::Completed => SQL.purge_completed,
                        Stale::Abandoned => SQL.purge_abandoned,
                    };
                    let retention = micros(retention);
                    Box::pin(async move {
                        let purged = sqlx::query(statement)
                            .bind(retention)
                            .bind(limit)
                            .execute(conn)
                            .await
                            .map_err(db_error::<$db>)?
                            .rows_affected();
                        Ok(purged)
                    })
                }

                fn check_identifiers_on(conn: &mut Conn) -> BoxFuture<'_, Result<(), Error>> {
                    Box::pin(async move {
                        let Some(identifiers) = SQL.identifiers else {
                            return Ok(());
                        };
                        let outdated: Vec<(String, String)> = sqlx::query_as(MYSQL_NOT_VARBINARY)
                            .bind(identifiers.table)
                            .bind(identifiers.names())
                            .fetch_all(conn)
                            .await
                            .map_err(db_error::<$db>)?;
                        identifiers.check(&outdated)
                    })
                }
            }
        };
    };
}

sql_key_store!("mysql", sqlx::MySql);
sql_key_store!("sqlite", sqlx::Sqlite);

#[async_trait]
impl<B: KeyBackend> KeyStore for SqlKeyStore<B> {
    type Error = Error;

    async fn claim(
        &self,
        scope: &Scope,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, Error> {
        retry_transient(&self.retry, || async {
            let mut conn = self.pool.acquire().await.map_err(Error::Database)?;
            B::claim_on(&mut conn, scope, key, fingerprint, lease, self.protocol()).await
        })
        .await
    }

    async fn complete(
        &self,
        lease: &Lease,
        response: &StoredResponse,
    ) -> Result<Completion, Error> {
        retry_transient(&self.retry, || async {
            let mut conn = self.pool.acquire().await.map_err(Error::Database)?;
            B::complete_on(&mut conn, lease, response, self.protocol()).await
        })
        .await
    }

    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        retry_transient(&self.retry, || async {
            let mut conn = self.pool.acquire().await.map_err(Error::Database)?;
            B::release_on(&mut conn, lease, self.protocol()).await
        })
        .await
    }

    /// Deletes completed records older than `retention` and running
    /// records whose lease ended more than `retention` ago, by the
    /// database's clock, in chunks of at most the store's purge chunk
    /// ([`SqlKeyStore::with_purge_chunk`]), each its own statement on a
    /// connection taken from the pool for it; returns how many it deleted.
    /// Concurrent purges are safe: each record is deleted and counted by
    /// one of them. A chunk that hits a transient conflict runs again (the
    /// store's retry policy); on an error, the chunks before it stay
    /// deleted.
    async fn purge(&self, retention: Duration) -> Result<u64, Error> {
        let mut purged = 0;
        for stale in [Stale::Completed, Stale::Abandoned] {
            purged += in_chunks(self.purge_chunk, |limit| {
                retry_transient(&self.retry, move || async move {
                    let mut conn = self.pool.acquire().await.map_err(Error::Database)?;
                    B::purge_chunk_on(&mut conn, stale, retention, limit, self.protocol()).await
                })
            })
            .await?;
        }
        Ok(purged)
    }
}

impl<B: KeyBackend> SqlKeyStore<B> {
    /// Creates the `idem_keys` table and its indexes unless they exist
    /// ([`schema`](super::schema)). Safe to run at every start, from any
    /// number of processes at once: on PostgreSQL the statements run in
    /// one transaction behind an advisory lock, so two installs never race
    /// on the catalog. [`crate::install`] installs the inbox's table too.
    ///
    /// On MySQL/MariaDB it then checks that the table's identifier columns
    /// (`scope`, `idem_key`, `fingerprint`) are `VARBINARY`: a table an
    /// earlier version of idem created keeps them as text, whose
    /// collations ignore trailing spaces, and install fails with
    /// [`Error::OutdatedSchema`] naming the `ALTER TABLE` to run (see
    /// [the module docs](super#upgrading-from-text-identifier-columns-on-mysqlmariadb)).
    pub async fn install(&self) -> Result<(), Error> {
        install_scripts(&self.pool, &[super::schema(B::DIALECT)]).await?;
        self.check_identifiers().await
    }

    /// Fails with [`Error::OutdatedSchema`] when the table's identifier
    /// columns do not compare byte for byte (a MySQL/MariaDB table of an
    /// earlier version); `Ok` on PostgreSQL and SQLite.
    pub(crate) async fn check_identifiers(&self) -> Result<(), Error> {
        let mut conn = self.pool.acquire().await.map_err(Error::Database)?;
        B::check_identifiers_on(&mut conn).await
    }

    /// The transactional mode: in ONE transaction, claims
    /// `(scope, key)`, runs `work` on the transaction's connection and stores
    /// the response it returns, then commits — so work that only
    /// writes to this database runs exactly once, with no lease.
    ///
    /// A concurrent call with the same key waits for this
    /// transaction (on the key's row, or on SQLite's single
    /// writer) and then gets [`Once::Replayed`]. If `work` fails,
    /// everything rolls back, the key included, and the error is
    /// returned as [`HandlerError::Handler`]: a retry runs again.
    /// The same key with another fingerprint is
    /// `idem_core::Error::KeyReused`; a key held by a live lease
    /// of the leased mode is `idem_core::Error::InProgress`.
    ///
    /// On a serialization failure, deadlock or busy database the
    /// whole transaction runs again (up to the store's
    /// [`RetryPolicy`](crate::RetryPolicy)), so `work` is `Fn`. That
    /// includes conflicts of `work`'s own statements when its error
    /// type is `sqlx::Error` (a `sqlx::Error` the backend classifies
    /// as transient); with another error type, map such conflicts
    /// into your error and they end the call.
    pub async fn run_once<E, F>(
        &self,
        scope: &Scope,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        work: F,
    ) -> Result<Once, HandlerError<E>>
    where
        E: Send + 'static,
        F: for<'t> Fn(&'t mut B::Connection) -> BoxFuture<'t, Result<StoredResponse, E>>
            + Send
            + Sync
            + 'static,
    {
        // Each attempt's future owns what it uses: the runner's
        // closure hands out futures for any transaction lifetime.
        let shared = Arc::new((work, scope.clone(), key.clone(), *fingerprint));
        let protocol = self.protocol();
        run_transaction(&self.pool, &self.retry, move |tx| {
            let shared = Arc::clone(&shared);
            Box::pin(async move {
                let (work, scope, key, fingerprint) = &*shared;
                let lease = idem_core::keys::DEFAULT_LEASE;
                let claim = B::claim_on(tx, scope, key, fingerprint, lease, protocol).await?;
                let lease = match claim {
                    Claim::New(lease) | Claim::Recovered(lease) => lease,
                    Claim::Replay(response) => return Ok(Once::Replayed(response)),
                    Claim::InProgress { retry_after } => {
                        return Err(Failure::Idem(Error::Core(idem_core::Error::InProgress {
                            retry_after,
                        })))
                    }
                    Claim::KeyReused => {
                        return Err(Failure::Idem(Error::Core(idem_core::Error::KeyReused)))
                    }
                };
                let response = work(tx).await.map_err(work_failure::<B, E>)?;
                match B::complete_on(tx, &lease, &response, protocol).await? {
                    Completion::Stored => Ok(Once::Ran(response)),
                    Completion::LeaseLost => {
                        Err(Failure::Idem(Error::Core(idem_core::Error::LeaseLost)))
                    }
                }
            })
        })
        .await
    }
}

/// A work error of [`SqlKeyStore::run_once`]: a `sqlx::Error` that is a
/// transient conflict (serialization failure, deadlock, busy database) of
/// the work's own statements runs the whole transaction again; anything
/// else is the work's failure, returned as it is.
fn work_failure<B: Backend, E: 'static>(error: E) -> Failure<E> {
    let boxed: Box<dyn Any> = Box::new(error);
    let boxed = match boxed.downcast::<sqlx::Error>() {
        Ok(db) if B::error_kind(&db) == ErrorKind::Transient => return Failure::Db(*db),
        Ok(db) => db as Box<dyn Any>,
        Err(other) => other,
    };
    match boxed.downcast::<E>() {
        Ok(error) => Failure::Handler(*error),
        Err(_) => unreachable!("the box holds the work's own error"),
    }
}
