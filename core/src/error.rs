//! Validation errors that name the offending field.
//!
//! Every check in this crate reports into a [`Causes`] collector with a
//! [`FieldPath`], so that a user sees all problems of a document at once, each
//! with the exact path (`spec.to[0].default.http.requestTimeout`).

use std::fmt;

/// A path to a field inside a document, rendered as `spec.to[0].targetRef.kind`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldPath(String);

impl FieldPath {
    /// The root of a document (renders as the empty string).
    pub fn root() -> Self {
        FieldPath(String::new())
    }

    /// A path starting at a named top-level field.
    pub fn new(field: &str) -> Self {
        FieldPath(field.to_string())
    }

    /// The path of a child field.
    pub fn field(&self, name: &str) -> Self {
        if self.0.is_empty() {
            FieldPath(name.to_string())
        } else {
            FieldPath(format!("{}.{}", self.0, name))
        }
    }

    /// The path of an element of a list.
    pub fn index(&self, i: usize) -> Self {
        FieldPath(format!("{}[{}]", self.0, i))
    }

    /// The path of a map entry (`labels["kuma.io/zone"]`).
    pub fn key(&self, k: &str) -> Self {
        FieldPath(format!("{}[{:?}]", self.0, k))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Prefixes a path that serde reported relative to this one.
    pub fn join_str(&self, rel: &str) -> Self {
        if rel.is_empty() || rel == "." {
            self.clone()
        } else if self.0.is_empty() {
            FieldPath(rel.to_string())
        } else if rel.starts_with('[') {
            FieldPath(format!("{}{}", self.0, rel))
        } else {
            FieldPath(format!("{}.{}", self.0, rel))
        }
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One violation: which field, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Cause {
    pub field: String,
    pub message: String,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Collects violations while walking a document.
#[derive(Debug, Default)]
pub struct Causes(Vec<Cause>);

impl Causes {
    pub fn new() -> Self {
        Causes(Vec::new())
    }

    /// Records that `path` is invalid for the reason `message`.
    pub fn add(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.0.push(Cause {
            field: path.to_string(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn extend(&mut self, other: Causes) {
        self.0.extend(other.0);
    }

    /// Records every cause of `error`.
    pub fn extend_from(&mut self, error: ValidationError) {
        self.0.extend(error.causes);
    }

    /// How many violations were recorded.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `Ok(())` when nothing was recorded, otherwise the error with all causes.
    pub fn into_result(self) -> Result<(), ValidationError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationError { causes: self.0 })
        }
    }
}

/// A document that failed validation; nothing of it may be stored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    pub causes: Vec<Cause>,
}

impl ValidationError {
    /// An error with a single cause.
    pub fn single(path: &FieldPath, message: impl Into<String>) -> Self {
        ValidationError {
            causes: vec![Cause {
                field: path.to_string(),
                message: message.into(),
            }],
        }
    }

    /// Re-roots every cause under `prefix` (used for documents inside a multi-document file).
    pub fn prefixed(self, prefix: &str) -> Self {
        ValidationError {
            causes: self
                .causes
                .into_iter()
                .map(|c| Cause {
                    field: if c.field.is_empty() {
                        prefix.to_string()
                    } else {
                        format!("{prefix}.{}", c.field)
                    },
                    message: c.message,
                })
                .collect(),
        }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for c in &self.causes {
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            write!(f, "{c}")?;
        }
        Ok(())
    }
}
