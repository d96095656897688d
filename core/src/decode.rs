//! Decoding user documents (YAML or JSON, one or many, universal or
//! Kubernetes style) into validated resources.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::access;
use crate::dataplane::{Dataplane, Zone, ZoneIngress};
use crate::error::{FieldPath, ValidationError};
use crate::identity::{DataplaneTokenKey, DataplaneTokenRevocation};
use crate::mesh::Mesh;
use crate::mtls;
use crate::names;
use crate::policy;
use crate::resource::ResourceKey;
use crate::spec::check;
use crate::types::ResourceType;

/// The largest encoded resource Meridian accepts.
pub const MAX_RESOURCE_BYTES: usize = 1024 * 1024;

/// The mesh a mesh-scoped resource lands in when none is named.
pub const DEFAULT_MESH: &str = "default";

/// The label that names the mesh of a Kubernetes-style document.
pub const MESH_LABEL: &str = "kuma.io/mesh";

/// A validated document, ready to be stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    pub key: ResourceKey,
    pub labels: BTreeMap<String, String>,
    /// Canonical spec (inline fields for non-policy types).
    pub spec: Value,
}

/// Why a body could not be turned into documents.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The text is not well-formed YAML/JSON.
    #[error("malformed document: {0}")]
    Syntax(String),
    /// A document is well-formed but not valid; `index` is its position in
    /// a multi-document input.
    #[error("document {index}: {error}")]
    Invalid { index: usize, error: ValidationError },
}

/// The syntax a body is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    /// YAML, possibly several documents separated by `---`.
    Yaml,
}

/// The deepest nesting of mappings and sequences a document may have. The
/// deepest resources (MeshProxyPatch values carrying Envoy configuration)
/// stay far below; the bound is checked by a linear scan before parsing,
/// because parsing deep nesting costs time quadratic in the depth.
pub const MAX_NESTING_DEPTH: usize = 64;

/// Parses `text` into untyped documents (empty YAML documents are skipped).
pub fn parse_values(text: &str, format: Format) -> Result<Vec<Value>, DecodeError> {
    if text.len() > 64 * MAX_RESOURCE_BYTES {
        return Err(DecodeError::Syntax("input is larger than 64 MiB".into()));
    }
    check_nesting(text, MAX_NESTING_DEPTH).map_err(DecodeError::Syntax)?;
    match format {
        Format::Json => {
            let mut out = Vec::new();
            let stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
            for v in stream {
                out.push(v.map_err(|e| DecodeError::Syntax(e.to_string()))?);
            }
            Ok(out)
        }
        Format::Yaml => {
            let mut out = Vec::new();
            for doc in serde_yaml_ng::Deserializer::from_str(text) {
                let v = Value::deserialize(doc).map_err(|e| DecodeError::Syntax(e.to_string()))?;
                if !v.is_null() {
                    out.push(v);
                }
            }
            Ok(out)
        }
    }
}

