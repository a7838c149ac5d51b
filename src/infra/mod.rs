//! Zero-configuration infrastructure: the embedded broker and the private PostgreSQL.

pub mod broker;
pub mod mqtt_gate;
pub mod postgres;

/// Writes `text` to `path`, readable by its owner only (mode 0600 from creation, so
/// a secret is never readable by others, not even for a moment), synced to disk.
pub fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}
