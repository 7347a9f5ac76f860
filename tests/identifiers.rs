//! Identifiers compare byte for byte beyond idem's key and inbox tables
//! (tested in `keys.rs` and `inbox.rs`): a history table's `entity_key` on
//! every backend, and the key column of a state machine's own table on
//! MySQL/MariaDB, a table idem does not create, whatever its collation.

mod common;
mod transitions_support;

use idem::prelude::*;
use idem_sqlx::{history, Key};
use sqlx::Pool;
use transitions_support::{Account, Db};

/// Keys that differ only in case, trailing spaces, or accents (precomposed,
/// and a letter with a combining mark).
const KEYS: [&str; 6] = [
    "acme",
    "ACME",
    "acme ",
    "acme  ",
    "\u{e1}cme",
    "a\u{301}cme",
];

/// The history table keeps each key's rows apart: `entity_key = 'acme'`
/// finds `acme`'s two rows and no other key's. (On MySQL the history
/// table's `entity_key` is `VARBINARY`; in a text column the default
/// collation would count every key here as `acme`.) The state machine's
/// own table needs a byte-comparing key column too, or the six rows could
/// not exist side by side on MySQL.
async fn history_rows_of_keys_differing_only_in_case_space_or_accents_stay_apart<DB: Db>(
    pool: Pool<DB>,
) where
    String: Key<DB>,
{
    let (key, text) = if DB::BACKEND == "mysql" {
        ("VARBINARY(64)", "VARCHAR(16)")
    } else {
        ("TEXT", "TEXT")
    };
    let table = format!("CREATE TABLE accounts (code {key} PRIMARY KEY, state {text} NOT NULL)");
    DB::exec(&pool, &table).await;
    assert!(history::install::<Account, DB>(&pool).await.unwrap());
    for key in KEYS {
        let insert = format!("INSERT INTO accounts (code, state) VALUES ('{key}', 'open')");
        DB::exec(&pool, &insert).await;
    }
    use Account::*;
    for key in KEYS {
        let frozen = Account::freeze().apply(&pool, key.to_owned()).await;
        let applied = Outcome::Applied {
            from: Open,
            to: Frozen,
        };
        assert_eq!(frozen.unwrap(), applied, "{key:?}");
    }
    let closed = Account::close().apply(&pool, "acme".to_owned()).await;
    assert_eq!(
        closed.unwrap(),
        Outcome::Applied {
            from: Frozen,
            to: Closed
        }
    );
    for key in KEYS {
        let rows = format!("SELECT COUNT(*) FROM account_history WHERE entity_key = '{key}'");
        let expected = if key == "acme" { 2 } else { 1 };
        assert_eq!(DB::count(&pool, &rows).await, expected, "{key:?}");
    }
    let all = DB::count(&pool, "SELECT COUNT(*) FROM account_history").await;
    assert_eq!(all, KEYS.len() as i64 + 1);
}

macro_rules! on_every_backend {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                #[tokio::test]
                async fn sqlite() {
                    if let Some(pool) = <sqlx::Sqlite as super::Db>::pool(2).await {
                        super::$case(pool).await;
                    }
                }

                #[tokio::test]
                async fn postgres() {
                    if let Some(pool) = <sqlx::Postgres as super::Db>::pool(2).await {
                        super::$case(pool).await;
                    }
                }

                #[tokio::test]
                async fn mysql() {
                    if let Some(pool) = <sqlx::MySql as super::Db>::pool(2).await {
                        super::$case(pool).await;
                    }
                }
            }
        )*
    };
}

/// The key column of your own table with a collation that ignores case
/// (SQLite `NOCASE`, PostgreSQL's nondeterministic ICU collations, MySQL
/// `_ci`) or trailing spaces (SQLite `RTRIM`): a key finds only the row
/// holding exactly its bytes — `acme` and `acme ` find no row of `ACME`,
/// alone or in a batch beside `ACME`, which moves.
async fn a_key_column_collation_that_ignores_case_or_spaces_finds_only_the_keys_own_row<DB: Db>(
    pool: Pool<DB>,
) where
    String: Key<DB>,
{
    let columns: &[&str] = match DB::BACKEND {
        "postgres" => {
            DB::exec(
                &pool,
                "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', \
                 deterministic = false)",
            )
            .await;
            &["text COLLATE ci"]
        }
        "mysql" => &["VARCHAR(64) COLLATE utf8mb4_general_ci"],
        _ => &["TEXT COLLATE NOCASE", "TEXT COLLATE RTRIM"],
    };
    assert!(history::install::<Account, DB>(&pool).await.unwrap());
    let frozen = Outcome::Applied {
        from: Account::Open,
        to: Account::Frozen,
    };
    for column in columns {
        DB::exec(&pool, "DROP TABLE IF EXISTS accounts").await;
        let table = format!(
            "CREATE TABLE accounts (code {column} PRIMARY KEY, state VARCHAR(16) NOT NULL)"
        );
        DB::exec(&pool, &table).await;
        DB::exec(
            &pool,
            "INSERT INTO accounts (code, state) VALUES ('ACME', 'open')",
        )
        .await;
        for other in ["acme", "Acme", "ACME "] {
            for t in [Account::freeze(), Account::close()] {
                let found = t.apply(&pool, other.to_owned()).await.unwrap();
                assert_eq!(found, Outcome::NotFound, "{column} {} {other:?}", t.name());
            }
        }
        let many = Account::freeze()
            .apply_many(
                &pool,
                &["acme".to_owned(), "ACME".to_owned(), "ACME ".to_owned()],
            )
            .await
            .unwrap();
        assert_eq!(
            many,
            [Outcome::NotFound, frozen, Outcome::NotFound],
            "{column}"
        );
        let state = DB::text(&pool, "SELECT state FROM accounts").await;
        assert_eq!(state.as_deref(), Some("frozen"), "{column}");
    }
}

