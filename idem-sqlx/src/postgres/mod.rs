//! PostgreSQL: how idem sends its statements, and the deployments it
//! supports.
//!
//! # Deployments
//!
//! | Between the service and PostgreSQL | Protocol | |
//! |---|---|---|
//! | nothing (a direct connection) | [`Protocol::Prepared`] (the default) or [`Protocol::Simple`] | supported |
//! | a pooler in session mode (PgBouncer `pool_mode = session`) | either | supported: a client keeps its server connection |
//! | a pooler in transaction mode (PgBouncer `pool_mode = transaction`, the transaction poolers of hosted PostgreSQL) | [`Protocol::Simple`] | supported |
//! | a pooler in transaction mode | [`Protocol::Prepared`] | **not supported**: idem refuses what it can tell is wrong, but cannot stop every misrouted statement |
//!
//! sqlx prepares every statement it sends under a name (`sqlx_s_3`) and
//! caches the name per connection. A pooler in transaction mode hands
//! each transaction, and each statement outside one, to whichever server
//! connection is free; there `sqlx_s_3` may not exist ("prepared statement
//! does not exist"), may be taken ("already exists"), or may be another
//! client's statement — which then runs, with this client's parameters.
//! With the issue's storm of 8 tasks paying invoices through PgBouncer
//! 1.18, a call of `pay` ran `issue`'s statement instead, and reported
//! `Applied { from: Draft, to: Paid }`. `statement_cache_capacity(0)` does
//! not help (sqlx then prepares an unnamed statement and binds it in a
//! second round trip, which the pooler may send elsewhere).
//!
//! With [`Protocol::Simple`] idem sends each of its statements as one
//! self-contained simple query (`sqlx::raw_sql`), its parameters written
//! as typed literals (`CAST(7 AS int8)`, `CAST(E'acme' AS text)`, UUIDs,
//! bytes as `decode('...', 'hex')`; see [`Protocol::Simple`]): transitions
//! (`apply`, the read after a no-op, `apply_many`, history rows), the key
//! store (claim, read, complete, release, purge), the inbox (markers and
//! purges), and installs (schemas and the advisory lock, which are simple
//! queries in both modes). `BEGIN`, `COMMIT` and savepoints are simple
//! queries in sqlx already.
//!
//! ```no_run
//! use idem_sqlx::postgres::{set_protocol, Protocol};
//!
//! # async fn start() -> Result<(), sqlx::Error> {
//! // At start-up, before the first statement: the service reaches
//! // PostgreSQL through PgBouncer in transaction mode.
//! set_protocol(Protocol::Simple);
//! let pool = sqlx::postgres::PgPoolOptions::new()
//!     .max_connections(8)
//!     .connect("postgres://app@pgbouncer:6432/app")
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! **Your own statements** behind such a pooler must not outlive their
//! transaction as named statements either. In a handler (inside the
//! transaction idem opened) `sqlx::query(...).persistent(false)` is safe:
//! the unnamed statement is parsed and bound within the transaction, on
//! its server connection. Outside a transaction use `sqlx::raw_sql`, or
//! pool sessions.
//!
//! # Misrouting is refused in the prepared mode
//!
//! Every statement idem sends to PostgreSQL returns, first, a tag naming
//! it (`idem:Invoice.pay:…:apply`), and always at least one row. An
//! answer with another tag, without a tag or without a row, and the
//! errors only a misrouted statement gives, are
//! [`Error::Misrouted`]: nothing in such an
//! answer is used, and a transaction idem owns (`apply_with`,
//! `apply_many`, the inbox, `run_once`) is rolled back, so nothing is
//! committed. An `Applied` outcome must also come from one of the
//! transition's source states. A statement sent outside a transaction
//! (`apply` on a pool) commits as it runs: when it was misrouted, the
//! other statement may have changed a row before idem sees the answer.
//! That is why the prepared mode is not supported behind a transaction
//! pooler.
//!
//! # Keys
//!
//! A key is cast to its family's type in the statement text
//! (`CAST($1 AS int8)`, `... AS text`, `... AS uuid`): every integer width
//! binds as `int8` and shares one statement, and a text or UUID key never
//! meets a statement sqlx cached for another family (sqlx keys its cache
//! by the text alone, with the parameter types of the first call). A key
//! whose family the column cannot be compared with is
//! [`Error::KeyType`].

pub(crate) mod literal;
pub(crate) mod statement;

use std::any::type_name;

use futures::future::BoxFuture;
use idem_core::{Dialect, DialectSql, Keyed, ManySql, Outcome, State, Transition};
use sqlx::postgres::PgConnection;
use sqlx::Postgres;

pub use crate::protocol::Protocol;

use self::literal::Param;
use self::statement::{fetch, get};
use crate::backend::{contended, state_of, MAX_ROUNDS};
use crate::key::{bind_key, repeats};
use crate::{Backend, Error, ErrorKind, Key, KeyValue};

