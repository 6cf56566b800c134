//! Tables as kubectl prints them: upper-case headers, columns padded to their widest cell plus
//! three spaces, the last one not padded.

/// A table being built.
pub struct Table {
    head: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(head: &[&str]) -> Table {
        Table {
            head: head.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (one cell per column; line breaks in a cell become spaces).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.into_iter().map(|c| c.replace(['\n', '\r'], " ")).collect());
    }

    /// The table as text, one line per row after the header.
    pub fn render(&self) -> String {
        let columns = self.head.len();
        let width = |i: usize| {
            std::iter::once(&self.head)
                .chain(&self.rows)
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..columns).map(width).collect();
        let mut out = String::new();
        for row in std::iter::once(&self.head).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate().take(columns) {
                if i + 1 < columns {
                    line.push_str(&format!("{cell:<w$}   ", w = widths[i]));
                } else {
                    line.push_str(cell);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}
