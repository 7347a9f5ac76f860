//! `apply_many` on MySQL/MariaDB and SQLite: the one place where idem
//! assembles SQL at run time, and only the placeholder lists of a batch
//! (MySQL: `WHEN CAST(? AS BINARY) THEN 0 ...`, `IN (?, ?, ...)`; SQLite:
//! `VALUES (0, ?), (1, ?), ...`) around compiled fragments
//! ([`BatchSql`]), the key family's.
//!
//! It runs inside a transaction idem owns (retried on deadlocks): locking
//! reads of the batch (MySQL: `LOCK IN SHARE MODE`; SQLite: the
//! transaction holds the write lock from `BEGIN IMMEDIATE`), then one
//! compare-and-set `UPDATE` per source state present, then one history
//! `INSERT` per moved key. The reads' locks keep every row where the read
//! saw it, so each `UPDATE` must match exactly the keys of its group. Two
//! batches that share keys can deadlock upgrading their shared locks on
//! MySQL; the loser's transaction runs again.
//!
//! A statement binds at most `chunk` keys (the backend's choice, below its
//! bind-parameter limit): a larger batch reads its distinct keys `chunk` at
//! a time and updates each source group `chunk` keys at a time, all in the
//! same transaction. Every read comes before the first write, so a stored
//! value that is no state (or NULL) anywhere in the batch fails it before
//! anything moved. A key given again gets its first occurrence's outcome
//! (`AlreadyApplied` when that one moved the row), wherever the two stand.

use std::fmt::Write as _;

use futures::future::BoxFuture;
use idem_core::{BatchSql, DialectSql, KeyFamily, ManySql, Outcome, PerFamily, State, Transition};
use sqlx::{ColumnIndex, Database, Executor, IntoArguments};

use crate::backend::{db_error, state_of};
use crate::key::{mixed_families, repeats};
use crate::{Backend, Error, Key};

/// What the batch read found for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot<S> {
    /// Nothing to write: the outcome is known.
    Settled(Outcome<S>),
    /// The row is in `sources[i]`: the batch update from it moves it.
    Move(usize),
    /// The key was given before, at this position: it gets that key's
    /// outcome, or `AlreadyApplied` when that one moved the row.
    Again(usize),
}

/// Writes a history row for the key at `index` among the sources.
pub(crate) type History<DB, K> = for<'c> fn(
    &'c mut <DB as Database>::Connection,
    &'static DialectSql,
    usize,
    &'c K,
) -> BoxFuture<'c, Result<(), Error>>;

/// The statement of `batch` for `n` keys: each list's item `n` times,
/// `#` replaced by the key's position in the chunk.
fn assemble(batch: &BatchSql, n: usize) -> String {
    let mut text = String::from(batch.parts.first().copied().unwrap_or_default());
    for (list, part) in batch.lists.iter().zip(batch.parts.iter().skip(1)) {
        for i in 0..n {
            if i > 0 {
                text.push_str(list.separator);
            }
            for (j, piece) in list.item.split('#').enumerate() {
                if j > 0 {
                    let _ = write!(text, "{i}");
                }
                text.push_str(piece);
            }
        }
        text.push_str(part);
    }
    text
}

/// The arguments of `batch` for the keys at `positions`: every list binds
/// each key once, in the chunk's order.
fn bind<'q, DB: Backend, K: Key<DB>>(
    batch: &BatchSql,
    keys: &'q [K],
    positions: &[usize],
) -> Result<DB::Arguments<'q>, Error> {
    let mut args = DB::Arguments::default();
    for _ in batch.lists {
        for &i in positions {
            DB::bind_key(&mut args, keys[i].value())
                .map_err(|e| Error::Database(sqlx::Error::Encode(e)))?;
        }
    }
    Ok(args)
}

/// The chunked statements of a dialect that batches in chunks.
fn chunked(
    sql: &'static DialectSql,
) -> Result<(&'static PerFamily<BatchSql>, &'static [PerFamily<BatchSql>]), Error> {
    match &sql.many {
        ManySql::Chunked { read, from } => Ok((read, from)),
        ManySql::Whole(_) => Err(Error::Database(sqlx::Error::Protocol(
            "this backend batches in chunks, and the batch was compiled as one statement"
                .to_owned(),
        ))),
    }
}

