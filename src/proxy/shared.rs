//! Shared data (one store per Envoy, which every worker reads and writes), with host errors as
//! values: the hand-over records, the key set and the budget counts live there.

use super::{Host, Written};

/// The value of `key`; None when it is absent or the host cannot say.
pub fn get<H: Host>(key: &str) -> Option<Vec<u8>> {
    H::shared_get(key).and_then(|(v, _)| v)
}

/// Write `key` unconditionally: for keys with one writer.
pub fn set<H: Host>(key: &str, value: &[u8]) -> bool {
    H::shared_set(key, value, None) == Written::Ok
}

/// Create `key`, empty, if it is absent, so that every later [`update`] has a CAS token to
/// check (a first write without one would overwrite whatever another worker wrote at the same
/// moment).
pub fn ensure<H: Host>(key: &str) {
    if let Some((None, _)) = H::shared_get(key) {
        let _ = H::shared_set(key, b"", None);
    }
}

/// Apply `change` to the value of `key` (None: nothing to write) with compare-and-swap,
/// retrying when another worker wrote in between; what `change` returned once its value is
/// stored.
pub fn update<H: Host, T>(
    key: &str,
    mut change: impl FnMut(&[u8]) -> Option<(Vec<u8>, T)>,
) -> Option<T> {
    for _ in 0..16 {
        let (value, cas) = H::shared_get(key)?;
        let (new, out) = change(value.as_deref().unwrap_or_default())?;
        match H::shared_set(key, &new, cas) {
            Written::Ok => return Some(out),
            Written::CasMismatch => continue,
            Written::Failed => return None,
        }
    }
    None
}
