//! The key store's SQL, one set of statements per dialect. Every time is
//! the database's: `now()` on PostgreSQL, `UTC_TIMESTAMP(6)` on MySQL
//! (UTC, so a session time zone or a DST change never shifts a lease), and
//! Unix seconds from `julianday('now')` on SQLite (3.35+, no `unixepoch`).

use idem_core::Dialect;

use crate::upgrade::Identifiers;

/// The statements of one dialect. (PostgreSQL's store reads neither
/// `takeover` nor `identifiers`, which are MySQL's.)
#[cfg_attr(not(any(feature = "mysql", feature = "sqlite")), allow(dead_code))]
pub(crate) struct KeySql {
    pub schema: &'static str,
    /// Inserts a running record; on PostgreSQL and SQLite the same
    /// statement takes over an expired lease of the same fingerprint and
    /// returns `attempt` (1 = new, more = taken over). On PostgreSQL it
    /// also returns the record it collided with, in `read`'s columns, so
    /// a replay needs no `read` (when that record is not in the
    /// statement's snapshot, because the insert waited for a concurrent
    /// inserter that then committed, the answer holds no record and the
    /// claim reads). PostgreSQL's statements each answer with one row
    /// whose first column is their tag ([`PG_TAGS`]). On MySQL it is an
    /// `INSERT IGNORE` (0 rows = the key exists); `read`, then `takeover`
    /// when the read found an expired lease.
    pub claim: &'static str,
    /// MySQL only: takes over an expired lease of the same fingerprint,
    /// after a read saw it expired.
    pub takeover: &'static str,
    /// Reads a record: fingerprint, state, status, headers, body, and the
    /// microseconds left on its lease.
    pub read: &'static str,
    pub complete: &'static str,
    pub release: &'static str,
    /// Deletes at most `?2` completed records whose completion is older
    /// than `?1` microseconds by the database's clock.
    pub purge_completed: &'static str,
    /// Deletes at most `?2` running records whose lease ended more than
    /// `?1` microseconds ago (abandoned: nobody claimed the key again).
    pub purge_abandoned: &'static str,
    /// MySQL only: the identifier columns an earlier version's table may
    /// hold as text, checked by `install`. `None` where every text column
    /// already compares byte for byte (PostgreSQL's deterministic
    /// collations, SQLite's `BINARY`).
    pub identifiers: Option<&'static Identifiers>,
}

pub(crate) const fn for_dialect(dialect: Dialect) -> &'static KeySql {
    match dialect {
        Dialect::Postgres => &POSTGRES,
        Dialect::MySql => &MYSQL,
        Dialect::Sqlite => &SQLITE,
    }
}

/// The start of a purge chunk that deletes the records whose keys a
/// subselect picks (PostgreSQL and SQLite have no `DELETE ... LIMIT`).
macro_rules! keyed_chunk {
    () => {
        "DELETE FROM idem_keys
WHERE (scope, idem_key) IN (
    SELECT scope, idem_key FROM idem_keys
    WHERE "
    };
}

/// The tag each of PostgreSQL's statements returns in its first column:
/// a named prepared statement that a pooler in transaction mode ran on a
/// server connection where the name means another statement answers with
/// another tag, or none (see `crate::postgres`).
macro_rules! pg_tag {
    (claim) => {
        "idem:keys:claim"
    };
    (read) => {
        "idem:keys:read"
    };
    (complete) => {
        "idem:keys:complete"
    };
    (release) => {
        "idem:keys:release"
    };
    (purge_completed) => {
        "idem:keys:purge_completed"
    };
    (purge_abandoned) => {
        "idem:keys:purge_abandoned"
    };
}

/// The tags of PostgreSQL's statements, as [`POSTGRES`]'s texts return
/// them.
#[cfg(feature = "postgres")]
pub(crate) struct PgTags {
    pub claim: &'static str,
    pub read: &'static str,
    pub complete: &'static str,
    pub release: &'static str,
    pub purge_completed: &'static str,
    pub purge_abandoned: &'static str,
}

#[cfg(feature = "postgres")]
pub(crate) const PG_TAGS: PgTags = PgTags {
    claim: pg_tag!(claim),
    read: pg_tag!(read),
    complete: pg_tag!(complete),
    release: pg_tag!(release),
    purge_completed: pg_tag!(purge_completed),
    purge_abandoned: pg_tag!(purge_abandoned),
};

/// A PostgreSQL write, answering in one row: its tag, and how many rows
/// it changed.
macro_rules! postgres_counted {
    ($tag:ident, $($write:expr),+ $(,)?) => {
        concat!(
            "WITH changed AS (\n",
            $($write,)+
            "\nRETURNING 1)\nSELECT '",
            pg_tag!($tag),
            "' AS tag, count(*) FROM changed"
        )
    };
}

/// A PostgreSQL purge chunk: records where `$old` (a state and the time
/// column to compare) is at most now - ?1 µs, at most ?2 of them. The
/// subselect locks the rows it picks and skips rows locked by a
/// concurrent purge (which deletes and counts them), so purges share the
/// backlog instead of queueing on each other. The condition is repeated
/// on the DELETE: when a row changed after the statement's snapshot,
/// PostgreSQL re-checks the DELETE's own condition on the new version,
/// and an `IN (list)` alone would still match it.
macro_rules! postgres_purge {
    ($tag:ident, $old:literal) => {
        postgres_counted!(
            $tag,
            keyed_chunk!(),
            $old,
            " <= now() - $1 * INTERVAL '1 microsecond'
    LIMIT $2 FOR UPDATE SKIP LOCKED)
  AND ",
            $old,
            " <= now() - $1 * INTERVAL '1 microsecond'"
        )
    };
}