/// Sets how idem sends its statements to PostgreSQL, for the whole
/// process: every transition, and every [`SqlKeyStore`] and [`Inbox`]
/// without an override of its own. A deployment property (is there a
/// pooler in transaction mode between the service and PostgreSQL?): call
/// it once at start-up, before the first statement. Changing it later
/// takes effect at each statement's next call.
///
/// [`SqlKeyStore`]: crate::keys::SqlKeyStore
/// [`Inbox`]: crate::inbox::Inbox
pub fn set_protocol(protocol: Protocol) {
    crate::protocol::set(protocol);
}

/// The protocol set with [`set_protocol`] ([`Protocol::Prepared`] until
/// then).
pub fn protocol() -> Protocol {
    crate::protocol::get()
}

impl Backend for Postgres {
    const DIALECT: Dialect = Dialect::Postgres;
    const BEGIN_WRITE: &'static str = "BEGIN";

    fn error_kind(error: &sqlx::Error) -> ErrorKind {
        let Some(db) = error.as_database_error() else {
            return ErrorKind::Other;
        };
        match db.code().as_deref() {
            // serialization_failure, deadlock_detected, lock_not_available
            Some("40001" | "40P01" | "55P03") => ErrorKind::Transient,
            Some("23505") => ErrorKind::UniqueViolation,
            _ => ErrorKind::Other,
        }
    }

    fn is_missing_savepoint(error: &sqlx::Error) -> bool {
        // invalid_savepoint_specification, no_active_sql_transaction
        let code = error.as_database_error().and_then(|db| db.code());
        matches!(code.as_deref(), Some("3B001" | "25P01"))
    }

    const REOPEN: &'static [&'static str] = &["BEGIN READ ONLY"];
    const ROLLBACK_NEEDS_TRANSACTION: bool = false;

    bind_key!();

    fn execute_plain<'c>(
        conn: &'c mut PgConnection,
        sql: &'c str,
    ) -> BoxFuture<'c, Result<(), sqlx::Error>> {
        Box::pin(async move {
            sqlx::Executor::execute(conn, sql).await?;
            Ok(())
        })
    }

    fn rows_affected(done: &sqlx::postgres::PgQueryResult) -> u64 {
        done.rows_affected()
    }

    fn apply_on<'c, S: State, K: Key<Self>>(
        conn: &'c mut PgConnection,
        transition: &'static Transition<S>,
        sql: &'static DialectSql,
        key: &'c K,
    ) -> BoxFuture<'c, Result<Outcome<S>, Error>> {
        Box::pin(apply(conn, transition, sql, key))
    }

    fn apply_many_on<'c, S: State, K: Key<Self>>(
        conn: &'c mut PgConnection,
        transition: &'static Transition<S>,
        sql: &'static DialectSql,
        keys: &'c [K],
    ) -> BoxFuture<'c, Result<Vec<Outcome<S>>, Error>> {
        Box::pin(apply_many(conn, transition, sql, keys))
    }
}

/// The tag of a statement compiled for PostgreSQL.
fn tag(statement: &Keyed) -> Result<&'static str, Error> {
    statement.tag.ok_or_else(|| {
        Error::Database(sqlx::Error::Protocol(
            "a PostgreSQL statement was compiled without its tag".to_owned(),
        ))
    })
}

/// Sends one of a transition's statements for `key`; PostgreSQL's "no
/// operator" error for the key is [`Error::KeyType`].
async fn send<S: State, K: Key<Postgres>>(
    conn: &mut PgConnection,
    transition: &'static Transition<S>,
    statement: &'static Keyed,
    param: Param<'_>,
    family: idem_core::KeyFamily,
) -> Result<Vec<sqlx::postgres::PgRow>, Error> {
    fetch(
        conn,
        crate::protocol::get(),
        statement.get(family),
        tag(statement)?,
        &[param],
    )
    .await
    .map_err(|error| key_type::<S, K>(error, transition, family))
}

/// PostgreSQL's name of the type a key of `family` is cast to, as its
/// error messages write it.
fn type_name_in_errors(family: idem_core::KeyFamily) -> &'static str {
    match family {
        idem_core::KeyFamily::Integer => "bigint",
        idem_core::KeyFamily::Text => "text",
        idem_core::KeyFamily::Uuid => "uuid",
    }
}

