//! Pieces shared by several policy specs: `to`/`from` entries, numbers that
//! may be written as an integer or a string, header names and header
//! matchers, backend references, and the small checks (ranges, paths, URLs)
//! the policy validators are built from.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{ProxyType, RefPosition, TargetRef, TargetRefKind};
use crate::duration::Duration;
use crate::error::{Causes, FieldPath};

/// One `to` or `from` item of a policy whose configuration is `C`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Entry<C> {
    pub target_ref: TargetRef,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<C>,
}

/// Checks every entry of a `to` or `from` list at `path` (e.g. `spec.to`):
/// its `targetRef` against `allowed`, that `default` is present, and then
/// the configuration itself through `check_conf` (called with the path of
/// `default`).
pub fn check_entries<C>(
    entries: &[Entry<C>],
    path: &FieldPath,
    position: RefPosition,
    allowed: &[TargetRefKind],
    causes: &mut Causes,
    mut check_conf: impl FnMut(&Entry<C>, &C, &FieldPath, &mut Causes),
) {
    for (i, entry) in entries.iter().enumerate() {
        let p = path.index(i);
        entry
            .target_ref
            .validate(&p.field("targetRef"), position, allowed, causes);
        match &entry.default {
            None => causes.add(&p.field("default"), "must be defined"),
            Some(conf) => check_conf(entry, conf, &p.field("default"), causes),
        }
    }
}

/// Checks a policy's `to` and `from` lists (each entry's `targetRef` against
/// its list's allowed kinds, `default` present) with one `check_conf` for both.
pub fn check_to_and_from<C>(
    to: &[Entry<C>],
    from: &[Entry<C>],
    path: &FieldPath,
    (to_allowed, from_allowed): (&[TargetRefKind], &[TargetRefKind]),
    causes: &mut Causes,
    check_conf: impl Fn(&C, &FieldPath, &mut Causes),
) {
    check_entries(
        to,
        &path.field("to"),
        RefPosition::To,
        to_allowed,
        causes,
        |_, c, p, cs| check_conf(c, p, cs),
    );
    check_entries(
        from,
        &path.field("from"),
        RefPosition::From,
        from_allowed,
        causes,
        |_, c, p, cs| check_conf(c, p, cs),
    );
}

/// Records that a whole list must be absent, e.g. `from` on a gateway policy.
pub fn forbid_list(len: usize, path: &FieldPath, reason: &str, causes: &mut Causes) {
    if len > 0 {
        causes.add(path, format!("must not be defined {reason}"));
    }
}

/// Gateways may be narrowed to listeners by tags only in some policies;
/// records an error when a top-level `MeshGateway` reference carries tags.
pub fn forbid_gateway_listener_tags(target_ref: &TargetRef, path: &FieldPath, causes: &mut Causes) {
    if target_ref.kind == TargetRefKind::MeshGateway && target_ref.tags.is_some() {
        causes.add(
            &path.field("tags"),
            "must not be set with kind MeshGateway in this policy (listener tags are not supported)",
        );
    }
}

/// A value that Kubernetes calls "int-or-string": a JSON integer, or a string
/// holding a decimal number (`"99.9"`). The spelling given is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IntOrString {
    Int(i64),
    Str(String),
}

impl IntOrString {
    /// The numeric value, or `None` when the string is not a decimal number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            IntOrString::Int(i) => Some(*i as f64),
            IntOrString::Str(s) => parse_decimal(s),
        }
    }
}

