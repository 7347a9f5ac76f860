//! How idem sends its statements to PostgreSQL: prepared (the default) or
//! with the simple query protocol, for deployments behind a pooler in
//! transaction mode. The public face is [`crate::postgres`]; this module is
//! compiled with every feature set because the stores keep an override.

use std::sync::atomic::{AtomicU8, Ordering};

/// How idem sends the statements it owns to PostgreSQL.
///
/// A deployment property: choose it once at start-up with
/// `idem_sqlx::postgres::set_protocol`, before the first
/// statement, for every pool of the process; [`SqlKeyStore`] and [`Inbox`]
/// can override it for their own statements. MySQL/MariaDB and SQLite
/// ignore it.
///
/// [`SqlKeyStore`]: crate::keys::SqlKeyStore
/// [`Inbox`]: crate::inbox::Inbox
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Protocol {
    /// Named prepared statements, cached by sqlx per connection: parsed
    /// once, then bound in binary. Right for direct connections and
    /// poolers in session mode. Behind a pooler in transaction mode a
    /// cached statement can run on a server connection where its name
    /// means another statement; every statement idem sends returns a tag
    /// that idem checks, so such an answer is refused with
    /// [`Error::Misrouted`](crate::Error::Misrouted) (a transaction idem
    /// owns is rolled back), but a statement outside a transaction may
    /// already have run the other statement.
    #[default]
    Prepared,
    /// The simple query protocol (`sqlx::raw_sql`): each statement is one
    /// self-contained message with its parameters written as typed
    /// literals, so it runs where it lands and names nothing a server
    /// connection must remember. Right behind a pooler in transaction
    /// mode (PgBouncer's `pool_mode = transaction`, and the transaction
    /// poolers of hosted PostgreSQL). Each statement is parsed and planned
    /// on every call, and results come back as text.
    Simple,
}

const PREPARED: u8 = 0;
const SIMPLE: u8 = 1;

static PROTOCOL: AtomicU8 = AtomicU8::new(PREPARED);

/// Sets the protocol of every statement idem sends from now on (except a
/// store's own override).
#[cfg(feature = "postgres")]
pub(crate) fn set(protocol: Protocol) {
    let value = match protocol {
        Protocol::Prepared => PREPARED,
        Protocol::Simple => SIMPLE,
    };
    PROTOCOL.store(value, Ordering::Relaxed);
}

/// The process-wide protocol.
pub(crate) fn get() -> Protocol {
    match PROTOCOL.load(Ordering::Relaxed) {
        SIMPLE => Protocol::Simple,
        _ => Protocol::Prepared,
    }
}
