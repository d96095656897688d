//! `meridianctl get audit`: the control plane's record of writes
//! (DESIGN §12), `GET /audit` filtered by type, mesh, user, action, result.

use crate::client::Client;
use crate::output::{col, print_items, Column};
use crate::{list_all, Output};

/// The filters of `get audit`; `None` leaves a field unfiltered.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AuditFilter {
    pub kind: Option<String>,
    pub mesh: Option<String>,
    pub user: Option<String>,
    pub action: Option<String>,
    pub result: Option<String>,
}

impl AuditFilter {
    /// `/audit` with the filters as its query.
    pub fn path(&self) -> String {
        let pairs: Vec<String> = [
            ("type", &self.kind),
            ("mesh", &self.mesh),
            ("user", &self.user),
            ("action", &self.action),
            ("result", &self.result),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some(format!("{k}={}", encode_query_value(v.as_deref()?))))
        .collect();
        if pairs.is_empty() {
            "/audit".to_string()
        } else {
            format!("/audit?{}", pairs.join("&"))
        }
    }
}

const COLUMNS: &[Column] = &[
    col("TIME", "time"),
    col("USER", "user"),
    col("ACTION", "action"),
    col("TYPE", "type"),
    col("MESH", "mesh"),
    col("NAME", "name"),
    col("RESULT", "result"),
    col("STATUS", "status"),
    crate::output::wide("REASON", "reason"),
];

pub fn get_audit(client: &Client, filter: &AuditFilter, output: Output) -> anyhow::Result<()> {
    let items = list_all(client, &filter.path())?;
    print_items(&items, output, COLUMNS)
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn encode_query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_the_query() {
        assert_eq!(AuditFilter::default().path(), "/audit");
        let f = AuditFilter {
            kind: Some("MeshTimeout".into()),
            mesh: Some("team-a".into()),
            user: Some("alice@example.com".into()),
            action: Some("CREATE".into()),
            result: Some("denied".into()),
        };
        assert_eq!(
            f.path(),
            "/audit?type=MeshTimeout&mesh=team-a&user=alice%40example.com&action=CREATE&result=denied"
        );
        let f = AuditFilter {
            user: Some("a b&c=d/é".into()),
            ..AuditFilter::default()
        };
        assert_eq!(f.path(), "/audit?user=a%20b%26c%3Dd%2F%C3%A9");
    }
}
