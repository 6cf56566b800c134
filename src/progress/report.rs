//! A progress report's body, checked field by field before anything is written: the payload of
//! upstream's `UpdateTrainJobStatusRequest` (`{"trainerStatus": {...}}`), within the CRD's own
//! limits, so that a bad report is refused here in words that name the field instead of costing
//! the API server a request. Pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Map, Value};

use crate::api::{Metric, TrainerStatus};

/// Most metrics one report may carry (the CRD's `maxItems`).
pub const MAX_METRICS: usize = 256;
/// Longest metric name or value, in characters (the CRD's `maxLength`).
pub const MAX_METRIC_LENGTH: usize = 64;

const FIELDS: [&str; 4] = [
    "progressPercentage",
    "estimatedRemainingSeconds",
    "metrics",
    "lastUpdatedTime",
];

/// Why a report was refused; the message names the field and what it may hold.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// Not JSON, or not the request's shape.
    #[error("{0}")]
    Malformed(String),
    /// Well-formed, with a value out of bounds.
    #[error("{0}")]
    Value(String),
}

/// The report in `body`, or `None` for a request without `trainerStatus` (accepted, nothing to
/// write, as upstream). A report without `lastUpdatedTime` is stamped with `now`.
pub fn parse(body: &[u8], now: Timestamp) -> Result<Option<TrainerStatus>, Invalid> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        Invalid::Malformed(format!(
            "the body is not JSON ({e}): send {{\"trainerStatus\": {{\"progressPercentage\": 40, ...}}}}"
        ))
    })?;
    let Value::Object(request) = value else {
        return Err(Invalid::Malformed(
            "the body must be a JSON object with the field trainerStatus".into(),
        ));
    };
    if let Some(unknown) = request.keys().find(|k| *k != "trainerStatus") {
        return Err(Invalid::Malformed(format!(
            "unknown field {unknown:?}: the body holds only trainerStatus"
        )));
    }
    let status = match request.get("trainerStatus") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(status)) => status,
        Some(_) => return Err(Invalid::Malformed("trainerStatus must be an object".into())),
    };
    if let Some(unknown) = status.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(Invalid::Malformed(format!(
            "unknown field trainerStatus.{unknown}: the fields are {}",
            FIELDS.join(", ")
        )));
    }
    let last_updated = match status.get("lastUpdatedTime") {
        None | Some(Value::Null) => now,
        Some(Value::String(s)) => s.parse::<Timestamp>().map_err(|_| {
            Invalid::Value(format!(
                "trainerStatus.lastUpdatedTime {s:?} is not an RFC 3339 time such as 2026-01-02T03:04:05Z"
            ))
        })?,
        Some(_) => {
            return Err(Invalid::Value(
                "trainerStatus.lastUpdatedTime must be an RFC 3339 time string".into(),
            ));
        }
    };
    Ok(Some(TrainerStatus {
        progress_percentage: integer(status, "progressPercentage", 100, "a percentage")?,
        estimated_remaining_seconds: integer(
            status,
            "estimatedRemainingSeconds",
            i64::from(i32::MAX),
            "seconds",
        )?,
        metrics: metrics(status)?,
        last_updated_time: Some(Time(last_updated)),
    }))
}

/// `trainerStatus.<field>`: absent, null, or a whole number from 0 to `max`.
fn integer(status: &Map<String, Value>, field: &str, max: i64, what: &str) -> Result<Option<i32>, Invalid> {
    let refuse = |got: &Value| {
        Invalid::Value(format!(
            "trainerStatus.{field} must be a whole number of {what} from 0 to {max}, not {got}"
        ))
    };
    match status.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if (0..=max).contains(&n) => i32::try_from(n).map(Some).map_err(|_| refuse(v)),
            _ => Err(refuse(v)),
        },
    }
}

