//! Unit tests of `crate::signature`.

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

mod properties {
    use super::super::properties::{check, same_hmac_key, Case};
    use proptest::prelude::*;

    /// Secrets as people configure them, plus the awkward ones: empty, NUL bytes, longer
    /// than HMAC's 64-byte block, non-ASCII.
    fn secret() -> impl Strategy<Value = String> {
        prop_oneof!["[0-9a-f]{64}", "[ -~]{0,80}", ".{0,70}", "[a\\x00]{0,4}",]
    }

    fn case() -> impl Strategy<Value = Case> {
        (
            prop::collection::vec(secret(), 0..4),
            secret(),
            prop::collection::vec(any::<u8>(), 0..256),
            prop::collection::vec(any::<u8>(), 0..256),
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..80),
                "[0-9a-fA-F \\t]{60,68}".prop_map(String::into_bytes),
            ],
            any::<usize>(),
        )
            .prop_map(
                |(secrets, signer, body, other_body, header, position)| Case {
                    secrets,
                    signer,
                    body,
                    other_body,
                    header,
                    position,
                },
            )
    }

    proptest! {
        #[test]
        fn the_verifier_accepts_exactly_what_its_secrets_signed(case in case()) {
            check(&case);
        }
    }

    #[test]
    fn keys_differing_only_by_trailing_nul_bytes_are_one_hmac_key() {
        // Why the property above spares such pairs: HMAC itself cannot tell them apart.
        assert!(same_hmac_key(b"k", b"k\0\0"));
        assert_eq!(super::sign("k", b"body"), super::sign("k\0", b"body"));
        let long = "x".repeat(65);
        let hashed = sha2::Sha256::digest(long.as_bytes());
        assert!(same_hmac_key(long.as_bytes(), &hashed));
        assert!(!same_hmac_key(b"k", b"K"));
        assert!(!same_hmac_key(b"k", b"\0k"));
    }

    #[test]
    fn a_signature_never_verifies_with_an_empty_list_of_secrets() {
        let body = b"{}".to_vec();
        check(&Case {
            secrets: Vec::new(),
            signer: "s".into(),
            body,
            other_body: b"{ }".to_vec(),
            header: super::sign("s", b"{}").into_bytes(),
            position: 3,
        });
    }

    use sha2::Digest;
}
