//! Writing both sides of a call as a WAV file: 8 kHz, 16-bit PCM, stereo (the caller on the
//! left, the assistant on the right), decoded from μ-law so any player opens it.

use std::io::{self, Write};
use std::path::Path;

use super::voice::{decode_ulaw, SAMPLE_RATE};

/// The WAV bytes for two μ-law tracks (the shorter one is padded with silence).
pub fn stereo(left: &[u8], right: &[u8]) -> Vec<u8> {
    let frames = left.len().max(right.len());
    let data_len = (frames * 4) as u32;
    let mut out = Vec::with_capacity(44 + frames * 4);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&2u16.to_le_bytes()); // channels
    out.extend_from_slice(&SAMPLE_RATE.to_le_bytes());
    out.extend_from_slice(&(SAMPLE_RATE * 4).to_le_bytes()); // bytes per second
    out.extend_from_slice(&4u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    let sample = |track: &[u8], i: usize| track.get(i).map_or(0, |b| decode_ulaw(*b));
    for i in 0..frames {
        out.extend_from_slice(&sample(left, i).to_le_bytes());
        out.extend_from_slice(&sample(right, i).to_le_bytes());
    }
    out
}

pub fn write_stereo(path: &Path, left: &[u8], right: &[u8]) -> io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    file.write_all(&stereo(left, right))?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::voice::encode_ulaw;

    #[test]
    fn a_valid_stereo_header_and_interleaved_samples() {
        let left = [encode_ulaw(1000), encode_ulaw(-1000), encode_ulaw(0)];
        let right = [encode_ulaw(-8000)];
        let wav = stereo(&left, &right);
        assert_eq!(&wav[0..4], b"RIFF");
        assert_eq!(u32::from_le_bytes(wav[4..8].try_into().unwrap()), 36 + 12);
        assert_eq!(&wav[8..16], b"WAVEfmt ");
        assert_eq!(u16::from_le_bytes([wav[22], wav[23]]), 2);
        assert_eq!(u32::from_le_bytes(wav[24..28].try_into().unwrap()), 8000);
        assert_eq!(&wav[36..40], b"data");
        assert_eq!(wav.len(), 44 + 12);
        let at = |i: usize| i16::from_le_bytes([wav[44 + 2 * i], wav[45 + 2 * i]]);
        assert_eq!(at(0), decode_ulaw(left[0]));
        assert_eq!(at(1), decode_ulaw(right[0]));
        assert_eq!(at(2), decode_ulaw(left[1]));
        assert_eq!(at(3), 0, "the shorter track is padded with silence");
        assert!(at(0) > 900 && at(1) < -7000);
    }
}
