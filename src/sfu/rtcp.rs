//! RTCP the SFU acts on itself: keyframe requests (PLI/FIR) relayed from subscribers to
//! publishers, NACK counting, and the RTCP it originates (PLI/FIR upstream, BYE downstream).
//!
//! webrtc-rs' interceptors consume inbound RTCP unless something marks it for the application;
//! [`DeliverFeedback`] marks only the compound packets that carry feedback we relay or count, and
//! leaves sender/receiver reports to the report interceptors.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::goodbye::Goodbye;
use rtc::rtcp::payload_feedbacks::full_intra_request::{FirEntry, FullIntraRequest};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::sansio::Protocol;

use super::track::KeyframeRequestKind;

/// What one inbound compound RTCP packet asks of us.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Feedback {
    pub keyframe: Option<KeyframeRequestKind>,
    pub nacks: u32,
}

pub fn classify(packets: &[Box<dyn rtc::rtcp::Packet>]) -> Feedback {
    let mut feedback = Feedback::default();
    for packet in packets {
        let any = packet.as_any();
        if any.is::<PictureLossIndication>() {
            feedback.keyframe.get_or_insert(KeyframeRequestKind::Pli);
        } else if any.is::<FullIntraRequest>() {
            feedback.keyframe = Some(KeyframeRequestKind::Fir);
        } else if any.is::<TransportLayerNack>() {
            feedback.nacks += 1;
        }
    }
    feedback
}

/// The sequence numbers NACKed for `media_ssrc` in a compound packet, in order.
pub fn nacked(packets: &[Box<dyn rtc::rtcp::Packet>], media_ssrc: u32) -> Vec<u16> {
    packets
        .iter()
        .filter_map(|p| p.as_any().downcast_ref::<TransportLayerNack>())
        .filter(|nack| nack.media_ssrc == media_ssrc)
        .flat_map(|nack| nack.nacks.iter().flat_map(|pair| pair.packet_list()))
        .collect()
}

fn carries_feedback(packets: &[Box<dyn rtc::rtcp::Packet>]) -> bool {
    let feedback = classify(packets);
    feedback.keyframe.is_some() || feedback.nacks > 0
}

pub fn keyframe_request(
    kind: KeyframeRequestKind,
    media_ssrc: u32,
    fir_sequence: u8,
) -> Vec<Box<dyn rtc::rtcp::Packet>> {
    match kind {
        KeyframeRequestKind::Pli => {
            vec![Box::new(PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc,
            })]
        }
        KeyframeRequestKind::Fir => vec![Box::new(FullIntraRequest {
            sender_ssrc: 0,
            media_ssrc,
            fir: vec![FirEntry {
                ssrc: media_ssrc,
                sequence_number: fir_sequence,
            }],
        })],
    }
}

pub fn goodbye(ssrc: u32) -> Vec<Box<dyn rtc::rtcp::Packet>> {
    vec![Box::new(Goodbye {
        sources: vec![ssrc],
        reason: Bytes::from_static(b"publisher left"),
    })]
}

/// Marks inbound keyframe requests and NACKs for delivery to the application, which answers
/// them (`engine.rs`: keyframes upstream, retransmissions from the track's history).
#[derive(Default)]
pub struct DeliverFeedback {
    reads: VecDeque<TaggedPacket>,
    writes: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for DeliverFeedback {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            if carries_feedback(packets) {
                msg.message.add(Attribute::DeliverToApplication);
            }
        }
        self.reads.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.reads.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.writes.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.writes.pop_front()
    }

    fn handle_timeout(&mut self, _now: Instant) -> Result<(), Self::Error> {
        Ok(())
    }

    fn poll_timeout(&mut self) -> Option<Self::Time> {
        None
    }
}

impl Interceptor for DeliverFeedback {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_feedback() {
        let pli = keyframe_request(KeyframeRequestKind::Pli, 7, 0);
        assert_eq!(classify(&pli).keyframe, Some(KeyframeRequestKind::Pli));
        let fir = keyframe_request(KeyframeRequestKind::Fir, 7, 1);
        assert_eq!(classify(&fir).keyframe, Some(KeyframeRequestKind::Fir));
        assert_eq!(classify(&goodbye(7)), Feedback::default());
    }
}
