//! Bounded property tests of the store's frame decoder (issue 17): whatever bytes arrive, in
//! whatever pieces, the decoder never panics, never claims more bytes than it was given, never
//! accepts a body over the limit, and decodes every frame the encoder writes. The case counts keep
//! the run to a few seconds, so it runs with every `cargo test`.

use chorus_bootstrap::protocol::{
    self, parse_header, read_frame, split_frame, Request, HEADER_LEN, MAGIC, VERSION,
};
use proptest::prelude::*;

fn request() -> impl Strategy<Value = Request> {
    let key = "[a-z/0-9]{0,40}";
    let bytes = proptest::collection::vec(any::<u8>(), 0..300);
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64)
            .prop_map(|client_nonce| Request::Hello { client_nonce }),
        proptest::collection::vec(any::<u8>(), 0..64)
            .prop_map(|client_mac| Request::Prove { client_mac }),
        (key, bytes.clone()).prop_map(|(key, value)| Request::Set { key, value }),
        key.prop_map(|key| Request::Get { key }),
        (proptest::collection::vec(key, 0..5), any::<u64>())
            .prop_map(|(keys, timeout_ms)| Request::Wait { keys, timeout_ms }),
        (key, any::<i64>()).prop_map(|(key, delta)| Request::Add { key, delta }),
        (key, proptest::option::of(bytes.clone()), bytes)
            .prop_map(|(key, expected, new)| Request::CompareSet { key, expected, new }),
        key.prop_map(|key| Request::Delete { key }),
        key.prop_map(|prefix| Request::ListPrefix { prefix }),
    ]
}

/// Bytes that often start like a frame, so the checks past the magic are exercised too.
fn frame_like() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..600),
        (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..600)).prop_map(|(len, rest)| {
            let mut v = MAGIC.to_vec();
            v.push(VERSION);
            v.extend_from_slice(&(len % 1024).to_le_bytes());
            v.extend_from_slice(&rest);
            v
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_break_the_decoder(bytes in frame_like(), max_body in 0usize..2048) {
        match split_frame(&bytes, max_body) {
            Ok(Some((body, total))) => {
                prop_assert!(total <= bytes.len());
                prop_assert_eq!(body.start, HEADER_LEN);
                prop_assert_eq!(body.end, total);
                prop_assert!(body.len() <= max_body);
                let _ = protocol::decode::<Request>(&bytes[body]);
            }
            Ok(None) => {
                // Incomplete: only a valid header prefix (or header with a short body) may wait.
                prop_assert!(bytes.len() < HEADER_LEN || parse_header(&bytes, max_body).unwrap().is_some());
            }
            Err(_) => {}
        }
        if let Ok(body) = read_frame(&mut &bytes[..]) {
            prop_assert!(body.len() + HEADER_LEN <= bytes.len());
        }
    }

    #[test]
    fn every_encoded_request_decodes_in_any_pieces(req in request(), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6)) {
        let mut frame = Vec::new();
        protocol::write_msg(&mut frame, &req).unwrap();
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(frame.len())).collect();
        cuts.sort_unstable();
        // Every proper prefix is "incomplete", never an error or a frame.
        for &cut in &cuts {
            prop_assert!(matches!(split_frame(&frame[..cut], protocol::MAX_BODY), Ok(None)));
        }
        let (body, total) = split_frame(&frame, protocol::MAX_BODY).unwrap().unwrap();
        prop_assert_eq!(total, frame.len());
        prop_assert_eq!(protocol::decode::<Request>(&frame[body]).unwrap(), req.clone());
        prop_assert_eq!(protocol::read_msg::<Request>(&mut &frame[..]).unwrap(), req);
    }
}