/// The microseconds left on a record's lease, on PostgreSQL.
macro_rules! postgres_left {
    ($k:literal) => {
        concat!(
            "CAST(EXTRACT(EPOCH FROM (",
            $k,
            "lease_until - now())) * 1000000 AS BIGINT)"
        )
    };
}

// Every statement answers with exactly one row, its tag first (see
// `pg_tag!`): `claim` and `read` join what they found to a one-row
// `(SELECT 1)`, the writes count their rows.
const POSTGRES: KeySql = KeySql {
    schema: "\
CREATE TABLE IF NOT EXISTS idem_keys (
    scope        VARCHAR(512) NOT NULL,
    idem_key     VARCHAR(255) NOT NULL,
    fingerprint  VARCHAR(64)  NOT NULL,
    state        VARCHAR(8)   NOT NULL CHECK (state IN ('running', 'done')),
    token        BIGINT       NOT NULL,
    attempt      INTEGER      NOT NULL,
    lease_until  TIMESTAMPTZ,
    status       INTEGER,
    headers      TEXT,
    body         BYTEA,
    created_at   TIMESTAMPTZ  NOT NULL,
    completed_at TIMESTAMPTZ,
    PRIMARY KEY (scope, idem_key)
);
CREATE INDEX IF NOT EXISTS idem_keys_completed_at ON idem_keys (completed_at);
CREATE INDEX IF NOT EXISTS idem_keys_lease_until ON idem_keys (lease_until);
",
    // The second branch runs only when the upsert returned nothing (a
    // one-time filter: a new key never scans the table twice). It reads
    // the statement's snapshot, so a record whose inserter committed while
    // the upsert waited on it is not there: no record in the answer, and
    // the caller reads.
    claim: concat!(
        "\
WITH claimed AS (
    INSERT INTO idem_keys AS k (scope, idem_key, fingerprint, token, lease_until, state, attempt, created_at)
    VALUES ($1, $2, $3, $4, now() + $5 * INTERVAL '1 microsecond', 'running', 1, now())
    ON CONFLICT (scope, idem_key) DO UPDATE
    SET token = EXCLUDED.token, lease_until = EXCLUDED.lease_until, attempt = k.attempt + 1
    WHERE k.state = 'running' AND k.lease_until <= now() AND k.fingerprint = EXCLUDED.fingerprint
    RETURNING attempt
),
answer AS (
    SELECT attempt, NULL::varchar AS fingerprint, NULL::varchar AS state, NULL::integer AS status,
           NULL::text AS headers, NULL::bytea AS body, NULL::bigint AS lease_left
    FROM claimed
    UNION ALL
    SELECT NULL, fingerprint, state, status, headers, body, ",
        postgres_left!(""),
        "
    FROM idem_keys
    WHERE scope = $1 AND idem_key = $2 AND NOT EXISTS (SELECT 1 FROM claimed)
)
SELECT '",
        pg_tag!(claim),
        "' AS tag, a.attempt, a.fingerprint, a.state, a.status, a.headers, a.body, a.lease_left
