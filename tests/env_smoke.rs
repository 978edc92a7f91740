//! Smoke tests of the test environment against the real components.

mod support;

#[test]
fn placeholder_compiles() {
    let _ = support::Tools::get();
}
