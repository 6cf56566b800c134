//! What ships: the operator's dependency tree (normal and build edges, i.e. what goes into the
//! binary) holds none of the test bed. The bed is the `testbed/` crate, a dev-dependency only.

use std::collections::BTreeSet;
use std::process::Command;

/// Crate names in `cargo tree` of the operator without dev-dependencies.
fn shipped_crates() -> BTreeSet<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let args = [
        "tree",
        "--locked",
        "--offline",
        "-p",
        "trainjob-operator",
        "--edges",
        "normal,build",
        "--prefix",
        "none",
    ];
    let out = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(root)
        .output()
        .unwrap_or_else(|e| panic!("running cargo {}: {e}", args.join(" ")));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cargo {} failed ({}):\n{stderr}",
        args.join(" "),
        out.status
    );
    // Each line is `<name> v<version> [(path)] [(*)]`.
    let crates: BTreeSet<String> = stdout
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect();
    assert!(
        crates.contains("trainjob-operator") && crates.contains("kube"),
        "cargo tree printed no operator tree (stderr:\n{stderr}\nstdout:\n{stdout})"
    );
    crates
}

#[test]
fn the_operator_binary_contains_no_test_bed_code() {
    let crates = shipped_crates();
    for test_only in ["trainjob-testbed", "tempfile", "rcgen"] {
        assert!(
            !crates.contains(test_only),
            "{test_only} is in the operator's (non-dev) dependency tree: {crates:?}"
        );
    }
}
