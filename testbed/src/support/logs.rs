//! The in-process operator's log lines, captured as JSON by the test binary's global subscriber.

use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

static LOGS: OnceLock<Buffer> = OnceLock::new();

/// Captures every log line from now on (the operator's at debug, the rest at info, unless
/// `RUST_LOG` says otherwise); the bed calls it before anything starts.
pub fn capture() {
    LOGS.get_or_init(|| {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .json()
            .with_env_filter(
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,trainjob_operator=debug".into()),
            )
            .with_writer(move || writer.clone())
            .try_init();
        buffer
    });
}

/// Every line captured so far, as written.
pub fn raw() -> Vec<String> {
    let Some(buffer) = LOGS.get() else {
        return Vec::new();
    };
    let bytes = buffer.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(String::from)
        .collect()
}

/// Every line captured so far, parsed.
pub fn lines() -> Vec<Value> {
    raw()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Adds log lines of an operator that ran outside this process (its binary, or its pod).
pub fn record(text: &str) {
    capture();
    if let Some(buffer) = LOGS.get() {
        let mut bytes = buffer.0.lock().unwrap_or_else(|e| e.into_inner());
        for line in text.lines() {
            bytes.extend_from_slice(line.as_bytes());
            bytes.push(b'\n');
        }
    }
}

/// Where each test binary leaves its key-scan report for `tests/keyscan.rs`: `<target>/tmp`,
/// which Cargo gives integration tests as `CARGO_TARGET_TMPDIR`, found from the running test
/// binary (`<target>/<profile>/deps/<test>-<hash>`), so every test binary finds the same one.
pub fn keyscan_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let target = exe.ancestors().nth(3).unwrap_or(std::path::Path::new("target"));
    target.join("tmp").join("keyscan")
}

/// At exit, scans the bed's audit log and the captured log lines for private-key material and
/// writes the report as `<test binary>.json` into [`keyscan_dir`].
pub fn scan_keys_at_exit(audit_log: std::path::PathBuf) {
    static AUDIT_LOG: OnceLock<std::path::PathBuf> = OnceLock::new();
    extern "C" fn scan() {
        let Some(path) = AUDIT_LOG.get() else { return };
        let audit = std::fs::read_to_string(path).unwrap_or_default();
        let report = crate::keyscan::scan(&audit, &raw());
        let binary = std::env::args()
            .next()
            .and_then(|a| {
                std::path::Path::new(&a)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
            })
            .unwrap_or_default();
        // Cargo names test binaries `<target>-<hash>`.
        let name = binary
            .rsplit_once('-')
            .map_or(binary.as_str(), |(name, _)| name)
            .to_string();
        let dir = keyscan_dir();
        let _ = std::fs::create_dir_all(&dir);
        if let Ok(json) = serde_json::to_vec_pretty(&report) {
            let _ = std::fs::write(dir.join(format!("{name}.json")), json);
        }
    }
    if AUDIT_LOG.set(audit_log).is_ok() {
        // SAFETY: registers a plain `extern "C"` function with no captured state.
        unsafe { libc::atexit(scan) };
    }
}
