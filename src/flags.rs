//! Parsers of command-line values, shared by the operator (`trainjob-operator run`) and the
//! kubectl plugin, so that both take durations the same way.

/// A DNS domain: dot-separated lower-case labels of letters, digits and `-`, without a final dot.
pub fn parse_domain(s: &str) -> Result<String, String> {
    if crate::names::is_dns_subdomain(s) {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not a DNS domain such as cluster.local"))
    }
}

/// A duration such as `90d`, `12h`, `30m` or `600s`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 90d, 12h, 600s or 500ms"))?;
    let millis = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{s:?} needs a unit: ms, s, m, h or d")),
    };
    match n.checked_mul(millis) {
        Some(ms) if ms > 0 => Ok(std::time::Duration::from_millis(ms)),
        _ => Err(format!("{s:?} must be more than zero and fit in 64 bits")),
    }
}

/// A duration as [`parse_duration`] takes it, or zero (`0`, `0s`): never.
pub fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    match s.trim_start_matches('0') {
        "" | "ms" | "s" | "m" | "h" | "d" => Ok(std::time::Duration::ZERO),
        _ => parse_duration(s),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn durations_take_a_unit_and_timeouts_also_zero() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(
            parse_duration("10")
                .expect_err("no unit")
                .contains("needs a unit")
        );
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_timeout("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_timeout("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_domain("Cluster.Local.").is_err());
    }
}