/// `trainerStatus.metrics`: at most [`MAX_METRICS`] `{name, value}` strings, names unique.
fn metrics(status: &Map<String, Value>) -> Result<Vec<Metric>, Invalid> {
    let list = match status.get("metrics") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => {
            return Err(Invalid::Malformed(
                "trainerStatus.metrics must be a list of {\"name\": ..., \"value\": ...}".into(),
            ));
        }
    };
    if list.len() > MAX_METRICS {
        return Err(Invalid::Value(format!(
            "trainerStatus.metrics has {} entries; at most {MAX_METRICS} are kept: report fewer",
            list.len()
        )));
    }
    let mut out: Vec<Metric> = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let Value::Object(entry) = entry else {
            return Err(Invalid::Malformed(format!(
                "trainerStatus.metrics[{i}] must be an object {{\"name\": ..., \"value\": ...}}"
            )));
        };
        if let Some(unknown) = entry.keys().find(|k| *k != "name" && *k != "value") {
            return Err(Invalid::Malformed(format!(
                "unknown field trainerStatus.metrics[{i}].{unknown}: a metric has a name and a value"
            )));
        }
        let text = |key: &str| -> Result<String, Invalid> {
            match entry.get(key) {
                Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= MAX_METRIC_LENGTH => {
                    Ok(s.clone())
                }
                Some(Value::String(s)) if s.is_empty() => Err(Invalid::Value(format!(
                    "trainerStatus.metrics[{i}].{key} is empty"
                ))),
                Some(Value::String(s)) => Err(Invalid::Value(format!(
                    "trainerStatus.metrics[{i}].{key} has {} characters; at most {MAX_METRIC_LENGTH} fit",
                    s.chars().count()
                ))),
                _ => Err(Invalid::Value(format!(
                    "trainerStatus.metrics[{i}].{key} must be a string (send numbers as text, such as \"0.25\")"
                ))),
            }
        };
        let metric = Metric {
            name: text("name")?,
            value: text("value")?,
        };
        if out.iter().any(|m| m.name == metric.name) {
            return Err(Invalid::Value(format!(
                "trainerStatus.metrics has {:?} twice: report each metric once",
                metric.name
            )));
        }
        out.push(metric);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn now() -> Timestamp {
        "2026-12-04T12:00:00Z".parse().expect("time")
    }

    fn parsed(body: Value) -> Result<Option<TrainerStatus>, Invalid> {
        parse(body.to_string().as_bytes(), now())
    }

    fn refused(body: Value) -> String {
        parsed(body).expect_err("refused").to_string()
    }

    #[test]
    fn the_sdks_report_is_taken_as_it_is_sent() {
        // As kubeflow 0.5.0's update_trainjob_status() builds it.
        let status = parsed(json!({"trainerStatus": {
            "lastUpdatedTime": "2026-12-04T11:59:58.123456+00:00",
            "progressPercentage": 40,
            "estimatedRemainingSeconds": 90,
            "metrics": [{"name": "loss", "value": "0.2500"}, {"name": "accuracy", "value": "0.91"}],
        }}))
        .expect("valid")
        .expect("a status");
        assert_eq!(status.progress_percentage, Some(40));
        assert_eq!(status.estimated_remaining_seconds, Some(90));
        assert_eq!(status.metrics.len(), 2);
        assert_eq!(status.metrics[1].value, "0.91");
        let stamped = status.last_updated_time.expect("time").0;
        assert_eq!(
            stamped,
            "2026-12-04T11:59:58.123456Z".parse::<Timestamp>().expect("t")
        );
    }

    #[test]
    fn a_report_without_time_is_stamped_and_one_without_status_writes_nothing() {
        let status = parsed(json!({"trainerStatus": {"progressPercentage": 0}}))
            .expect("valid")
            .expect("a status");
        assert_eq!(status.last_updated_time, Some(Time(now())));
        assert_eq!(status.estimated_remaining_seconds, None);
        assert_eq!(parsed(json!({})).expect("valid"), None);
        assert_eq!(parsed(json!({"trainerStatus": null})).expect("valid"), None);
    }

    #[test]
    fn out_of_range_numbers_are_refused_naming_the_field() {
        for (field, value) in [
            ("progressPercentage", json!(101)),
            ("progressPercentage", json!(-1)),
            ("progressPercentage", json!(50.5)),
            ("progressPercentage", json!("50")),
            ("estimatedRemainingSeconds", json!(-5)),
            ("estimatedRemainingSeconds", json!(3_000_000_000_i64)),
        ] {
            let message = refused(json!({"trainerStatus": {field: value}}));
            assert!(
                message.starts_with(&format!("trainerStatus.{field} must be a whole number")),
                "{field}={value}: {message}"
            );
        }
        assert!(matches!(
            parsed(json!({"trainerStatus": {"progressPercentage": 101}})),
            Err(Invalid::Value(_))
        ));
    }

    #[test]
    fn metrics_beyond_the_crds_limits_are_refused() {
        let many: Vec<Value> = (0..=MAX_METRICS)
            .map(|i| json!({"name": format!("m{i}"), "value": "1"}))
            .collect();
        assert_eq!(
            refused(json!({"trainerStatus": {"metrics": many}})),
            "trainerStatus.metrics has 257 entries; at most 256 are kept: report fewer"
        );
        let long = "x".repeat(65);
        assert_eq!(
            refused(json!({"trainerStatus": {"metrics": [{"name": "loss", "value": long}]}})),
            "trainerStatus.metrics[0].value has 65 characters; at most 64 fit"
        );
        assert_eq!(
            refused(json!({"trainerStatus": {"metrics": [{"name": "", "value": "1"}]}})),
            "trainerStatus.metrics[0].name is empty"
        );
        assert!(
            refused(json!({"trainerStatus": {"metrics": [{"name": "loss", "value": 0.5}]}}))
                .contains("must be a string")
        );
        assert_eq!(
            refused(json!({"trainerStatus": {"metrics": [
                {"name": "loss", "value": "1"}, {"name": "loss", "value": "2"}]}})),
            "trainerStatus.metrics has \"loss\" twice: report each metric once"
        );
        // Exactly at the limits is fine.
        let full: Vec<Value> = (0..MAX_METRICS)
            .map(|i| json!({"name": format!("{i:0>64}"), "value": "v".repeat(64)}))
            .collect();
        let status = parsed(json!({"trainerStatus": {"metrics": full}}))
            .expect("valid")
            .expect("status");
        assert_eq!(status.metrics.len(), MAX_METRICS);
    }

    #[test]
    fn malformed_bodies_and_unknown_fields_are_refused_in_words() {
        assert!(
            matches!(parse(b"{\"trainerStatus\": ", now()), Err(Invalid::Malformed(m)) if m.starts_with("the body is not JSON"))
        );
        assert_eq!(
            refused(json!([1])),
            "the body must be a JSON object with the field trainerStatus"
        );
        assert_eq!(
            refused(json!({"trainerStatus": {"progress": 5}})),
            "unknown field trainerStatus.progress: the fields are progressPercentage, estimatedRemainingSeconds, metrics, lastUpdatedTime"
        );
        assert_eq!(
            refused(json!({"status": {}})),
            "unknown field \"status\": the body holds only trainerStatus"
        );
        assert!(refused(json!({"trainerStatus": {"lastUpdatedTime": "yesterday"}})).contains("RFC 3339"));
        assert_eq!(
            refused(json!({"trainerStatus": 5})),
            "trainerStatus must be an object"
        );
    }
}
