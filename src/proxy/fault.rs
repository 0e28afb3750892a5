//! Fault injection for tests, compiled only with the `fault-injection` feature: a request with
//! `x-tally-fault: panic` panics inside the filter, so a test can watch Envoy's fail-open policy
//! keep the request flowing. A shipped filter has no such code.

#[allow(clippy::panic)]
pub fn check(headers: &[(&str, std::borrow::Cow<'_, str>)]) {
    if headers
        .iter()
        .any(|(k, v)| *k == "x-tally-fault" && v == "panic")
    {
        panic!("fault injected by x-tally-fault");
    }
}
