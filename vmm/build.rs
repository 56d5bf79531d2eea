//! Builds the ring-0 shim (a freestanding binary in its own workspace) and hands its path
//! to the VMM, which embeds it. The shim needs flags the VMM must not get (panic=abort,
//! no red zone, a bare static link), so it gets its own cargo invocation and target dir.
//! `--target` keeps those flags away from build scripts and proc macros.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let shim_dir = manifest_dir.join("../pv-shim/shim");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target_dir = out_dir.join("shim-target");
    let linker_script = shim_dir.join("shim.ld");
    let target = "x86_64-unknown-linux-gnu";

    for path in [
        "src",
        "shim.ld",
        "Cargo.toml",
        "../abi/src",
        "../abi/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", shim_dir.join(path).display());
    }

    let rustflags = [
        "-C",
        "panic=abort",
        "-C",
        "relocation-model=pie",
        "-C",
        "no-redzone=yes",
        "-C",
        "link-arg=-nostartfiles",
        "-C",
        "link-arg=-nostdlib",
        "-C",
        "link-arg=-static",
        "-C",
        &format!("link-arg=-Wl,-T,{}", linker_script.display()),
        "-C",
        "link-arg=-Wl,--build-id=none",
    ]
    .join("\x1f");

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&shim_dir)
        .args(["build", "--release", "--target", target, "--target-dir"])
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .status()
        .expect("failed to run cargo to build the shim");
    assert!(status.success(), "building the pv-shim failed");

    let image = target_dir.join(target).join("release/pv-shim");
    println!("cargo:rustc-env=PVKVM_SHIM_ELF={}", image.display());
}
