//! Peak memory of this process, as the OS counts it.

/// The process's peak resident set size in MiB (Linux `VmHWM`), if the OS reports it.
/// On GPU backends this is host memory only.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib as f64 / 1024.0)
}
