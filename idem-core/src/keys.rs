//! Idempotency keys: the key, its scope, the request fingerprint and the
//! store protocol.
