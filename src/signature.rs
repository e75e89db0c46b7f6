//! Attio's webhook signature (docs/attio.md §1): lower-case hex HMAC-SHA256 of the raw body
//! bytes, keyed by the secret string's own UTF-8 bytes (not hex-decoded). No timestamp, nothing
//! else signed.
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
pub(crate) const SIGNATURE_HEADER: &str = "attio-signature";
/// Legacy copy Attio also sends.
pub(crate) const LEGACY_SIGNATURE_HEADER: &str = "x-attio-signature";

/// A body whose signature matched one of the configured secrets.
#[derive(Debug, Clone)]
pub(crate) struct VerifiedBody {
    bytes: Bytes,
    /// Which configured secret matched (its position), for rotation diagnostics.
    secret_index: usize,
}

impl VerifiedBody {
    pub(crate) fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub(crate) fn secret_index(&self) -> usize {
        self.secret_index
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SignatureError {
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
pub(crate) fn verify(
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
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn verify_one(secret: &str, signature: &str, body: &[u8]) -> Result<(), SignatureError> {
    let expected = decode_signature(signature.as_bytes())?;
    mac(secret.as_bytes(), body)
        .verify_slice(&expected)
        .map_err(|_| SignatureError::Mismatch)
}

/// The verifier's promises as executable checks, shared by the property tests below and the
/// `verify_signature` fuzz target (`fuzz/`, feature `fuzzing`). Each check panics, naming the
/// promise, when it is broken: that is how both harnesses report a failure.
#[cfg(any(test, feature = "fuzzing"))]
pub mod properties {
    use super::*;
    use sha2::Digest;

    /// One generated input.
    #[derive(Debug, Clone)]
    pub struct Case {
        /// The configured secrets (possibly none).
        pub secrets: Vec<String>,
        /// The secret that signs `body`; inserted among `secrets` for the positive checks.
        pub signer: String,
        pub body: Vec<u8>,
        pub other_body: Vec<u8>,
        /// Any header value at all.
        pub header: Vec<u8>,
        /// Picks where the signer is inserted, which hex digit is altered, which padding is used.
        pub position: usize,
    }

    /// Whether HMAC-SHA256 treats two keys as one: a key longer than its 64-byte block is first
    /// replaced by its SHA-256, and every key is zero-padded to the block, so `"k"` and `"k\0"`
    /// sign alike. Only such pairs may verify each other's signatures; that is HMAC, not us.
    pub fn same_hmac_key(a: &[u8], b: &[u8]) -> bool {
        fn block(key: &[u8]) -> [u8; 64] {
            let mut out = [0u8; 64];
            if key.len() > out.len() {
                out[..32].copy_from_slice(&Sha256::digest(key));
            } else {
                out[..key.len()].copy_from_slice(key);
            }
            out
        }
        block(a) == block(b)
    }

    fn configured(list: &[String]) -> Vec<SecretString> {
        list.iter().map(|s| SecretString::from(s.clone())).collect()
    }

    pub fn check(case: &Case) {
        let body = Bytes::from(case.body.clone());

        // Whatever the header holds: no panic, and acceptance means it is exactly the body's
        // signature under the secret that matched.
        if let Ok(verified) = verify(&configured(&case.secrets), Some(&case.header), body.clone()) {
            let secret = &case.secrets[verified.secret_index()];
            assert_eq!(
                case.header.trim_ascii(),
                sign(secret, &case.body).as_bytes(),
                "accepted a header that is not the body's signature"
            );
        }
        assert_eq!(
            verify(&configured(&case.secrets), None, body.clone()).err(),
            Some(SignatureError::Missing)
        );

        // A body signed with a configured secret verifies, wherever that secret sits.
        let signature = sign(&case.signer, &case.body);
        let mut with_signer = case.secrets.clone();
        let at = case.position % (with_signer.len() + 1);
        with_signer.insert(at, case.signer.clone());
        let secrets = configured(&with_signer);
        match verify(&secrets, Some(signature.as_bytes()), body.clone()) {
            Ok(verified) => {
                assert!(verified.secret_index() <= at, "a later secret was named");
                assert!(same_hmac_key(
                    with_signer[verified.secret_index()].as_bytes(),
                    case.signer.as_bytes()
                ));
                assert_eq!(verified.bytes(), &body);
            }
            Err(error) => panic!("the body's own signature was refused: {error}"),
        }
        assert_eq!(verify_one(&case.signer, &signature, &case.body), Ok(()));

        // A different body never verifies: another one, or this one a byte shorter, longer or
        // changed.
        let mut others = vec![case.other_body.clone(), [&case.body[..], b"\0"].concat()];
        if let Some((_, shorter)) = case.body.split_last() {
            others.push(shorter.to_vec());
            let mut changed = case.body.clone();
            changed[case.position % case.body.len()] ^= 1 << (case.position % 8);
            others.push(changed);
        }
        for other in others.into_iter().filter(|other| *other != case.body) {
            assert_eq!(
                verify(&secrets, Some(signature.as_bytes()), Bytes::from(other)).err(),
                Some(SignatureError::Mismatch),
                "a signature verified a body it was not made for"
            );
        }

        // Without the signing secret (or a key HMAC cannot tell from it) it never verifies;
        // with no secret at all, nothing does.
        let others: Vec<String> = case
            .secrets
            .iter()
            .filter(|s| !same_hmac_key(s.as_bytes(), case.signer.as_bytes()))
            .cloned()
            .collect();
        assert_eq!(
            verify(
                &configured(&others),
                Some(signature.as_bytes()),
                body.clone()
            )
            .err(),
            Some(SignatureError::Mismatch),
            "a signature verified under a secret that did not make it"
        );

        check_header_variants(&secrets, &signature, &body, case.position);
    }

    /// Attio sends exactly 64 lower-case hex characters; only surrounding white space is
    /// forgiven.
    fn check_header_variants(
        secrets: &[SecretString],
        signature: &str,
        body: &Bytes,
        position: usize,
    ) {
        let outcome = |header: &[u8]| verify(secrets, Some(header), body.clone()).err();
        let at = position % signature.len();
        let padding = [" ", "\t", "  ", "\t \t"][position % 4];

        let padded = format!("{padding}{signature}{padding}");
        assert_eq!(outcome(padded.as_bytes()), None, "surrounding white space");

        let upper = signature.to_uppercase();
        let expected_upper = if upper == signature {
            None
        } else {
            Some(SignatureError::Malformed)
        };
        assert_eq!(outcome(upper.as_bytes()), expected_upper, "upper case");

        for prefixed in [format!("sha256={signature}"), format!("v1,{signature}")] {
            assert_eq!(
                outcome(prefixed.as_bytes()),
                Some(SignatureError::Malformed),
                "prefix"
            );
        }
        let short = &signature.as_bytes()[..at];
        assert_eq!(outcome(short), Some(SignatureError::Malformed), "too short");
        let long = format!("{signature}0");
        assert_eq!(
            outcome(long.as_bytes()),
            Some(SignatureError::Malformed),
            "too long"
        );
        let inner_space = format!("{} {}", &signature[..at], &signature[at + 1..]);
        assert_eq!(
            outcome(inner_space.as_bytes()),
            Some(SignatureError::Malformed),
            "white space inside"
        );

        let mut non_hex = signature.as_bytes().to_vec();
        non_hex[at] = b"gG/:@`\xff"[position % 7];
        assert_eq!(
            outcome(&non_hex),
            Some(SignatureError::Malformed),
            "non-hex"
        );

        let mut altered = signature.as_bytes().to_vec();
        altered[at] = if altered[at] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            outcome(&altered),
            Some(SignatureError::Mismatch),
            "one hex digit changed"
        );
    }
}

#[cfg(test)]
#[path = "signature_tests.rs"]
mod tests;
