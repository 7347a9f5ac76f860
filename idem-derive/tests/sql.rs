//! The SQL `#[derive(StateMachine)]` compiles each transition to, exactly,
//! per dialect: one guarded `UPDATE` per transition with the key as the
//! only parameter and the states as literals.

use idem_core::{Dialect, KeyFamily, ManySql, State};
use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(table = "billing.invoices", column = "status", key = "id")]
#[state_machine(history = "invoice_history")]
#[state_machine(transitions(
    issue: Draft -> Issued,
    pay: Issued -> Paid,
    void: Draft | Issued -> Void,
    archive: _ -> Archived,
))]
#[state_machine(assign(pay, paid_at = "CURRENT_TIMESTAMP"))]
enum Invoice {
    #[state_machine(initial)]
    Draft,
    Issued,
    Paid,
    Void,
    Archived,
}

fn sql(t: &'static idem_core::Transition<Invoice>, d: Dialect) -> &'static idem_core::DialectSql {
    t.sql_for(d).expect("the enum has a table binding")
}

fn batch(parts: &[&str], n: usize, lists: &[&idem_core::List]) -> String {
    let mut text = parts[0].to_owned();
    for (list, part) in lists.iter().zip(&parts[1..]) {
        let items: Vec<String> = (0..n)
            .map(|i| list.item.replace('#', &i.to_string()))
            .collect();
        text.push_str(&items.join(list.separator));
        text.push_str(part);
    }
    text
}

#[test]
fn postgres_reports_before_and_applied_and_writes_history_in_one_statement() {
    let pay = sql(Invoice::pay(), Dialect::Postgres);
    let tag = pay.apply.tag.expect("PostgreSQL statements are tagged");
    assert!(
        tag.starts_with("idem:Invoice.pay:") && tag.ends_with(":apply"),
        "{tag}"
    );
    assert_eq!(
        pay.apply.get(KeyFamily::Integer),
        format!(
            "WITH prev AS (SELECT \"status\" AS s FROM \"billing\".\"invoices\" WHERE \"id\" = CAST($1 AS int8)), \
             upd AS (UPDATE \"billing\".\"invoices\" SET \"paid_at\" = CURRENT_TIMESTAMP, \"status\" = 'paid' \
             WHERE \"id\" = CAST($1 AS int8) AND \"status\" IN ('issued') AND \"status\" = (SELECT s FROM prev) \
             RETURNING \"id\" AS k), \
             hist AS (INSERT INTO \"invoice_history\" (\"entity_key\", \"transition\", \"from_state\", \"to_state\") \
             SELECT CAST(k AS TEXT), 'pay', CAST((SELECT s FROM prev) AS TEXT), 'paid' FROM upd) \
             SELECT '{tag}' AS tag, CAST((SELECT s FROM prev) AS TEXT) AS before, EXISTS (SELECT 1 FROM upd) AS applied, \
             EXISTS (SELECT 1 FROM prev) AS found"
        )
    );
    assert_eq!(
        pay.current.get(KeyFamily::Uuid),
        format!(
            "SELECT '{}' AS tag, CAST(t.\"status\" AS TEXT) AS state, t.\"id\" IS NOT NULL AS found \
             FROM (SELECT 1) AS one LEFT JOIN \"billing\".\"invoices\" AS t ON t.\"id\" = CAST($1 AS uuid)",
            pay.current.tag.unwrap()
        )
    );
    assert!(pay.apply_from.is_empty() && pay.history.is_empty());
    let ManySql::Whole(many) = &pay.many else {
        panic!("PostgreSQL batches in one statement")
    };
    assert_eq!(
        many.get(KeyFamily::Text),
        format!(
            "WITH u AS (SELECT k, ord, min(ord) OVER (PARTITION BY k) AS first \
             FROM unnest(CAST($1 AS text[])) WITH ORDINALITY AS x(k, ord)), \
             prev AS (SELECT \"id\" AS k, \"status\" AS s FROM \"billing\".\"invoices\" WHERE \"id\" = ANY(CAST($1 AS text[])) \
             AND CAST(\"id\" AS text) COLLATE \"C\" = ANY(CAST($1 AS text[]))), \
             upd AS (UPDATE \"billing\".\"invoices\" SET \"paid_at\" = CURRENT_TIMESTAMP, \"status\" = 'paid' \
             FROM prev WHERE \"billing\".\"invoices\".\"id\" = prev.k AND \"billing\".\"invoices\".\"status\" = prev.s \
             AND prev.s IN ('issued') \
             AND NOT EXISTS (SELECT 1 FROM prev AS p WHERE p.s IS NULL OR CAST(p.s AS TEXT) NOT IN ('draft', 'issued', 'paid', 'void', 'archived')) \
             RETURNING prev.k, prev.s), \
             hist AS (INSERT INTO \"invoice_history\" (\"entity_key\", \"transition\", \"from_state\", \"to_state\") \
             SELECT CAST(k AS TEXT), 'pay', CAST(s AS TEXT), 'paid' FROM upd) \
             SELECT CASE WHEN u.ord = 1 THEN '{}' END AS tag, u.ord, CAST(prev.s AS TEXT) AS before, \
             (upd.k IS NOT NULL AND u.ord = u.first) AS applied, prev.k IS NOT NULL AS found \
             FROM u LEFT JOIN prev ON prev.k = u.k AND CAST(prev.k AS text) COLLATE \"C\" = u.k \
             LEFT JOIN upd ON upd.k = u.k AND CAST(upd.k AS text) COLLATE \"C\" = u.k ORDER BY u.ord",
            many.tag.unwrap()
        )
    );
}

/// Each statement of each transition has a tag of its own.
#[test]
fn every_postgres_statement_has_its_own_tag() {
    let mut tags = Vec::new();
    for t in Invoice::TRANSITIONS {
        let s = sql(t, Dialect::Postgres);
        let ManySql::Whole(many) = &s.many else {
            panic!("PostgreSQL batches in one statement")
        };
        for statement in [&s.apply, &s.current, many] {
            let tag = statement.tag.expect("PostgreSQL statements are tagged");
            for family in KeyFamily::ALL {
                assert!(statement.get(family).contains(&format!("'{tag}'")));
            }
            tags.push(tag);
        }
    }
    let mut unique = tags.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), tags.len(), "{tags:?}");
    let mysql = sql(Invoice::pay(), Dialect::MySql);
    assert_eq!((mysql.apply.tag, mysql.current.tag), (None, None));
}

