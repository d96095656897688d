//! The global's reading of a zone's answer on the KDS `Inspect` stream: any
//! bytes, decoded as an `InspectResponse`, must become a status and JSON
//! body or an error naming the zone; never a panic. Requests the other way
//! are decoded too (a zone reads them off the global's stream).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_global::inspect::read_answer;
use meridian_proto as pb;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(answer) = pb::InspectResponse::decode(data) {
        match read_answer("zone-1", &answer) {
            Ok((status, _)) => assert!((200..600).contains(&status)),
            Err(e) => assert!(e.contains("zone-1"), "{e}"),
        }
    }
    let _ = pb::InspectRequest::decode(data);
});
