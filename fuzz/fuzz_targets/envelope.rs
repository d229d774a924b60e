//! The Kafka (and embedded bus) envelope decoder: any bytes on a topic. What decodes encodes
//! back to something that decodes to the same envelope.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use sharedcare_proto::events::v1::Envelope;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(e) = Envelope::decode(bytes) {
        let again = Envelope::decode(e.encode_to_vec().as_slice()).expect("re-encoded envelope decodes");
        assert_eq!(again, e);
    }
});
