use crate::Transition;

/// A change this call made: handed to transition handlers, which run only
/// when the row actually moved, inside the same transaction.
#[derive(Debug)]
pub struct Change<'k, S: 'static, K: ?Sized> {
    /// The transition that was applied.
    pub transition: &'static Transition<S>,
    /// The key of the row that moved.
    pub key: &'k K,
    /// The state the row was in.
    pub from: S,
    /// The state the row is in now.
    pub to: S,
}

impl<S: 'static, K: ?Sized> Clone for Change<'_, S, K>
where
    S: Copy,
{
    fn clone(&self) -> Self {
        *self
    }
}

impl<S: 'static, K: ?Sized> Copy for Change<'_, S, K> where S: Copy {}