/// Refuses `text` if its mappings and sequences may nest deeper than
/// `max`. An over-estimate by design, one pass over the bytes: flow
/// collections (`[`, `{`, outside quotes and comments) count one level each,
/// block collections one level per deeper indentation and per `- ` at the
/// start of a line. Plain scalars holding unbalanced brackets count too,
/// which only matters for text no resource contains.
pub fn check_nesting(text: &str, max: usize) -> Result<(), String> {
    #[derive(PartialEq)]
    enum Quote {
        None,
        Double,
        Single,
    }
    let mut quote = Quote::None;
    let mut flow = 0usize;
    // Indentations of the enclosing block levels.
    let mut indents: Vec<usize> = Vec::new();
    // The indentation of the line that opened a block scalar (`|`, `>`):
    // more indented lines after it are text.
    let mut block_scalar: Option<usize> = None;
    let too_deep = |line: usize| Err(format!("line {line}: nesting deeper than {max} levels"));
    for (n, line) in text.lines().enumerate() {
        let mut chars = line.char_indices().peekable();
        let body = line.trim_start_matches(' ');
        let indent = line.len() - body.len();
        if let Some(parent) = block_scalar {
            if body.is_empty() || indent > parent {
                continue;
            }
            block_scalar = None;
        }
        // Block structure: only for lines that start outside quotes and
        // flow collections.
        let structural =
            !(body.is_empty() || body.starts_with('#') || body.starts_with("---") || body.starts_with("..."));
        if quote == Quote::None && flow == 0 && structural {
            while indents.last().is_some_and(|&i| i >= indent) {
                indents.pop();
            }
            indents.push(indent);
            let mut rest = body;
            let mut dashes = 0;
            while let Some(r) = rest.strip_prefix("- ").or_else(|| rest.strip_prefix("? ")) {
                dashes += 1;
                rest = r.trim_start_matches(' ');
            }
            if indents.len() + dashes > max {
                return too_deep(n + 1);
            }
        }
        let starts_outside = quote == Quote::None && flow == 0;
        let mut prev_space = true;
        let mut end = line.len();
        while let Some((at, c)) = chars.next() {
            match quote {
                Quote::Double => match c {
                    '\\' => {
                        chars.next();
                    }
                    '"' => quote = Quote::None,
                    _ => {}
                },
                Quote::Single => {
                    if c == '\'' {
                        if chars.peek().is_some_and(|&(_, d)| d == '\'') {
                            chars.next();
                        } else {
                            quote = Quote::None;
                        }
                    }
                }
                Quote::None => match c {
                    // A quote opens a scalar only where one may start; inside a
                    // plain scalar (`a"b`) it is just a character.
                    '"' if prev_space => quote = Quote::Double,
                    '\'' if prev_space => quote = Quote::Single,
                    '#' if prev_space => {
                        end = at;
                        break;
                    }
                    '[' | '{' => {
                        flow += 1;
                        if flow + indents.len() > max {
                            return too_deep(n + 1);
                        }
                    }
                    ']' | '}' => flow = flow.saturating_sub(1),
                    _ => {}
                },
            }
            prev_space = c == ' ' || c == '\t' || c == '[' || c == '{' || c == ',' || c == ':';
        }
        if starts_outside && quote == Quote::None && flow == 0 && opens_block_scalar(&line[..end]) {
            block_scalar = Some(indent);
        }
    }
    Ok(())
}

/// Whether a line ends with a block scalar header (`key: |`, `- >-`, `|2`).
fn opens_block_scalar(line: &str) -> bool {
    let line = line.trim_end();
    let header = line.trim_end_matches(|c: char| c == '-' || c == '+' || c.is_ascii_digit());
    let Some(before) = header.strip_suffix(['|', '>']) else {
        return false;
    };
    before.is_empty() || before.ends_with(' ')
}

/// Parses and validates every document of `text`.
pub fn decode_all(text: &str, format: Format) -> Result<Vec<Document>, DecodeError> {
    parse_values(text, format)?
        .into_iter()
        .enumerate()
        .map(|(index, v)| decode_value(v).map_err(|error| DecodeError::Invalid { index, error }))
        .collect()
}

/// Validates one untyped document in either input shape.
pub fn decode_value(value: Value) -> Result<Document, ValidationError> {
    let root = FieldPath::root();
    let Value::Object(obj) = value else {
        return Err(ValidationError::single(&root, "document must be an object"));
    };
    let encoded_len = serde_json::to_vec(&obj).map(|v| v.len()).unwrap_or(usize::MAX);
    if encoded_len > MAX_RESOURCE_BYTES {
        return Err(ValidationError::single(
            &root,
            format!("resource is {encoded_len} bytes, more than the limit of {MAX_RESOURCE_BYTES}"),
        ));
    }
    if obj.contains_key("kind") || obj.contains_key("apiVersion") {
        decode_kubernetes(obj)
    } else {
        decode_universal(obj)
    }
}

fn take_string(obj: &mut Map<String, Value>, field: &str, path: &FieldPath) -> Result<Option<String>, ValidationError> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ValidationError::single(
            &path.field(field),
            format!("must be a string, got {}", json_kind(&other)),
        )),
    }
}

