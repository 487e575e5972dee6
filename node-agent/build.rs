//! Compiles the C eBPF programs in `ebpf/` with clang into `$OUT_DIR`, where
//! `src/datapath.rs` includes them.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const PROGRAMS: [&str; 2] = ["sock_lb", "policy"];

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let src = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("ebpf");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    println!("cargo:rerun-if-changed={}", src.join("common.h").display());
    println!("cargo:rerun-if-env-changed=CLANG");
    let arch_include = format!("/usr/include/{}-linux-gnu", env::consts::ARCH);
    for name in PROGRAMS {
        let input = src.join(format!("{name}.bpf.c"));
        println!("cargo:rerun-if-changed={}", input.display());
        let output = out.join(format!("{name}.bpf.o"));
        let status = Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
            .arg(format!("-I{arch_include}"))
            .arg("-c")
            .arg(&input)
            .arg("-o")
            .arg(&output)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "running {clang} for {}: {e} (install clang, llvm and libbpf-dev)",
                    input.display()
                )
            });
        assert!(status.success(), "{clang} failed on {}", input.display());
    }
}
