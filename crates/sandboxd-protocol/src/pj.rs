//! serde helpers for protobuf-JSON as Go's `protojson` writes it (`docs/contract.md` §7).
//!
//! Use with `#[serde(with = "...")]`. Decoders accept both the string and number forms.

/// int64/uint64 fields: emitted as decimal strings, accepted as strings or numbers.
pub mod i64_string {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum V {
            S(String),
            N(i64),
        }
        match V::deserialize(d)? {
            V::S(s) => s.parse().map_err(D::Error::custom),
            V::N(n) => Ok(n),
        }
    }
}

/// `bytes` fields: standard base64 with padding. Decoding also accepts URL-safe and unpadded.
pub mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        decode(&s).map_err(D::Error::custom)
    }

    /// Decode any of the base64 alphabets protobuf-JSON allows.
    pub fn decode(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
        STANDARD
            .decode(s)
            .or_else(|_| STANDARD_NO_PAD.decode(s))
            .or_else(|_| URL_SAFE.decode(s))
            .or_else(|_| URL_SAFE_NO_PAD.decode(s))
    }
}

/// `google.protobuf.Timestamp`: RFC 3339 UTC with `Z` and nanoseconds.
pub mod timestamp {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(D::Error::custom)
    }
}

/// `skip_serializing_if` helper: proto3 leaves default scalars out.
pub fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct M {
        #[serde(with = "super::i64_string")]
        size: i64,
        #[serde(with = "super::base64_bytes")]
        data: Vec<u8>,
    }

    #[test]
    fn int64_and_bytes() {
        let m = M {
            size: 4,
            data: b"hi\n".to_vec(),
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"size":"4","data":"aGkK"}"#
        );
        let back: M = serde_json::from_str(r#"{"size":4,"data":"aGkK"}"#).unwrap();
        assert_eq!(back, m);
    }
}