#[test]
fn mysql_guards_on_key_and_sources_and_reads_with_a_lock() {
    let exact = "CAST(CONVERT(`id` USING utf8mb4) AS BINARY) = CAST(? AS BINARY)";
    let issue = sql(Invoice::issue(), Dialect::MySql);
    assert_eq!(
        issue.apply.get(KeyFamily::Integer),
        format!(
            "UPDATE `billing`.`invoices` SET `status` = 'issued' WHERE `id` = ? AND {exact} \
             AND `status` IN ('draft')"
        )
    );
    assert_eq!(issue.apply.binds, 2);
    assert_eq!(
        issue.current.get(KeyFamily::Text),
        format!(
            "SELECT CAST(`status` AS CHAR) FROM `billing`.`invoices` WHERE `id` = ? AND {exact} \
             LOCK IN SHARE MODE"
        )
    );
    assert_eq!(
        issue.history,
        [
            "INSERT INTO `invoice_history` (`entity_key`, `transition`, `from_state`, `to_state`) \
          VALUES (?, 'issue', 'draft', 'issued')"
        ]
    );
    let void = sql(Invoice::void(), Dialect::MySql);
    assert_eq!(
        void.apply.get(KeyFamily::Uuid),
        "UPDATE `billing`.`invoices` SET `status` = IF(LAST_INSERT_ID(FIELD(`status`, 'draft', 'issued')) > 0, \
         'void', 'void') WHERE `id` = ? AND CAST(`id` AS BINARY) = CAST(? AS BINARY) \
         AND `status` IN ('draft', 'issued')"
    );
    let ManySql::Chunked { read, from } = &void.many else {
        panic!("MySQL batches in chunks")
    };
    let read = read.get(KeyFamily::Integer);
    let lists: Vec<&idem_core::List> = read.lists.iter().collect();
    assert_eq!(
        batch(read.parts, 2, &lists),
        "SELECT CASE CAST(CONVERT(`id` USING utf8mb4) AS BINARY) WHEN CAST(? AS BINARY) THEN 0 \
         WHEN CAST(? AS BINARY) THEN 1 END, CAST(`status` AS CHAR) FROM `billing`.`invoices` \
         WHERE `id` IN (?, ?) AND CAST(CONVERT(`id` USING utf8mb4) AS BINARY) IN \
         (CAST(? AS BINARY), CAST(? AS BINARY)) LOCK IN SHARE MODE"
    );
    let update = from[1].get(KeyFamily::Integer);
    let lists: Vec<&idem_core::List> = update.lists.iter().collect();
    assert_eq!(
        batch(update.parts, 2, &lists),
        "UPDATE `billing`.`invoices` SET `status` = 'void' WHERE `status` = 'issued' AND `id` IN (?, ?) \
         AND CAST(CONVERT(`id` USING utf8mb4) AS BINARY) IN (CAST(? AS BINARY), CAST(? AS BINARY))"
    );
}

