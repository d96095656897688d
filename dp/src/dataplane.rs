//! The dataplane the agent registers: a `Dataplane` resource in YAML or JSON
//! (`--dataplane-file`, or `--dataplane` inline), with `{{ NAME }}` replaced
//! by `--dataplane-var NAME=VALUE`. It is validated here exactly as the zone
//! validates it, so a mistake is reported before anything is sent.

use meridian_core::dataplane::{Dataplane, SERVICE_TAG};
use meridian_core::decode::{decode_all, Format, MAX_RESOURCE_BYTES};
use meridian_core::ResourceType;
use serde_json::Value;

/// Why a dataplane definition is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    #[error("the dataplane definition is {0} bytes, more than the limit of {MAX_RESOURCE_BYTES}")]
    TooLarge(usize),
    #[error("the dataplane definition has an unterminated {{{{ at byte {0}")]
    Unterminated(usize),
    #[error("the dataplane definition uses {{{{ {0} }}}}, but no --dataplane-var {0}=VALUE is given")]
    UnknownVar(String),
    #[error("the dataplane definition: {0}")]
    Invalid(String),
    #[error("the dataplane definition must hold exactly one resource, it holds {0}")]
    Count(usize),
    #[error("the dataplane definition is a {0}, not a Dataplane")]
    NotADataplane(String),
    #[error("{field} is {given:?} but the dataplane definition says {file:?}")]
    Mismatch {
        field: &'static str,
        given: String,
        file: String,
    },
}

/// A validated dataplane.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    pub mesh: String,
    pub name: String,
    /// The universal form's fields, canonical (`{"networking": …}`).
    pub fields: Value,
    pub dataplane: Dataplane,
}

impl Definition {
    /// The service of the first inbound (the Envoy node's cluster).
    pub fn service(&self) -> Option<&str> {
        self.dataplane
            .networking
            .inbound
            .first()
            .and_then(|i| i.tags.get(SERVICE_TAG))
            .map(String::as_str)
    }
}

/// Replaces every `{{ NAME }}` with its value.
pub fn render(template: &str, vars: &[(String, String)]) -> Result<String, DefinitionError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    let mut offset = 0;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or(DefinitionError::Unterminated(offset + start))?;
        let name = after[..end].trim();
        let value = vars
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .ok_or_else(|| DefinitionError::UnknownVar(name.to_string()))?;
        out.push_str(value);
        let consumed = start + 2 + end + 2;
        offset += consumed;
        rest = &rest[consumed..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses and validates a definition; `mesh` and `name` (the flags), when
/// given, must agree with it.
pub fn parse(
    text: &str,
    vars: &[(String, String)],
    mesh: Option<&str>,
    name: Option<&str>,
) -> Result<Definition, DefinitionError> {
    if text.len() > MAX_RESOURCE_BYTES {
        return Err(DefinitionError::TooLarge(text.len()));
    }
    let rendered = render(text, vars)?;
    if rendered.len() > MAX_RESOURCE_BYTES {
        return Err(DefinitionError::TooLarge(rendered.len()));
    }
    let mut docs = decode_all(&rendered, Format::Yaml).map_err(|e| DefinitionError::Invalid(e.to_string()))?;
    if docs.len() != 1 {
        return Err(DefinitionError::Count(docs.len()));
    }
    let doc = docs.remove(0);
    if doc.key.kind != ResourceType::Dataplane {
        return Err(DefinitionError::NotADataplane(doc.key.kind.name().to_string()));
    }
    let file_mesh = doc.key.mesh.clone().unwrap_or_default();
    for (field, given, file) in [("--mesh", mesh, &file_mesh), ("--name", name, &doc.key.name)] {
        if let Some(given) = given.filter(|g| g != file) {
            return Err(DefinitionError::Mismatch {
                field,
                given: given.to_string(),
                file: file.clone(),
            });
        }
    }
    let dataplane: Dataplane =
        serde_json::from_value(doc.spec.clone()).map_err(|e| DefinitionError::Invalid(e.to_string()))?;
    Ok(Definition {
        mesh: file_mesh,
        name: doc.key.name,
        fields: doc.spec,
        dataplane,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DP: &str = r#"
type: Dataplane
mesh: default
name: "{{ name }}"
networking:
  address: "{{address}}"
  inbound:
    - port: 9000
      tags:
        kuma.io/service: backend
        kuma.io/protocol: grpc
"#;

    fn vars() -> Vec<(String, String)> {
        vec![
            ("name".into(), "backend-1".into()),
            ("address".into(), "10.0.0.7".into()),
        ]
    }

    #[test]
    fn a_definition_with_vars() {
        let d = parse(DP, &vars(), Some("default"), None).unwrap();
        assert_eq!((d.mesh.as_str(), d.name.as_str()), ("default", "backend-1"));
        assert_eq!(d.fields["networking"]["address"], "10.0.0.7");
        assert_eq!(d.service(), Some("backend"));
    }

    #[test]
    fn mistakes_are_named() {
        assert_eq!(
            parse(DP, &vars()[..1], None, None).unwrap_err(),
            DefinitionError::UnknownVar("address".into())
        );
        assert_eq!(render("a {{ b", &[]).unwrap_err(), DefinitionError::Unterminated(2));
        let err = parse(DP, &vars(), Some("other"), None).unwrap_err();
        assert!(err.to_string().contains("--mesh is \"other\""), "{err}");
        let err = parse(DP, &vars(), None, Some("x")).unwrap_err();
        assert!(
            matches!(err, DefinitionError::Mismatch { field: "--name", .. }),
            "{err}"
        );
        let err = parse("type: Mesh\nname: m\n", &[], None, None).unwrap_err();
        assert_eq!(err, DefinitionError::NotADataplane("Mesh".into()));
        let two = format!("{DP}\n---\n{DP}");
        assert_eq!(parse(&two, &vars(), None, None).unwrap_err(), DefinitionError::Count(2));
        let err = parse(&DP.replace("9000", "70000"), &vars(), None, None).unwrap_err();
        assert!(err.to_string().contains("networking.inbound[0].port"), "{err}");
        let big = "#".repeat(MAX_RESOURCE_BYTES + 1);
        assert!(matches!(
            parse(&big, &[], None, None),
            Err(DefinitionError::TooLarge(_))
        ));
        assert!(matches!(
            parse(": :", &[], None, None),
            Err(DefinitionError::Invalid(_))
        ));
    }
}