FROM (SELECT 1) AS one LEFT JOIN answer AS a ON true"
    ),
    takeover: "",
    read: concat!(
        "SELECT '",
        pg_tag!(read),
        "' AS tag, k.fingerprint, k.state, k.status, k.headers, k.body, ",
        postgres_left!("k."),
        "
FROM (SELECT 1) AS one LEFT JOIN idem_keys AS k ON k.scope = $1 AND k.idem_key = $2"
    ),
    complete: postgres_counted!(
        complete,
        "UPDATE idem_keys
SET state = 'done', status = $1, headers = $2, body = $3, completed_at = now(), lease_until = NULL
WHERE scope = $4 AND idem_key = $5 AND token = $6 AND state = 'running'"
    ),
    release: postgres_counted!(
        release,
        "DELETE FROM idem_keys WHERE scope = $1 AND idem_key = $2 AND token = $3 AND state = 'running'"
    ),
    purge_completed: postgres_purge!(purge_completed, "state = 'done' AND completed_at"),
    purge_abandoned: postgres_purge!(purge_abandoned, "state = 'running' AND lease_until"),
    identifiers: None,
};

const MYSQL: KeySql = KeySql {
    schema: "\
CREATE TABLE IF NOT EXISTS idem_keys (
    scope        VARBINARY(512) NOT NULL,
    idem_key     VARBINARY(255) NOT NULL,
    fingerprint  VARBINARY(64)  NOT NULL,
    state        VARCHAR(8)     CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    token        BIGINT         NOT NULL,
    attempt      INT            NOT NULL,
    lease_until  DATETIME(6)    NULL,
    status       INT            NULL,
    headers      MEDIUMTEXT     CHARACTER SET utf8mb4 NULL,
    body         LONGBLOB       NULL,
    created_at   DATETIME(6)    NOT NULL,
    completed_at DATETIME(6)    NULL,
    PRIMARY KEY (scope, idem_key),
    INDEX idem_keys_completed_at (completed_at),
    INDEX idem_keys_lease_until (lease_until)
) ENGINE = InnoDB
",
    claim: "\
INSERT IGNORE INTO idem_keys (scope, idem_key, fingerprint, token, lease_until, state, attempt, created_at)
VALUES (?, ?, ?, ?, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, 'running', 1, UTC_TIMESTAMP(6))",
    takeover: "\
UPDATE idem_keys
SET token = ?, lease_until = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, attempt = attempt + 1
WHERE scope = ? AND idem_key = ? AND fingerprint = ? AND state = 'running'
  AND lease_until <= UTC_TIMESTAMP(6)",
    // A locking read: inside a REPEATABLE READ transaction a plain SELECT
    // would read the snapshot, not the row the INSERT just collided with.
    // Shared, so concurrent duplicates do not deadlock each other. The
    // fingerprint is VARBINARY (and `state`'s binary collation looks so to
    // the driver): cast to text for sqlx's `String`.
    read: "\
SELECT CAST(fingerprint AS CHAR), CAST(state AS CHAR), status, headers, body,
       TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), lease_until)
FROM idem_keys WHERE scope = ? AND idem_key = ? LOCK IN SHARE MODE",
    complete: "\
UPDATE idem_keys
SET state = 'done', status = ?, headers = ?, body = ?, completed_at = UTC_TIMESTAMP(6), lease_until = NULL
WHERE scope = ? AND idem_key = ? AND token = ? AND state = 'running'",
    release: "\
DELETE FROM idem_keys WHERE scope = ? AND idem_key = ? AND token = ? AND state = 'running'",
    // A chunk: a range scan of the time's index, each chunk its own
    // autocommit statement. MySQL flags a DELETE with LIMIT as unsafe for
    // a statement-based binary log (a replica could pick other rows for a
    // chunk); the ROW and MIXED formats, the defaults of MySQL 8 and
    // MariaDB, log the rows deleted instead.
    purge_completed: "\
DELETE FROM idem_keys
WHERE state = 'done' AND completed_at <= UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND
LIMIT ?",
    purge_abandoned: "\
DELETE FROM idem_keys
WHERE state = 'running' AND lease_until <= UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND
LIMIT ?",
    identifiers: Some(&MYSQL_IDENTIFIERS),
};