/// Applies `transition` to every key, binding at most `chunk` keys per
/// statement; one outcome per key in the order given.
pub(crate) async fn apply<'c, DB, S, K>(
    conn: &'c mut DB::Connection,
    transition: &'static Transition<S>,
    sql: &'static DialectSql,
    keys: &[K],
    chunk: usize,
    history: History<DB, K>,
) -> Result<Vec<Outcome<S>>, Error>
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
    let Some(first) = keys.first() else {
        return Ok(Vec::new());
    };
    let family = first.value().family();
    if keys.iter().any(|k| k.value().family() != family) {
        return Err(mixed_families());
    }
    let (read_sql, from_sql) = chunked(sql)?;
    let repeats = repeats(keys);
    let distinct: Vec<usize> = (0..keys.len()).filter(|&i| repeats[i].is_none()).collect();
    let mut states: Vec<Option<S>> = vec![None; keys.len()];
    for positions in distinct.chunks(chunk) {
        let batch = read_sql.get(family);
        read::<DB, S, K>(conn, transition, batch, keys, positions, &mut states).await?;
    }
    let slots: Vec<Slot<S>> = repeats
        .iter()
        .zip(states)
        .map(|(repeat, state)| {
            if let Some(first) = *repeat {
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
        .collect();
    let write_sql = Write {
        transition,
        sql,
        from: from_sql,
        family,
        chunk,
        history,
    };
    write_sql.run(conn, keys, &slots).await?;
    Ok(outcomes(transition, &slots))
}

/// Reads the state of the keys at `positions` in one statement into
/// `states`.
async fn read<'c, DB, S, K>(
    conn: &'c mut DB::Connection,
    transition: &'static Transition<S>,
    batch: &'static BatchSql,
    keys: &[K],
    positions: &[usize],
    states: &mut [Option<S>],
) -> Result<(), Error>
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
    let n = positions.len();
    let text = assemble(batch, n);
    let args = bind::<DB, K>(batch, keys, positions)?;
    let rows: Vec<(i64, Option<String>)> = sqlx::query_as_with(&text, args)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error::<DB>)?;
    for (ord, state) in rows {
        let position = usize::try_from(ord)
            .ok()
            .and_then(|i| positions.get(i))
            .ok_or_else(|| {
                Error::Database(sqlx::Error::Protocol(format!(
                    "batch read returned position {ord} for {n} keys"
                )))
            })?;
        // A row came back: a NULL state is `NullState`, never "no row".
        states[*position] = state_of(transition, Some(state))?;
    }
    Ok(())
}

/// The writes of a batch: what [`Write::run`] needs besides the keys.
struct Write<DB: Backend, S: 'static, K> {
    transition: &'static Transition<S>,
    sql: &'static DialectSql,
    from: &'static [PerFamily<BatchSql>],
    family: KeyFamily,
    chunk: usize,
    history: History<DB, K>,
}

impl<DB: Backend, S: State, K: Key<DB>> Write<DB, S, K> {
    /// One compare-and-set `UPDATE` per source group (per `chunk` keys of
    /// it), then the history rows of its keys.
    async fn run<'c>(
        &self,
        conn: &'c mut DB::Connection,
        keys: &[K],
        slots: &[Slot<S>],
    ) -> Result<(), Error>
    where
        for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
        for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    {
        for (index, from) in self.from.iter().enumerate() {
            let batch = from.get(self.family);
            let group: Vec<usize> = (0..slots.len())
                .filter(|&i| slots[i] == Slot::Move(index))
                .collect();
            for members in group.chunks(self.chunk) {
                let text = assemble(batch, members.len());
                let done = sqlx::query_with(&text, bind::<DB, K>(batch, keys, members)?)
                    .execute(&mut *conn)
                    .await
                    .map_err(db_error::<DB>)?;
                let affected = DB::rows_affected(&done);
                if affected != members.len() as u64 {
                    return Err(Error::Database(sqlx::Error::Protocol(format!(
                        "the batch update of `{}` matched {affected} of {} locked rows",
                        self.transition.name(),
                        members.len()
                    ))));
                }
                for &i in members {
                    (self.history)(&mut *conn, self.sql, index, &keys[i]).await?;
                }
            }
        }
        Ok(())
    }
}

/// The outcome of every key once the writes are done.
fn outcomes<S: State>(transition: &'static Transition<S>, slots: &[Slot<S>]) -> Vec<Outcome<S>> {
    let sources = transition.sources();
    let outcome = |slot: Slot<S>| match slot {
        Slot::Settled(outcome) => Some(outcome),
        Slot::Move(index) => Some(transition.applied_from(sources[index])),
        Slot::Again(_) => None,
    };
    slots
        .iter()
        .map(|slot| match *slot {
            Slot::Again(first) => match slots[first] {
                Slot::Move(_) => Outcome::AlreadyApplied {
                    state: transition.target(),
                },
                other => outcome(other).expect("the first occurrence is never a repeat"),
            },
            other => outcome(other).expect("not a repeat"),
        })
        .collect()
}
