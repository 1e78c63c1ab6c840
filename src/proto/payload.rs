//! Message payloads: opaque bytes that stay readable in the JSON codec.
//!
//! Internally a payload is bytes. In postcard it is a byte string. In JSON it is written as the
//! JSON value those bytes hold when they are valid JSON text (the common case: apps publish
//! JSON), and as `{"$binary": "<base64>"}` otherwise, the convention of MongoDB Extended JSON.
//! A JSON client may publish either form. So a postcard client that publishes the bytes of
//! `{"text":"hi"}` and a JSON client that publishes `{"text":"hi"}` produce the same message.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

const BINARY_KEY: &str = "$binary";

/// An opaque message payload.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Payload(pub Bytes);

impl Payload {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The payload as JSON text, when it is valid JSON.
    pub fn as_json(&self) -> Option<&str> {
        let text = std::str::from_utf8(&self.0).ok()?;
        serde_json::from_str::<serde::de::IgnoredAny>(text).ok()?;
        Some(text)
    }

    /// A payload holding the JSON text of `value`.
    pub fn json<T: Serialize>(value: &T) -> Self {
        // Serializing a plain value to JSON cannot fail for the types used here.
        Payload(Bytes::from(serde_json::to_vec(value).unwrap_or_default()))
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.as_json() {
            Some(text) => write!(f, "Payload({text})"),
            None => write!(f, "Payload({} bytes)", self.0.len()),
        }
    }
}

impl From<&str> for Payload {
    fn from(text: &str) -> Self {
        Payload(Bytes::copy_from_slice(text.as_bytes()))
    }
}

impl From<Vec<u8>> for Payload {
    fn from(bytes: Vec<u8>) -> Self {
        Payload(Bytes::from(bytes))
    }
}

impl From<Bytes> for Payload {
    fn from(bytes: Bytes) -> Self {
        Payload(bytes)
    }
}

#[derive(Serialize, Deserialize)]
struct BinaryForm {
    #[serde(rename = "$binary")]
    binary: String,
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if !serializer.is_human_readable() {
            return serializer.serialize_bytes(&self.0);
        }
        // One parse both validates the JSON and yields it for verbatim output.
        let raw = std::str::from_utf8(&self.0).ok().and_then(|text| serde_json::from_str::<&RawValue>(text).ok());
        match raw {
            Some(raw) => raw.serialize(serializer),
            None => BinaryForm { binary: BASE64.encode(&self.0) }.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if !deserializer.is_human_readable() {
            let bytes: serde_bytes_compat::ByteBuf = Deserialize::deserialize(deserializer)?;
            return Ok(Payload(Bytes::from(bytes.0)));
        }
        let raw: Box<RawValue> = Deserialize::deserialize(deserializer)?;
        let text = raw.get();
        if text.starts_with('{')
            && text.contains(BINARY_KEY)
            && let Ok(form) = serde_json::from_str::<BinaryForm>(text)
        {
            let bytes =
                BASE64.decode(form.binary.as_bytes()).map_err(|_| D::Error::custom("`$binary` is not valid base64"))?;
            return Ok(Payload(Bytes::from(bytes)));
        }
        Ok(Payload(Bytes::copy_from_slice(text.as_bytes())))
    }
}

/// A byte buffer that deserializes from a serde byte string (postcard) without pulling in
/// `serde_bytes`.
mod serde_bytes_compat {
    use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};

    pub struct ByteBuf(pub Vec<u8>);

    impl<'de> Deserialize<'de> for ByteBuf {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct BytesVisitor;
            impl<'de> Visitor<'de> for BytesVisitor {
                type Value = ByteBuf;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a byte string")
                }
                fn visit_bytes<E>(self, v: &[u8]) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v.to_vec()))
                }
                fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ByteBuf, A::Error> {
                    let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                    while let Some(b) = seq.next_element()? {
                        out.push(b);
                    }
                    Ok(ByteBuf(out))
                }
            }
            deserializer.deserialize_bytes(BytesVisitor)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_payload_is_inline_in_json() {
        let p = Payload::from(r#"{"text":"hi"}"#);
        assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"text":"hi"}"#);
        let back: Payload = serde_json::from_str(r#"{"text":"hi"}"#).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn binary_payload_uses_binary_form_in_json() {
        let p = Payload::from(vec![0u8, 159, 146, 150]);
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(text, r#"{"$binary":"AJ+Slg=="}"#);
        let back: Payload = serde_json::from_str(&text).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn bad_base64_is_an_error() {
        assert!(serde_json::from_str::<Payload>(r#"{"$binary":"!!"}"#).is_err());
    }

    #[test]
    fn postcard_round_trip() {
        let p = Payload::from(vec![1u8, 2, 3]);
        let bytes = postcard::to_stdvec(&p).unwrap();
        assert_eq!(bytes, vec![3, 1, 2, 3]);
        assert_eq!(postcard::from_bytes::<Payload>(&bytes).unwrap(), p);
    }
}
