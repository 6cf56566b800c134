//! The code stays easy to find one's way in: no source file of the operator grows past 450 lines
//! (its test module apart), and no file is compiled into a crate from another top-level folder
//! (`#[path]` across `src/`, `tests/`, `benches/` and `testbed/`): shared test code is the
//! testbed crate's.

use std::path::{Path, PathBuf};

/// Longest source file of `src/`, its tests apart.
const MAX_LINES: usize = 450;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Lines of `text` before its test module (`#[cfg(test)]` followed by `mod tests`).
fn code_lines(text: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .windows(2)
        .position(|w| w[0].trim() == "#[cfg(test)]" && w[1].trim_start().starts_with("mod tests"))
        .unwrap_or(lines.len())
}

/// Whether `path` holds only tests: a `tests.rs`, or a file under a `tests/` folder of `src/`.
fn test_file(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "tests.rs") || path.components().any(|c| c.as_os_str() == "tests")
}

#[test]
fn no_source_file_is_longer_than_450_lines_its_tests_apart() {
    let src = repo().join("src");
    let long: Vec<String> = rust_files(&src)
        .into_iter()
        .filter(|p| !test_file(p.strip_prefix(&src).unwrap_or(p)))
        .filter_map(|p| {
            let lines = code_lines(&std::fs::read_to_string(&p).ok()?);
            (lines > MAX_LINES).then(|| format!("{} ({lines} lines)", p.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "split these by what they hold, below {MAX_LINES} lines each: {long:#?}"
    );
    assert_eq!(code_lines("a\n#[cfg(test)]\nmod tests {\n}\n"), 1);
    assert_eq!(code_lines("a\nb\n"), 2);
}

#[test]
fn no_file_is_included_from_another_top_level_folder() {
    let root = repo();
    let mut across = Vec::new();
    for top in ["src", "tests", "benches", "testbed"] {
        for file in rust_files(&root.join(top)) {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            for line in text.lines().filter(|l| l.trim_start().starts_with("#[path")) {
                let target = line.split('"').nth(1).unwrap_or_default();
                let resolved = file.parent().unwrap_or(&root).join(target);
                let normal: PathBuf = resolved.components().fold(PathBuf::new(), |mut p, c| {
                    match c {
                        std::path::Component::ParentDir => {
                            p.pop();
                        }
                        other => p.push(other),
                    }
                    p
                });
                if !normal.starts_with(root.join(top)) {
                    across.push(format!("{}: {}", file.display(), line.trim()));
                }
            }
        }
    }
    assert!(
        across.is_empty(),
        "share code through the testbed crate instead: {across:#?}"
    );
}
