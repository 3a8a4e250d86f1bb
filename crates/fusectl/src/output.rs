//! Printing answers: aligned tables for people, the API's own JSON (or YAML) for programs.

use crate::api::Result;
use crate::cli::Format;
use serde_json::Value;
use std::io::IsTerminal;

/// Prints `v` as JSON or YAML; `false` when the format is a table (the caller prints it).
pub fn doc(v: &Value, f: Format) -> Result<bool> {
    match f {
        Format::Json => println!("{}", serde_json::to_string_pretty(v)?),
        Format::Yaml => print!("{}", serde_yaml::to_string(v)?),
        Format::Table | Format::Wide => return Ok(false),
    }
    Ok(true)
}

/// A cell: strings bare, null as `-`, everything else as JSON.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Prints rows under a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

/// Whether standard error is a terminal (progress lines are rewritten in place there).
pub fn stderr_tty() -> bool {
    std::io::stderr().is_terminal()
}

/// `used/total` with a percentage.
pub fn used(a: &Value, t: &Value) -> String {
    let a = a.as_f64().unwrap_or(0.0);
    let t = t.as_f64().unwrap_or(0.0);
    if t > 0.0 {
        format!("{a}/{t} ({:.0}%)", a * 100.0 / t)
    } else {
        format!("{a}/-")
    }
}

/// A byte count for people.
pub fn bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}
