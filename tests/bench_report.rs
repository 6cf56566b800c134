//! The benchmark report (`benches/operator/`): its percentiles, Markdown and charts. The bench
//! itself runs without a test harness, which drops its `#[test]`s, so they run here.

#[path = "../benches/operator/model.rs"]
mod model;
#[path = "../benches/operator/report.rs"]
mod report;
