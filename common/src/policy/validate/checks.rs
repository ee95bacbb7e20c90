//! Checks of single values that need no [`Checker`](super::Checker): names, units, addresses, URLs.

use super::*;

/// How a value is shown in "found ..." (strings quoted, as written in TOML).
pub(super) fn describe(v: &Val) -> String {
    match v {
        Val::Str(s) => format!("{s:?}"),
        Val::Int(i) => format!("integer {i}"),
        Val::Float(f) => format!("float {f}"),
        Val::Bool(b) => format!("boolean {b}"),
        Val::Datetime(d) => format!("date-time {d}"),
        Val::Array(items) if items.is_empty() => "an empty array".to_string(),
        Val::Array(_) => "an array".to_string(),
        Val::Table(_) => "a table".to_string(),
    }
}

/// Names of `[window.<name>]`, `[probe.<name>]` and the like.
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

pub(super) fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A portable group name: a letter or `_`, then letters, digits, `_`, `.` or `-`; at most 32 characters.
pub(super) fn valid_group(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 32
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `<name>.service`, where the name has no `/` or white space.
pub(super) fn valid_service(unit: &str) -> bool {
    unit.strip_suffix(".service")
        .is_some_and(|stem| !stem.is_empty() && !stem.chars().any(|c| c == '/' || c.is_whitespace() || c.is_control()))
}

/// A user name as useradd takes it (letters, digits, `_`, `-`, `.`, not starting with `-`), or a numeric uid.
pub(super) fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 32
        && !user.starts_with('-')
        && user.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The allowed key an unknown key was probably meant to be: a close spelling, or one it abbreviates.
pub(super) fn suggestion<'a>(allowed: &[&'a str], key: &str) -> Option<&'a str> {
    let tolerance = (key.chars().count() / 4).max(1);
    allowed
        .iter()
        .map(|a| (edit_distance(a, key), *a))
        .filter(|(d, a)| *d <= tolerance || (key.len() >= 3 && a.starts_with(key)))
        .min()
        .map(|(_, a)| a)
}

/// Levenshtein distance, for "did you mean" hints on unknown keys.
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb { diagonal } else { 1 + diagonal.min(above).min(row[j]) };
            diagonal = above;
        }
    }
    row[b.len()]
}

/// `HH:MM` or `HH:MM:SS` (a string), or a TOML local time (`02:00:00`).
pub(super) fn parse_start(v: &Val) -> Option<jiff::civil::Time> {
    match v {
        Val::Str(s) => {
            let parts: Vec<&str> = s.split(':').collect();
            if !(2..=3).contains(&parts.len())
                || parts.iter().any(|p| p.len() != 2 || !p.bytes().all(|b| b.is_ascii_digit()))
            {
                return None;
            }
            let num = |i: usize| parts.get(i).map_or(Some(0), |p| p.parse::<i8>().ok());
            jiff::civil::Time::new(num(0)?, num(1)?, num(2)?, 0).ok()
        }
        Val::Datetime(d) if d.date.is_none() && d.offset.is_none() => {
            let t = d.time?;
            let second = i8::try_from(t.second.unwrap_or(0)).ok()?;
            let nanos = i32::try_from(t.nanosecond.unwrap_or(0)).ok()?;
            jiff::civil::Time::new(i8::try_from(t.hour).ok()?, i8::try_from(t.minute).ok()?, second.min(59), nanos).ok()
        }
        _ => None,
    }
}

/// `ip:port` or a bare `ip` (port 502); IPv6 with a port in brackets.
pub(super) fn parse_modbus_tcp(s: &str) -> Option<SocketAddr> {
    let addr = match s.parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => {
            let ip = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(s);
            SocketAddr::new(ip.parse::<IpAddr>().ok()?, 502)
        }
    };
    (addr.port() != 0).then_some(addr)
}

/// Checks and normalises the patch server URL: `(url, host, port)`.
pub(super) fn parse_https_url(s: &str) -> Result<(String, String, u16), String> {
    let bad = |why: &str| {
        format!("expected an https:// URL like \"https://patch.example.net/otpatch/\", found {s:?} ({why})")
    };
    let rest = match s.get(..8) {
        Some(scheme) if scheme.eq_ignore_ascii_case("https://") => &s[8..],
        _ => return Err(bad("only https:// is allowed")),
    };
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("white space is not allowed"));
    }
    if rest.contains(['?', '#']) {
        return Err(bad("a query or fragment is not allowed"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.contains('@') {
        return Err(bad("user information is not allowed"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let end = v6.find(']').ok_or_else(|| bad("unclosed '['"))?;
        let ip: Ipv6Addr = v6[..end].parse().map_err(|_| bad("invalid IPv6 address"))?;
        let after = &v6[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(bad("unexpected text after the host")),
        };
        (ip.to_string(), port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
            None => (authority.to_ascii_lowercase(), None),
        }
    };
    if host.is_empty() {
        return Err(bad("the host is missing"));
    }
    if !host.contains(':') && !host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-') {
        return Err(bad("invalid host name"));
    }
    let port = match port {
        None => 443,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(bad("invalid port")),
        },
    };
    let mut path = path.to_string();
    if !path.ends_with('/') {
        path.push('/');
    }
    let shown_host = if host.contains(':') { format!("[{host}]") } else { host.clone() };
    let url =
        if port == 443 { format!("https://{shown_host}{path}") } else { format!("https://{shown_host}:{port}{path}") };
    Ok((url, host, port))
}
