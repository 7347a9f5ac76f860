//! MySQL and MariaDB name only the violated key in the message: "Duplicate
//! entry '...' for key 'orders.email'" on MySQL 8, "... for key 'email'" on
//! MariaDB (`PRIMARY` for the primary key). idem finds the key's table and
//! columns in `information_schema`. MariaDB does not say which table the
//! key is on, so a key name that another table of the schema shares (or a
//! table of another schema that one of its triggers mentions) is attributed
//! to the business key's table only when that table has no triggers, which
//! could have written to the other one.

use futures::future::BoxFuture;
use sqlx::mysql::{MySqlConnection, MySqlDatabaseError};
use sqlx::{Executor, MySql, Row};

use super::key::{BusinessKey, Verdict, ViolatedKey};
use super::InsertBackend;

/// The unique keys named `{name}` (MariaDB) or `<table>.<key>` = `{name}`
/// (MySQL 8) in schema `{schema}`, one row per column in index order (a
/// NULL column: an expression), and the triggers of table `{table}` there.
///
/// The values are rendered as hexadecimal literals, so that no escaping
/// (which depends on the server's `NO_BACKSLASH_ESCAPES`) is needed and
/// the query goes as text: sqlx 0.8.6 cannot cancel a MySQL prepared
/// statement safely while it is being prepared (the answer's packets stay
/// unread and the connection hangs on its next command), and a caller may
/// drop `insert_once` at any `.await`.
fn keys_and_triggers(schema: &str, name: &str, table: &str) -> String {
    format!(
        "SELECT 'key' AS kind, CAST(TABLE_NAME AS CHAR) AS tbl, CAST(INDEX_NAME AS CHAR) AS name, \
                CAST(COLUMN_NAME AS CHAR) AS col, CAST(SEQ_IN_INDEX AS SIGNED) AS seq \
         FROM information_schema.STATISTICS \
         WHERE TABLE_SCHEMA = {schema} AND NON_UNIQUE = 0 \
           AND (INDEX_NAME = {name} OR CONCAT(TABLE_NAME, '.', INDEX_NAME) = {name}) \
         UNION ALL \
         SELECT 'trigger', CAST(EVENT_OBJECT_TABLE AS CHAR), CAST(TRIGGER_NAME AS CHAR), NULL, 0 \
         FROM information_schema.TRIGGERS \
         WHERE EVENT_OBJECT_SCHEMA = {schema} AND EVENT_OBJECT_TABLE = {table} \
         ORDER BY kind, tbl, name, seq"
    )
}

/// How many unique keys named `{name}` exist in schemas other than
/// `{schema}` that a trigger of table `{table}` there mentions: where its
/// triggers could write (through a procedure of the same schema, they
/// could write elsewhere unseen). Text, as [`keys_and_triggers`].
fn keys_elsewhere(schema: &str, name: &str, table: &str) -> String {
    format!(
        "SELECT COUNT(*) FROM information_schema.STATISTICS s \
         WHERE s.TABLE_SCHEMA <> {schema} AND s.NON_UNIQUE = 0 AND s.INDEX_NAME = {name} \
           AND EXISTS (SELECT 1 FROM information_schema.TRIGGERS t \
                       WHERE t.EVENT_OBJECT_SCHEMA = {schema} AND t.EVENT_OBJECT_TABLE = {table} \
                         AND LOCATE(s.TABLE_SCHEMA, t.ACTION_STATEMENT) > 0)"
    )
}

/// `text` as a utf8mb4 string literal in hexadecimal: safe whatever the
/// server's SQL mode.
fn literal(text: &str) -> String {
    let hex: String = text.bytes().map(|b| format!("{b:02X}")).collect();
    format!("_utf8mb4 X'{hex}'")
}

impl InsertBackend for MySql {
    execute_on!();

