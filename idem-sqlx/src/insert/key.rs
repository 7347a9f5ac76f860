//! The business key a caller names, what a database reports about a
//! violated unique key, and the rule that compares them.

use std::fmt;

use crate::Error;

/// The unique key whose violation [`insert_once`](crate::insert_once)
/// reports as [`Insert::AlreadyExists`](crate::Insert::AlreadyExists): a
/// table and the columns of one of its unique constraints or unique
/// indexes (the primary key included).
///
/// The table may be schema-qualified (`"billing.orders"`); without a
/// schema it is the table the connection's search path (PostgreSQL), its
/// current database (MySQL) or `main` (SQLite) resolves. The columns are
/// a set: their order does not matter, but all of them must be named. Names
/// are compared as the database stores them: exactly on PostgreSQL (which
/// folds unquoted names to lower case: name `orders`, not `Orders`), and
/// ignoring ASCII case on MySQL/MariaDB and SQLite, whose column names are
/// case-insensitive.
///
/// ```
/// use idem_sqlx::BusinessKey;
///
/// let order = BusinessKey::new("orders", ["reference"])?;
/// assert_eq!(order.to_string(), "orders (reference)");
/// let request = BusinessKey::new("billing.invoices", ["client_id", "request_key"])?;
/// assert_eq!(request.schema(), Some("billing"));
/// assert!(BusinessKey::new("orders", Vec::<String>::new()).is_err());
/// # Ok::<(), idem_sqlx::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BusinessKey {
    schema: Option<String>,
    table: String,
    columns: Vec<String>,
}

impl BusinessKey {
    /// The unique key of `table` on `columns`.
    ///
    /// [`Error::InvalidBusinessKey`] when the table or a column is empty or
    /// holds a control character, the table has more than one `.`, no
    /// column is given, or a column is named twice.
    pub fn new<T, I, C>(table: T, columns: I) -> Result<Self, Error>
    where
        T: Into<String>,
        I: IntoIterator<Item = C>,
        C: Into<String>,
    {
        let table: String = table.into();
        let (schema, table) = match table.split_once('.') {
            Some((schema, table)) => (Some(schema.to_owned()), table.to_owned()),
            None => (None, table),
        };
        let columns: Vec<String> = columns.into_iter().map(Into::into).collect();
        for name in schema.iter().chain([&table]).chain(&columns) {
            check_name(name)?;
        }
        if table.contains('.') {
            return Err(invalid(format!(
                "`{table}`: name a table as `table` or `schema.table`"
            )));
        }
        if columns.is_empty() {
            return Err(invalid(format!(
                "no columns for `{table}`: name every column of the unique key"
            )));
        }
        for (i, column) in columns.iter().enumerate() {
            if columns[..i].iter().any(|c| c.eq_ignore_ascii_case(column)) {
                return Err(invalid(format!("column `{column}` is named twice")));
            }
        }
        Ok(BusinessKey {
            schema,
            table,
            columns,
        })
    }

    /// The schema the table was qualified with, if any.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// The table's name, without its schema.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The key's columns, in the order given.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Whether `columns` are this key's columns (as a set), comparing
    /// names exactly or ignoring ASCII case.
    pub(crate) fn has_columns(&self, columns: &[String], ignore_case: bool) -> bool {
        let same = |a: &String, b: &String| {
            if ignore_case {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        columns.len() == self.columns.len()
            && self
                .columns
                .iter()
                .all(|mine| columns.iter().any(|theirs| same(mine, theirs)))
    }
}

impl fmt::Display for BusinessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(schema) = &self.schema {
            write!(f, "{schema}.")?;
        }
        write!(f, "{} ({})", self.table, self.columns.join(", "))
    }
}

fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(invalid("an empty table, schema or column name".into()));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid(format!(
            "{name:?} holds a control character: name the table and columns as the database \
             stores them"
        )));
    }
    Ok(())
}

fn invalid(reason: String) -> Error {
    Error::InvalidBusinessKey(reason)
}

/// What the database reported (and idem looked up) about the unique
/// constraint that rejected a row: carried by
/// [`Error::OtherUniqueViolation`] and [`Error::UnresolvedUniqueViolation`].
/// Each field is what the backend makes known:
///
/// | | `table` | `name` | `columns` |
/// |---|---|---|---|
/// | PostgreSQL | from the error | the constraint (or unique index) | from `pg_index` |
/// | MySQL 8 | from the message (`orders.email`) | the key (`email`, `PRIMARY`) | from `information_schema.STATISTICS` |
/// | MariaDB | found by the key's name | the key (`email`, `PRIMARY`) | from `information_schema.STATISTICS` |
/// | SQLite | from the message | only for an index on expressions | from the message |
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct ViolatedKey {
    /// The table the violated key belongs to (without its schema), when
    /// known.
    pub table: Option<String>,
    /// The constraint's or unique index's name, when known.
    pub name: Option<String>,
    /// The key's columns in index order; empty when unknown or when the
    /// index is on expressions.
    pub columns: Vec<String>,
}

impl fmt::Display for ViolatedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unique key")?;
        if let Some(name) = &self.name {
            write!(f, " `{name}`")?;
        }
        if let Some(table) = &self.table {
            write!(f, " on `{table}`")?;
        }
        if !self.columns.is_empty() {
            write!(f, " ({})", self.columns.join(", "))?;
        }
        Ok(())
    }
}

/// Which key a unique violation was, as a backend resolved it.
#[derive(Debug)]
pub enum Verdict {
    /// The business key the caller named.
    BusinessKey,
    /// Another unique key.
    Other(ViolatedKey),
    /// Unknown, for the reason given.
    Unresolved(ViolatedKey, String),
}

impl Verdict {
    /// The verdict for a violated key known to be on the business key's
    /// table, with `columns` (empty: an index on expressions).
    pub(crate) fn on_key_table(
        key: &BusinessKey,
        violated: ViolatedKey,
        ignore_case: bool,
    ) -> Verdict {
        if violated.columns.is_empty() {
            return Verdict::Unresolved(
                violated,
                "the violated index is on expressions, not columns".into(),
            );
        }
        if key.has_columns(&violated.columns, ignore_case) {
            Verdict::BusinessKey
        } else {
            Verdict::Other(violated)
        }
    }
}
