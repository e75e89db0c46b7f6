//! Attio's webhook signature (FACTS §1): lower-case hex HMAC-SHA256 of the raw body bytes, keyed
//! by the secret string's own UTF-8 bytes (not hex-decoded). No timestamp, nothing else signed.
//!
//! In: the raw body, the `Attio-Signature` header value, the configured secrets. Out: a
//! [`VerifiedBody`] (only this module can make one) or the reason it was refused. Also signs,
//! for the `send` and `sign` commands and for tests.

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Primary signature header.
pub const SIGNATURE_HEADER: &str = "attio-signature";
/// Legacy copy Attio also sends.
pub const LEGACY_SIGNATURE_HEADER: &str = "x-attio-signature";

/// A body whose signature matched one of the configured secrets.
#[derive(Debug, Clone)]
pub struct VerifiedBody {
    bytes: Bytes,
    /// Which configured secret matched (its position), for rotation diagnostics.
    secret_index: usize,
}

impl VerifiedBody {
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn secret_index(&self) -> usize {
        self.secret_index
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing Attio-Signature header")]
    Missing,
    #[error("malformed signature: expected 64 lower-case hex characters")]
    Malformed,
    #[error("signature does not match")]
    Mismatch,
}

/// Signs a body as Attio does.
pub fn sign(secret: &str, body: &[u8]) -> String {
    hex::encode(mac(secret.as_bytes(), body).finalize().into_bytes())
}

fn mac(key: &[u8], body: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    mac
}

/// Decodes a signature header value. Only the exact form Attio sends is accepted: 64 lower-case
/// hex characters (surrounding white space is tolerated).
fn decode_signature(value: &[u8]) -> Result<[u8; 32], SignatureError> {
    let value = value.trim_ascii();
    if value.len() != 64
        || !value
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    {
        return Err(SignatureError::Malformed);
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(value, &mut out).map_err(|_| SignatureError::Malformed)?;
    Ok(out)
}

/// Verifies `body` against every secret, each in constant time.
pub fn verify(
    secrets: &[SecretString],
    header: Option<&[u8]>,
    body: Bytes,
) -> Result<VerifiedBody, SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let expected = decode_signature(header)?;
    let mut matched = None;
    for (index, secret) in secrets.iter().enumerate() {
        // `verify_slice` compares in constant time. Every secret is tried, so the time taken
        // does not tell which one matched.
        if mac(secret.expose_secret().as_bytes(), &body)
            .verify_slice(&expected)
            .is_ok()
            && matched.is_none()
        {
            matched = Some(index);
        }
    }
    match matched {
        Some(secret_index) => Ok(VerifiedBody {
            bytes: body,
            secret_index,
        }),
        None => Err(SignatureError::Mismatch),
    }
}

/// Checks one signature against one secret, for the `verify` command.
pub fn verify_one(secret: &str, signature: &str, body: &[u8]) -> Result<(), SignatureError> {
    let expected = decode_signature(signature.as_bytes())?;
    mac(secret.as_bytes(), body)
        .verify_slice(&expected)
        .map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(list: &[&str]) -> Vec<SecretString> {
        list.iter()
            .map(|s| SecretString::from(s.to_string()))
            .collect()
    }

    #[derive(serde::Deserialize)]
    struct Vector {
        secret: String,
        raw_body: String,
        attio_signature: String,
        wrong_if_secret_hex_decoded: String,
    }

    fn vector() -> Vector {
        serde_json::from_str(include_str!("../tests/fixtures/signature_vector.json")).unwrap()
    }

    #[test]
    fn attio_signature_vector_verifies() {
        let v = vector();
        assert_eq!(sign(&v.secret, v.raw_body.as_bytes()), v.attio_signature);
        let verified = verify(
            &secrets(&[&v.secret]),
            Some(v.attio_signature.as_bytes()),
            Bytes::from(v.raw_body.clone()),
        )
        .unwrap();
        assert_eq!(verified.bytes().as_ref(), v.raw_body.as_bytes());
    }

    #[test]
    fn hex_decoded_secret_signature_is_refused() {
        let v = vector();
        let result = verify(
            &secrets(&[&v.secret]),
            Some(v.wrong_if_secret_hex_decoded.as_bytes()),
            Bytes::from(v.raw_body),
        );
        assert_eq!(result.unwrap_err(), SignatureError::Mismatch);
    }

    #[test]
    fn any_configured_secret_may_match() {
        let body = Bytes::from_static(b"{}");
        let signature = sign("second", &body);
        let verified = verify(
            &secrets(&["first", "second"]),
            Some(signature.as_bytes()),
            body,
        )
        .unwrap();
        assert_eq!(verified.secret_index(), 1);
    }

    #[test]
    fn missing_upper_case_and_non_hex_signatures_are_refused() {
        let body = Bytes::from_static(b"{}");
        let s = secrets(&["k"]);
        assert_eq!(
            verify(&s, None, body.clone()).unwrap_err(),
            SignatureError::Missing
        );
        let upper = sign("k", &body).to_uppercase();
        assert_eq!(
            verify(&s, Some(upper.as_bytes()), body.clone()).unwrap_err(),
            SignatureError::Malformed
        );
        assert_eq!(
            verify(&s, Some(&[b'z'; 64]), body.clone()).unwrap_err(),
            SignatureError::Malformed
        );
        assert_eq!(
            verify(&s, Some(b"sha256=abc"), body).unwrap_err(),
            SignatureError::Malformed
        );
    }

    #[test]
    fn a_changed_body_does_not_verify() {
        let signature = sign("k", b"{\"a\":1}");
        assert_eq!(
            verify(
                &secrets(&["k"]),
                Some(signature.as_bytes()),
                Bytes::from_static(b"{\"a\":2}")
            )
            .unwrap_err(),
            SignatureError::Mismatch
        );
    }
}