    fn resolve<'c>(
        conn: &'c mut MySqlConnection,
        key: &'c BusinessKey,
        error: &'c sqlx::Error,
    ) -> BoxFuture<'c, Result<Verdict, sqlx::Error>> {
        Box::pin(async move {
            let reported = error
                .as_database_error()
                .and_then(|db| db.try_downcast_ref::<MySqlDatabaseError>())
                .and_then(|my| key_name(my.message()));
            let Some(reported) = reported else {
                return Ok(Verdict::Unresolved(
                    ViolatedKey::default(),
                    "the error does not name the violated key".into(),
                ));
            };
            let schema = key
                .schema()
                .map_or_else(|| "DATABASE()".to_owned(), literal);
            let (name, table) = (literal(reported), literal(key.table()));
            let rows = Executor::fetch_all(&mut *conn, &*keys_and_triggers(&schema, &name, &table))
                .await?
                .iter()
                .map(|row| {
                    Ok((
                        row.try_get::<String, _>(0)?,
                        row.try_get::<String, _>(1)?,
                        row.try_get::<String, _>(2)?,
                        row.try_get::<Option<String>, _>(3)?,
                        row.try_get::<i64, _>(4)?,
                    ))
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            let triggers = rows.iter().any(|row| row.0 == "trigger");
            let candidates = group(reported, rows.into_iter().filter(|row| row.0 == "key"));
            let unnamed = || ViolatedKey {
                name: Some(reported.to_owned()),
                ..ViolatedKey::default()
            };
            let mut own = candidates
                .iter()
                .filter(|c| c.key.table.as_deref() == Some(key.table()))
                .collect::<Vec<_>>();
            let own = match (own.len(), candidates.len()) {
                (0, 1) => return Ok(Verdict::Other(candidates[0].key.clone())),
                (0, 0) => {
                    return Ok(Verdict::Unresolved(
                        unnamed(),
                        "no unique key of that name in the schema".into(),
                    ))
                }
                (0, _) => {
                    return Ok(Verdict::Unresolved(
                        unnamed(),
                        "several tables have a unique key of that name, none of them the \
                         business key's"
                            .into(),
                    ))
                }
                (1, _) => own.remove(0),
                _ => {
                    return Ok(Verdict::Unresolved(
                        unnamed(),
                        "the name matches several keys of the business key's table".into(),
                    ))
                }
            };
            // MariaDB's unqualified name: a trigger may have violated a key
            // of the same name on another table.
            if triggers && !own.qualified {
                let shared = candidates.len() > 1
                    || Executor::fetch_one(&mut *conn, &*keys_elsewhere(&schema, &name, &table))
                        .await?
                        .try_get::<i64, _>(0)?
                        > 0;
                if shared {
                    return Ok(Verdict::Unresolved(
                        own.key.clone(),
                        format!(
                            "`{}` has triggers, another table has a unique key named \
                             `{reported}`, and MariaDB does not say which table's key was \
                             violated: give the business key's unique index a name no other \
                             table uses",
                            key.table()
                        ),
                    ));
                }
            }
            Ok(Verdict::on_key_table(key, own.key.clone(), true))
        })
    }
}

/// The key name at the end of a duplicate-key message ("... for key
/// 'orders.email'"); the entry before it is the row's data and may hold
/// anything, so the name is read from the end.
fn key_name(message: &str) -> Option<&str> {
    let (_, name) = message.rsplit_once(" for key '")?;
    name.strip_suffix('\'')
}

/// A candidate unique key, and whether the message named it with its
/// table (MySQL 8) rather than alone (MariaDB).
struct Candidate {
    key: ViolatedKey,
    qualified: bool,
    on_expressions: bool,
}

/// Groups the rows of [`keys_and_triggers`] (sorted by table and key) into
/// one candidate per key; an expression empties the key's columns.
fn group(
    reported: &str,
    rows: impl Iterator<Item = (String, String, String, Option<String>, i64)>,
) -> Vec<Candidate> {
    let mut candidates: Vec<Candidate> = Vec::new();
    for (_, table, name, column, _) in rows {
        let same = candidates.last().is_some_and(|c| {
            c.key.table.as_deref() == Some(table.as_str()) && c.key.name.as_deref() == Some(&name)
        });
        if !same {
            candidates.push(Candidate {
                qualified: reported != name && reported == format!("{table}.{name}"),
                on_expressions: false,
                key: ViolatedKey {
                    table: Some(table),
                    name: Some(name),
                    columns: Vec::new(),
                },
            });
        }
        let candidate = candidates.last_mut().expect("pushed above");
        match column {
            Some(column) if !candidate.on_expressions => candidate.key.columns.push(column),
            Some(_) => {}
            None => {
                candidate.on_expressions = true;
                candidate.key.columns.clear();
            }
        }
    }
    candidates
}
