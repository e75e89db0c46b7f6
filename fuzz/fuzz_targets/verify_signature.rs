//! The signature verifier on arbitrary secrets, bodies and headers: it never panics, a body
//! signed with a configured secret verifies, and a different body, a different secret (one that
//! HMAC can tell apart from the signer's) or any altered header (case, white space, prefixes,
//! non-hex, wrong length) never does. The checks live in `attio_webhooks::signature::properties`,
//! shared with the crate's property tests.

#![no_main]

use arbitrary::Arbitrary;
use attio_webhooks::signature::properties::{check, Case};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    secrets: Vec<String>,
    signer: String,
    body: Vec<u8>,
    other_body: Vec<u8>,
    header: Vec<u8>,
    position: usize,
}

fuzz_target!(|input: Input| {
    check(&Case {
        secrets: input.secrets,
        signer: input.signer,
        body: input.body,
        other_body: input.other_body,
        header: input.header,
        position: input.position,
    });
});
