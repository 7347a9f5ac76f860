//! Collects every error of one derive so the user sees them all at once
//! (serde_derive's `Ctxt`).

use std::cell::RefCell;
use std::fmt::Display;

use quote::ToTokens;

#[derive(Default)]
pub(crate) struct Ctxt {
    errors: RefCell<Vec<syn::Error>>,
}

impl Ctxt {
    /// An error spanned on `tokens`.
    pub(crate) fn error_spanned_by<T: ToTokens, M: Display>(&self, tokens: T, message: M) {
        self.syn_error(syn::Error::new_spanned(tokens, message));
    }

    /// A duplicate: the error at the second occurrence, a note at the first.
    pub(crate) fn duplicate<A: ToTokens, B: ToTokens, M: Display>(
        &self,
        second: A,
        first: B,
        message: M,
    ) {
        let mut error = syn::Error::new_spanned(second, message);
        error.combine(syn::Error::new_spanned(first, "first defined here"));
        self.syn_error(error);
    }

    pub(crate) fn syn_error(&self, error: syn::Error) {
        self.errors.borrow_mut().push(error);
    }

    /// All errors combined into one, if there were any.
    pub(crate) fn check(self) -> syn::Result<()> {
        let mut errors = self.errors.into_inner().into_iter();
        let Some(mut combined) = errors.next() else {
            return Ok(());
        };
        for error in errors {
            combined.combine(error);
        }
        Err(combined)
    }
}

/// ` did you mean `x`?` when one of `candidates` is a likely typo of
/// `name`, else nothing.
pub(crate) fn did_you_mean<S: AsRef<str>>(
    name: &str,
    candidates: impl IntoIterator<Item = S>,
) -> String {
    let best = candidates
        .into_iter()
        .map(|candidate| (edit_distance(name, candidate.as_ref()), candidate))
        .min_by_key(|(distance, _)| *distance);
    let len = name.chars().count();
    let limit = if len <= 3 { 1 } else { (len / 3).max(2) };
    match best {
        Some((distance, candidate)) if distance <= limit => {
            format!(" did you mean `{}`?", candidate.as_ref())
        }
        _ => String::new(),
    }
}

/// Levenshtein distance, case-insensitive.
fn edit_distance(a: &str, b: &str) -> usize {
    let a = a.to_lowercase().chars().collect::<Vec<_>>();
    let b = b.to_lowercase().chars().collect::<Vec<_>>();
    let mut previous = (0..=b.len()).collect::<Vec<_>>();
    for (i, ca) in a.iter().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::did_you_mean;

    #[test]
    fn a_typo_gets_a_suggestion() {
        assert_eq!(
            did_you_mean("Payed", ["Draft", "Paid"]),
            " did you mean `Paid`?"
        );
        assert_eq!(
            did_you_mean("tabel", ["table", "key"]),
            " did you mean `table`?"
        );
        assert_eq!(did_you_mean("payy", ["pay"]), " did you mean `pay`?");
    }

    #[test]
    fn an_unrelated_name_gets_none() {
        assert_eq!(did_you_mean("Shipped", ["Draft", "Paid"]), "");
        assert_eq!(did_you_mean("x", Vec::<String>::new()), "");
    }
}
