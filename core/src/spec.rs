//! The bridge between untyped documents and the typed spec of each resource
//! type: structural decoding (with the path of the first bad field), then
//! semantic validation, then re-encoding into the canonical stored form.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::error::{Causes, FieldPath, ValidationError};

/// A typed spec: decoded with `deny_unknown_fields`, then checked by `validate`.
pub trait Spec: Serialize + DeserializeOwned {
    /// Records every semantic violation below `path`.
    fn validate(&self, path: &FieldPath, causes: &mut Causes);
}

/// Decodes `value` as `T`, validates it, and returns its canonical JSON form.
///
/// Structural errors (unknown field, wrong type, bad enum value, unparsable
/// duration) name the field through `serde_path_to_error`.
pub fn check<T: Spec>(value: Value, root: &FieldPath) -> Result<Value, ValidationError> {
    let typed = decode::<T>(value, root)?;
    let mut causes = Causes::new();
    typed.validate(root, &mut causes);
    causes.into_result()?;
    serde_json::to_value(&typed).map_err(|e| ValidationError::single(root, format!("cannot encode: {e}")))
}

/// Decodes `value` as `T`, naming the failing field on error.
pub fn decode<T: DeserializeOwned>(value: Value, root: &FieldPath) -> Result<T, ValidationError> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let rel = e.path().to_string();
        let path = root.join_str(&rel);
        ValidationError::single(&path, clean_serde_message(&e.into_inner().to_string()))
    })
}

/// serde_json appends " at line X column Y" for text input; values have no
/// positions, but keep the message tidy either way.
fn clean_serde_message(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}
