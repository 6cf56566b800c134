//! The soak's section of `docs/development/benchmarks.md`: `make soak` writes it, `make bench` (which rewrites
//! the rest of the file) keeps it.

pub const BEGIN: &str = "<!-- soak: written by `make soak` -->";
pub const END: &str = "<!-- /soak -->";

/// The soak section of `doc`, markers included, if it has one.
pub fn soak(doc: &str) -> Option<&str> {
    let a = doc.find(BEGIN)?;
    let b = doc[a..].find(END)? + a + END.len();
    Some(&doc[a..b])
}

/// `new`, with the soak section of `old` carried over.
pub fn keep(old: &str, new: String) -> String {
    match soak(old) {
        Some(block) => format!("{}\n\n{block}\n", new.trim_end()),
        None => new,
    }
}
