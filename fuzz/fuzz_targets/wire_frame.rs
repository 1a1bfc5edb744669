//! The Confluent wire format: magic byte, schema id, and for Protobuf the
//! message-index array. Any input either splits into a header and the rest of the
//! bytes or is refused with a reason; nothing panics or reads past the end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary::decode::registry::protobuf::message_indexes;
use tributary::decode::registry::split_frame;

fuzz_target!(|data: &[u8]| {
    match split_frame(data) {
        Ok((id, payload)) => {
            assert_eq!(data.len(), payload.len() + 5);
            assert_eq!(id.to_be_bytes(), data[1..5]);
            if let Ok((indexes, message)) = message_indexes(payload) {
                assert!(message.len() <= payload.len());
                assert!(payload.ends_with(message));
                assert!(!indexes.is_empty(), "an empty array means [0]");
            }
        }
        Err(reason) => assert!(!reason.0.is_empty()),
    }
});
