//! Sections of `docs/development/benchmarks.md` that other commands write: the soak's (`make
//! soak`) and the training scaling (`make bench`'s real-node part). The main benchmark rewrites
//! the rest of the file and keeps them.

/// A section between two markers.
pub struct Section {
    pub begin: &'static str,
    pub end: &'static str,
}

/// Written by `make soak`.
pub const SOAK: Section = Section {
    begin: "<!-- soak: written by `make soak` -->",
    end: "<!-- /soak -->",
};

/// Written by `make bench`'s training benchmark (`benches/training.rs`).
pub const TRAINING: Section = Section {
    begin: "<!-- training: written by `make bench` (benches/training.rs) -->",
    end: "<!-- /training -->",
};

/// Written by `make bench`'s dashboard benchmark (`benches/dashboard.rs`).
pub const DASHBOARD: Section = Section {
    begin: "<!-- dashboard: written by `make bench` (benches/dashboard.rs) -->",
    end: "<!-- /dashboard -->",
};

impl Section {
    /// This section of `doc`, markers included, if it has one.
    pub fn find<'a>(&self, doc: &'a str) -> Option<&'a str> {
        let a = doc.find(self.begin)?;
        let b = doc[a..].find(self.end)? + a + self.end.len();
        Some(&doc[a..b])
    }

    /// Writes `report` to `benches/results/{name}.json` and `markdown` into this section of
    /// `docs/development/benchmarks.md`: what every section's benchmark does at its end.
    pub fn publish(&self, name: &str, report: &impl serde::Serialize, markdown: &str) {
        let root = crate::repo_root();
        let results = root.join("benches/results");
        std::fs::create_dir_all(&results).expect("benches/results");
        let json = serde_json::to_string_pretty(report).expect("a report serializes");
        std::fs::write(results.join(format!("{name}.json")), json).expect("the results JSON");
        let doc = root.join("docs/development/benchmarks.md");
        let old = std::fs::read_to_string(&doc).unwrap_or_default();
        std::fs::write(&doc, self.splice(&old, markdown)).expect("docs/development/benchmarks.md");
        println!(
            "wrote the {name} section of docs/development/benchmarks.md and benches/results/{name}.json"
        );
    }

    /// `doc` with this section's body replaced by `body` (appended when it has none).
    pub fn splice(&self, doc: &str, body: &str) -> String {
        let block = format!("{}\n{body}{}", self.begin, self.end);
        match self.find(doc) {
            Some(old) => doc.replacen(old, &block, 1),
            None => format!("{}\n\n{block}\n", doc.trim_end()),
        }
    }
}

/// `new`, with the sections of `old` carried over.
pub fn keep(old: &str, new: String) -> String {
    [&SOAK, &TRAINING, &DASHBOARD]
        .into_iter()
        .fold(new, |doc, section| match section.find(old) {
            Some(block) => format!("{}\n\n{block}\n", doc.trim_end()),
            None => doc,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_replaced_in_place_and_kept_across_a_rewrite() {
        let doc = SOAK.splice("# Report\n", "soak 1\n");
        let doc = TRAINING.splice(&doc, "training 1\n");
        let doc = SOAK.splice(&doc, "soak 2\n");
        assert_eq!(SOAK.find(&doc).map(|s| s.contains("soak 2")), Some(true));
        assert!(!doc.contains("soak 1"));
        let rewritten = keep(&doc, "# New report\n".into());
        assert!(rewritten.starts_with("# New report"));
        assert!(
            rewritten.contains("soak 2") && rewritten.contains("training 1"),
            "{rewritten}"
        );
        assert_eq!(keep("# no sections", "# new".into()), "# new");
    }
}
