//! The MLLP listener (HL7's Minimal Lower Layer Protocol, release 1): each message arrives as
//! `<VT> message <FS><CR>` and is answered on the same connection with its ACK framed the same
//! way. A connection carries one message at a time (original mode: the sender waits for the
//! ACK), so a slow write slows that sender's ACK and nothing queues without bound; the number
//! of connections is capped too.
//!
//! Framing is written here rather than taken from a crate: it is three bytes and a size
//! limit, and the limit, and what a sender is told when it is passed, are ours to decide.

use std::sync::Arc;

use sharedcare_kit::tasks::Tasks;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::ack::Header;
use crate::hl7::{ErrorCode, Location, Problem};
use crate::intake::Intake;

/// Start block.
const VT: u8 = 0x0b;
/// End block.
const FS: u8 = 0x1c;
/// Carriage return, after the end block.
const CR: u8 = 0x0d;
/// How much of an oversized or cut-short message is kept to read its header.
const HEAD: usize = 4096;

/// One frame read from a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A whole message.
    Message(Vec<u8>),
    /// A message bigger than the limit: its first bytes and its size.
    TooBig {
        /// The first bytes (for the header).
        head: Vec<u8>,
        /// Its size in bytes.
        size: usize,
    },
    /// A message cut short by the next start block: its first bytes.
    Truncated(Vec<u8>),
    /// The sender closed the connection (a message it had not finished is dropped).
    Closed,
}

/// Reads the next frame from `r`, keeping at most `max` bytes of a message.
pub async fn read_frame<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R, max: usize) -> std::io::Result<Frame> {
    // Bytes between frames (keep-alive newlines, noise) are skipped.
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(Frame::Closed);
        }
        match chunk.iter().position(|&b| b == VT) {
            Some(i) => {
                r.consume(i + 1);
                break;
            }
            None => {
                let n = chunk.len();
                r.consume(n);
            }
        }
    }
    let mut buf = Vec::new();
    let mut size = 0usize;
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(Frame::Closed);
        }
        let end = chunk.iter().position(|&b| b == FS || b == VT);
        let take = end.unwrap_or(chunk.len());
        let part = chunk.get(..take).unwrap_or_default();
        size += part.len();
        if size <= max {
            buf.extend_from_slice(part);
        } else if buf.len() < HEAD {
            let room = HEAD - buf.len();
            buf.extend_from_slice(part.get(..room.min(part.len())).unwrap_or_default());
        }
        let marker = end.and_then(|i| chunk.get(i).copied());
        match marker {
            Some(FS) => {
                r.consume(take + 1);
                // The CR after FS; tolerated when missing.
                let next = r.fill_buf().await?;
                if next.first() == Some(&CR) {
                    r.consume(1);
                }
                return Ok(if size > max {
                    buf.truncate(HEAD);
                    Frame::TooBig { head: buf, size }
                } else {
                    Frame::Message(buf)
                });
            }
            Some(_) => {
                // A new start block before this message ended: it was cut short. The start
                // block is left for the next read.
                r.consume(take);
                buf.truncate(HEAD);
                return Ok(Frame::Truncated(buf));
            }
            None => r.consume(take),
        }
    }
}

/// `bytes` as text: UTF-8, else ISO 8859-1 (what HL7's default character set reads as).
pub fn text(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => e.into_bytes().into_iter().map(char::from).collect(),
    }
}

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(10);

/// Accepts connections on `listener` until the process stops, at most `max_connections` at
/// once, each served on `tasks`; over TLS when `tls` is given.
pub async fn serve(listener: TcpListener, intake: Arc<Intake>, tls: Option<TlsAcceptor>, tasks: Tasks) {
    let limit = Arc::new(Semaphore::new(intake.config().max_connections));
    let stop = tasks.stopping();
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            () = stop.cancelled() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "MLLP accept failed");
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let (intake, tls) = (intake.clone(), tls.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let served = match (stream.set_nodelay(true), tls) {
                (Err(e), _) => Err(e),
                (Ok(()), None) => connection(stream, &intake).await,
                (Ok(()), Some(tls)) => match tokio::time::timeout(HANDSHAKE, tls.accept(stream)).await {
                    Ok(Ok(secure)) => connection(secure, &intake).await,
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "TLS handshake timed out",
                    )),
                },
            };
            if let Err(e) = served {
                tracing::info!(%peer, error = %e, "MLLP connection ended");
            }
        });
    }
}

