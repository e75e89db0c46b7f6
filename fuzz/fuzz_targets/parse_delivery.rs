//! What ingress does with a verified body and its `Idempotency-Key` header: the envelope or a
//! bare event, event identity, compaction. It never panics, and whatever it accepts reads back
//! as the same JSON, re-serialises to itself and gets short visible-ASCII keys. The checks live
//! in `attio_webhooks::event::properties`, shared with the crate's property tests.
//!
//! Input: one length byte `n`, `n` bytes of header, then the body. A seed is a fixture delivery
//! after a 0 byte (no header) or after a short key (scripts/fuzz.sh writes them).

#![no_main]

use attio_webhooks::event::properties::{check_delivery, check_header_keys};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&length, rest)) = data.split_first() else {
        return;
    };
    let (header, body) = rest.split_at(usize::from(length).min(rest.len()));
    // The same header with its last byte changed: different values must get different keys.
    let mut neighbour = header.to_vec();
    if let Some(last) = neighbour.last_mut() {
        *last = last.wrapping_add(1);
    }
    check_header_keys(header, &neighbour);
    check_delivery(body);
});