impl fmt::Display for IntOrString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrString::Int(i) => write!(f, "{i}"),
            IntOrString::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl Serialize for IntOrString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            IntOrString::Int(i) => s.serialize_i64(*i),
            IntOrString::Str(v) => s.serialize_str(v),
        }
    }
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IntOrString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a string holding a decimal number")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrString, E> {
                Ok(IntOrString::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrString, E> {
                i64::try_from(v)
                    .map(IntOrString::Int)
                    .map_err(|_| E::custom(format!("integer {v} is too large")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrString, E> {
                Ok(IntOrString::Str(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses a plain decimal number: optional sign, digits with an optional
/// fraction, optional exponent (`50`, `99.9`, `-0.5`, `1e2`).
pub fn parse_decimal(s: &str) -> Option<f64> {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let (int_part, frac_part) = match mantissa.split_once('.') {
        Some((a, b)) => (a, b),
        None => (mantissa, ""),
    };
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if int_part.is_empty() && frac_part.is_empty() || !digits(int_part) || !digits(frac_part) {
        return None;
    }
    if let Some(e) = exponent {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        if e.is_empty() || !digits(e) {
            return None;
        }
    }
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Checks that `value` is a number between 0 and 100 inclusive.
/// Deserializes a list whose items may be strings or numbers (YAML's
/// unquoted `503`), keeping each as text.
pub fn strings_or_numbers<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    use serde::Deserialize;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Item {
        Text(String),
        Number(serde_json::Number),
    }
    let items: Option<Vec<Item>> = Option::deserialize(d)?;
    Ok(items.map(|v| {
        v.into_iter()
            .map(|i| match i {
                Item::Text(s) => s,
                Item::Number(n) => n.to_string(),
            })
            .collect()
    }))
}

pub fn check_percentage(value: &IntOrString, path: &FieldPath, causes: &mut Causes) {
    match value.as_f64() {
        None => causes.add(path, format!("{value} is not a number (expected e.g. 50 or \"99.9\")")),
        Some(v) if !(0.0..=100.0).contains(&v) => causes.add(path, "must be between 0 and 100"),
        Some(_) => {}
    }
}

/// Checks an optional integer percentage (0..=100).
pub fn check_int_percentage(value: Option<u32>, path: &FieldPath, causes: &mut Causes) {
    if let Some(v) = value {
        if v > 100 {
            causes.add(path, "must be between 0 and 100");
        }
    }
}

/// Checks that an optional count, when given, is greater than zero.
pub fn check_positive(value: Option<impl Into<i64>>, path: &FieldPath, causes: &mut Causes) {
    if let Some(v) = value {
        if v.into() <= 0 {
            causes.add(path, "must be greater than 0");
        }
    }
}

/// Checks that an optional duration, when given, is greater than zero.
pub fn check_positive_duration(value: Option<&Duration>, path: &FieldPath, causes: &mut Causes) {
    if let Some(d) = value {
        if d.is_zero() {
            causes.add(path, "must be greater than 0s");
        }
    }
}

/// Checks a TCP/UDP port number (1..=65535).
pub fn check_port(value: impl Into<i64>, path: &FieldPath, causes: &mut Causes) {
    let v = value.into();
    if !(1..=65535).contains(&v) {
        causes.add(path, format!("{v} is not a valid port (1-65535)"));
    }
}

/// Checks an HTTP status code (100..=599).
pub fn check_status_code(value: impl Into<i64>, path: &FieldPath, causes: &mut Causes) {
    let v = value.into();
    if !(100..=599).contains(&v) {
        causes.add(path, format!("{v} is not a valid HTTP status code (100-599)"));
    }
}

/// Checks that a string is not empty.
pub fn check_not_empty(value: &str, path: &FieldPath, causes: &mut Causes) {
    if value.is_empty() {
        causes.add(path, "must not be empty");
    }
}

/// Checks that a list has at most `max` items.
pub fn check_max_items(len: usize, max: usize, path: &FieldPath, causes: &mut Causes) {
    if len > max {
        let noun = if max == 1 { "item" } else { "items" };
        causes.add(path, format!("must have at most {max} {noun}, has {len}"));
    }
}

/// Checks an HTTP header name: 1 to 256 lowercase token characters.
pub fn check_header_name(name: &str, path: &FieldPath, causes: &mut Causes) {
    let token = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() {
        causes.add(path, "must not be empty");
    } else if name.len() > 256 {
        causes.add(path, "must be at most 256 characters long");
    } else if !name.chars().all(token) {
        causes.add(
            path,
            format!("{name:?} is not a valid header name (lowercase letters, digits and !#$%&'*+-.^_`|~ only)"),
        );
    }
}

/// Checks an absolute file path (`/var/log/x.log`, or `C:\logs\x.log`).
pub fn check_file_path(value: &str, path: &FieldPath, causes: &mut Causes) {
    let bytes = value.as_bytes();
    let windows = bytes.len() >= 3 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' && bytes[2] == b'\\';
    if value.is_empty() {
        causes.add(path, "must not be empty");
    } else if value.contains('\0') || !(value.starts_with('/') || windows) {
        causes.add(path, format!("{value:?} is not a valid absolute file path"));
    }
}

/// The parts of a URL-like address `[scheme://]host[:port][/rest]`.
pub struct UrlParts<'a> {
    pub scheme: Option<&'a str>,
    pub host: &'a str,
    pub port: Option<&'a str>,
    /// Everything from the first `/`, `?` or `#` after the authority.
    pub rest: &'a str,
}

/// Splits a URL-like address; `None` when there is no host or when it
/// contains whitespace.
pub fn split_url(value: &str) -> Option<UrlParts<'_>> {
    if value.is_empty() || value.chars().any(char::is_whitespace) {
        return None;
    }
    let (scheme, after) = match value.split_once("://") {
        Some((s, a)) if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) => {
            (Some(s), a)
        }
        Some(_) => return None,
        None => (None, value),
    };
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = if let Some(stripped) = authority.strip_prefix('[') {
        // [ipv6]:port
        let (h, tail) = stripped.split_once(']')?;
        (h, tail.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    Some(UrlParts {
        scheme,
        host,
        port,
        rest,
    })
}

/// Checks a URL-like address (`http://host:9411/api/v2/spans`,
/// `collector:4317`): a host, and a valid port when one is given.
pub fn check_url(value: &str, path: &FieldPath, causes: &mut Causes) {
    match split_url(value) {
        None => causes.add(path, format!("{value:?} is not a valid URL")),
        Some(parts) => {
            if let Some(p) = parts.port {
                if !p.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n)) {
                    causes.add(path, format!("{value:?} has an invalid port (1-65535)"));
                }
            }
        }
    }
}

/// Checks a `type`-tagged union: the member that `chosen` names must be set
/// (when `required`), every other member must not be.
///
/// `members` lists each member's field name and whether it is set;
/// `type_value` is the value of `type` for the messages.
pub fn check_tagged_union(
    path: &FieldPath,
    type_value: &str,
    chosen: Option<&str>,
    required: bool,
    members: &[(&str, bool)],
    causes: &mut Causes,
) {
    for (name, set) in members {
        if Some(*name) == chosen {
            if required && !set {
                causes.add(&path.field(name), format!("must be defined when type is {type_value}"));
            }
        } else if *set {
            causes.add(&path.field(name), format!("must not be set when type is {type_value}"));
        }
    }
}

/// How a header (or a retriable header) is matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeaderMatchType {
    Exact,
    Present,
    RegularExpression,
    Absent,
    Prefix,
}

/// A header matcher; `type` defaults to `Exact`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderMatch {
    pub name: String,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub match_type: Option<HeaderMatchType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

impl HeaderMatch {
    pub fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        check_header_name(&self.name, &path.field("name"), causes);
        let ty = self.match_type.unwrap_or(HeaderMatchType::Exact);
        let has_value = self.value.as_deref().is_some_and(|v| !v.is_empty());
        if matches!(ty, HeaderMatchType::Present | HeaderMatchType::Absent) && has_value {
            causes.add(&path.field("value"), format!("must not be set when type is {ty:?}"));
        }
        if ty == HeaderMatchType::RegularExpression {
            check_regex(self.value.as_deref().unwrap_or_default(), &path.field("value"), causes);
        }
    }
}

/// The longest regular expression a match may carry.
pub const MAX_REGEX_LEN: usize = 1024;

/// A regular expression proxies will accept: RE2 syntax (what Envoy and
/// gRPC use; no look-around or back-references), bounded in length. A
/// pattern they reject would make them refuse the whole route configuration.
pub fn check_regex(value: &str, path: &FieldPath, causes: &mut Causes) {
    if value.is_empty() {
        causes.add(path, "must not be empty");
    } else if value.len() > MAX_REGEX_LEN {
        causes.add(path, format!("must be at most {MAX_REGEX_LEN} characters"));
    } else if let Err(e) = regex_syntax::Parser::new().parse(value) {
        // The parser's message spans lines with a caret diagram; its last
        // line says what is wrong.
        let text = e.to_string();
        let why = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("invalid");
        causes.add(path, format!("invalid regular expression {value:?}: {}", why.trim()));
    }
}

/// A header name and value to add or set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderValue {
    pub name: String,
    pub value: String,
}

/// Headers to append (`add`) or overwrite (`set`), at most 16 of each.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeadersToAdd {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add: Option<Vec<HeaderValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<Vec<HeaderValue>>,
}