fn take_labels(obj: &mut Map<String, Value>, path: &FieldPath) -> Result<BTreeMap<String, String>, ValidationError> {
    let p = path.field("labels");
    match obj.remove("labels") {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => {
            let mut out = BTreeMap::new();
            for (k, v) in m {
                if k.is_empty() || k.len() > 317 {
                    return Err(ValidationError::single(&p, format!("invalid label key {k:?}")));
                }
                match v {
                    Value::String(s) if s.len() <= 1024 => {
                        out.insert(k, s);
                    }
                    Value::String(_) => {
                        return Err(ValidationError::single(
                            &p.key(&k),
                            "label value is longer than 1024 characters",
                        ))
                    }
                    other => {
                        return Err(ValidationError::single(
                            &p.key(&k),
                            format!("must be a string, got {}", json_kind(&other)),
                        ))
                    }
                }
            }
            Ok(out)
        }
        Some(other) => Err(ValidationError::single(
            &p,
            format!("must be an object, got {}", json_kind(&other)),
        )),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn parse_type(name: Option<String>, path: &FieldPath) -> Result<ResourceType, ValidationError> {
    let name = name.ok_or_else(|| ValidationError::single(path, "is required"))?;
    name.parse::<ResourceType>()
        .map_err(|_| ValidationError::single(path, format!("unknown resource type {name:?}")))
}

fn decode_universal(mut obj: Map<String, Value>) -> Result<Document, ValidationError> {
    let root = FieldPath::root();
    let kind = parse_type(take_string(&mut obj, "type", &root)?, &root.field("type"))?;
    let name = take_string(&mut obj, "name", &root)?
        .ok_or_else(|| ValidationError::single(&root.field("name"), "is required"))?;
    let mesh = take_string(&mut obj, "mesh", &root)?;
    let labels = take_labels(&mut obj, &root)?;
    // Server-set fields may come back from `get -o yaml`; they are not input.
    obj.remove("creationTime");
    obj.remove("modificationTime");
    let mesh = match (kind.is_mesh_scoped(), mesh) {
        (true, m) => Some(m.unwrap_or_else(|| DEFAULT_MESH.to_string())),
        (false, None) => None,
        (false, Some(_)) => {
            return Err(ValidationError::single(
                &root.field("mesh"),
                format!("must not be set for {kind}"),
            ))
        }
    };
    let spec = if kind.is_policy() {
        if let Some(extra) = obj.keys().find(|k| *k != "spec") {
            return Err(ValidationError::single(&root.field(extra), "unknown field"));
        }
        obj.remove("spec")
            .ok_or_else(|| ValidationError::single(&root.field("spec"), "is required"))?
    } else {
        Value::Object(obj)
    };
    finish(kind, mesh, name, labels, spec, &root)
}

fn decode_kubernetes(mut obj: Map<String, Value>) -> Result<Document, ValidationError> {
    let root = FieldPath::root();
    if let Some(api) = take_string(&mut obj, "apiVersion", &root)? {
        if api != "kuma.io/v1alpha1" {
            return Err(ValidationError::single(
                &root.field("apiVersion"),
                format!("unsupported apiVersion {api:?}, expected \"kuma.io/v1alpha1\""),
            ));
        }
    }
    let kind = parse_type(take_string(&mut obj, "kind", &root)?, &root.field("kind"))?;
    let meta_path = root.field("metadata");
    let mut meta = match obj.remove("metadata") {
        Some(Value::Object(m)) => m,
        None => return Err(ValidationError::single(&meta_path, "is required")),
        Some(other) => {
            return Err(ValidationError::single(
                &meta_path,
                format!("must be an object, got {}", json_kind(&other)),
            ))
        }
    };
    let name = take_string(&mut meta, "name", &meta_path)?
        .ok_or_else(|| ValidationError::single(&meta_path.field("name"), "is required"))?;
    let labels = take_labels(&mut meta, &meta_path)?;
    // Kubernetes bookkeeping that Meridian does not use.
    for ignored in [
        "namespace",
        "annotations",
        "creationTimestamp",
        "uid",
        "resourceVersion",
        "generation",
    ] {
        meta.remove(ignored);
    }
    if let Some(extra) = meta.keys().next() {
        return Err(ValidationError::single(&meta_path.field(extra), "unknown field"));
    }
    if let Some(extra) = obj.keys().find(|k| *k != "spec") {
        return Err(ValidationError::single(&root.field(extra), "unknown field"));
    }
    let mesh = kind.is_mesh_scoped().then(|| {
        labels
            .get(MESH_LABEL)
            .cloned()
            .unwrap_or_else(|| DEFAULT_MESH.to_string())
    });
    let spec = match obj.remove("spec") {
        Some(s) => s,
        None if kind.is_policy() => return Err(ValidationError::single(&root.field("spec"), "is required")),
        None => Value::Object(Map::new()),
    };
    let spec_root = if kind.is_policy() {
        root.clone()
    } else {
        root.field("spec")
    };
    finish(kind, mesh, name, labels, spec, &spec_root)
}

fn finish(
    kind: ResourceType,
    mesh: Option<String>,
    name: String,
    labels: BTreeMap<String, String>,
    spec: Value,
    inline_root: &FieldPath,
) -> Result<Document, ValidationError> {
    let name_path = FieldPath::new("name");
    let name_check = match kind {
        ResourceType::Mesh => names::check_label(&name),
        ResourceType::Zone => names::check_rfc1035_label(&name),
        _ => names::check_subdomain(&name),
    };
    name_check.map_err(|e| ValidationError::single(&name_path, e))?;
    if let Some(m) = &mesh {
        names::check_label(m).map_err(|e| ValidationError::single(&FieldPath::new("mesh"), e))?;
    }
    let spec = validate_spec(kind, spec, inline_root)?;
    Ok(Document {
        key: ResourceKey { kind, mesh, name },
        labels,
        spec,
    })
}

/// Validates the spec (policies) or inline fields (other types) of `kind`
/// and returns the canonical form. `inline_root` is where inline fields sit
/// in the input (empty for universal, `spec` for Kubernetes style).
pub fn validate_spec(kind: ResourceType, spec: Value, inline_root: &FieldPath) -> Result<Value, ValidationError> {
    if !spec.is_object() {
        let p = if kind.is_policy() {
            FieldPath::new("spec")
        } else {
            inline_root.clone()
        };
        return Err(ValidationError::single(
            &p,
            format!("must be an object, got {}", json_kind(&spec)),
        ));
    }
    // Every way in (the API, a zone over KDS, a proxy registering itself)
    // passes here, so the limit holds for all of them.
    let size = serde_json::to_vec(&spec).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > MAX_RESOURCE_BYTES {
        return Err(ValidationError::single(
            inline_root,
            format!("resource is {size} bytes, more than the limit of {MAX_RESOURCE_BYTES}"),
        ));
    }
    match kind {
        k if k.is_policy() => policy::validate_policy(k, spec),
        ResourceType::Mesh => check::<Mesh>(spec, inline_root),
        ResourceType::Dataplane => check::<Dataplane>(spec, inline_root),
        ResourceType::ZoneIngress => check::<ZoneIngress>(spec, inline_root),
        ResourceType::Zone => check::<Zone>(spec, inline_root),
        ResourceType::DataplaneTokenKey => check::<DataplaneTokenKey>(spec, inline_root),
        ResourceType::DataplaneTokenRevocation => check::<DataplaneTokenRevocation>(spec, inline_root),
        ResourceType::Secret => check::<mtls::Secret>(spec, inline_root),
        ResourceType::CertificateAuthority => check::<mtls::CertificateAuthority>(spec, inline_root),
        ResourceType::ZoneCertificateRequest => check::<mtls::ZoneCertificateRequest>(spec, inline_root),
        ResourceType::ZoneCertificate => check::<mtls::ZoneCertificate>(spec, inline_root),
        ResourceType::AccessRole => check::<access::AccessRole>(spec, inline_root),
        ResourceType::AccessRoleBinding => check::<access::AccessRoleBinding>(spec, inline_root),
        ResourceType::UserTokenKey => check::<DataplaneTokenKey>(spec, inline_root),
        ResourceType::UserTokenRevocation => check::<DataplaneTokenRevocation>(spec, inline_root),
        // Insights are written by Meridian itself, never by users.
        ResourceType::DataplaneInsight | ResourceType::ZoneInsight => Ok(spec),
        _ => Ok(spec),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> bool {
        matches!(parse_values(text, Format::Yaml), Err(DecodeError::Syntax(m)) if m.contains("nesting deeper"))
    }

    #[test]
    fn deep_flow_nesting_is_refused_before_parsing() {
        let deep = format!("a: {}1{}", "[".repeat(65), "]".repeat(65));
        assert!(refused(&deep));
        let shallow = format!("a: {}1{}", "[".repeat(60), "]".repeat(60));
        assert!(parse_values(&shallow, Format::Yaml).is_ok());
        // Half a megabyte of brackets, as a hostile body: refused at once.
        let hostile = "[".repeat(500_000);
        let started = std::time::Instant::now();
        assert!(refused(&hostile));
        assert!(matches!(
            parse_values(&hostile, Format::Json),
            Err(DecodeError::Syntax(m)) if m.contains("nesting deeper")
        ));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn deep_block_nesting_is_refused() {
        let mut deep = String::new();
        for i in 0..70 {
            deep.push_str(&format!("{}k{i}:\n", " ".repeat(i)));
        }
        assert!(refused(&deep));
        let dashes = format!("{}x\n", "- ".repeat(70));
        assert!(refused(&dashes));
    }

    #[test]
    fn brackets_in_quoted_scalars_and_comments_do_not_count() {
        let brackets = "[".repeat(200);
        for text in [
            format!("a: \"{brackets}\"\n"),
            format!("a: '{brackets}'\n"),
            format!("a: 1 # {brackets}\n"),
            format!("a: |\n  {brackets}\n"),
        ] {
            assert!(!refused(&text), "{text}");
        }
        // A quote inside a plain scalar does not open a quoted scalar.
        let sneaky = format!("x: a\"\ny: {brackets}\n");
        assert!(refused(&sneaky));
    }

    #[test]
    fn universal_policy_defaults_mesh() {
        let docs = decode_all(
            "type: MeshTimeout\nname: t1\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {idleTimeout: 1h}\n",
            Format::Yaml,
        )
        .unwrap();
        assert_eq!(
            docs[0].key,
            ResourceKey::in_mesh(ResourceType::MeshTimeout, "default", "t1")
        );
    }

    #[test]
    fn kubernetes_style_mesh_from_label() {
        let docs = decode_all(
            "apiVersion: kuma.io/v1alpha1\nkind: MeshTimeout\nmetadata:\n  name: t1\n  namespace: kong-mesh-system\n  labels:\n    kuma.io/mesh: m2\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {idleTimeout: 1h}\n---\napiVersion: kuma.io/v1alpha1\nkind: Mesh\nmetadata:\n  name: m2\nspec:\n  skipCreatingInitialPolicies: ['*']\n",
            Format::Yaml,
        )
        .unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].key.mesh.as_deref(), Some("m2"));
        assert_eq!(docs[1].key, ResourceKey::global(ResourceType::Mesh, "m2"));
        assert_eq!(docs[1].spec["skipCreatingInitialPolicies"][0], "*");
    }

    #[test]
    fn bad_duration_names_field() {
        let err = decode_all(
            "type: MeshTimeout\nname: t1\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: Mesh}\n    default:\n      http: {requestTimeout: 15 seconds}\n",
            Format::Yaml,
        )
        .unwrap_err();
        let DecodeError::Invalid { error, .. } = err else {
            panic!("{err}")
        };
        assert_eq!(
            error.to_string(),
            "spec.to[0].default.http.requestTimeout: invalid duration \"15 seconds\""
        );
    }

    #[test]
    fn unknown_fields_and_types() {
        let e = decode_value(serde_json::json!({"type": "Nope", "name": "x"})).unwrap_err();
        assert_eq!(e.causes[0].field, "type");
        let e = decode_value(serde_json::json!({"type": "Mesh", "name": "x", "bogus": 1})).unwrap_err();
        assert!(e.causes[0].message.contains("unknown field"), "{e}");
        let e = decode_value(serde_json::json!({"type": "Mesh", "name": "x", "mesh": "y"})).unwrap_err();
        assert_eq!(e.causes[0].field, "mesh");
        let e = decode_value(serde_json::json!({"type": "Mesh", "name": "Bad_Name"})).unwrap_err();
        assert_eq!(e.causes[0].field, "name");
    }

    #[test]
    fn malformed_yaml() {
        assert!(matches!(decode_all("a: [", Format::Yaml), Err(DecodeError::Syntax(_))));
        assert!(matches!(decode_all("{", Format::Json), Err(DecodeError::Syntax(_))));
    }

    #[test]
    fn oversized() {
        let big = "x".repeat(MAX_RESOURCE_BYTES + 1);
        let e = decode_value(serde_json::json!({"type": "Mesh", "name": "m", "labels": {"a": big}})).unwrap_err();
        assert!(e.causes[0].message.contains("limit"), "{e}");
    }
}
