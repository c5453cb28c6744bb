//! Datagrams over a byte stream: the frames fwdd and the relay at the far
//! end exchange on the one channel per host (issue 33). SSH carries only
//! streams, so each datagram is framed whole; its boundaries survive, and
//! each carries the session (one client address on the runner) it is for.
//!
//! ```text
//! frame   = kind:u8 session:u32 length:u16 payload[length]   (big-endian)
//! HELLO   = kind 0, session 0, payload "fwd-udp 1"            (each side, first)
//! OPEN    = kind 1, payload family:u8 (4|6) address port:u16  (runner → relay)
//! DATA    = kind 2, payload one datagram
//! CLOSE   = kind 3, no payload                                (either side)
//! DROPPED = kind 4, session 0, payload count:u64              (relay → runner)
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Bytes before a frame's payload.
pub const HEADER_LEN: usize = 7;
/// The largest datagram a frame carries (IPv4's UDP payload limit; a
/// frame's length is 16 bits).
pub const DATAGRAM_MAX: usize = 65_507;
/// What each side says first.
pub const HELLO: &[u8] = b"fwd-udp 1";

/// One session: a client address on the runner, for one forward.
pub type SessionId = u32;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Hello(Vec<u8>),
    /// The relay opens a socket of its own for `session`, sending to `to`.
    Open {
        session: SessionId,
        to: SocketAddr,
    },
    Data {
        session: SessionId,
        datagram: Vec<u8>,
    },
    Close {
        session: SessionId,
    },
    /// Datagrams the relay dropped since its last count (queues full).
    Dropped(u64),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("a {what} frame with a malformed payload ({len} bytes)")]
    Payload { what: &'static str, len: usize },
    #[error("a datagram of {0} bytes is larger than UDP carries")]
    TooLarge(usize),
}

impl Frame {
    /// Appends the frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let (kind, session, payload): (u8, SessionId, std::borrow::Cow<'_, [u8]>) = match self {
            Frame::Hello(text) => (0, 0, text.as_slice().into()),
            Frame::Open { session, to } => (1, *session, address(to).into()),
            Frame::Data { session, datagram } => {
                if datagram.len() > DATAGRAM_MAX {
                    return Err(FrameError::TooLarge(datagram.len()));
                }
                (2, *session, datagram.as_slice().into())
            }
            Frame::Close { session } => (3, *session, Vec::new().into()),
            Frame::Dropped(n) => (4, 0, n.to_be_bytes().to_vec().into()),
        };
        let len = u16::try_from(payload.len()).map_err(|_| FrameError::TooLarge(payload.len()))?;
        out.push(kind);
        out.extend_from_slice(&session.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&payload);
        Ok(())
    }

    fn decode(kind: u8, session: SessionId, payload: &[u8]) -> Result<Frame, FrameError> {
        let malformed = |what| FrameError::Payload {
            what,
            len: payload.len(),
        };
        match kind {
            0 => Ok(Frame::Hello(payload.to_vec())),
            1 => Ok(Frame::Open {
                session,
                to: parse_address(payload).ok_or_else(|| malformed("OPEN"))?,
            }),
            2 if payload.len() > DATAGRAM_MAX => Err(FrameError::TooLarge(payload.len())),
            2 => Ok(Frame::Data {
                session,
                datagram: payload.to_vec(),
            }),
            3 if payload.is_empty() => Ok(Frame::Close { session }),
            3 => Err(malformed("CLOSE")),
            4 => {
                let n: [u8; 8] = payload.try_into().map_err(|_| malformed("DROPPED"))?;
                Ok(Frame::Dropped(u64::from_be_bytes(n)))
            }
            other => Err(FrameError::Kind(other)),
        }
    }
}

fn address(to: &SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(19);
    match to.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&to.port().to_be_bytes());
    out
}

fn parse_address(p: &[u8]) -> Option<SocketAddr> {
    let (ip, port): (IpAddr, &[u8]) = match p.first()? {
        4 if p.len() == 7 => {
            let o: [u8; 4] = p[1..5].try_into().ok()?;
            (Ipv4Addr::from(o).into(), &p[5..])
        }
        6 if p.len() == 19 => {
            let o: [u8; 16] = p[1..17].try_into().ok()?;
            (Ipv6Addr::from(o).into(), &p[17..])
        }
        _ => return None,
    };
    let port = u16::from_be_bytes(port.try_into().ok()?);
    (port != 0).then_some(SocketAddr::new(ip, port))
}