#[test]
fn sqlite_has_a_compare_and_set_per_source_for_multi_source_transitions() {
    let exact = "CAST(\"id\" AS TEXT) COLLATE BINARY = CAST(? AS TEXT)";
    let pay = sql(Invoice::pay(), Dialect::Sqlite);
    assert_eq!(
        pay.apply.get(KeyFamily::Integer),
        format!(
            "UPDATE \"billing\".\"invoices\" SET \"paid_at\" = CURRENT_TIMESTAMP, \"status\" = 'paid' \
             WHERE \"id\" = ? AND {exact} AND \"status\" IN ('issued')"
        )
    );
    assert!(
        pay.apply_from.is_empty(),
        "one source: the guarded update is the compare-and-set"
    );
    let void = sql(Invoice::void(), Dialect::Sqlite);
    let from: Vec<&str> = void
        .apply_from
        .iter()
        .map(|s| s.get(KeyFamily::Text))
        .collect();
    assert_eq!(
        from,
        [
            format!("UPDATE \"billing\".\"invoices\" SET \"status\" = 'void' WHERE \"id\" = ? AND {exact} AND \"status\" = 'draft'"),
            format!("UPDATE \"billing\".\"invoices\" SET \"status\" = 'void' WHERE \"id\" = ? AND {exact} AND \"status\" = 'issued'"),
        ]
    );
    assert_eq!(
        void.current.get(KeyFamily::Integer),
        format!("SELECT CAST(\"status\" AS TEXT) FROM \"billing\".\"invoices\" WHERE \"id\" = ? AND {exact}")
    );
    // The batch read joins a numbered VALUES list to the table by its key.
    let ManySql::Chunked { read, .. } = &void.many else {
        panic!("SQLite batches in chunks")
    };
    let read = read.get(KeyFamily::Integer);
    let lists: Vec<&idem_core::List> = read.lists.iter().collect();
    assert_eq!(
        batch(read.parts, 3, &lists),
        "WITH u(ord, k) AS (VALUES (0, ?), (1, ?), (2, ?)) SELECT u.ord, CAST(t.\"status\" AS TEXT) FROM u \
         JOIN \"billing\".\"invoices\" AS t ON t.\"id\" = u.k \
         AND CAST(t.\"id\" AS TEXT) COLLATE BINARY = CAST(u.k AS TEXT)"
    );
}

#[test]
fn a_wildcard_guards_on_every_state_but_the_target() {
    let archive = sql(Invoice::archive(), Dialect::Sqlite);
    assert!(archive
        .apply
        .get(KeyFamily::Integer)
        .ends_with("AND \"status\" IN ('draft', 'issued', 'paid', 'void')"));
    assert_eq!(archive.apply_from.len(), 4);
    assert_eq!(archive.history.len(), 4);
}

/// Every statement binds only the key: once on PostgreSQL (`$1`, however
/// often it appears), `binds` times on MySQL and SQLite; history rows
/// bind the key's text form once.
#[test]
fn every_statement_binds_only_the_key() {
    for t in Invoice::TRANSITIONS {
        for d in Dialect::ALL {
            let s = sql(t, d);
            for keyed in [&s.apply, &s.current].into_iter().chain(s.apply_from) {
                for family in KeyFamily::ALL {
                    let statement = keyed.get(family);
                    let params = match d {
                        Dialect::Postgres => {
                            assert!(!statement.contains("$2"), "{statement}");
                            usize::from(statement.contains("$1"))
                        }
                        Dialect::MySql | Dialect::Sqlite => statement.matches('?').count(),
                    };
                    assert_eq!(params, keyed.binds, "{} {d:?}: {statement}", t.name());
                    assert!(!statement.contains("FOR UPDATE"), "{statement}");
                }
            }
            for statement in s.history {
                assert_eq!(statement.matches('?').count(), 1, "{statement}");
            }
        }
    }
}

#[test]
fn the_sql_is_a_static_constant() {
    // No allocation: the statement is a `&'static str` inside a constant.
    const PAY: &str = match Invoice::pay().sql() {
        Some(sql) => sql.postgres.current.get(KeyFamily::Integer),
        None => "",
    };
    assert!(PAY.starts_with("SELECT"));
}
