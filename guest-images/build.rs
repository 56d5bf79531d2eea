//! Passes the linker script (by absolute path, so the link works from any cwd) and keeps
//! the entry point even though nothing in the binaries references it.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let script = std::path::Path::new(&dir).join("link.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    println!("cargo:rustc-link-arg-bins=-Wl,-u,_start");
    println!("cargo:rustc-link-arg-bins=-Wl,-z,max-page-size=4096");
    println!("cargo:rustc-link-arg-bins=-Wl,-z,noexecstack");
}
