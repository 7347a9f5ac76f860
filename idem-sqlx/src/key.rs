//! The row keys a transition can be applied to.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::Hash;

use crate::Backend;
use idem_core::KeyFamily;

/// A row key as idem binds it: one of the families of values every
/// backend compares exactly (see [`KeyFamily`]).
///
/// Every integer width is one [`KeyValue::Int`], bound as a 64-bit
/// integer: `7i32` and `7i64` are the same key and share one statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyValue<'a> {
    /// An integer key (`i16`, `i32`, `i64`).
    Int(i64),
    /// A text key (`String`, `&str`).
    Text(&'a str),
    /// A UUID key (bound as PostgreSQL's `uuid`, and as its 16 bytes on
    /// MySQL and SQLite).
    #[cfg(feature = "uuid")]
    Uuid(uuid::Uuid),
}

impl KeyValue<'_> {
    /// The key's family, which picks the statement text it is sent with.
    pub fn family(&self) -> KeyFamily {
        match self {
            KeyValue::Int(_) => KeyFamily::Integer,
            KeyValue::Text(_) => KeyFamily::Text,
            #[cfg(feature = "uuid")]
            KeyValue::Uuid(_) => KeyFamily::Uuid,
        }
    }

    /// The key's text form, as a history table's `entity_key` stores it
    /// (what PostgreSQL's `CAST(key AS TEXT)` gives: decimal digits, the
    /// string itself, a hyphenated lower-case UUID).
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            KeyValue::Int(i) => Cow::Owned(i.to_string()),
            KeyValue::Text(s) => Cow::Borrowed(s),
            #[cfg(feature = "uuid")]
            KeyValue::Uuid(u) => Cow::Owned(u.hyphenated().to_string()),
        }
    }
}

/// A value of a state machine's key column, bound as the only parameter
/// of a transition's statements.
///
/// Implemented for `i16`, `i32`, `i64`, `String` and `&str` on every
/// backend, and for `uuid::Uuid` with the `uuid` feature. Implement it for
/// a newtype of your own by returning the value it wraps:
///
/// ```
/// use idem_sqlx::{Backend, Key, KeyValue};
///
/// #[derive(PartialEq, Eq, Hash)]
/// struct InvoiceId(i64);
///
/// impl<DB: Backend> Key<DB> for InvoiceId {
///     fn value(&self) -> KeyValue<'_> {
///         KeyValue::Int(self.0)
///     }
/// }
/// ```
///
/// `Eq` and `Hash` find the keys a batch repeats in time linear in its
/// size; they must agree with [`value`](Key::value) (equal keys, equal
/// values).
///
/// How a key meets the key column, by backend:
///
/// - **PostgreSQL** compares the column with the key cast to its family's
///   type (`int8`, `text`, `uuid`), a text key byte for byte whatever the
///   column's collation. A family the column's type cannot be compared
///   with (a `&str` key on a `BIGINT` column, an `i64` on a `TEXT` one) is
///   [`Error::KeyType`](crate::Error::KeyType), never a conversion.
/// - **MySQL/MariaDB and SQLite** select the row by `key = ?` and by the
///   exact bytes of both text forms: the row must hold exactly the key
///   (`7` for `7`, `07` only for `"07"`), whatever the column's type and
///   collation. A key that merely converts to the row's value (`"7abc"`,
///   `"07"`, `" 7"` or `"7.0"` against an integer 7) or that a collation
///   calls equal (`"ACME"` or `"acme "` against `acme`) finds no row:
///   [`Outcome::NotFound`](idem_core::Outcome::NotFound). A column whose
///   text form of a value is not the key's (`7.00` in a `DECIMAL(10,2)`,
///   `7.0` in a SQLite `REAL`) finds no row for the integer 7 either:
///   give such a table a key column of the key's type.
pub trait Key<DB: Backend>: Eq + Hash + Send + Sync {
    /// The key as idem binds it.
    fn value(&self) -> KeyValue<'_>;
}

macro_rules! integer_keys {
    ($($t:ty),*) => {$(
        impl<DB: Backend> Key<DB> for $t {
            fn value(&self) -> KeyValue<'_> {
                KeyValue::Int(i64::from(*self))
            }
        }
    )*};
}

integer_keys!(i16, i32, i64);

impl<DB: Backend> Key<DB> for String {
    fn value(&self) -> KeyValue<'_> {
        KeyValue::Text(self)
    }
}

impl<DB: Backend> Key<DB> for &str {
    fn value(&self) -> KeyValue<'_> {
        KeyValue::Text(self)
    }
}

#[cfg(feature = "uuid")]
impl<DB: Backend> Key<DB> for uuid::Uuid {
    fn value(&self) -> KeyValue<'_> {
        KeyValue::Uuid(*self)
    }
}

/// The error of a batch whose keys are of several families (a [`Key`]
/// implementation returning several kinds of value): each family has its
/// own statement, so one batch statement cannot take them all.
pub(crate) fn mixed_families() -> crate::Error {
    crate::Error::Database(sqlx::Error::Encode(
        "the keys of one batch must all be of one family (integers, text or UUIDs): \
         a `Key` implementation returned several"
            .into(),
    ))
}

/// For each position of `keys`, the position of the key's first
/// occurrence when it is a repeat, `None` for a first occurrence.
pub(crate) fn repeats<K: Eq + Hash>(keys: &[K]) -> Vec<Option<usize>> {
    let mut first: HashMap<&K, usize> = HashMap::with_capacity(keys.len());
    keys.iter()
        .enumerate()
        .map(|(i, key)| match first.get(key) {
            Some(&at) => Some(at),
            None => {
                first.insert(key, i);
                None
            }
        })
        .collect()
}

/// The body of [`Backend::bind_key`] on one backend, whose driver types
/// are concrete: adds the key with its family's type (`i64`, `&str`,
/// `uuid::Uuid`).
macro_rules! bind_key {
    () => {
        fn bind_key<'q>(
            args: &mut <Self as sqlx::Database>::Arguments<'q>,
            value: $crate::KeyValue<'q>,
        ) -> Result<(), sqlx::error::BoxDynError> {
            use sqlx::Arguments as _;
            match value {
                $crate::KeyValue::Int(i) => args.add(i),
                $crate::KeyValue::Text(s) => args.add(s),
                #[cfg(feature = "uuid")]
                $crate::KeyValue::Uuid(u) => args.add(u),
            }
        }
    };
}

pub(crate) use bind_key;

/// The arguments binding `key` `times` times over (MySQL and SQLite
/// compare the key twice: `key = ? AND <exact> = CAST(? AS ...)`).
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) fn args<'q, DB: Backend, K: Key<DB>>(
    key: &'q K,
    times: usize,
) -> Result<DB::Arguments<'q>, crate::Error> {
    let mut args = DB::Arguments::default();
    for _ in 0..times {
        DB::bind_key(&mut args, key.value())
            .map_err(|e| crate::Error::Database(sqlx::Error::Encode(e)))?;
    }
    Ok(args)
}

/// The arguments of a statement that binds only the key's text form
/// (history rows on the backends that insert them separately).
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) fn text_args<'q, DB: Backend, K: Key<DB>>(
    key: &'q K,
) -> Result<DB::Arguments<'q>, crate::Error>
where
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    use sqlx::Arguments as _;
    let mut args = DB::Arguments::default();
    args.add(key.value().text().into_owned())
        .map_err(|e| crate::Error::Database(sqlx::Error::Encode(e)))?;
    Ok(args)
}
