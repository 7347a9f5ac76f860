//! The row keys a transition can be applied to.

use std::collections::HashMap;
use std::hash::Hash;

use sqlx::error::BoxDynError;
use sqlx::{Arguments, Database};

use crate::Backend;

/// A value of a state machine's key column, bound as the single parameter
/// of a transition's statements.
///
/// Implemented for `i64`, `i32`, `String` and `&str` on every backend, and
/// for `uuid::Uuid` with the `uuid` feature. `Eq` and `Hash` find the keys
/// a batch repeats in time linear in its size.
pub trait Key<DB: Backend>: Eq + Hash + Send + Sync {
    /// Adds the key to a statement's arguments.
    fn add_to<'q>(&'q self, args: &mut DB::Arguments<'q>) -> Result<(), BoxDynError>;

    /// Adds the key's text form, as stored in a history table's
    /// `entity_key` (the same text PostgreSQL's `CAST(key AS TEXT)` gives:
    /// decimal digits, the string itself, a hyphenated UUID).
    fn add_text_to<'q>(&'q self, args: &mut DB::Arguments<'q>) -> Result<(), BoxDynError>;

    /// Adds a batch of keys: one array parameter on PostgreSQL, one
    /// parameter per key elsewhere.
    fn add_many_to<'q>(keys: &'q [Self], args: &mut DB::Arguments<'q>) -> Result<(), BoxDynError>
    where
        Self: Sized;
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

/// The arguments of a statement that binds only `key`.
pub(crate) fn args<'q, DB: Backend, K: Key<DB>>(
    key: &'q K,
) -> Result<DB::Arguments<'q>, sqlx::Error> {
    let mut args = DB::Arguments::default();
    key.add_to(&mut args).map_err(sqlx::Error::Encode)?;
    Ok(args)
}

/// The arguments of a statement that binds only the key's text form
/// (history rows on the backends that insert them separately).
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) fn text_args<'q, DB: Backend, K: Key<DB>>(
    key: &'q K,
) -> Result<DB::Arguments<'q>, sqlx::Error> {
    let mut args = DB::Arguments::default();
    key.add_text_to(&mut args).map_err(sqlx::Error::Encode)?;
    Ok(args)
}

/// `array`: a batch is one array parameter (PostgreSQL); `each`: one
/// parameter per key.
macro_rules! keys {
    ($many:ident, $db:ty: $($k:ty),*) => {$(
        impl Key<$db> for $k {
            fn add_to<'q>(
                &'q self,
                args: &mut <$db as Database>::Arguments<'q>,
            ) -> Result<(), BoxDynError> {
                args.add(self)
            }

            fn add_text_to<'q>(
                &'q self,
                args: &mut <$db as Database>::Arguments<'q>,
            ) -> Result<(), BoxDynError> {
                args.add(self.to_string())
            }

            fn add_many_to<'q>(
                keys: &'q [Self],
                args: &mut <$db as Database>::Arguments<'q>,
            ) -> Result<(), BoxDynError> {
                keys!(@$many keys, args)
            }
        }
    )*};
    (@array $keys:ident, $args:ident) => {
        $args.add($keys)
    };
    (@each $keys:ident, $args:ident) => {{
        for key in $keys {
            $args.add(key)?;
        }
        Ok(())
    }};
}

/// `&str` keys, borrowed for the statement.
macro_rules! str_key {
    ($many:ident, $db:ty) => {
        impl Key<$db> for &str {
            fn add_to<'q>(
                &'q self,
                args: &mut <$db as Database>::Arguments<'q>,
            ) -> Result<(), BoxDynError> {
                args.add(&**self)
            }

            fn add_text_to<'q>(
                &'q self,
                args: &mut <$db as Database>::Arguments<'q>,
            ) -> Result<(), BoxDynError> {
                args.add(&**self)
            }

            fn add_many_to<'q>(
                keys: &'q [Self],
                args: &mut <$db as Database>::Arguments<'q>,
            ) -> Result<(), BoxDynError> {
                keys!(@$many keys, args)
            }
        }
    };
}

#[cfg(feature = "postgres")]
keys!(array, sqlx::Postgres: i64, i32, String);
#[cfg(all(feature = "postgres", feature = "uuid"))]
keys!(array, sqlx::Postgres: uuid::Uuid);
#[cfg(feature = "postgres")]
str_key!(array, sqlx::Postgres);

#[cfg(feature = "mysql")]
keys!(each, sqlx::MySql: i64, i32, String);
#[cfg(all(feature = "mysql", feature = "uuid"))]
keys!(each, sqlx::MySql: uuid::Uuid);
#[cfg(feature = "mysql")]
str_key!(each, sqlx::MySql);

#[cfg(feature = "sqlite")]
keys!(each, sqlx::Sqlite: i64, i32, String);
#[cfg(all(feature = "sqlite", feature = "uuid"))]
keys!(each, sqlx::Sqlite: uuid::Uuid);
#[cfg(feature = "sqlite")]
str_key!(each, sqlx::Sqlite);