/// The identifier columns of `idem_keys` on MySQL, as [`MYSQL`]'s schema
/// creates them (scopes up to `Scope::MAX_LEN` bytes, keys up to 255, a
/// SHA-256 in hex). Earlier versions made them text with binary
/// collations, which are PAD SPACE: `payments` and `payments ` were one
/// scope.
const MYSQL_IDENTIFIERS: Identifiers = Identifiers {
    table: "idem_keys",
    columns: &[
        ("scope", "VARBINARY(512) NOT NULL"),
        ("idem_key", "VARBINARY(255) NOT NULL"),
        ("fingerprint", "VARBINARY(64) NOT NULL"),
    ],
};

/// SQLite's clock in Unix seconds with millisecond precision; constant
/// within one statement.
macro_rules! sqlite_now {
    () => {
        "((julianday('now') - 2440587.5) * 86400.0)"
    };
}

/// A SQLite purge chunk: the keys of at most ?2 records where `$old` is
/// at most now - ?1 µs, then those records, in one statement (SQLite
/// builds usually lack `DELETE ... LIMIT`).
macro_rules! sqlite_purge {
    ($old:literal) => {
        concat!(
            keyed_chunk!(),
            $old,
            " <= ",
            sqlite_now!(),
            " - ?1 / 1000000.0
    LIMIT ?2)"
        )
    };
}

const SQLITE: KeySql = KeySql {
    schema: "\
CREATE TABLE IF NOT EXISTS idem_keys (
    scope        TEXT    NOT NULL,
    idem_key     TEXT    NOT NULL,
    fingerprint  TEXT    NOT NULL,
    state        TEXT    NOT NULL CHECK (state IN ('running', 'done')),
    token        INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    lease_until  REAL,
    status       INTEGER,
    headers      TEXT,
    body         BLOB,
    created_at   REAL    NOT NULL,
    completed_at REAL,
    PRIMARY KEY (scope, idem_key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idem_keys_completed_at ON idem_keys (completed_at);
CREATE INDEX IF NOT EXISTS idem_keys_lease_until ON idem_keys (lease_until);
",
    claim: concat!(
        "INSERT INTO idem_keys (scope, idem_key, fingerprint, token, lease_until, state, attempt, created_at)
VALUES (?1, ?2, ?3, ?4, ",
        sqlite_now!(),
        " + ?5 / 1000000.0, 'running', 1, ",
        sqlite_now!(),
        ")
ON CONFLICT (scope, idem_key) DO UPDATE
SET token = excluded.token, lease_until = excluded.lease_until, attempt = idem_keys.attempt + 1
WHERE idem_keys.state = 'running' AND idem_keys.lease_until <= ",
        sqlite_now!(),
        " AND idem_keys.fingerprint = excluded.fingerprint
RETURNING attempt"
    ),
    takeover: "",
    read: concat!(
        "SELECT fingerprint, state, status, headers, body, CAST((lease_until - ",
        sqlite_now!(),
        ") * 1000000 AS INTEGER)
FROM idem_keys WHERE scope = ?1 AND idem_key = ?2"
    ),
    complete: concat!(
        "UPDATE idem_keys
SET state = 'done', status = ?1, headers = ?2, body = ?3, completed_at = ",
        sqlite_now!(),
        ", lease_until = NULL
WHERE scope = ?4 AND idem_key = ?5 AND token = ?6 AND state = 'running'"
    ),
    release: "\
DELETE FROM idem_keys WHERE scope = ?1 AND idem_key = ?2 AND token = ?3 AND state = 'running'",
    purge_completed: sqlite_purge!("state = 'done' AND completed_at"),
    purge_abandoned: sqlite_purge!("state = 'running' AND lease_until"),
    identifiers: None,
};

#[cfg(test)]
mod tests {
    use super::*;

    /// `install`'s check and the `ALTER TABLE` it suggests name the types
    /// the schema creates.
    #[test]
    fn the_mysql_identifier_columns_are_the_schemas() {
        for (column, ty) in MYSQL_IDENTIFIERS.columns {
            let ty = ty.split_once(' ').unwrap().0;
            let line = MYSQL
                .schema
                .lines()
                .find(|line| line.trim_start().starts_with(&format!("{column} ")))
                .unwrap();
            assert!(line.contains(&format!(" {ty} ")), "{line}");
        }
    }
}
