//! The SQL `#[derive(StateMachine)]` compiles each transition to, exactly,
//! per dialect: one guarded `UPDATE` per transition with the key as the
//! only parameter and the states as literals.

use idem_core::{Dialect, State};
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

#[test]
fn postgres_reports_before_and_applied_and_writes_history_in_one_statement() {
    let pay = sql(Invoice::pay(), Dialect::Postgres);
    assert_eq!(
        pay.apply,
        "WITH prev AS (SELECT \"status\" AS s FROM \"billing\".\"invoices\" WHERE \"id\" = $1), \
         upd AS (UPDATE \"billing\".\"invoices\" SET \"paid_at\" = CURRENT_TIMESTAMP, \"status\" = 'paid' \
         WHERE \"id\" = $1 AND \"status\" IN ('issued') AND \"status\" = (SELECT s FROM prev) \
         RETURNING \"id\" AS k), \
         hist AS (INSERT INTO \"invoice_history\" (\"entity_key\", \"transition\", \"from_state\", \"to_state\") \
         SELECT CAST(k AS TEXT), 'pay', CAST((SELECT s FROM prev) AS TEXT), 'paid' FROM upd) \
         SELECT CAST((SELECT s FROM prev) AS TEXT) AS before, EXISTS (SELECT 1 FROM upd) AS applied, \
         EXISTS (SELECT 1 FROM prev) AS found"
    );
    assert_eq!(
        pay.current,
        "SELECT CAST(\"status\" AS TEXT) FROM \"billing\".\"invoices\" WHERE \"id\" = $1"
    );
    assert!(pay.apply_from.is_empty() && pay.history.is_empty() && pay.many_from.is_empty());
    assert_eq!(
        pay.many,
        ["WITH u AS (SELECT k, ord, min(ord) OVER (PARTITION BY k) AS first \
          FROM unnest($1) WITH ORDINALITY AS x(k, ord)), \
          prev AS (SELECT \"id\" AS k, \"status\" AS s FROM \"billing\".\"invoices\" WHERE \"id\" = ANY($1)), \
          upd AS (UPDATE \"billing\".\"invoices\" SET \"paid_at\" = CURRENT_TIMESTAMP, \"status\" = 'paid' \
          FROM prev WHERE \"billing\".\"invoices\".\"id\" = prev.k AND \"billing\".\"invoices\".\"status\" = prev.s \
          AND prev.s IN ('issued') \
          AND NOT EXISTS (SELECT 1 FROM prev AS p WHERE p.s IS NULL OR CAST(p.s AS TEXT) NOT IN ('draft', 'issued', 'paid', 'void', 'archived')) \
          RETURNING prev.k, prev.s), \
          hist AS (INSERT INTO \"invoice_history\" (\"entity_key\", \"transition\", \"from_state\", \"to_state\") \
          SELECT CAST(k AS TEXT), 'pay', CAST(s AS TEXT), 'paid' FROM upd) \
          SELECT u.ord, CAST(prev.s AS TEXT) AS before, (upd.k IS NOT NULL AND u.ord = u.first) AS applied, \
          prev.k IS NOT NULL AS found \
          FROM u LEFT JOIN prev ON prev.k = u.k LEFT JOIN upd ON upd.k = u.k \
          ORDER BY u.ord"]
    );
}

