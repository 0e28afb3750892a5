//! Minimal line logger to stderr. Callers pass only counts, names and statuses: never bodies,
//! keys or header values.

fn line(level: &str, msg: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    eprintln!("{} {level} {msg}", tally::time::format_rfc3339_ms(now));
}

pub fn info(msg: &str) {
    line("INFO", msg);
}

pub fn warn(msg: &str) {
    line("WARN", msg);
}

pub fn error(msg: &str) {
    line("ERROR", msg);
}
