//! Property tests: the reply decoder and the framing reader take whatever the peer sends
//! without panicking, and decode well-formed input to exactly what was encoded.

use std::io;

use tokio::io::AsyncRead;

use super::codec::*;
use proptest::prelude::*;
use std::pin::Pin;
use std::task::{Context, Poll};

const KNOWN_TYPES: [u32; 9] = [
    MUX_MSG_HELLO,
    MUX_S_OK,
    MUX_S_ALIVE,
    MUX_S_SESSION_OPENED,
    MUX_S_FAILURE,
    MUX_S_PERMISSION_DENIED,
    MUX_S_EXIT_MESSAGE,
    MUX_S_TTY_ALLOC_FAIL,
    // Decoded as Other, but kept out of the generator's "unknown" range anyway.
    MUX_C_ALIVE_CHECK,
];

/// What the master would send for `reply`, plus hello extensions.
fn encode_reply(reply: &Reply, exts: &[(Vec<u8>, Vec<u8>)], trailer: &[u8]) -> Vec<u8> {
    let m = match reply {
        Reply::Hello { version } => {
            let mut m = MsgBuf::new(MUX_MSG_HELLO);
            m.put_u32(*version);
            for (k, v) in exts {
                m.put_bytes(k).unwrap().put_bytes(v).unwrap();
            }
            return m.0; // a trailer would be a malformed extension
        }
        Reply::Ok { rid } => {
            let mut m = MsgBuf::new(MUX_S_OK);
            m.put_u32(*rid);
            m
        }
        Reply::Alive { rid, pid } => {
            let mut m = MsgBuf::new(MUX_S_ALIVE);
            m.put_u32(*rid).put_u32(*pid);
            m
        }
        Reply::SessionOpened { rid, session_id } => {
            let mut m = MsgBuf::new(MUX_S_SESSION_OPENED);
            m.put_u32(*rid).put_u32(*session_id);
            m
        }
        Reply::Failure { rid, reason } => {
            let mut m = MsgBuf::new(MUX_S_FAILURE);
            m.put_u32(*rid).put_str(reason).unwrap();
            m
        }
        Reply::PermissionDenied { rid, reason } => {
            let mut m = MsgBuf::new(MUX_S_PERMISSION_DENIED);
            m.put_u32(*rid).put_str(reason).unwrap();
            m
        }
        Reply::ExitMessage {
            session_id,
            exit_value,
        } => {
            let mut m = MsgBuf::new(MUX_S_EXIT_MESSAGE);
            m.put_u32(*session_id).put_u32(*exit_value);
            m
        }
        Reply::TtyAllocFail { session_id } => {
            let mut m = MsgBuf::new(MUX_S_TTY_ALLOC_FAIL);
            m.put_u32(*session_id);
            m
        }
        Reply::Other { msg_type } => MsgBuf::new(*msg_type),
    };
    let mut out = m.0;
    // Later OpenSSH versions may append fields; extra bytes are ignored.
    out.extend_from_slice(trailer);
    out
}

fn any_reply() -> impl Strategy<Value = Reply> {
    let s = || any::<u32>();
    prop_oneof![
        s().prop_map(|version| Reply::Hello { version }),
        s().prop_map(|rid| Reply::Ok { rid }),
        (s(), s()).prop_map(|(rid, pid)| Reply::Alive { rid, pid }),
        (s(), s()).prop_map(|(rid, session_id)| Reply::SessionOpened { rid, session_id }),
        (s(), ".{0,80}").prop_map(|(rid, reason)| Reply::Failure { rid, reason }),
        (s(), ".{0,80}").prop_map(|(rid, reason)| Reply::PermissionDenied { rid, reason }),
        (s(), s()).prop_map(|(session_id, exit_value)| Reply::ExitMessage {
            session_id,
            exit_value
        }),
        s().prop_map(|session_id| Reply::TtyAllocFail { session_id }),
        s().prop_filter("known type", |t| !KNOWN_TYPES.contains(t))
            .prop_map(|msg_type| Reply::Other { msg_type }),
    ]
}

fn exts() -> impl Strategy<Value = Vec<(Vec<u8>, Vec<u8>)>> {
    proptest::collection::vec(
        (
            proptest::collection::vec(any::<u8>(), 0..16),
            proptest::collection::vec(any::<u8>(), 0..16),
        ),
        0..4,
    )
}

