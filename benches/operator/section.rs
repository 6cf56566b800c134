//! The soak's section of `BENCHMARKS.md`: `make soak` writes it, `make bench` (which rewrites
//! the rest of the file) keeps it.

const BEGIN: &str = "<!-- soak: written by `make soak` -->";
const END: &str = "<!-- /soak -->";

/// The soak section of `doc`, markers included, if it has one.
pub fn soak(doc: &str) -> Option<&str> {
    let a = doc.find(BEGIN)?;
    let b = doc[a..].find(END)? + a + END.len();
    Some(&doc[a..b])
}

/// `doc` with its soak section replaced by `section` (appended when it has none).
pub fn splice(doc: &str, section: &str) -> String {
    let block = format!("{BEGIN}\n{section}{END}");
    match soak(doc) {
        Some(old) => doc.replacen(old, &block, 1),
        None => keep(&block, doc.to_string()),
    }
}

/// `new`, with the soak section of `old` carried over.
pub fn keep(old: &str, new: String) -> String {
    match soak(old) {
        Some(block) => format!("{}\n\n{block}\n", new.trim_end()),
        None => new,
    }
}
