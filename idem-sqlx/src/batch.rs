//! `apply_many` on MySQL/MariaDB and SQLite: the one place where idem
//! assembles SQL at run time, and only the placeholder lists of a batch
//! (MySQL: `WHEN ? THEN 0 ...`, `IN (?, ?, ...)`; SQLite: `VALUES (0, ?),
//! (1, ?), ...`) around compiled fragments.
//!
//! It runs inside a transaction idem owns (retried on deadlocks): one
//! locking read of the whole batch (MySQL: `LOCK IN SHARE MODE`; SQLite:
//! the transaction holds the write lock from `BEGIN IMMEDIATE`), then one
//! compare-and-set `UPDATE` per source state present in the batch, then
//! one history `INSERT` per moved key. The read's locks keep every row
//! where the read saw it, so each `UPDATE` must match exactly the keys of
//! its group. Two batches that share keys can deadlock upgrading their
//! shared locks on MySQL; the loser's transaction runs again.

use futures::future::BoxFuture;
use idem_core::{Dialect, DialectSql, Outcome, State, Transition};
use sqlx::{ColumnIndex, Database, Executor, IntoArguments};

use crate::backend::{db_error, state_of};
use crate::{Backend, Error, Key};

/// What the batch read found for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot<S> {
    /// Nothing to write: the outcome is known.
    Settled(Outcome<S>),
    /// The row is in `sources[i]`: the batch update from it moves it.
    Move(usize),
    /// The key was given before, at this position: it gets that key's
    /// outcome, or `AlreadyApplied` when that one moved the row.
    Again(usize),
}

/// One slot per key, in the order given.
pub(crate) type Groups<S> = Vec<Slot<S>>;

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

fn encode<'q, DB: Backend, K: Key<DB>>(
    keys: &'q [K],
    args: &mut DB::Arguments<'q>,
) -> Result<(), Error> {
    K::add_many_to(keys, args).map_err(|e| Error::Database(sqlx::Error::Encode(e)))
}

/// Reads the state of every key in one statement.
pub(crate) async fn read<'c, DB, S, K>(
    conn: &'c mut DB::Connection,
    transition: &'static Transition<S>,
    sql: &'static DialectSql,
    keys: &[K],
) -> Result<Groups<S>, Error>
where
    DB: Backend,
    S: State,
    K: Key<DB>,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    usize: ColumnIndex<DB::Row>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
{
    let mut text = String::from(sql.many[0]);
    let mut args = DB::Arguments::default();
    if DB::DIALECT == Dialect::Sqlite {
        // `WITH u(ord, k) AS (VALUES (0, ?), (1, ?), ...) SELECT ... JOIN`
        let rows: Vec<String> = (0..keys.len()).map(|i| format!("({i}, ?)")).collect();
        text.push_str(&rows.join(", "));
        text.push_str(sql.many[1]);
        encode::<DB, K>(keys, &mut args)?;
    } else {
        // `SELECT CASE key WHEN ? THEN 0 ... END, state ... WHERE key IN (?, ...)`
        for i in 0..keys.len() {
            text.push_str(&format!(" WHEN ? THEN {i}"));
        }
        text.push_str(sql.many[1]);
        text.push_str(&placeholders(keys.len()));
        text.push_str(sql.many[2]);
        encode::<DB, K>(keys, &mut args)?;
        encode::<DB, K>(keys, &mut args)?;
    }
    let rows: Vec<(i64, Option<String>)> = sqlx::query_as_with(&text, args)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error::<DB>)?;
    let mut states: Vec<Option<S>> = vec![None; keys.len()];
    for (ord, state) in rows {
        let slot = usize::try_from(ord)
            .ok()
            .and_then(|i| states.get_mut(i))
            .ok_or_else(|| {
                Error::Database(sqlx::Error::Protocol(format!(
                    "batch read returned position {ord} for {} keys",
                    keys.len()
                )))
            })?;
        // A row came back: a NULL state is `NullState`, never "no row".
        *slot = state_of(transition, Some(state))?;
    }
    Ok(states
        .into_iter()
        .enumerate()
        .map(|(i, state)| {
            if let Some(first) = keys[..i].iter().position(|k| *k == keys[i]) {
                return Slot::Again(first);
            }
            match transition.settled(state) {
                Some(outcome) => Slot::Settled(outcome),
                None => Slot::Move(
                    state
                        .and_then(|s| transition.source_index(s))
                        .expect("settled() is None only for a source state"),
                ),
            }
        })
        .collect())
}

/// Writes a history row for the key at `index` among the sources.
pub(crate) type History<DB, K> = for<'c> fn(
    &'c mut <DB as Database>::Connection,
    &'static DialectSql,
    usize,
    &'c K,
) -> BoxFuture<'c, Result<(), Error>>;

/// One compare-and-set `UPDATE` per source group, then the history rows.
pub(crate) async fn write<'c, DB, S, K>(
    conn: &'c mut DB::Connection,
    transition: &'static Transition<S>,
    sql: &'static DialectSql,
    keys: &[K],
    groups: Groups<S>,
    history: History<DB, K>,
) -> Result<Vec<Outcome<S>>, Error>
where
    DB: Backend,
    S: State,
    K: Key<DB>,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
{
    for (index, head) in sql.many_from.iter().enumerate() {
        let members: Vec<usize> = groups
            .iter()
            .enumerate()
            .filter(|(_, g)| **g == Slot::Move(index))
            .map(|(i, _)| i)
            .collect();
        if members.is_empty() {
            continue;
        }
        let text = format!("{head}{})", placeholders(members.len()));
        let mut args = DB::Arguments::default();
        for &i in &members {
            keys[i]
                .add_to(&mut args)
                .map_err(|e| Error::Database(sqlx::Error::Encode(e)))?;
        }
        let done = sqlx::query_with(&text, args)
            .execute(&mut *conn)
            .await
            .map_err(db_error::<DB>)?;
        let affected = DB::rows_affected(&done);
        if affected != members.len() as u64 {
            return Err(Error::Database(sqlx::Error::Protocol(format!(
                "the batch update of `{}` matched {affected} of {} locked rows",
                transition.name(),
                members.len()
            ))));
        }
        for &i in &members {
            history(&mut *conn, sql, index, &keys[i]).await?;
        }
    }
    let sources = transition.sources();
    let outcome = |slot: Slot<S>| match slot {
        Slot::Settled(outcome) => Some(outcome),
        Slot::Move(index) => Some(transition.applied_from(sources[index])),
        Slot::Again(_) => None,
    };
    Ok(groups
        .iter()
        .map(|slot| match *slot {
            Slot::Again(first) => match groups[first] {
                Slot::Move(_) => Outcome::AlreadyApplied {
                    state: transition.target(),
                },
                other => outcome(other).expect("the first occurrence is never a repeat"),
            },
            other => outcome(other).expect("not a repeat"),
        })
        .collect())
}