/// Frames out of a stream read in any pieces. It holds at most one
/// frame's bytes (a header and 65,535 bytes): a peer cannot make it buffer
/// more.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Takes what was read; returns the frames it completes, in order. An
    /// error ends the stream (the peer does not speak this protocol).
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            let need = self.needed();
            let take = need.min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.needed() == 0 {
                let (kind, session, _) = header(&self.buf);
                frames.push(Frame::decode(kind, session, &self.buf[HEADER_LEN..])?);
                self.buf.clear();
            }
        }
        Ok(frames)
    }

    /// Bytes still missing from the frame being read.
    fn needed(&self) -> usize {
        if self.buf.len() < HEADER_LEN {
            return HEADER_LEN - self.buf.len();
        }
        let (_, _, len) = header(&self.buf);
        HEADER_LEN + usize::from(len) - self.buf.len()
    }

    /// Whether a frame is partly read (the stream ended mid-frame).
    pub fn is_mid_frame(&self) -> bool {
        !self.buf.is_empty()
    }
}

fn header(b: &[u8]) -> (u8, SessionId, u16) {
    (
        b[0],
        u32::from_be_bytes([b[1], b[2], b[3], b[4]]),
        u16::from_be_bytes([b[5], b[6]]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Frame> {
        vec![
            Frame::Hello(HELLO.to_vec()),
            Frame::Open {
                session: 7,
                to: "127.0.0.1:5353".parse().expect("addr"),
            },
            Frame::Open {
                session: 8,
                to: "[::1]:53".parse().expect("addr"),
            },
            Frame::Data {
                session: 7,
                datagram: vec![0xab; 1400],
            },
            Frame::Data {
                session: 7,
                datagram: Vec::new(),
            },
            Frame::Close { session: 7 },
            Frame::Dropped(12),
        ]
    }

    /// Every frame comes back whole, however the stream is cut.
    #[test]
    fn frames_round_trip_through_any_cut() {
        let mut bytes = Vec::new();
        for f in all() {
            f.encode(&mut bytes).expect("encodes");
        }
        for cut in [1, 2, 6, 7, 8, 100, bytes.len()] {
            let mut d = Decoder::default();
            let mut got = Vec::new();
            for piece in bytes.chunks(cut) {
                got.extend(d.push(piece).expect("decodes"));
            }
            assert_eq!(got, all(), "cut {cut}");
            assert!(!d.is_mid_frame());
        }
    }

    #[test]
    fn boundaries_are_kept_and_the_largest_datagram_fits() {
        let mut bytes = Vec::new();
        let big = Frame::Data {
            session: 1,
            datagram: vec![1; DATAGRAM_MAX],
        };
        big.encode(&mut bytes).expect("the largest fits");
        assert_eq!(bytes.len(), HEADER_LEN + DATAGRAM_MAX);
        let too_big = Frame::Data {
            session: 1,
            datagram: vec![1; DATAGRAM_MAX + 1],
        };
        assert_eq!(
            too_big.encode(&mut Vec::new()),
            Err(FrameError::TooLarge(DATAGRAM_MAX + 1))
        );
    }

    #[test]
    fn a_peer_that_speaks_something_else_is_an_error() {
        let mut d = Decoder::default();
        assert_eq!(d.push(&[9, 0, 0, 0, 0, 0, 0]), Err(FrameError::Kind(9)));
        let mut d = Decoder::default();
        assert!(matches!(
            d.push(&[1, 0, 0, 0, 1, 0, 2, 4, 1]),
            Err(FrameError::Payload { what: "OPEN", .. })
        ));
        let mut d = Decoder::default();
        assert!(matches!(
            d.push(&[3, 0, 0, 0, 1, 0, 1, 0]),
            Err(FrameError::Payload { what: "CLOSE", .. })
        ));
        // Port 0 is no destination.
        let mut open = Vec::new();
        open.extend([1, 0, 0, 0, 1, 0, 7, 4, 127, 0, 0, 1, 0, 0]);
        assert!(Decoder::default().push(&open).is_err());
    }
}