impl HeadersToAdd {
    pub fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        for (name, list) in [("add", &self.add), ("set", &self.set)] {
            if let Some(list) = list {
                check_header_values(list, &path.field(name), causes);
            }
        }
    }
}

/// Checks a list of header name/value pairs (at most 16, valid names).
pub fn check_header_values(list: &[HeaderValue], path: &FieldPath, causes: &mut Causes) {
    check_max_items(list.len(), 16, path, causes);
    for (i, h) in list.iter().enumerate() {
        check_header_name(&h.name, &path.index(i).field("name"), causes);
    }
}

/// A destination of a route: a target reference with a port and a weight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackendRef {
    pub kind: TargetRefKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_types: Option<Vec<ProxyType>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// Relative share of traffic; 0 means "send nothing here". Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// Route backends may point at services or service subsets only.
pub const BACKEND_KINDS: &[TargetRefKind] = &[TargetRefKind::MeshService, TargetRefKind::MeshServiceSubset];

impl BackendRef {
    /// The target-reference part of this backend.
    pub fn target_ref(&self) -> TargetRef {
        TargetRef {
            kind: self.kind,
            name: self.name.clone(),
            mesh: self.mesh.clone(),
            tags: self.tags.clone(),
            proxy_types: self.proxy_types.clone(),
        }
    }