/// An `AsyncRead` that hands out its data in the given chunk sizes, then EOF.
struct Chunked {
    data: Vec<u8>,
    pos: usize,
    chunks: Vec<usize>,
    next: usize,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let chunk = this
            .chunks
            .get(this.next % this.chunks.len().max(1))
            .copied()
            .unwrap_or(usize::MAX)
            .max(1);
        this.next += 1;
        let n = chunk.min(buf.remaining()).min(this.data.len() - this.pos);
        buf.put_slice(&this.data[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

/// Reads messages until EOF or an error; at most `data.len()` + 1 reads, since each
/// successful one consumes at least the 4-byte length.
fn read_all(data: Vec<u8>, chunks: Vec<usize>) -> (Vec<Vec<u8>>, Result<(), MuxError>) {
    let limit = data.len() + 1;
    let mut r = Chunked {
        data,
        pos: 0,
        chunks,
        next: 0,
    };
    block_on(async move {
        let mut msgs = Vec::new();
        for _ in 0..limit {
            match read_msg(&mut r).await {
                Ok(Some(m)) => msgs.push(m),
                Ok(None) => return (msgs, Ok(())),
                Err(e) => return (msgs, Err(e)),
            }
        }
        panic!("read_msg did not make progress");
    })
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

proptest! {
    #[test]
    fn decode_reply_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode_reply(&bytes);
    }

    /// Arbitrary bytes behind a known message type: exercises the field decoders
    /// (truncated u32s, string lengths beyond the buffer, dangling extensions).
    #[test]
    fn decode_known_type_with_garbage_never_panics(
        t in proptest::sample::select(KNOWN_TYPES.to_vec()),
        rest in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let mut bytes = t.to_be_bytes().to_vec();
        bytes.extend_from_slice(&rest);
        let _ = decode_reply(&bytes);
    }

    #[test]
    fn decode_reply_round_trips(
        reply in any_reply(),
        exts in exts(),
        trailer in proptest::collection::vec(any::<u8>(), 0..8),
    ) {
        let bytes = encode_reply(&reply, &exts, &trailer);
        prop_assert_eq!(decode_reply(&bytes).unwrap(), reply);
    }

    /// Every proper prefix of a well-formed reply is rejected, not misread; only a
    /// hello cut right after its version or after a whole extension pair is itself
    /// complete.
    #[test]
    fn truncated_replies_are_errors(reply in any_reply(), exts in exts()) {
        let bytes = encode_reply(&reply, &exts, &[]);
        for cut in 0..bytes.len() {
            match decode_reply(&bytes[..cut]) {
                Err(MuxError::Protocol(_)) => {}
                Ok(Reply::Hello { .. }) if matches!(reply, Reply::Hello { .. }) => {
                    // cut right after the version or after a whole extension pair
                }
                other => prop_assert!(false, "prefix {} of {:?}: {:?}", cut, bytes, other),
            }
        }
    }

    #[test]
    fn framing_never_panics(
        data in proptest::collection::vec(any::<u8>(), 0..256),
        chunks in proptest::collection::vec(1usize..16, 0..8),
    ) {
        let (_msgs, _end) = read_all(data, chunks);
    }

    /// Lengths near and over the limit: rejected without reading (or allocating)
    /// more than the limit.
    #[test]
    fn framing_rejects_oversized(len in (MAX_MESSAGE_LEN as u32 + 1)..=u32::MAX) {
        let (msgs, end) = read_all(len.to_be_bytes().to_vec(), vec![]);
        prop_assert!(msgs.is_empty());
        prop_assert!(matches!(end, Err(MuxError::Protocol(_))));
    }

    #[test]
    fn framing_round_trips(
        payloads in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..64), 0..8),
        chunks in proptest::collection::vec(1usize..16, 0..8),
    ) {
        let data: Vec<u8> = payloads.iter().flat_map(|p| frame(p)).collect();
        let (msgs, end) = read_all(data, chunks);
        prop_assert!(end.is_ok(), "{:?}", end);
        prop_assert_eq!(msgs, payloads);
    }

    /// A stream cut inside a message ends with `Closed` after the complete ones;
    /// cut at a boundary it is a clean EOF.
    #[test]
    fn framing_truncated_stream(
        payloads in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..32), 1..5),
        cut_frac in 0.0f64..1.0,
        chunks in proptest::collection::vec(1usize..16, 0..8),
    ) {
        let frames: Vec<Vec<u8>> = payloads.iter().map(|p| frame(p)).collect();
        let data: Vec<u8> = frames.concat();
        let cut = ((data.len() as f64) * cut_frac) as usize;
        let mut boundary = 0;
        let mut complete = 0;
        for f in &frames {
            if boundary + f.len() > cut {
                break;
            }
            boundary += f.len();
            complete += 1;
        }
        let (msgs, end) = read_all(data[..cut].to_vec(), chunks);
        prop_assert_eq!(&msgs[..], &payloads[..complete]);
        if cut == boundary {
            prop_assert!(end.is_ok(), "{:?}", end);
        } else {
            prop_assert!(matches!(end, Err(MuxError::Closed)), "{:?}", end);
        }
    }

    /// Round trip of a well-formed reply through the framing reader and the decoder.
    #[test]
    fn framed_reply_round_trips(
        replies in proptest::collection::vec(any_reply(), 1..5),
        chunks in proptest::collection::vec(1usize..16, 0..8),
    ) {
        let data: Vec<u8> =
            replies.iter().flat_map(|r| frame(&encode_reply(r, &[], &[]))).collect();
        let (msgs, end) = read_all(data, chunks);
        prop_assert!(end.is_ok(), "{:?}", end);
        let decoded: Vec<Reply> = msgs.iter().map(|m| decode_reply(m).unwrap()).collect();
        prop_assert_eq!(decoded, replies);
    }
}
