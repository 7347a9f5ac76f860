//! Purges in bounded chunks: [`SqlKeyStore::purge`](crate::keys::SqlKeyStore)
//! and [`Inbox::purge`](crate::inbox::Inbox::purge) delete at most a chunk
//! of rows per statement, each chunk committed on its own, until a chunk
//! comes back short. A backlog of a million old rows is then a thousand
//! short statements, each holding its row locks (and, on SQLite, the write
//! lock) for one chunk only, with requests served between them, instead of
//! one statement that locks every old row until it commits.

use std::future::Future;
use std::num::NonZeroU32;

use crate::Error;

/// How many rows one purge statement deletes at most, unless set with
/// `SqlKeyStore::with_purge_chunk` or `Inbox::with_purge_chunk`.
///
/// Small enough that a chunk holds its locks for milliseconds (and never
/// escalates into a long write-lock on SQLite), large enough that a purge
/// of a million rows is a thousand statements.
pub const DEFAULT_PURGE_CHUNK: NonZeroU32 = match NonZeroU32::new(1_000) {
    Some(chunk) => chunk,
    None => unreachable!(),
};

/// Runs `delete_chunk(limit)` (one committed statement or transaction
/// deleting at most `limit` rows) until it deletes fewer than `limit`, and
/// returns how many rows the chunks deleted in all. A short chunk means no
/// other matching row was left, or that the rest is locked by a concurrent
/// purge that deletes (and counts) it.
///
/// On an error the chunks before it stay deleted; the error is returned.
pub(crate) async fn in_chunks<F, Fut>(chunk: NonZeroU32, mut delete_chunk: F) -> Result<u64, Error>
where
    F: FnMut(i64) -> Fut,
    Fut: Future<Output = Result<u64, Error>>,
{
    let limit = u64::from(chunk.get());
    let mut deleted = 0;
    loop {
        let n = delete_chunk(i64::from(chunk.get())).await?;
        deleted += n;
        if n < limit {
            return Ok(deleted);
        }
    }
}