on_every_backend!(
    history_rows_of_keys_differing_only_in_case_space_or_accents_stay_apart,
    a_key_column_collation_that_ignores_case_or_spaces_finds_only_the_keys_own_row,
);

/// The key column of your own table on MySQL, whatever its collation:
/// idem selects the row by `key = ?` and by the exact bytes of both text
/// forms, so under the default `utf8mb4_general_ci` `apply` of `acme`
/// finds no row of `ACME`, under `utf8mb4_bin` (PAD SPACE) `acme ` none of
/// `acme`; a `latin1` column still finds its `ácme` for the key `ácme`
/// (its value is converted to utf8mb4 before the comparison), and
/// `VARBINARY` finds each key's own row. Through `apply` (one source and
/// several) and `apply_many`.
#[tokio::test]
async fn a_text_key_column_of_any_collation_finds_only_the_keys_own_row_on_mysql() {
    let Some(pool) = common::mysql(2).await else {
        return;
    };
    assert!(history::install::<Account, sqlx::MySql>(&pool)
        .await
        .unwrap());
    let state = |code: &'static str| {
        let pool = pool.clone();
        async move {
            let sql = format!("SELECT CAST(state AS CHAR) FROM accounts WHERE code = '{code}'");
            <sqlx::MySql as Db>::text(&pool, &sql).await.unwrap()
        }
    };
    let recreate = |column: &'static str, code: &'static str| {
        let pool = pool.clone();
        async move {
            <sqlx::MySql as Db>::exec(&pool, "DROP TABLE IF EXISTS accounts").await;
            let table = format!(
                "CREATE TABLE accounts (code {column} PRIMARY KEY, state VARCHAR(16) NOT NULL) \
                 DEFAULT CHARSET = utf8mb4"
            );
            <sqlx::MySql as Db>::exec(&pool, &table).await;
            let insert = format!("INSERT INTO accounts (code, state) VALUES ('{code}', 'open')");
            <sqlx::MySql as Db>::exec(&pool, &insert).await;
        }
    };
    let frozen = Outcome::Applied {
        from: Account::Open,
        to: Account::Frozen,
    };
    let not_found = |others: &'static [&'static str]| {
        let pool = pool.clone();
        async move {
            for other in others {
                for t in [Account::freeze(), Account::close()] {
                    let found = t.apply(&pool, other.to_string()).await.unwrap();
                    assert_eq!(found, Outcome::NotFound, "{} {other:?}", t.name());
                    let many = t.apply_many(&pool, &[other.to_string()]).await.unwrap();
                    assert_eq!(many, [Outcome::NotFound], "{} {other:?}", t.name());
                }
            }
        }
    };

    recreate("VARCHAR(64) COLLATE utf8mb4_general_ci", "ACME").await;
    not_found(&["acme", "ACME ", "\u{c1}CME", "acm\u{e9}"]).await;
    assert_eq!(state("ACME").await, "open");
    let own = Account::freeze().apply(&pool, "ACME".to_owned()).await;
    assert_eq!(own.unwrap(), frozen);

    recreate("VARCHAR(64) COLLATE utf8mb4_bin", "acme").await;
    not_found(&["acme ", "acme  "]).await;
    assert_eq!(state("acme").await, "open");
    let own = Account::freeze()
        .apply_many(&pool, &["acme".to_owned()])
        .await;
    assert_eq!(own.unwrap(), [frozen]);

    recreate("VARCHAR(64) CHARACTER SET latin1", "\u{e1}cme").await;
    not_found(&["acme", "\u{c1}CME"]).await;
    let own = Account::close().apply(&pool, "\u{e1}cme".to_owned()).await;
    assert_eq!(
        own.unwrap(),
        Outcome::Applied {
            from: Account::Open,
            to: Account::Closed
        }
    );

    recreate("VARBINARY(64)", "ACME").await;
    not_found(&["acme", "ACME ", "\u{c1}CME"]).await;
    assert_eq!(state("ACME").await, "open");
    let own = Account::freeze().apply(&pool, "ACME".to_owned()).await;
    assert_eq!(own.unwrap(), frozen);
}
