//! SQLite lists the violated key's table and columns in the message
//! ("UNIQUE constraint failed: orders.a, orders.b"), or names the index
//! when it is on expressions ("UNIQUE constraint failed: index 'name'"):
//! no statement is needed, except to find the table of such an index. The
//! message never names a schema.

use futures::future::BoxFuture;
use sqlx::sqlite::SqliteConnection;
use sqlx::Sqlite;

use super::key::{BusinessKey, Verdict, ViolatedKey};
use super::InsertBackend;

impl InsertBackend for Sqlite {
    execute_on!();

    fn resolve<'c>(
        conn: &'c mut SqliteConnection,
        key: &'c BusinessKey,
        error: &'c sqlx::Error,
    ) -> BoxFuture<'c, Result<Verdict, sqlx::Error>> {
        Box::pin(async move {
            let failed = error
                .as_database_error()
                .and_then(|db| db.message().strip_prefix("UNIQUE constraint failed: "));
            let Some(failed) = failed else {
                return Ok(Verdict::Unresolved(
                    ViolatedKey::default(),
                    "the error does not name the violated key".into(),
                ));
            };
            if let Some(index) = failed
                .strip_prefix("index '")
                .and_then(|rest| rest.strip_suffix('\''))
            {
                let table: Option<String> = sqlx::query_scalar(&format!(
                    "SELECT tbl_name FROM {}.sqlite_master WHERE type = 'index' AND name = ?1",
                    quote(key.schema().unwrap_or("main"))
                ))
                .bind(index)
                .fetch_optional(&mut *conn)
                .await?;
                let on_key_table = table
                    .as_deref()
                    .is_some_and(|t| t.eq_ignore_ascii_case(key.table()));
                let violated = ViolatedKey {
                    table,
                    name: Some(index.to_owned()),
                    columns: Vec::new(),
                };
                return Ok(match violated.table {
                    Some(_) if !on_key_table => Verdict::Other(violated),
                    _ => Verdict::on_key_table(key, violated, true),
                });
            }
            Ok(match columns(failed) {
                Some((table, columns)) => {
                    let on_key_table = table.eq_ignore_ascii_case(key.table());
                    let violated = ViolatedKey {
                        table: Some(table.to_owned()),
                        name: None,
                        columns,
                    };
                    if on_key_table {
                        Verdict::on_key_table(key, violated, true)
                    } else {
                        Verdict::Other(violated)
                    }
                }
                None => Verdict::Unresolved(
                    ViolatedKey::default(),
                    format!("cannot read the key from {failed:?}"),
                ),
            })
        })
    }
}

/// The table and columns of "orders.a, orders.b"; `None` unless every
/// item is `table.column` of one table.
fn columns(list: &str) -> Option<(&str, Vec<String>)> {
    let mut table = None;
    let mut columns = Vec::new();
    for item in list.split(", ") {
        let (t, column) = item.split_once('.')?;
        if *table.get_or_insert(t) != t || column.is_empty() {
            return None;
        }
        columns.push(column.to_owned());
    }
    Some((table?, columns))
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
