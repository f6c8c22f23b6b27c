//! A Twilio Media Stream after the WebSocket handshake, split in two halves over one TCP
//! socket: the reader thread (`call-N-rx`) reads, the call thread writes. The media listener
//! ([`crate::media::server`]) does the handshake and hands the call one of these.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};

use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
use tungstenite::Message;

use crate::speech::ulaw::FRAME_BYTES;
use crate::twilio::media_messages::MediaFrames;

/// Largest message accepted from Twilio (a media frame is about 300 bytes; `start` a few KiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Stack of a call's threads: they hold small buffers, never deep recursion.
pub const CALL_STACK: usize = 256 * 1024;

/// What the call thread writes to Twilio waits in the socket's buffer until it is flushed once
/// per step of the machine (a piece of speech's frames, its mark: one write, not one a frame);
/// past this much it goes out at once.
const WRITE_BATCH_BYTES: usize = 16 * 1024;
/// What may wait unwritten before a write fails (Twilio not reading).
const MAX_UNWRITTEN_BYTES: usize = 256 * 1024;

/// The socket settings for both halves of a Twilio connection: small buffers (three sockets per
/// call must fit the memory budget); the writing half batches a step's messages.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        // Twilio's messages are small (a media frame is about 370 bytes, `start` a few KiB;
        // a larger one grows the buffer): the reader takes a chunk's frames in one or two reads.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(WRITE_BATCH_BYTES)
        .max_write_buffer_size(MAX_UNWRITTEN_BYTES)
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
}

/// The reading half of a Twilio socket. tungstenite writes pongs and close replies from inside
/// `read()`; those writes go nowhere here, so they can never interleave with the frames the call
/// thread writes through the other half. (The call thread answers pings itself, and a close by
/// closing its half.)
///
/// Reads never block: the reader waits for the socket with `poll(2)` and reads what is there
/// (`recv` with `MSG_DONTWAIT`, so the socket's own mode, which the writing half shares, stays
/// blocking).
pub struct ReadHalf(pub TcpStream);

impl ReadHalf {
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.0.as_fd()
    }
}

impl Read for ReadHalf {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        crate::poll::recv_now(self.fd(), buf)
    }
}

impl Write for ReadHalf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A Twilio connection after the handshake: the two halves of one socket.
pub struct TwilioSocket {
    pub reader: WebSocket<ReadHalf>,
    pub writer: WebSocket<TcpStream>,
    pub peer: SocketAddr,
}

impl TwilioSocket {
    /// Splits an upgraded server-side `stream` (whose timeouts are set) in two; `leftover` is
    /// what was read past the handshake.
    pub fn split(
        stream: TcpStream,
        leftover: Vec<u8>,
        peer: SocketAddr,
    ) -> io::Result<TwilioSocket> {
        let read_half = ReadHalf(stream.try_clone()?);
        Ok(TwilioSocket {
            reader: WebSocket::from_partially_read(
                read_half,
                leftover,
                Role::Server,
                Some(ws_config()),
            ),
            // The writing half never reads: no read buffer for it.
            writer: WebSocket::from_raw_socket(
                stream,
                Role::Server,
                Some(ws_config().read_buffer_size(0)),
            ),
            peer,
        })
    }
}

/// Queues `ulaw` for Twilio as `media` messages of one 20 ms frame each, each built in
/// `frames`' reused buffer and copied into the socket's write buffer: no allocation per frame
/// once the buffers have grown. The caller flushes (once per step of the machine).
pub fn send_media<S: Read + Write>(
    writer: &mut WebSocket<S>,
    frames: &mut MediaFrames,
    ulaw: &[u8],
) -> tungstenite::Result<()> {
    for frame in ulaw.chunks(FRAME_BYTES) {
        // `None` does not happen (see `AudioMessage::build`); the frame would be skipped.
        if let Some(text) = frames.frame(frame) {
            writer.write(Message::Text(text))?;
        }
    }
    Ok(())
}
