//! Envoy's shared data (one store per `vm_id`, which every VM of the Envoy reads and writes),
//! with host errors as values: the hand-over records and the key set live there.

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

/// The value of `key`; None when it is absent or the host cannot say.
pub fn get(key: &str) -> Option<Vec<u8>> {
    hostcalls::get_shared_data(key).ok().and_then(|(v, _)| v)
}

/// Write `key` unconditionally: for keys with one writer.
pub fn set(key: &str, value: &[u8]) -> bool {
    hostcalls::set_shared_data(key, Some(value), None).is_ok()
}

/// Create `key`, empty, if it is absent, so that every later [`update`] has a CAS token to
/// check (a first write without one would overwrite whatever another VM wrote at the same
/// moment).
pub fn ensure(key: &str) {
    if let Ok((None, _)) = hostcalls::get_shared_data(key) {
        let _ = hostcalls::set_shared_data(key, Some(b""), None);
    }
}

/// Apply `change` to the value of `key` (None: nothing to write) with compare-and-swap,
/// retrying when another VM wrote in between; what `change` returned once its value is stored.
pub fn update<T>(key: &str, mut change: impl FnMut(&[u8]) -> Option<(Vec<u8>, T)>) -> Option<T> {
    for _ in 0..16 {
        let (value, cas) = hostcalls::get_shared_data(key).ok()?;
        let (new, out) = change(value.as_deref().unwrap_or_default())?;
        match hostcalls::set_shared_data(key, Some(&new), cas) {
            Ok(()) => return Some(out),
            Err(Status::CasMismatch) => continue,
            Err(_) => return None,
        }
    }
    None
}