    pub fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        self.target_ref().validate(path, RefPosition::To, BACKEND_KINDS, causes);
        if let Some(port) = self.port {
            check_port(port, &path.field("port"), causes);
        }
    }
}

/// Helpers for the policy modules' tests.
#[cfg(test)]
pub(crate) mod testing {
    use serde_json::Value;

    use crate::error::{Cause, FieldPath};
    use crate::spec::{check, Spec};

    /// Asserts that `input` is valid and that its canonical form equals it.
    pub fn assert_valid<T: Spec>(input: Value) {
        match check::<T>(input.clone(), &FieldPath::new("spec")) {
            Ok(canonical) => assert_eq!(canonical, input, "canonical form differs from the input"),
            Err(e) => panic!("expected a valid spec, got: {e}"),
        }
    }

    /// Returns the causes of an invalid spec (panics when it is valid).
    pub fn causes<T: Spec>(input: Value) -> Vec<Cause> {
        match check::<T>(input, &FieldPath::new("spec")) {
            Ok(v) => panic!("expected an invalid spec, got: {v}"),
            Err(e) => e.causes,
        }
    }

    /// Asserts that `input` is rejected with a cause at `field` whose
    /// message contains `message`.
    pub fn assert_invalid<T: Spec>(input: Value, field: &str, message: &str) {
        let causes = causes::<T>(input);
        assert!(
            causes.iter().any(|c| c.field == field && c.message.contains(message)),
            "no cause at {field} containing {message:?}; got: {causes:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn decimals() {
        for (s, v) in [
            ("50", 50.0),
            ("99.9", 99.9),
            ("-0.5", -0.5),
            ("1e2", 100.0),
            (".5", 0.5),
            ("5.", 5.0),
        ] {
            assert_eq!(parse_decimal(s), Some(v), "{s}");
        }
        for s in ["", "abc", "1.2.3", "NaN", "inf", "1e", "--1", "5%", " 5"] {
            assert_eq!(parse_decimal(s), None, "{s}");
        }
    }

    #[test]
    fn int_or_string_keeps_spelling() {
        for input in [json!("99.9"), json!(5)] {
            let v = serde_json::from_value::<IntOrString>(input.clone()).ok();
            assert_eq!(v.and_then(|v| serde_json::to_value(v).ok()), Some(input));
        }
        match serde_json::from_value::<IntOrString>(json!(1.5)) {
            Ok(v) => panic!("accepted a float: {v}"),
            Err(e) => assert!(e.to_string().contains("an integer or a string"), "{e}"),
        }
    }

    #[test]
    fn percentages() {
        let p = FieldPath::new("p");
        let mut c = Causes::new();
        check_percentage(&IntOrString::Str("100".into()), &p, &mut c);
        check_percentage(&IntOrString::Int(0), &p, &mut c);
        assert!(c.is_empty());
        check_percentage(&IntOrString::Str("100.1".into()), &p, &mut c);
        check_percentage(&IntOrString::Int(-1), &p, &mut c);
        check_percentage(&IntOrString::Str("half".into()), &p, &mut c);
        let causes = c.into_result().err().map(|e| e.causes).unwrap_or_default();
        assert_eq!(causes.len(), 3);
        assert_eq!(causes[0].message, "must be between 0 and 100");
        assert_eq!(
            causes[2].message,
            "\"half\" is not a number (expected e.g. 50 or \"99.9\")"
        );
    }

    #[test]
    fn urls() {
        let ok = [
            "http://zipkin:9411/api/v2/spans",
            "collector:4317",
            "otel.svc",
            "http://[::1]:80",
            "tcp://1.2.3.4:5000",
        ];
        for u in ok {
            let mut c = Causes::new();
            check_url(u, &FieldPath::new("u"), &mut c);
            assert!(c.is_empty(), "{u}");
        }
        for u in ["", "http://", "a b", "host:0", "host:99999", "host:x", "://x"] {
            let mut c = Causes::new();
            check_url(u, &FieldPath::new("u"), &mut c);
            assert!(!c.is_empty(), "{u}");
        }
    }

    #[test]
    fn header_names() {
        let mut c = Causes::new();
        check_header_name("x-request-id", &FieldPath::new("h"), &mut c);
        assert!(c.is_empty());
        for bad in ["X-Upper", "", "a b"] {
            let mut c = Causes::new();
            check_header_name(bad, &FieldPath::new("h"), &mut c);
            assert!(!c.is_empty(), "{bad}");
        }
    }

    #[test]
    fn file_paths() {
        for (p, ok) in [
            ("/tmp/a.log", true),
            ("C:\\logs\\a.log", true),
            ("relative.log", false),
            ("", false),
        ] {
            let mut c = Causes::new();
            check_file_path(p, &FieldPath::new("f"), &mut c);
            assert_eq!(c.is_empty(), ok, "{p}");
        }
    }
}
