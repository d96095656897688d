//! Feeds arbitrary bytes to the resource decoder and validator, as YAML and
//! as JSON. Any panic is a bug: bad input must become a `DecodeError`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_core::decode::{decode_all, decode_value, parse_values, Format};
use meridian_core::ResourceType;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = decode_all(text, Format::Yaml);
    let _ = decode_all(text, Format::Json);
    // Also drive every type's validator with whatever the text parses to,
    // so deep spec fields get exercised, not only the envelope.
    if let Ok(values) = parse_values(text, Format::Json) {
        for v in values {
            for ty in ResourceType::ALL {
                let doc = if ty.is_policy() {
                    serde_json::json!({"type": ty.name(), "name": "n", "spec": v.clone()})
                } else {
                    let mut fields = v.as_object().cloned().unwrap_or_default();
                    fields.insert("type".into(), ty.name().into());
                    fields.insert("name".into(), "n".into());
                    serde_json::Value::Object(fields)
                };
                let _ = decode_value(doc);
            }
        }
    }
});
