//! Misuses of the safe SDK that must not compile: each file in tests/ui fails with the errors its
//! .stderr records (regenerate with TRYBUILD=overwrite after reading the diff).

#[test]
fn unsound_host_borrows_do_not_compile() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
