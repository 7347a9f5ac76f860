//! Every statement idem sends to PostgreSQL goes through [`fetch`]: as a
//! named prepared statement or with the simple query protocol, as the
//! [`Protocol`] says, and checked on the way back. Each statement returns
//! at least one row whose first column (of the first row) is the
//! statement's tag; an answer without it is the answer of another
//! statement ([`Error::Misrouted`]), and so are the errors that only a
//! misrouted named statement gives.

use futures::future::BoxFuture;
use sqlx::postgres::{PgArguments, PgConnection, PgRow};
use sqlx::{Arguments, Row};

use super::literal::{render, Param};
use crate::backend::db_error;
use crate::key::mixed_families;
use crate::{Error, KeyValue, Protocol};

/// Sends `sql` with `params` and returns its rows, after checking that
/// the first row's first column is `tag`. (Boxed: the future of a generic
/// caller must be `Send` for every lifetime of its borrows.)
pub(crate) fn fetch<'a>(
    conn: &'a mut PgConnection,
    protocol: Protocol,
    sql: &'a str,
    tag: &'static str,
    params: &'a [Param<'a>],
) -> BoxFuture<'a, Result<Vec<PgRow>, Error>> {
    Box::pin(fetch_checked(conn, protocol, sql, tag, params))
}

async fn fetch_checked(
    conn: &mut PgConnection,
    protocol: Protocol,
    sql: &str,
    tag: &'static str,
    params: &[Param<'_>],
) -> Result<Vec<PgRow>, Error> {
    let rows = match protocol {
        Protocol::Prepared => {
            let args = arguments(params)?;
            sqlx::query_with(sql, args).fetch_all(&mut *conn).await
        }
        Protocol::Simple => {
            let text = render(sql, params)?;
            sqlx::Executor::fetch_all(&mut *conn, sqlx::raw_sql(&text)).await
        }
    }
    .map_err(|error| driver_error(error, tag))?;
    let found = match rows.first() {
        None => "no row".to_owned(),
        Some(row) => match row.try_get::<Option<String>, _>(0) {
            Ok(Some(found)) if found == tag => return Ok(rows),
            Ok(Some(found)) => found,
            Ok(None) => "a row without a tag".to_owned(),
            Err(error) => format!("a row whose first column is no tag: {error}"),
        },
    };
    Err(Error::Misrouted {
        expected: tag,
        found,
    })
}

/// Column `i` of `row`.
pub(crate) fn get<'r, T>(row: &'r PgRow, i: usize) -> Result<T, Error>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(i).map_err(Error::Database)
}

/// The SQLSTATEs a named prepared statement run on the wrong server
/// connection gives: it does not exist there (26000), its name is taken
/// there (42P05), the statement there takes other parameters (08P01, "bind
/// message supplies 1 parameters, but prepared statement requires 6") or
/// other types (22P03, "incorrect binary data format"). idem binds every
/// key of a family with one type in a statement text of the family's own,
/// so none of them is possible for a statement that ran where it was
/// prepared.
const MISROUTED: [&str; 4] = ["26000", "42P05", "08P01", "22P03"];

fn driver_error(error: sqlx::Error, tag: &'static str) -> Error {
    let misrouted = error.as_database_error().and_then(|db| {
        let code = db.code()?;
        MISROUTED
            .contains(&code.as_ref())
            .then(|| format!("{} ({code})", db.message()))
    });
    match misrouted {
        Some(found) => Error::Misrouted {
            expected: tag,
            found,
        },
        None => db_error::<sqlx::Postgres>(error),
    }
}

/// The prepared statement's arguments: each value with its own type (a
/// batch of keys as one array of their family's type). A NUL character
/// in text is [`Error::Nul`] here too, as in the simple protocol.
fn arguments(params: &[Param<'_>]) -> Result<PgArguments, Error> {
    let mut args = PgArguments::default();
    for param in params {
        let added = match param {
            Param::Int8(i) => args.add(*i),
            Param::Int4(i) => args.add(*i),
            Param::Text(s, what) => {
                no_nul(s, what)?;
                args.add(*s)
            }
            Param::Bytea(b) => args.add(*b),
            Param::Key(key) => {
                no_nul_key(key)?;
                <sqlx::Postgres as crate::Backend>::bind_key(&mut args, *key)
            }
            Param::Keys(keys) => add_keys(&mut args, keys)?,
        };
        added.map_err(|e| Error::Database(sqlx::Error::Encode(e)))?;
    }
    Ok(args)
}

fn no_nul(s: &str, what: &'static str) -> Result<(), Error> {
    if s.contains('\0') {
        return Err(Error::Nul { what });
    }
    Ok(())
}

fn no_nul_key(key: &KeyValue<'_>) -> Result<(), Error> {
    match key {
        KeyValue::Text(s) => no_nul(s, "the key"),
        _ => Ok(()),
    }
}

/// Adds the keys of a batch as one array of their family's type.
fn add_keys(
    args: &mut PgArguments,
    keys: &[KeyValue<'_>],
) -> Result<Result<(), sqlx::error::BoxDynError>, Error> {
    let Some(first) = keys.first() else {
        return Ok(args.add(Vec::<i64>::new()));
    };
    if keys.iter().any(|k| k.family() != first.family()) {
        return Err(mixed_families());
    }
    for key in keys {
        no_nul_key(key)?;
    }
    Ok(match first {
        KeyValue::Text(_) => args.add(
            keys.iter()
                .filter_map(|k| match k {
                    KeyValue::Text(s) => Some(*s),
                    _ => None,
                })
                .collect::<Vec<&str>>(),
        ),
        #[cfg(feature = "uuid")]
        KeyValue::Uuid(_) => args.add(
            keys.iter()
                .filter_map(|k| match k {
                    KeyValue::Uuid(u) => Some(*u),
                    _ => None,
                })
                .collect::<Vec<uuid::Uuid>>(),
        ),
        KeyValue::Int(_) => args.add(
            keys.iter()
                .filter_map(|k| match k {
                    KeyValue::Int(i) => Some(*i),
                    _ => None,
                })
                .collect::<Vec<i64>>(),
        ),
    })
}
