//! The key store's statements on PostgreSQL: each answers with one row
//! whose first column is its tag, checked on the way back, and goes out
//! as a prepared statement or with the simple query protocol as the
//! store's [`Protocol`] says (see [`crate::postgres`]).

use std::time::Duration;

use futures::future::BoxFuture;
use idem_core::keys::{
    Claim, Completion, Fingerprint, IdempotencyKey, Lease, Scope, StoredResponse,
};
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::Postgres;

use super::sql::{for_dialect, KeySql, PG_TAGS};
use super::store::{
    attempted, claim_with, completion, encode_headers, micros, ClaimArgs, ClaimStatements,
    Inserted, Row,
};
use super::{KeyBackend, Stale};
use crate::postgres::literal::Param;
use crate::postgres::statement::{fetch, get};
use crate::{Backend, Error, Protocol};

const SQL: &KeySql = for_dialect(<Postgres as Backend>::DIALECT);

/// A record in `read`'s columns from column `at` of `row`, or `None`
/// when the row holds none (its fingerprint, a `NOT NULL` column, is
/// NULL).
fn record(row: &PgRow, at: usize) -> Result<Option<Row>, Error> {
    let fingerprint: Option<String> = get(row, at)?;
    let Some(fingerprint) = fingerprint else {
        return Ok(None);
    };
    let state: Option<String> = get(row, at + 1)?;
    let state = state.ok_or_else(|| {
        Error::Database(sqlx::Error::Decode(
            "idem_keys: a record without a state".into(),
        ))
    })?;
    Ok(Some((
        fingerprint,
        state,
        get(row, at + 2)?,
        get(row, at + 3)?,
        get(row, at + 4)?,
        get(row, at + 5)?,
    )))
}

/// The count a write answered with.
async fn counted(
    conn: &mut PgConnection,
    protocol: Protocol,
    sql: &'static str,
    tag: &'static str,
    params: &[Param<'_>],
) -> Result<u64, Error> {
    let rows = fetch(conn, protocol, sql, tag, params).await?;
    let count: i64 = get(&rows[0], 1)?;
    Ok(u64::try_from(count).unwrap_or_default())
}

fn scope(scope: &Scope) -> Param<'_> {
    Param::Text(scope.as_str(), "the scope")
}

fn key(key: &IdempotencyKey) -> Param<'_> {
    Param::Text(key.as_str(), "the idempotency key")
}

struct Statements;

impl ClaimStatements for Statements {
    type Conn = PgConnection;

    const INSERT_TAKES_OVER: bool = true;

    fn insert<'c>(
        conn: &'c mut PgConnection,
        args: &'c ClaimArgs<'c>,
        token: i64,
    ) -> BoxFuture<'c, Result<Inserted, Error>> {
        Box::pin(async move {
            let fingerprint = args.fingerprint.to_hex();
            let params = [
                scope(args.scope),
                key(args.key),
                Param::Text(&fingerprint, "the fingerprint"),
                Param::Int8(token),
                Param::Int8(micros(args.lease)),
            ];
            let rows = fetch(conn, args.protocol, SQL.claim, PG_TAGS.claim, &params).await?;
            let attempt: Option<i32> = get(&rows[0], 1)?;
            Ok(match attempt {
                Some(attempt) => attempted(attempt),
                None => Inserted::Exists(record(&rows[0], 2)?),
            })
        })
    }

    fn read<'c>(
        conn: &'c mut PgConnection,
        args: &'c ClaimArgs<'c>,
    ) -> BoxFuture<'c, Result<Option<Row>, Error>> {
        Box::pin(async move {
            let params = [scope(args.scope), key(args.key)];
            let rows = fetch(conn, args.protocol, SQL.read, PG_TAGS.read, &params).await?;
            record(&rows[0], 1)
        })
    }

    fn take_over<'c>(
        _: &'c mut PgConnection,
        _: &'c ClaimArgs<'c>,
        _: i64,
    ) -> BoxFuture<'c, Result<bool, Error>> {
        // The claim's upsert takes an expired lease over itself.
        Box::pin(async { Ok(false) })
    }
}

impl KeyBackend for Postgres {
    fn claim_on<'c>(
        conn: &'c mut PgConnection,
        scope: &'c Scope,
        key: &'c IdempotencyKey,
        fingerprint: &'c Fingerprint,
        lease: Duration,
        protocol: Protocol,
    ) -> BoxFuture<'c, Result<Claim, Error>> {
        claim_with::<Statements>(conn, scope, key, fingerprint, lease, protocol)
    }

    fn complete_on<'c>(
        conn: &'c mut PgConnection,
        lease: &'c Lease,
        response: &'c StoredResponse,
        protocol: Protocol,
    ) -> BoxFuture<'c, Result<Completion, Error>> {
        Box::pin(async move {
            let headers = encode_headers(response);
            let params = [
                Param::Int4(i32::from(response.status)),
                Param::Text(&headers, "the stored headers"),
                Param::Bytea(&response.body),
                scope(lease.scope()),
                key(lease.key()),
                Param::Int8(lease.token()),
            ];
            let done = counted(conn, protocol, SQL.complete, PG_TAGS.complete, &params).await?;
            Ok(completion(done))
        })
    }

    fn release_on<'c>(
        conn: &'c mut PgConnection,
        lease: &'c Lease,
        protocol: Protocol,
    ) -> BoxFuture<'c, Result<(), Error>> {
        Box::pin(async move {
            let params = [
                scope(lease.scope()),
                key(lease.key()),
                Param::Int8(lease.token()),
            ];
            counted(conn, protocol, SQL.release, PG_TAGS.release, &params).await?;
            Ok(())
        })
    }

    fn purge_chunk_on(
        conn: &mut PgConnection,
        stale: Stale,
        retention: Duration,
        limit: i64,
        protocol: Protocol,
    ) -> BoxFuture<'_, Result<u64, Error>> {
        let (sql, tag) = match stale {
            Stale::Completed => (SQL.purge_completed, PG_TAGS.purge_completed),
            Stale::Abandoned => (SQL.purge_abandoned, PG_TAGS.purge_abandoned),
        };
        Box::pin(async move {
            let params = [Param::Int8(micros(retention)), Param::Int8(limit)];
            counted(conn, protocol, sql, tag, &params).await
        })
    }

    fn check_identifiers_on(_: &mut PgConnection) -> BoxFuture<'_, Result<(), Error>> {
        // Deterministic collations: equality is byte equality.
        Box::pin(async { Ok(()) })
    }
}
