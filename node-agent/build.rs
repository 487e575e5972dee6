//! Compiles the C eBPF programs in `ebpf/` with clang into `$OUT_DIR`, where
//! `src/datapath.rs` includes them, and writes `$OUT_DIR/abi_c.rs`: the layout of every struct
//! in `ebpf/abi.h` (size, and each field's offset and size) and its shared numbers, as the C
//! compiler lays them out, which `src/maps/abi.rs` checks its Rust mirror against.
//!
//! The layout comes from a tiny C program generated from the header's struct definitions,
//! compiled with the same clang for the host and run: `sizeof` and `offsetof`, no parsing of
//! C semantics here. The host's layout is the BPF programs' (`-target bpf` takes the host's
//! byte order; both use natural alignment for these fixed-width fields).

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const PROGRAMS: [&str; 2] = ["sock_lb", "policy"];

/// The numbers of `abi.h` the agent shares (enum members and `#define`s).
const CONSTANTS: [&str; 7] = [
    "LB_COUNTERS",
    "POL_COUNTERS",
    "IPCACHE_POD",
    "IFACE_DENY_UNKNOWN",
    "VERDICT_ALLOWED",
    "VERDICT_DENIED",
    "VERDICT_UNKNOWN",
];

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let src = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("ebpf");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    for header in ["common.h", "abi.h"] {
        println!("cargo:rerun-if-changed={}", src.join(header).display());
    }
    println!("cargo:rerun-if-env-changed=CLANG");
    let arch_include = format!("-I/usr/include/{}-linux-gnu", env::consts::ARCH);
    for name in PROGRAMS {
        let input = src.join(format!("{name}.bpf.c"));
        println!("cargo:rerun-if-changed={}", input.display());
        let output = out.join(format!("{name}.bpf.o"));
        let status = Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
            .arg(&arch_include)
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
    abi_layout(&clang, &arch_include, &src, &out);
}

/// A struct of `abi.h`: its name and its fields' names, in order.
struct Struct {
    name: String,
    fields: Vec<String>,
}

/// The structs defined in `abi.h`, read line by line (its own comment states the format:
/// one field per line, no nested definitions).
fn structs_of(header: &Path) -> Vec<Struct> {
    let text =
        fs::read_to_string(header).unwrap_or_else(|e| panic!("reading {}: {e}", header.display()));
    let mut structs = Vec::new();
    let mut current: Option<Struct> = None;
    for (n, line) in text.lines().enumerate() {
        let at = || format!("{}:{}", header.display(), n + 1);
        let code = match line.find("/*") {
            Some(i) => &line[..i],
            None => line,
        }
        .trim();
        if let Some(s) = current.as_mut() {
            if code.starts_with('}') {
                assert!(
                    !s.fields.is_empty(),
                    "{}: struct {} has no fields",
                    at(),
                    s.name
                );
                structs.extend(current.take());
            } else if !code.is_empty() {
                let decl = code
                    .strip_suffix(';')
                    .unwrap_or_else(|| panic!("{}: one field per line, ending in ';'", at()));
                assert!(!decl.contains(','), "{}: one field per line", at());
                let name = decl
                    .split_whitespace()
                    .last()
                    .expect("a declaration has a name");
                let name = name.split('[').next().expect("split yields one").to_owned();
                s.fields.push(name);
            }
        } else if let Some(name) = code
            .strip_prefix("struct ")
            .and_then(|rest| rest.strip_suffix('{'))
        {
            current = Some(Struct {
                name: name.trim().to_owned(),
                fields: Vec::new(),
            });
        }
    }
    assert!(
        current.is_none(),
        "{}: unterminated struct",
        header.display()
    );
    assert!(!structs.is_empty(), "{}: no structs", header.display());
    structs
}

/// Writes `$OUT_DIR/abi_c.rs` from a host program that prints the layout of `abi.h`.
fn abi_layout(clang: &str, arch_include: &str, src: &Path, out: &Path) {
    let header = src.join("abi.h");
    let structs = structs_of(&header);
    let mut c = String::from("#include <stddef.h>\n#include <stdio.h>\n#include \"abi.h\"\n\n");
    c.push_str("int main(void)\n{\n");
    for s in &structs {
        let name = &s.name;
        writeln!(
            c,
            "\tprintf(\"struct {name} %zu\\n\", sizeof(struct {name}));"
        )
        .unwrap();
        for f in &s.fields {
            writeln!(
                c,
                "\tprintf(\"field {name} {f} %zu %zu\\n\", offsetof(struct {name}, {f}), \
                 sizeof(((struct {name} *)0)->{f}));"
            )
            .unwrap();
        }
    }
    for k in CONSTANTS {
        writeln!(c, "\tprintf(\"const {k} %lld\\n\", (long long)({k}));").unwrap();
    }
    c.push_str("\treturn 0;\n}\n");
    let program = out.join("abi_layout.c");
    let binary = out.join("abi_layout");
    fs::write(&program, c).expect("writing abi_layout.c");
    let status = Command::new(clang)
        .args(["-Wall", "-Werror"])
        .arg(arch_include)
        .arg(format!("-I{}", src.display()))
        .arg(&program)
        .arg("-o")
        .arg(&binary)
        .status()
        .unwrap_or_else(|e| panic!("running {clang} for {}: {e}", program.display()));
    assert!(status.success(), "{clang} failed on {}", program.display());
    let run = Command::new(&binary)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", binary.display()));
    assert!(run.status.success(), "{} failed", binary.display());
    let printed = String::from_utf8(run.stdout).expect("the layout program prints ASCII");

    let mut rs = String::from(
        "// Generated by node-agent/build.rs from ebpf/abi.h: the layout the C compiler gives it.\n\n",
    );
    let names: Vec<String> = structs.iter().map(|s| format!("{:?}", s.name)).collect();
    writeln!(rs, "/// The structs of `abi.h`, in order.").unwrap();
    writeln!(
        rs,
        "pub const STRUCTS: [&str; {}] = [{}];",
        names.len(),
        names.join(", ")
    )
    .unwrap();
    let mut open = false;
    for line in printed.lines() {
        let words: Vec<&str> = line.split(' ').collect();
        match words[..] {
            ["struct", name, size] => {
                if open {
                    rs.push_str("}\n");
                }
                let fields = structs
                    .iter()
                    .find(|s| s.name == name)
                    .expect("printed structs are the parsed ones")
                    .fields
                    .len();
                writeln!(
                    rs,
                    "\n/// `struct {name}`.\n#[allow(dead_code)]\npub mod {name} {{"
                )
                .unwrap();
                writeln!(rs, "    use super::Field;").unwrap();
                writeln!(
                    rs,
                    "    /// `sizeof(struct {name})`.\n    pub const SIZE: usize = {size};"
                )
                .unwrap();
                writeln!(
                    rs,
                    "    /// Its number of fields.\n    pub const FIELDS: usize = {fields};"
                )
                .unwrap();
                open = true;
            }
            ["field", _, field, offset, size] => {
                writeln!(
                    rs,
                    "    /// `.{field}`.\n    pub const {}: Field = Field {{ offset: {offset}, size: {size} }};",
                    field.to_uppercase()
                )
                .unwrap();
            }
            ["const", name, value] => {
                if open {
                    rs.push_str("}\n\n");
                    open = false;
                }
                writeln!(rs, "/// `{name}`.\npub const {name}: u64 = {value};").unwrap();
            }
            _ => panic!("{}: unexpected line {line:?}", binary.display()),
        }
    }
    if open {
        rs.push_str("}\n");
    }
    fs::write(out.join("abi_c.rs"), rs).expect("writing abi_c.rs");
}
