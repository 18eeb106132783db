//! The WebSocket message decoder and the REST text rule on arbitrary input: a message parses or
//! is refused with an error code, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match convene::signaling::protocol::parse(&text) {
        Ok(_) => {}
        Err(error) => assert!(!error.code.is_empty()),
    }
    if let Ok(document) = serde_json::from_slice::<serde_json::Value>(data) {
        for (field, problem) in convene::domain::text::json_problems(&document) {
            assert!(!field.is_empty() && !problem.is_empty());
        }
    }
});
