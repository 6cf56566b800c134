//! The benchmark report of `make bench` and `make soak`: the data model, the Markdown and
//! charts, and the soak's section of the report, which `make bench` keeps.

pub mod model;
pub mod report;
pub mod section;
