//! How meridianctl prints resources: JSON, YAML, or a table whose columns
//! are JSON paths into each item (`-o wide` adds the columns marked wide).

use serde_json::Value;

use crate::Output;

/// One table column: its header and the dotted path of its field. A few
/// paths are computed: `@tags` (the tags of a dataplane's inbounds and
/// gateway), `@count:PATH` (the length of an array). Fields ending in
/// `Time` show as an age.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub header: &'static str,
    pub field: &'static str,
    /// Shown with `-o wide` only.
    pub wide: bool,
}

pub const fn col(header: &'static str, field: &'static str) -> Column {
    Column {
        header,
        field,
        wide: false,
    }
}

pub const fn wide(header: &'static str, field: &'static str) -> Column {
    Column {
        header,
        field,
        wide: true,
    }
}

/// Prints items as JSON, YAML or a table of `columns`.
pub fn print_items(items: &[Value], output: Output, cols: &[Column]) -> anyhow::Result<()> {
    match output {
        Output::Json => {
            let v = if items.len() == 1 {
                items[0].clone()
            } else {
                Value::Array(items.to_vec())
            };
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Yaml => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    println!("---");
                }
                print!("{}", serde_yaml_ng::to_string(item)?);
            }
        }
        Output::Table | Output::Wide => {
            let shown: Vec<&Column> = cols.iter().filter(|c| !c.wide || output == Output::Wide).collect();
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|it| shown.iter().map(|c| cell(it, c.field)).collect())
                .collect();
            print_table(&shown.iter().map(|c| c.header).collect::<Vec<_>>(), &rows);
        }
    }
    Ok(())
}

fn at<'a>(item: &'a Value, path: &str) -> &'a Value {
    item.pointer(&format!("/{}", path.replace('.', "/")))
        .unwrap_or(&Value::Null)
}

/// The text of one cell.
pub fn cell(item: &Value, field: &str) -> String {
    if field == "@tags" {
        return tags_of(item);
    }
    if let Some(path) = field.strip_prefix("@count:") {
        return match at(item, path) {
            Value::Array(a) => a.len().to_string(),
            _ => "-".into(),
        };
    }
    match at(item, field) {
        Value::String(s) if field.ends_with("Time") => age(s),
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Object(m) if m.is_empty() => "-".into(),
        Value::Object(m) => {
            let mut pairs: Vec<String> = m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                })
                .collect();
            pairs.sort();
            pairs.join(",")
        }
        Value::Array(a) if a.iter().all(Value::is_string) => {
            let parts: Vec<&str> = a.iter().filter_map(Value::as_str).collect();
            if parts.is_empty() {
                "-".into()
            } else {
                parts.join(",")
            }
        }
        other => other.to_string(),
    }
}

/// A dataplane's tags (of an item that is one, or holds one under
/// `dataplane`), each `key=value` once.
fn tags_of(item: &Value) -> String {
    let networking = match &item["dataplane"]["networking"] {
        Value::Null => &item["networking"],
        n => n,
    };
    let mut tags = std::collections::BTreeSet::new();
    let inbound = networking["inbound"].as_array().into_iter().flatten();
    for t in inbound.map(|i| &i["tags"]).chain([&networking["gateway"]["tags"]]) {
        for (k, v) in t.as_object().into_iter().flatten() {
            tags.insert(format!("{k}={}", v.as_str().unwrap_or_default()));
        }
    }
    if tags.is_empty() {
        "-".into()
    } else {
        tags.into_iter().collect::<Vec<_>>().join(",")
    }
}

pub fn age(rfc3339: &str) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(rfc3339) else {
        return rfc3339.to_string();
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, c) in row.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:width$}", c, width = widths[i]))
            .collect();
        println!("{}", parts.join("   ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cells_show_maps_lists_counts_tags_and_ages() {
        let item = json!({
            "labels": {"team": "a", "kuma.io/zone": "z1"},
            "zones": ["z1", "z2"],
            "spec": {"availableServices": [{}, {}, {}]},
            "dataplane": {"networking": {"inbound": [
                {"tags": {"kuma.io/service": "web", "version": "v1"}},
                {"tags": {"kuma.io/service": "web-admin"}}]}},
            "online": true,
            "creationTime": "2000-01-01T00:00:00Z",
        });
        assert_eq!(cell(&item, "labels"), "kuma.io/zone=z1,team=a");
        assert_eq!(cell(&item, "zones"), "z1,z2");
        assert_eq!(cell(&item, "@count:spec.availableServices"), "3");
        assert_eq!(
            cell(&item, "@tags"),
            "kuma.io/service=web,kuma.io/service=web-admin,version=v1"
        );
        assert_eq!(cell(&item, "online"), "true");
        assert_eq!(cell(&item, "missing"), "-");
        assert!(cell(&item, "creationTime").ends_with('d'));
    }
}