#[test]
fn mysql_guards_on_key_and_sources_and_reads_with_a_lock() {
    let issue = sql(Invoice::issue(), Dialect::MySql);
    assert_eq!(
        issue.apply,
        "UPDATE `billing`.`invoices` SET `status` = 'issued' WHERE `id` = ? AND `status` IN ('draft')"
    );
    assert_eq!(
        issue.current,
        "SELECT CAST(`status` AS CHAR) FROM `billing`.`invoices` WHERE `id` = ? LOCK IN SHARE MODE"
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
        void.apply,
        "UPDATE `billing`.`invoices` SET `status` = IF(LAST_INSERT_ID(FIELD(`status`, 'draft', 'issued')) > 0, \
         'void', 'void') WHERE `id` = ? AND `status` IN ('draft', 'issued')"
    );
    assert_eq!(
        void.many,
        [
            "SELECT CASE `id`",
            " END, CAST(`status` AS CHAR) FROM `billing`.`invoices` WHERE `id` IN (",
            ") LOCK IN SHARE MODE",
        ]
    );
    assert_eq!(
        void.many_from,
        [
            "UPDATE `billing`.`invoices` SET `status` = 'void' WHERE `status` = 'draft' AND `id` IN (",
            "UPDATE `billing`.`invoices` SET `status` = 'void' WHERE `status` = 'issued' AND `id` IN (",
        ]
    );
}

#[test]
fn sqlite_has_a_compare_and_set_per_source_for_multi_source_transitions() {
    let pay = sql(Invoice::pay(), Dialect::Sqlite);
    assert_eq!(
        pay.apply,
        "UPDATE \"billing\".\"invoices\" SET \"paid_at\" = CURRENT_TIMESTAMP, \"status\" = 'paid' \
         WHERE \"id\" = ? AND \"status\" IN ('issued')"
    );
    assert!(
        pay.apply_from.is_empty(),
        "one source: the guarded update is the compare-and-set"
    );
    let void = sql(Invoice::void(), Dialect::Sqlite);
    assert_eq!(
        void.apply_from,
        [
            "UPDATE \"billing\".\"invoices\" SET \"status\" = 'void' WHERE \"id\" = ? AND \"status\" = 'draft'",
            "UPDATE \"billing\".\"invoices\" SET \"status\" = 'void' WHERE \"id\" = ? AND \"status\" = 'issued'",
        ]
    );
    assert_eq!(
        void.current,
        "SELECT CAST(\"status\" AS TEXT) FROM \"billing\".\"invoices\" WHERE \"id\" = ?"
    );
    // The batch read joins a numbered VALUES list to the table by its key.
    assert_eq!(
        void.many,
        [
            "WITH u(ord, k) AS (VALUES ",
            ") SELECT u.ord, CAST(t.\"status\" AS TEXT) FROM u \
             JOIN \"billing\".\"invoices\" AS t ON t.\"id\" = u.k",
            "",
        ]
    );
}

#[test]
fn a_wildcard_guards_on_every_state_but_the_target() {
    let archive = sql(Invoice::archive(), Dialect::Sqlite);
    assert_eq!(
        archive.apply,
        "UPDATE \"billing\".\"invoices\" SET \"status\" = 'archived' \
         WHERE \"id\" = ? AND \"status\" IN ('draft', 'issued', 'paid', 'void')"
    );
    assert_eq!(archive.apply_from.len(), 4);
    assert_eq!(archive.history.len(), 4);
}

#[test]
fn every_statement_binds_only_the_key() {
    for t in Invoice::TRANSITIONS {
        for d in Dialect::ALL {
            let s = sql(t, d);
            let singles = [s.apply, s.current]
                .into_iter()
                .chain(s.apply_from.iter().copied())
                .chain(s.history.iter().copied());
            for statement in singles {
                let params = match d {
                    Dialect::Postgres => statement.matches("$2").count(),
                    Dialect::MySql | Dialect::Sqlite => {
                        statement.matches('?').count().saturating_sub(1)
                    }
                };
                assert_eq!(params, 0, "{} {d:?}: {statement}", t.name());
                assert!(!statement.contains("FOR UPDATE"), "{statement}");
            }
        }
    }
}

#[test]
fn the_sql_is_a_static_constant() {
    // No allocation: the statement is a `&'static str` inside a constant.
    const PAY: &str = match Invoice::pay().sql() {
        Some(sql) => sql.postgres.current,
        None => "",
    };
    assert!(PAY.starts_with("SELECT"));
}
