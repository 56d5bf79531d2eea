//! AFL entry point: every input is a program of 6-byte operations run against the model
//! guest by `pv_mm::fuzz::fuzz_one`, which panics on the first invariant violation.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        pv_mm::fuzz::fuzz_one(data);
    });
}