/// Serves one connection: a message, its ACK, the next message.
async fn connection<S: AsyncRead + AsyncWrite>(stream: S, intake: &Intake) -> std::io::Result<()> {
    let (read, mut write) = tokio::io::split(stream);
    let mut read = BufReader::with_capacity(64 * 1024, read);
    let max = intake.config().max_message_bytes;
    loop {
        let ack = match read_frame(&mut read, max).await? {
            Frame::Closed => return Ok(()),
            Frame::Message(bytes) => intake.handle(&text(bytes)).await,
            Frame::TooBig { head, size } => refuse(
                &head,
                ErrorCode::Internal,
                format!("the message is {size} bytes; at most {max} are accepted (connectors.max_message_bytes)"),
            ),
            Frame::Truncated(head) => refuse(
                &head,
                ErrorCode::SegmentSequence,
                "the message was cut short: a new start block (0x0B) came before its end block (0x1C 0x0D)".into(),
            ),
        };
        let mut out = Vec::with_capacity(ack.len() + 3);
        out.push(VT);
        out.extend_from_slice(ack.as_bytes());
        out.extend_from_slice(&[FS, CR]);
        write.write_all(&out).await?;
        write.flush().await?;
    }
}

/// The AR for a frame that could not be read as a message.
fn refuse(head: &[u8], code: ErrorCode, reason: String) -> String {
    let h = Header::from_text(&text(head.to_vec()));
    let p = Problem::reject(Location::at("MSH", 0), code, reason);
    crate::intake::answer(&h, &p, sharedcare_kit::db::now_us())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frames(input: &[u8], max: usize) -> Vec<Frame> {
        let mut r = BufReader::with_capacity(16, input);
        let mut out = Vec::new();
        loop {
            let f = read_frame(&mut r, max).await.expect("reads");
            let closed = f == Frame::Closed;
            out.push(f);
            if closed {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn frames_are_read_across_buffer_boundaries() {
        let input = b"\x0bMSH|one\rPID|1\x1c\r\n\x0bMSH|two\x1c\r";
        assert_eq!(
            frames(input, 1024).await,
            vec![
                Frame::Message(b"MSH|one\rPID|1".to_vec()),
                Frame::Message(b"MSH|two".to_vec()),
                Frame::Closed
            ]
        );
    }

    #[tokio::test]
    async fn an_oversized_message_keeps_its_head_and_the_next_one_is_read() {
        let mut input = b"\x0bMSH|big|".to_vec();
        input.extend(std::iter::repeat_n(b'x', 5000));
        input.extend_from_slice(b"\x1c\r\x0bMSH|next\x1c\r");
        let got = frames(&input, 100).await;
        assert!(
            matches!(&got[0], Frame::TooBig { head, size: 5008 } if head.starts_with(b"MSH|big|")),
            "{:?}",
            got[0]
        );
        assert_eq!(got[1], Frame::Message(b"MSH|next".to_vec()));
    }

    #[tokio::test]
    async fn a_message_cut_short_by_a_new_start_block_is_reported_and_the_next_one_read() {
        let got = frames(b"\x0bMSH|cut\x0bMSH|whole\x1c\r", 1024).await;
        assert_eq!(
            got,
            vec![
                Frame::Truncated(b"MSH|cut".to_vec()),
                Frame::Message(b"MSH|whole".to_vec()),
                Frame::Closed
            ]
        );
        assert_eq!(frames(b"\x0bMSH|never ends", 1024).await, vec![Frame::Closed]);
    }

    #[test]
    fn latin_1_text_is_read_as_latin_1() {
        assert_eq!(text(b"Bront\xeb".to_vec()), "Brontë");
        assert_eq!(text("Brontë".as_bytes().to_vec()), "Brontë");
    }
}
