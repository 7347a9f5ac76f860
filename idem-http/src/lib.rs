//! The `Idempotency-Key` tower layer.