/// [`Error::KeyType`] for PostgreSQL's "operator does not exist: bigint =
/// text" (42883) on the key's comparison, whose right-hand side is the
/// key's type; any other error as it is.
fn key_type<S: State, K>(
    error: Error,
    transition: &'static Transition<S>,
    family: idem_core::KeyFamily,
) -> Error {
    let Error::Database(source) = error else {
        return error;
    };
    let is_key = source.as_database_error().is_some_and(|db| {
        db.code().as_deref() == Some("42883")
            && db.message().starts_with("operator does not exist")
            && db
                .message()
                .ends_with(&format!("= {}", type_name_in_errors(family)))
    });
    match (is_key, S::TABLE) {
        (true, Some(table)) => Error::KeyType {
            transition: transition.name(),
            table: table.name,
            column: table.key,
            key_type: type_name::<K>(),
            family,
            source,
        },
        _ => Error::Database(source),
    }
}

/// The outcome of a change the statement reports from `before`: it must
/// be one of the transition's sources, or the answer is another
/// statement's.
fn applied<S: State>(
    transition: &'static Transition<S>,
    before: Option<S>,
    tag: &'static str,
) -> Result<Outcome<S>, Error> {
    match before {
        Some(from) if transition.allows(from) => Ok(transition.applied_from(from)),
        other => Err(Error::Misrouted {
            expected: tag,
            found: format!("a change from {other:?}, which is not a source of the transition"),
        }),
    }
}

/// One statement reports the state the row had (`before`) and whether the
/// compare-and-set from exactly that state applied. Only when the row was
/// in a source state but the update did not apply (a concurrent
/// transaction changed it while the statement waited for the row lock,
/// under READ COMMITTED) does a second statement read the row again.
async fn apply<S: State, K: Key<Postgres>>(
    conn: &mut PgConnection,
    transition: &'static Transition<S>,
    sql: &'static DialectSql,
    key: &K,
) -> Result<Outcome<S>, Error> {
    let value = key.value();
    let family = value.family();
    for _ in 0..MAX_ROUNDS {
        let rows = send::<S, K>(conn, transition, &sql.apply, Param::Key(value), family).await?;
        let row = &rows[0];
        let (before, was_applied, found): (Option<String>, bool, bool) =
            (get(row, 1)?, get(row, 2)?, get(row, 3)?);
        let before = state_of(transition, found.then_some(before))?;
        if was_applied {
            return applied(transition, before, tag(&sql.apply)?);
        }
        if let Some(outcome) = transition.settled(before) {
            return Ok(outcome);
        }
        let rows = send::<S, K>(conn, transition, &sql.current, Param::Key(value), family).await?;
        let row = &rows[0];
        let (current, found): (Option<String>, bool) = (get(row, 1)?, get(row, 2)?);
        if let Some(outcome) = transition.settled(state_of(transition, found.then_some(current))?) {
            return Ok(outcome);
        }
    }
    Err(contended(transition))
}

/// The whole batch in one statement (keys bound as one array); a key whose
/// row changed under the statement is applied again on its own.
async fn apply_many<S: State, K: Key<Postgres>>(
    conn: &mut PgConnection,
    transition: &'static Transition<S>,
    sql: &'static DialectSql,
    keys: &[K],
) -> Result<Vec<Outcome<S>>, Error> {
    let Some(first) = keys.first() else {
        return Ok(Vec::new());
    };
    let ManySql::Whole(statement) = &sql.many else {
        return Err(Error::Database(sqlx::Error::Protocol(
            "a PostgreSQL batch was compiled in chunks".to_owned(),
        )));
    };
    let family = first.value().family();
    let values: Vec<KeyValue<'_>> = keys.iter().map(Key::value).collect();
    let rows = send::<S, K>(conn, transition, statement, Param::Keys(values), family).await?;
    let tag = tag(statement)?;
    if rows.len() != keys.len() {
        return Err(Error::Misrouted {
            expected: tag,
            found: format!("{} rows for {} keys", rows.len(), keys.len()),
        });
    }
    // Every stored value is parsed before any key is applied again on its
    // own: a value that is no state, or a NULL state, fails the batch with
    // nothing moved (the statement's update skips the whole batch then).
    let rows = rows
        .iter()
        .map(|row| {
            let (before, was_applied, found): (Option<String>, bool, bool) =
                (get(row, 2)?, get(row, 3)?, get(row, 4)?);
            Ok((state_of(transition, found.then_some(before))?, was_applied))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let repeats = repeats(keys);
    let mut outcomes: Vec<Outcome<S>> = Vec::with_capacity(keys.len());
    for (((before, was_applied), key), repeat) in rows.into_iter().zip(keys).zip(repeats) {
        // A key given twice was applied (or settled) at its first position.
        if let Some(first) = repeat {
            let outcome = match outcomes[first] {
                Outcome::Applied { to, .. } => Outcome::AlreadyApplied { state: to },
                other => other,
            };
            outcomes.push(outcome);
            continue;
        }
        let outcome = if was_applied {
            applied(transition, before, tag)?
        } else {
            match transition.settled(before) {
                Some(outcome) => outcome,
                None => apply(conn, transition, sql, key).await?,
            }
        };
        outcomes.push(outcome);
    }
    Ok(outcomes)
}
