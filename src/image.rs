//! Container image references, checked with the grammar container runtimes parse them with
//! (distribution's `reference` package), so a typo fails at `kubectl apply` instead of as
//! `InvalidImageName` on a node minutes later.
//!
//! `[host[:port]/]component[/component…][:tag][@algorithm:hex]`

/// Longest repository name (host and path) the reference grammar allows.
const MAX_NAME: usize = 255;
/// Longest tag.
const MAX_TAG: usize = 128;

/// Checks `reference`; the error says what is wrong in words a user can act on.
pub fn check(reference: &str) -> Result<(), &'static str> {
    if reference.is_empty() {
        return Err("it is empty");
    }
    if reference.chars().any(char::is_whitespace) {
        return Err("it contains whitespace");
    }
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (reference, None),
    };
    if let Some(d) = digest {
        check_digest(d)?;
    }
    // A `:` after the last `/` starts the tag; one before it belongs to a registry port.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].find(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        check_tag(t)?;
    }
    if name.len() > MAX_NAME {
        return Err("the repository name is longer than 255 characters");
    }
    let mut parts = name.split('/').peekable();
    let first = parts.next().unwrap_or_default();
    // As Docker decides: the first part is a registry when more parts follow and it looks like a
    // host (a dot, a port, or localhost).
    let is_host = parts.peek().is_some()
        && (first.contains(['.', ':'])
            || first == "localhost"
            || first.chars().any(|c| c.is_ascii_uppercase()));
    if is_host {
        check_host(first)?;
    } else {
        check_component(first)?;
    }
    parts.try_for_each(check_component)
}

fn check_host(host: &str) -> Result<(), &'static str> {
    // An IPv6 address is bracketed and full of colons: the port, if any, follows the `]`.
    let split = match host.rfind(']') {
        Some(end) => host[end..].find(':').map(|i| end + i),
        None => host.rfind(':'),
    };
    let (name, port) = match split {
        Some(i) => (&host[..i], Some(&host[i + 1..])),
        None => (host, None),
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("the registry port must be a number");
    }
    if let Some(bracketed) = name.strip_prefix('[') {
        let inner = bracketed.strip_suffix(']').unwrap_or_default();
        return if !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            Ok(())
        } else {
            Err("the registry's IPv6 address is malformed")
        };
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err("the registry host is not a valid host name")
    }
}

/// `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`.
fn check_component(c: &str) -> Result<(), &'static str> {
    if c.is_empty() {
        return Err("it has an empty path component (a doubled or trailing `/`)");
    }
    if c.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("repository names must be lower case");
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err("each path component must start and end with a letter or digit");
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return Err(
                "path components may contain only lower-case letters, digits and single `.`, `_`, `__` or `-` separators",
            );
        }
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), &'static str> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_TAG
        && word(bytes[0])
        && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err("the tag must be 1 to 128 letters, digits, `_`, `.` or `-`, not starting with `.` or `-`")
    }
}

fn check_digest(digest: &str) -> Result<(), &'static str> {
    const WHY: &str = "the digest must be algorithm:hex, such as sha256: and 64 hex digits";
    let (algorithm, hex) = digest.split_once(':').ok_or(WHY)?;
    let algorithm_ok = !algorithm.is_empty()
        && algorithm
            .split(['+', '.', '_', '-'])
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric()));
    let hex_ok = hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    if !algorithm_ok || !hex_ok {
        return Err(WHY);
    }
    if algorithm == "sha256" && hex.len() != 64 {
        return Err("a sha256 digest has exactly 64 hex digits");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn well_formed_references_pass() {
        for r in [
            "busybox",
            "mpioperator/openmpi:v0.6.0",
            "ghcr.io/kubeflow/trainer/mpi-runtime:v2.3.0",
            "localhost:5000/a/b_c__d.e---f:latest",
            "registry.example.com:443/team/img@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "img:1.0@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "[::1]:5000/img",
            "[fe80::1]/img",
            "trainjob.local/mpi-openmpi4:bed",
            "Registry.Example.com/img",
        ] {
            assert_eq!(check(r), Ok(()), "{r}");
        }
    }

    #[test]
    fn malformed_references_say_what_is_wrong() {
        for (r, why) in [
            ("", "it is empty"),
            ("my image", "it contains whitespace"),
            ("MyImage:latest", "repository names must be lower case"),
            ("team/MyImage", "repository names must be lower case"),
            ("img:", "the tag must be"),
            ("img:-x", "the tag must be"),
            ("img:a/b", "the registry port must be a number"),
            ("[::1/img", "the registry's IPv6 address is malformed"),
            ("team//img", "it has an empty path component"),
            ("img/", "it has an empty path component"),
            ("-img", "each path component must start and end"),
            ("a..b", "path components may contain only"),
            ("img@sha256:abc", "the digest must be"),
            (
                "img@sha256:0123456789abcdef0123456789abcdef01",
                "a sha256 digest has exactly 64",
            ),
            ("host:port/img", "the registry port must be a number"),
            ("ex-.com/img", "the registry host is not a valid host name"),
        ] {
            let err = check(r).expect_err(r);
            assert!(err.starts_with(why), "{r}: {err}");
        }
        let long = format!("{}:v1", "a".repeat(256));
        assert_eq!(
            check(&long),
            Err("the repository name is longer than 255 characters")
        );
    }
}
