//! PostgreSQL names the violated constraint, its table and schema on the
//! error; one catalog read gives the index's columns and whether it is on
//! the business key's table (or a partition of it).

use futures::future::BoxFuture;
use sqlx::postgres::{PgConnection, PgDatabaseError};
use sqlx::Postgres;

use super::key::{BusinessKey, Verdict, ViolatedKey};
use super::InsertBackend;

/// The index behind constraint `$2` of schema `$1`: whether it is on the
/// table `$3` (a quoted, maybe qualified name resolved like the one in an
/// `INSERT`) or one of its partitions, its columns in index order, and
/// whether any of its keys is an expression.
const INDEX: &str = "\
SELECT (i.indrelid = to_regclass($3) \
        OR i.indrelid IN (SELECT relid FROM pg_partition_tree(to_regclass($3)))) AS on_key_table, \
       ARRAY(SELECT a.attname::text \
             FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             ORDER BY k.n) AS columns, \
       i.indexprs IS NOT NULL AS on_expressions \
FROM pg_index i \
JOIN pg_class c ON c.oid = i.indexrelid \
JOIN pg_namespace n ON n.oid = c.relnamespace \
WHERE n.nspname = $1 AND c.relname = $2";

impl InsertBackend for Postgres {
    execute_on!();

    fn resolve<'c>(
        conn: &'c mut PgConnection,
        key: &'c BusinessKey,
        error: &'c sqlx::Error,
    ) -> BoxFuture<'c, Result<Verdict, sqlx::Error>> {
        Box::pin(async move {
            let pg = error
                .as_database_error()
                .and_then(|db| db.try_downcast_ref::<PgDatabaseError>());
            let violated = ViolatedKey {
                table: pg.and_then(PgDatabaseError::table).map(str::to_owned),
                name: pg.and_then(PgDatabaseError::constraint).map(str::to_owned),
                columns: Vec::new(),
            };
            let (Some(schema), Some(name)) = (
                pg.and_then(PgDatabaseError::schema),
                pg.and_then(PgDatabaseError::constraint),
            ) else {
                return Ok(Verdict::Unresolved(
                    violated,
                    "PostgreSQL did not name the violated constraint".into(),
                ));
            };
            let row: Option<(Option<bool>, Vec<String>, bool)> = sqlx::query_as(INDEX)
                .bind(schema)
                .bind(name)
                .bind(regclass(key))
                .fetch_optional(&mut *conn)
                .await?;
            let Some((on_key_table, columns, on_expressions)) = row else {
                return Ok(Verdict::Unresolved(
                    violated,
                    format!("no index `{name}` in schema `{schema}` (dropped meanwhile?)"),
                ));
            };
            let violated = ViolatedKey {
                columns: if on_expressions { Vec::new() } else { columns },
                ..violated
            };
            Ok(if on_key_table == Some(true) {
                Verdict::on_key_table(key, violated, false)
            } else {
                Verdict::Other(violated)
            })
        })
    }
}

/// The key's table as `to_regclass` reads it: each part double-quoted, so
/// that it names the table exactly as given.
fn regclass(key: &BusinessKey) -> String {
    let quote = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
    match key.schema() {
        Some(schema) => format!("{}.{}", quote(schema), quote(key.table())),
        None => quote(key.table()),
    }
}
