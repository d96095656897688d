//! Feeds arbitrary bytes to the parser of meridian-dp's access-log pipe
//! (`meridian_dp::accesslog::parse_record`), which reads what Envoy writes
//! for MeshAccessLog's tcp backends. Any panic is a bug. An accepted record
//! names a non-empty address and yields exactly one line: its bytes end in
//! a newline.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_dp::accesslog::parse_record;

fuzz_target!(|data: &[u8]| {
    if let Ok((address, bytes)) = parse_record(data) {
        assert!(!address.is_empty());
        assert_eq!(bytes.last(), Some(&b'\n'));
    }
});
