//! The derive's compile-time behaviour: every `ui/pass` case compiles and
//! every `ui/fail` case fails with exactly the errors in its `.stderr`
//! snapshot (`TRYBUILD=overwrite cargo test -p idem-derive --test ui`
//! rewrites them; read every one before committing).

#[test]
fn pass_cases_compile_and_fail_cases_report_precise_errors() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
