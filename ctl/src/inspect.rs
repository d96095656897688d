//! `meridianctl inspect`: overviews with live state (zones, meshes,
//! services, dataplanes, zone ingresses) and one dataplane's generated
//! configuration, policies or rules.

use anyhow::bail;
use serde_json::Value;

use crate::client::Client;
use crate::output::{col, print_items, wide, Column};
use crate::{list_all, Output};

const ZONES: &[Column] = &[
    col("NAME", "name"),
    col("ONLINE", "online"),
    col("VERSION", "version"),
    col("ADDRESS", "address"),
    col("LAST CONNECTED", "lastConnectTime"),
    col("AGE", "creationTime"),
    wide("LABELS", "labels"),
];

const DATAPLANES: &[Column] = &[
    col("MESH", "mesh"),
    col("NAME", "name"),
    col("ONLINE", "online"),
    col("ADDRESS", "dataplane.networking.address"),
    col("CERT BACKEND", "dataplaneInsight.mTLS.issuedBackend"),
    col("CERT EXPIRES", "dataplaneInsight.mTLS.certificateExpirationTime"),
    col("AGE", "creationTime"),
    wide("TAGS", "@tags"),
    wide("LABELS", "labels"),
];

const MESHES: &[Column] = &[
    col("NAME", "name"),
    col("MTLS", "mTLS.enabledBackend"),
    col("DATAPLANES", "dataplanes.total"),
    col("ONLINE", "dataplanes.online"),
    col("SERVICES", "services.total"),
    col("POLICIES", "policiesTotal"),
    col("AGE", "creationTime"),
    wide("POLICY TYPES", "policies"),
];

const SERVICES: &[Column] = &[
    col("MESH", "mesh"),
    col("SERVICE", "name"),
    col("STATUS", "status"),
    col("DATAPLANES", "dataplanes.total"),
    col("ONLINE", "dataplanes.online"),
    col("ZONES", "zones"),
];

const ZONE_INGRESSES: &[Column] = &[
    col("NAME", "name"),
    col("ZONE", "zone"),
    col("ONLINE", "online"),
    col("ADDRESS", "address"),
    col("PORT", "port"),
    col("SERVICES", "availableServices"),
    col("AGE", "creationTime"),
    wide("LABELS", "labels"),
];

/// The query of a dataplane list filtered by `tags` (`KEY=VALUE`, each
/// sent as Kuma's `tag=KEY:VALUE`).
pub fn tag_query(tags: &[String]) -> anyhow::Result<String> {
    let mut pairs = Vec::new();
    for t in tags {
        let Some((k, v)) = t.split_once('=') else {
            bail!("--tag {t:?}: expected KEY=VALUE (kuma.io/service=backend)");
        };
        if k.is_empty() {
            bail!("--tag {t:?}: the key is empty");
        }
        pairs.push(format!("tag={}", crate::audit::encode_query_value(&format!("{k}:{v}"))));
    }
    Ok(if pairs.is_empty() {
        String::new()
    } else {
        format!("?{}", pairs.join("&"))
    })
}

pub fn inspect(client: &Client, what: &str, mesh: &str, tags: &[String], output: Output) -> anyhow::Result<()> {
    if !tags.is_empty() && what != "dataplanes" {
        bail!("--tag filters `inspect dataplanes` (and `get dataplanes`) only");
    }
    let (path, columns) = match what {
        "zones" => ("/zones+insights".to_string(), ZONES),
        "dataplanes" => (
            format!("/meshes/{mesh}/dataplanes+insights{}", tag_query(tags)?),
            DATAPLANES,
        ),
        "meshes" => ("/mesh-insights".to_string(), MESHES),
        "services" => (format!("/meshes/{mesh}/service-insights"), SERVICES),
        "zone-ingresses" | "zoneingresses" => ("/zoneingresses+insights".to_string(), ZONE_INGRESSES),
        other => bail!("cannot inspect {other:?}"),
    };
    let items = list_all(client, &path)?;
    print_items(&items, output, columns)
}

/// One dataplane's generated configuration, matched policies or rules, from
/// the zone that serves it. A configuration dump is JSON unless YAML is
/// asked for, as Envoy's; policies and rules are YAML unless JSON is.
pub fn inspect_dataplane(
    client: &Client,
    mesh: &str,
    name: &str,
    view: &str,
    include_eds: bool,
    output: Output,
) -> anyhow::Result<()> {
    let path = match view {
        "policies" => format!("/meshes/{mesh}/dataplanes/{name}/policies"),
        "rules" => format!("/meshes/{mesh}/dataplanes/{name}/_rules"),
        _ if include_eds => format!("/meshes/{mesh}/dataplanes/{name}/xds?include_eds=true"),
        _ => format!("/meshes/{mesh}/dataplanes/{name}/xds"),
    };
    let (_, body): (u16, Value) = client.expect_ok("GET", &path, None)?;
    let dump = !matches!(view, "policies" | "rules");
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&body)?),
        Output::Table | Output::Wide if dump => println!("{}", serde_json::to_string_pretty(&body)?),
        Output::Yaml | Output::Table | Output::Wide => print!("{}", serde_yaml_ng::to_string(&body)?),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_become_kuma_tag_queries() {
        assert_eq!(tag_query(&[]).unwrap(), "");
        assert_eq!(
            tag_query(&["kuma.io/service=backend".into(), "version=v1".into()]).unwrap(),
            "?tag=kuma.io%2Fservice%3Abackend&tag=version%3Av1"
        );
        assert!(tag_query(&["novalue".into()]).is_err());
        assert!(tag_query(&["=v".into()]).is_err());
    }
}
