//! The invoicing example.
fn main() {}
