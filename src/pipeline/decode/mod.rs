//! Payload decoding: bytes → [`FixCandidate`]s. One module per payload format;
//! [`Decoder`] picks the format by sniffing the payload.

pub mod canonical;
pub mod owntracks;

use serde_json::value::RawValue;

use crate::domain::FixCandidate;

/// Why a payload (or one element of a batch) could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or JSON of the wrong shape (missing or mistyped field).
    #[error("malformed payload: {0}")]
    Malformed(String),
    /// A batch with no element.
    #[error("empty batch")]
    EmptyBatch,
    /// A batch larger than the configured maximum.
    #[error("batch of {len} fixes exceeds the maximum of {max}")]
    BatchTooLarge { len: usize, max: usize },
    /// A well-formed message that is not a position (e.g. OwnTracks `_type: lwt`).
    #[error("not a location message: _type {0:?}")]
    NotALocation(String),
}

impl DecodeError {
    /// Low-cardinality reason label for metrics and dead letters.
    pub fn label(&self) -> &'static str {
        match self {
            DecodeError::Malformed(_) => "malformed",
            DecodeError::EmptyBatch => "empty_batch",
            DecodeError::BatchTooLarge { .. } => "batch_too_large",
            DecodeError::NotALocation(_) => "not_a_location",
        }
    }
}

impl From<serde_json::Error> for DecodeError {
    fn from(e: serde_json::Error) -> Self {
        DecodeError::Malformed(e.to_string())
    }
}

/// One payload format.
pub trait Format: Send + Sync {
    /// Name used in logs and configuration.
    fn name(&self) -> &'static str;
    /// Cheap check whether a JSON object looks like this format.
    fn sniff(&self, object: &[u8]) -> bool;
    /// Decodes one JSON object into a candidate fix.
    fn decode_object(&self, object: &[u8]) -> Result<FixCandidate, DecodeError>;
}

/// One element of a decoded message: its own bytes (kept for a dead letter, whatever
/// later stage rejects it) and the candidate or the error.
#[derive(Debug)]
pub struct Element<'a> {
    /// The element's bytes: the whole payload for a single object.
    pub bytes: &'a [u8],
    /// The decoded candidate, or why it could not be decoded.
    pub result: Result<FixCandidate, DecodeError>,
}

/// Decodes payloads of any registered format; a payload is one object or an array of them.
pub struct Decoder {
    formats: Vec<Box<dyn Format>>,
    max_batch: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(10_000)
    }
}

impl Decoder {
    /// All built-in formats; the canonical format is the fallback when none sniffs.
    pub fn new(max_batch: usize) -> Self {
        Self {
            formats: vec![
                Box::new(owntracks::OwnTracks),
                Box::new(canonical::Canonical),
            ],
            max_batch,
        }
    }

    /// Decodes a whole payload. `Err` means the whole message is bad; `Ok` holds one
    /// result per element, so one bad element of a batch does not sink the others.
    pub fn decode<'a>(&self, payload: &'a [u8]) -> Result<Vec<Element<'a>>, DecodeError> {
        let first = payload.iter().find(|b| !b.is_ascii_whitespace());
        match first {
            Some(b'[') => {
                let items: Vec<&RawValue> = serde_json::from_slice(payload)?;
                if items.is_empty() {
                    return Err(DecodeError::EmptyBatch);
                }
                if items.len() > self.max_batch {
                    return Err(DecodeError::BatchTooLarge {
                        len: items.len(),
                        max: self.max_batch,
                    });
                }
                Ok(items
                    .into_iter()
                    .map(|raw| {
                        let bytes = raw.get().as_bytes();
                        // RawValue borrows from `payload`, so the slice lives as long.
                        let bytes: &'a [u8] = subslice(payload, bytes);
                        Element {
                            bytes,
                            result: self.decode_object(bytes),
                        }
                    })
                    .collect())
            }
            Some(b'{') => Ok(vec![Element {
                bytes: payload,
                result: self.decode_object(payload),
            }]),
            _ => Err(DecodeError::Malformed(
                "expected a JSON object or array".into(),
            )),
        }
    }

    fn decode_object(&self, object: &[u8]) -> Result<FixCandidate, DecodeError> {
        let format = self
            .formats
            .iter()
            .find(|f| f.sniff(object))
            .unwrap_or_else(|| self.formats.last().expect("at least one format"));
        format.decode_object(object)
    }
}

/// Re-borrows `part` (a slice inside `whole`) with `whole`'s lifetime.
fn subslice<'a>(whole: &'a [u8], part: &[u8]) -> &'a [u8] {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    &whole[start..start + part.len()]
}

/// Byte-level substring search, for sniffing.
pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_with_one_bad_element_keeps_the_others() {
        let d = Decoder::default();
        let payload = br#"[{"vehicle":"A1","ts":"2026-11-24T01:00:00Z","lat":10.9,"lon":106.7,"speed_kmh":10},
                           {"vehicle":"A1","lat":"x"},
                           {"vehicle":"A1","ts":1795914000000,"lat":10.9,"lon":106.7,"speed_kmh":11}]"#;
        let out = d.decode(payload).unwrap();
        assert_eq!(out.len(), 3);
        assert!(out[0].result.is_ok() && out[2].result.is_ok());
        assert_eq!(out[1].bytes, br#"{"vehicle":"A1","lat":"x"}"#);
        assert_eq!(out[1].result.as_ref().unwrap_err().label(), "malformed");
    }

    #[test]
    fn whole_message_errors() {
        let d = Decoder::new(2);
        for (p, label) in [
            (&b"not json"[..], "malformed"),
            (b"[]", "empty_batch"),
            (b"[{}, {}, {}]", "batch_too_large"),
            (b"[1,", "malformed"),
            (b"", "malformed"),
        ] {
            assert_eq!(d.decode(p).unwrap_err().label(), label, "{p:?}");
        }
    }

    #[test]
    fn picks_owntracks_by_type_field() {
        let d = Decoder::default();
        let out = d
            .decode(br#"{"_type":"location","tst":1795914000,"lat":10.9,"lon":106.7,"vel":30}"#)
            .unwrap();
        let c = out[0].result.as_ref().unwrap();
        assert_eq!(c.speed_kmh, Some(30.0));
        assert_eq!(c.vehicle, None);
    }
}
