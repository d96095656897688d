//! Name rules: resource names are RFC 1123 subdomains; mesh and zone names
//! are RFC 1035 labels (no dots), because they are joined with dots into
//! other names (`<mesh>.<dataplane>` node ids, `<zone>.<name>` synced names).

/// Checks an RFC 1123 DNS subdomain: at most 253 characters of lowercase
/// alphanumerics, `-` and `.`, each dot-separated part starting and ending
/// with an alphanumeric.
pub fn check_subdomain(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 253 {
        return Err(format!("must be at most 253 characters, got {}", name.len()));
    }
    for part in name.split('.') {
        check_label_chars(part).map_err(|e| format!("invalid name {name:?}: {e}"))?;
    }
    Ok(())
}

/// Checks an RFC 1123 label: at most 63 lowercase alphanumerics and `-`,
/// starting and ending with an alphanumeric.
pub fn check_label(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    check_label_chars(name).map_err(|e| format!("invalid name {name:?}: {e}"))
}

/// Checks an RFC 1035 label (an RFC 1123 label that starts with a letter).
pub fn check_rfc1035_label(name: &str) -> Result<(), String> {
    check_label(name)?;
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!("invalid name {name:?}: must start with a lowercase letter"));
    }
    Ok(())
}

fn check_label_chars(part: &str) -> Result<(), &'static str> {
    if part.is_empty() {
        return Err("empty part between dots");
    }
    if part.len() > 63 {
        return Err("each part must be at most 63 characters");
    }
    if !part
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err("only lowercase letters, digits, '-' and '.' are allowed");
    }
    if part.starts_with('-') || part.ends_with('-') {
        return Err("must start and end with a letter or digit");
    }
    Ok(())
}

/// Splits `HOST:PORT` (IPv6 in brackets) into the host, brackets removed,
/// and the port; the error says which part is wrong.
pub fn split_host_port(address: &str) -> Result<(&str, u16), &'static str> {
    let (host, port) = address.rsplit_once(':').ok_or("no port")?;
    let port = port
        .parse::<u16>()
        .map_err(|_| "the port is not a number from 0 to 65535")?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() || host.contains(['/', '@', '?', '#', ' ']) {
        return Err("the host is not a DNS name or an IP address");
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomains() {
        assert!(check_subdomain("mesh-timeout-all-default").is_ok());
        assert!(check_subdomain("zone-1.backend-01").is_ok());
        assert!(check_subdomain("").is_err());
        assert!(check_subdomain("Upper").is_err());
        assert!(check_subdomain("a..b").is_err());
        assert!(check_subdomain("-a").is_err());
        assert!(check_subdomain("a_b").is_err());
        assert!(check_subdomain(&"a".repeat(254)).is_err());
    }

    #[test]
    fn labels() {
        assert!(check_label("default").is_ok());
        assert!(check_label("a.b").is_err());
        assert!(check_rfc1035_label("zone-1").is_ok());
        assert!(check_rfc1035_label("1zone").is_err());
    }
}
