//! Cursor paging over lists the store returns whole (hosts, snapshots). A cursor is the
//! opaque (base64url) sort key of the last item of the previous page, so a page boundary
//! survives items being added or removed between calls.

use super::error::AppError;
use base64::Engine as _;

/// Default page size.
pub const DEFAULT_LIMIT: usize = 50;
/// Largest page size.
pub const MAX_LIMIT: usize = 200;

/// Opaque cursor for the sort key `key`.
pub fn cursor_encode(key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
}

/// The sort key inside a cursor.
pub fn cursor_decode(c: &str) -> Result<String, AppError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| AppError::invalid("cursor is not a value returned as next_cursor"))
}

/// Checks a `limit` (absent: the default).
pub fn limit(l: Option<usize>) -> Result<usize, AppError> {
    let l = l.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&l) {
        return Err(AppError::invalid(format!(
            "query parameter limit must be from 1 to {MAX_LIMIT} (got {l})"
        )));
    }
    Ok(l)
}

/// One page of `items` (sorted ascending by `key`) after `cursor`, and the next cursor.
pub fn page<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> String,
    limit: usize,
    cursor: Option<&str>,
) -> Result<(Vec<T>, Option<String>), AppError> {
    let after = cursor.map(cursor_decode).transpose()?;
    let mut out: Vec<T> = items
        .into_iter()
        .filter(|i| after.as_deref().is_none_or(|a| key(i).as_str() > a))
        .take(limit + 1)
        .collect();
    let next = if out.len() > limit {
        out.truncate(limit);
        out.last().map(|l| cursor_encode(&key(l)))
    } else {
        None
    };
    Ok((out, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_walk_everything_once_and_survive_a_removal() {
        let items: Vec<String> = (0..7).map(|i| format!("k{i}")).collect();
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let (p, next) = page(items.clone(), |s| s.clone(), 3, cursor.as_deref()).unwrap();
            seen.extend(p);
            match next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, items);
        // The last item of a page is removed before the next call: nothing is skipped.
        let (p1, next) = page(items.clone(), |s| s.clone(), 3, None).unwrap();
        let fewer: Vec<String> = items.iter().filter(|s| *s != &p1[2]).cloned().collect();
        let (p2, _) = page(fewer, |s| s.clone(), 3, next.as_deref()).unwrap();
        assert_eq!(p2, ["k3", "k4", "k5"]);
        assert!(page(items, |s| s.clone(), 3, Some("!!")).is_err());
        assert!(limit(Some(0)).is_err());
        assert!(limit(Some(201)).is_err());
        assert_eq!(limit(None).unwrap(), 50);
    }
}
