//! Events as CSV (RFC 4180): a header row of the event's field names, then one row per event.
//! Fields that could start a spreadsheet formula are prefixed with `'`, so that a label cannot
//! run as a formula when the export is opened.

use tally::event::Event;

/// One CSV field: guarded against formulas, quoted when it holds a separator, a quote or a line
/// break. Also written by `export` for each string of a row.
pub fn field(out: &mut String, v: &str) {
    let guarded = matches!(v.chars().next(), Some('=' | '+' | '-' | '@' | '\t' | '\r'))
        && v.parse::<f64>().is_err();
    let quoted = v.contains([',', '"', '\n', '\r']);
    if quoted {
        out.push('"');
    }
    if guarded {
        out.push('\'');
    }
    if quoted {
        for (i, part) in v.split('"').enumerate() {
            if i > 0 {
                out.push_str("\"\"");
            }
            out.push_str(part);
        }
        out.push('"');
    } else {
        out.push_str(v);
    }
}

pub fn events(events: &[Event]) -> String {
    let mut out = String::new();
    let mut header_done = false;
    for e in events {
        let Ok(serde_json::Value::Object(map)) = serde_json::to_value(e) else {
            continue;
        };
        if !header_done {
            out.push_str(&map.keys().cloned().collect::<Vec<_>>().join(","));
            out.push_str("\r\n");
            header_done = true;
        }
        for (i, v) in map.values().enumerate() {
            if i > 0 {
                out.push(',');
            }
            match v {
                serde_json::Value::Null => {}
                serde_json::Value::String(s) => field(&mut out, s),
                other => field(&mut out, &other.to_string()),
            }
        }
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::field;

    #[test]
    fn quoting_and_formula_guard() {
        let f = |v: &str| {
            let mut s = String::new();
            field(&mut s, v);
            s
        };
        assert_eq!(f("plain"), "plain");
        assert_eq!(f("a,b"), "\"a,b\"");
        assert_eq!(f("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(f("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(f("-1.5"), "-1.5");
        assert_eq!(f("=1,\"2\""), "\"'=1,\"\"2\"\"\"");
    }
}
