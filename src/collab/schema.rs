//! The optional JSON Schema of a session's document (drafts 4 to 2020-12, by `boon`): checked
//! on the initial document and on the document every patch would produce; a patch whose result
//! does not validate is refused with `schema_violation` and changes nothing.
//!
//! Why the loader refuses everything: the schema comes from a client, and `boon`'s default
//! loader would follow a `$ref` to `file:` URLs on the relay's disk. Here a schema may refer only
//! inside itself (and to the standard meta-schemas `boon` carries).

use serde_json::Value;

/// Where the schema lives for `boon` (its own `$ref`s resolve against it).
const LOCATION: &str = "urn:edgerelay:session-schema";
/// Longest error message kept (a schema violation can list many).
const MAX_MESSAGE: usize = 512;

/// A compiled schema.
pub struct Validator {
    schemas: boon::Schemas,
    index: boon::SchemaIndex,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Validator")
    }
}

/// Refuses every URL: no schema is fetched, from disk or anywhere.
struct NoLoader;

impl boon::UrlLoader for NoLoader {
    fn load(&self, url: &str) -> Result<Value, Box<dyn std::error::Error>> {
        Err(format!("{url}: a session schema may only refer inside itself").into())
    }
}

fn shorten(mut text: String) -> String {
    if text.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

impl Validator {
    pub fn compile(schema: &Value) -> Result<Validator, String> {
        let mut compiler = boon::Compiler::new();
        compiler.use_loader(Box::new(NoLoader));
        compiler.add_resource(LOCATION, schema.clone()).map_err(|e| shorten(e.to_string()))?;
        let mut schemas = boon::Schemas::new();
        let index = compiler.compile(LOCATION, &mut schemas).map_err(|e| shorten(e.to_string()))?;
        Ok(Validator { schemas, index })
    }

    /// `Err` with what is wrong when `doc` does not validate.
    pub fn check(&self, doc: &Value) -> Result<(), String> {
        self.schemas.validate(doc, self.index).map_err(|e| shorten(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn validates_and_refuses_outside_references() {
        let v = Validator::compile(&json!({
            "type": "object",
            "properties": {"title": {"type": "string", "maxLength": 5}, "n": {"$ref": "#/$defs/count"}},
            "$defs": {"count": {"type": "integer", "minimum": 0}},
        }))
        .unwrap();
        assert!(v.check(&json!({"title": "hi", "n": 3})).is_ok());
        assert!(v.check(&json!({"title": "too long"})).unwrap_err().contains("title"));
        assert!(v.check(&json!({"n": -1})).is_err());
        for outside in [json!({"$ref": "file:///etc/passwd"}), json!({"$ref": "https://example.com/s.json"})] {
            assert!(Validator::compile(&outside).is_err(), "{outside}");
        }
        assert!(Validator::compile(&json!({"type": 5})).is_err(), "not a schema");
    }
}
