//! The deduplication inbox protocol for event consumers.
