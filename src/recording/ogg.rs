//! Ogg Opus files (RFC 7845) for audio-only recordings, written page by page (the `ogg` crate):
//! a file cut at any page boundary plays up to it.
//!
//! Ogg has no timestamps but the granule position (samples at 48 kHz), so a gap in time (a
//! mute at the SFU, DTX, loss) is filled with one-byte Opus packets (a TOC with no frame data:
//! the decoder conceals them as silence), keeping every later packet at its true time.

use std::fs::File;
use std::io::{self, BufWriter, Write};

use ogg::writing::{PacketWriteEndInfo, PacketWriter};

/// A page closes after this many packets (about a second of 20 ms frames): what a crash loses.
const PACKETS_PER_PAGE: u32 = 50;
/// Samples per filler packet: 20 ms at 48 kHz.
const FILLER_SAMPLES: u64 = 960;
/// TOC of a 20 ms fullband CELT frame, mono, one frame: with no data, a silent frame.
const FILLER: [u8; 1] = [0xF8];
/// A gap longer than this is filled no further (a minute): the stream stays bounded.
const MAX_FILL_SAMPLES: u64 = 48_000 * 60;

pub struct OggOpusWriter {
    packets: PacketWriter<'static, BufWriter<File>>,
    serial: u32,
    /// The granule position after the last packet written.
    granule: u64,
    in_page: u32,
    written_packets: u64,
}

impl OggOpusWriter {
    pub fn create(file: File, channels: u8, serial: u32) -> io::Result<Self> {
        let mut packets = PacketWriter::new(BufWriter::new(file));
        let head = super::webm::opus_head(channels, 0);
        packets.write_packet(head, serial, PacketWriteEndInfo::EndPage, 0)?;
        let mut tags = b"OpusTags".to_vec();
        let vendor = b"convene";
        tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        tags.extend_from_slice(vendor);
        tags.extend_from_slice(&0u32.to_le_bytes());
        packets.write_packet(tags, serial, PacketWriteEndInfo::EndPage, 0)?;
        packets.inner_mut().flush()?;
        Ok(Self {
            packets,
            serial,
            granule: 0,
            in_page: 0,
            written_packets: 0,
        })
    }

    /// One Opus packet whose first sample is at `start` samples (48 kHz) from the file's start,
    /// lasting `samples`.
    pub fn write_packet(&mut self, start: u64, samples: u64, data: &[u8]) -> io::Result<()> {
        if start < self.granule {
            // Late or overlapping: Ogg cannot go back in time.
            return Ok(());
        }
        let mut gap = (start - self.granule).min(MAX_FILL_SAMPLES);
        while gap >= FILLER_SAMPLES {
            self.push(&FILLER, FILLER_SAMPLES)?;
            gap -= FILLER_SAMPLES;
        }
        self.granule = start.max(self.granule);
        self.push(data, samples)
    }

    fn push(&mut self, data: &[u8], samples: u64) -> io::Result<()> {
        self.granule += samples;
        self.in_page += 1;
        self.written_packets += 1;
        let end = if self.in_page >= PACKETS_PER_PAGE {
            self.in_page = 0;
            PacketWriteEndInfo::EndPage
        } else {
            PacketWriteEndInfo::NormalPacket
        };
        self.packets
            .write_packet(data.to_vec(), self.serial, end, self.granule)?;
        if matches!(end, PacketWriteEndInfo::EndPage) {
            self.packets.inner_mut().flush()?;
        }
        Ok(())
    }

    pub fn duration_ms(&self) -> u64 {
        self.granule / 48
    }

    /// Ends the stream (a last page with the end-of-stream flag) and syncs the file.
    pub fn finish(mut self) -> io::Result<()> {
        // An empty end-of-stream packet would add a packet: the stream ends on a filler.
        self.granule += FILLER_SAMPLES;
        self.packets.write_packet(
            FILLER.to_vec(),
            self.serial,
            PacketWriteEndInfo::EndStream,
            self.granule,
        )?;
        let mut out = self.packets.into_inner();
        out.flush()?;
        out.get_ref().sync_all()
    }
}
