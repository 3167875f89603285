//! core must stay deterministic and runtime-free: these tests fail the build of any change
//! that lets a runtime, a wall clock or unseeded randomness into it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn core_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn core_depends_on_neither_tokio_nor_madsim() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(core_dir())
        .args(["tree", "--offline", "-p", "cohort-core", "-e", "normal,build", "--prefix", "none", "--format", "{p}"])
        .output()
        .expect("cargo tree runs");
    assert!(output.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&output.stderr));
    let tree = String::from_utf8(output.stdout).expect("utf-8");
    assert!(tree.lines().any(|l| l.starts_with("raft ")), "the tree lists core's dependencies:\n{tree}");
    for line in tree.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        assert!(
            !name.starts_with("tokio") && !name.starts_with("madsim"),
            "cohort-core depends on {line}: core must run without a runtime"
        );
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn core_source_never_reads_a_clock_or_unseeded_randomness() {
    let mut files = Vec::new();
    rust_files(&core_dir().join("src"), &mut files);
    assert!(files.len() > 10, "found core's sources");
    // Spelled in pieces so that this file does not match itself.
    let forbidden = [["Instant", "::now"], ["SystemTime", "::now"], ["thread", "_rng"], ["std::", "thread::spawn"]];
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        for [a, b] in forbidden {
            let needle = format!("{a}{b}");
            for (number, line) in text.lines().enumerate() {
                assert!(
                    !line.contains(&needle),
                    "{}:{}: core must not use `{needle}`: time comes from Clock, randomness from a seed",
                    file.display(),
                    number + 1
                );
            }
        }
    }
}
