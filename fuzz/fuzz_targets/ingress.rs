//! Media-port ingress on arbitrary datagrams: the first-byte classification, then the RTP or
//! RTCP parser it leads to, then the RTCP feedback classification the engine acts on.
#![no_main]

use convene::sfu::ingress::{classify, DatagramKind};
use libfuzzer_sys::fuzz_target;
use rtc::shared::marshal::Unmarshal;

fuzz_target!(|data: &[u8]| {
    match classify(data) {
        DatagramKind::Rtp => {
            let _ = rtc::rtp::Packet::unmarshal(&mut &data[..]);
        }
        DatagramKind::Rtcp => {
            if let Ok(packets) = rtc::rtcp::packet::unmarshal(&mut &data[..]) {
                let _ = convene::sfu::rtcp::classify(&packets);
            }
        }
        _ => {}
    }
});
