//! What a client asks the engine, read off the bytes it sends through fwd's
//! engine socket: only where each HTTP/1.1 request begins, and which ones
//! start a container (`POST [/vX.Y]/containers/{id}/start`).
//!
//! fwd holds the answer to such a start until the container's ports are
//! bound, so a connection made the instant `docker run` returns is served
//! on every engine — Podman's events arrive after `docker run` has
//! returned. The bytes themselves pass unchanged; whatever this reader
//! does not understand (a malformed or oversized head, a hijacked
//! connection after `Upgrade`, a position it did not see from the start)
//! makes it stop reading that connection, never the connection stop.

use crate::model::ContainerId;

/// A request head longer than this is not read (the connection is passed
/// through unread from there on).
const HEAD_MAX: usize = 16 * 1024;
/// A chunk-size line longer than this likewise.
const CHUNK_LINE_MAX: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Reading a request head, up to its blank line.
    Head,
    /// Skipping a body of known length.
    Body(u64),
    /// A chunked body: the size line of the next chunk.
    ChunkSize,
    /// A chunked body: the rest of a chunk's data, then its CRLF.
    ChunkData(u64),
    /// After the last chunk: trailer lines, up to the blank one.
    Trailers,
    /// Not read any further.
    Unread,
}

/// Follows one client connection's requests.
#[derive(Clone, Debug)]
pub struct RequestReader {
    state: State,
    /// The part of a head or of a line seen so far.
    pending: Vec<u8>,
}

impl Default for RequestReader {
    fn default() -> Self {
        RequestReader::new()
    }
}

impl RequestReader {
    /// A reader at the start of a connection.
    pub fn new() -> RequestReader {
        RequestReader {
            state: State::Head,
            pending: Vec::new(),
        }
    }

    /// A reader that joins a connection midway (a relay an upgrade handed
    /// over): it cannot know where requests begin, so it reads nothing.
    pub fn unread() -> RequestReader {
        RequestReader {
            state: State::Unread,
            pending: Vec::new(),
        }
    }

    /// Whether it still follows the connection.
    pub fn is_reading(&self) -> bool {
        self.state != State::Unread
    }

    /// The next bytes the client sent: the containers whose start requests
    /// were completed by them, in order.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Vec<String> {
        let mut starts = Vec::new();
        while !bytes.is_empty() {
            bytes = match self.state {
                State::Unread => return starts,
                State::Head => self.head(bytes, &mut starts),
                State::Body(left) => {
                    let n = left.min(bytes.len() as u64);
                    self.state = match left - n {
                        0 => State::Head,
                        rest => State::Body(rest),
                    };
                    &bytes[n as usize..]
                }
                State::ChunkSize => self.chunk_size(bytes),
                State::ChunkData(left) => {
                    let n = left.min(bytes.len() as u64);
                    self.state = match left - n {
                        0 => State::ChunkSize,
                        rest => State::ChunkData(rest),
                    };
                    &bytes[n as usize..]
                }
                State::Trailers => self.trailers(bytes),
            };
        }
        starts
    }

    fn give_up(&mut self) -> &'static [u8] {
        self.state = State::Unread;
        self.pending = Vec::new();
        &[]
    }

    fn head<'b>(&mut self, bytes: &'b [u8], starts: &mut Vec<String>) -> &'b [u8] {
        // The blank line may straddle what was kept and what came.
        let kept = self.pending.len();
        let search_from = kept.saturating_sub(3);
        self.pending.extend_from_slice(bytes);
        let Some(end) =
            find(&self.pending[search_from..], b"\r\n\r\n").map(|i| search_from + i + 4)
        else {
            if self.pending.len() > HEAD_MAX {
                return self.give_up();
            }
            return &[];
        };
        if end > HEAD_MAX {
            return self.give_up();
        }
        let head = std::mem::take(&mut self.pending);
        let rest = &bytes[end - kept..];
        let Some(request) = parse_head(&head[..end]) else {
            return self.give_up();
        };
        if let Some(id) = request.starts {
            starts.push(id);
        }
        self.state = if request.upgrade {
            // A hijacked stream (attach, exec) follows: no more requests.
            State::Unread
        } else if request.chunked {
            State::ChunkSize
        } else if request.length > 0 {
            State::Body(request.length)
        } else {
            State::Head
        };
        rest
    }

    /// The bytes of one CRLF-terminated line, once whole (a line too long
    /// to be a chunk's size or a trailer stops the reading, whether it came
    /// in one read or in several).
    fn line<'b>(&mut self, bytes: &'b [u8]) -> Option<(Vec<u8>, &'b [u8])> {
        let end = bytes.iter().position(|&b| b == b'\n').map(|i| i + 1);
        let taken = end.unwrap_or(bytes.len());
        if self.pending.len() + taken > CHUNK_LINE_MAX {
            self.give_up();
            return None;
        }
        self.pending.extend_from_slice(&bytes[..taken]);
        end.map(|end| (std::mem::take(&mut self.pending), &bytes[end..]))
    }

    fn chunk_size<'b>(&mut self, bytes: &'b [u8]) -> &'b [u8] {
        let Some((line, rest)) = self.line(bytes) else {
            return &[];
        };
        // The CRLF ending the previous chunk's data is an empty line here.
        if line == b"\r\n" {
            return rest;
        }
        let text = String::from_utf8_lossy(&line);
        let size = text.trim_end().split(';').next().unwrap_or("").trim();
        match u64::from_str_radix(size, 16) {
            Ok(0) => self.state = State::Trailers,
            Ok(n) => self.state = State::ChunkData(n),
            Err(_) => return self.give_up(),
        }
        rest
    }

    fn trailers<'b>(&mut self, bytes: &'b [u8]) -> &'b [u8] {
        let Some((line, rest)) = self.line(bytes) else {
            return &[];
        };
        if line == b"\r\n" {
            self.state = State::Head;
        }
        rest
    }
}

/// Whether the engine's answer to a start, beginning with `first` (what one
/// read brought), is held until the container's ports are bound: only for
/// a start that happened now (`204 No Content`; `304` says it already ran,
/// an error that it did not).
pub fn answer_is_held(first: &[u8]) -> bool {
    [b"HTTP/1.1 204 ", b"HTTP/1.0 204 "]
        .iter()
        .any(|status| first.starts_with(*status))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

struct Request {
    length: u64,
    chunked: bool,
    upgrade: bool,
    starts: Option<String>,
}

fn parse_head(head: &[u8]) -> Option<Request> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target, version) = (first.next()?, first.next()?, first.next()?);
    let token = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
    if !token || !version.starts_with("HTTP/1.") || first.next().is_some() {
        return None;
    }
    let mut request = Request {
        length: 0,
        chunked: false,
        upgrade: false,
        starts: None,
    };
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => request.length = value.parse().ok()?,
            "transfer-encoding" => {
                request.chunked = value.to_ascii_lowercase().ends_with("chunked")
            }
            "upgrade" => request.upgrade = true,
            "connection" => {
                request.upgrade |= value
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            }
            _ => {}
        }
    }
    if method == "POST" {
        request.starts = started(target);
    }
    Some(request)
}

/// `[/vX.Y]/containers/{id}/start[?…]` → the id, when it is one (12-64
/// lowercase hex: a name is not followed).
fn started(target: &str) -> Option<String> {
    let path = target.split('?').next()?;
    let mut parts = path.strip_prefix('/')?.split('/');
    let mut first = parts.next()?;
    if first.starts_with('v') && first[1..].chars().all(|c| c.is_ascii_digit() || c == '.') {
        first = parts.next()?;
    }
    let (id, action) = (parts.next()?, parts.next()?);
    if first != "containers" || action != "start" || parts.next().is_some() {
        return None;
    }
    ContainerId::parse(id)
        .ok()
        .map(|id| id.as_str().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f7f4c0d3f1b2a8e9d6c5b4a39281706f5e4d3c2b1a0f9e8d7c6b5a493827160";

    /// What the docker CLI (Go's net/http) sends for `docker run -d`.
    fn create_then_start() -> Vec<u8> {
        let body = br#"{"Image":"busybox","ExposedPorts":{"8080/tcp":{}}}"#;
        let mut b = format!(
            "POST /v1.41/containers/create HTTP/1.1\r\nHost: api.moby.localhost\r\nUser-Agent: Docker-Client/20.10.24+dfsg1 (linux)\r\nContent-Length: {}\r\nContent-Type: application/json\r\n\r\n",
            body.len()
        )
        .into_bytes();
        b.extend_from_slice(body);
        b.extend_from_slice(
            format!("POST /v1.41/containers/{ID}/start HTTP/1.1\r\nHost: api.moby.localhost\r\nUser-Agent: Docker-Client/20.10.24+dfsg1 (linux)\r\nContent-Length: 0\r\nContent-Type: text/plain\r\n\r\n")
                .as_bytes(),
        );
        b
    }

    #[test]
    fn a_start_after_a_create_is_seen_however_the_bytes_are_cut() {
        let bytes = create_then_start();
        assert_eq!(RequestReader::new().feed(&bytes), [ID]);
        for cut in 1..bytes.len() {
            let mut r = RequestReader::new();
            let mut seen = r.feed(&bytes[..cut]);
            seen.extend(r.feed(&bytes[cut..]));
            assert_eq!(seen, [ID], "cut at {cut}");
            assert!(r.is_reading());
        }
        // One byte at a time.
        let mut r = RequestReader::new();
        let seen: Vec<String> = bytes.iter().flat_map(|b| r.feed(&[*b])).collect();
        assert_eq!(seen, [ID]);
    }

    #[test]
    fn bodies_are_skipped_whole_whether_sized_or_chunked() {
        // A start-like path inside a body is not a request.
        let fake = format!("POST /containers/{ID}/start HTTP/1.1\r\n\r\n");
        let mut b = format!(
            "POST /v1.41/images/load HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{fake}",
            fake.len()
        )
        .into_bytes();
        b.extend_from_slice(
            b"POST /v1.41/build HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        b.extend_from_slice(format!("{:x}\r\n{fake}\r\n", fake.len()).as_bytes());
        b.extend_from_slice(b"3;ext=1\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n");
        b.extend_from_slice(
            format!(
                "POST /containers/{}/start?detachKeys=ctrl-p HTTP/1.1\r\n\r\n",
                &ID[..12]
            )
            .as_bytes(),
        );
        for cut in 1..b.len() {
            let mut r = RequestReader::new();
            let mut seen = r.feed(&b[..cut]);
            seen.extend(r.feed(&b[cut..]));
            assert_eq!(seen, [&ID[..12]], "cut at {cut}");
        }
    }

    #[test]
    fn what_is_not_understood_is_passed_through_unread() {
        let start = format!("POST /containers/{ID}/start HTTP/1.1\r\n\r\n");
        // A hijacked connection: whatever follows is the container's stream.
        let mut r = RequestReader::new();
        let attach = format!(
            "POST /v1.41/containers/{ID}/attach?stream=1 HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n{start}"
        );
        assert!(r.feed(attach.as_bytes()).is_empty());
        assert!(!r.is_reading());
        // Garbage, an endless head, a bad chunk size, a reader joining midway.
        for bytes in [
            b"\x16\x03\x01 not http\r\n\r\n".to_vec(),
            vec![b'a'; HEAD_MAX + 10],
            b"POST /build HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
            b"POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n".to_vec(),
        ] {
            let mut r = RequestReader::new();
            let mut all = bytes.clone();
            all.extend_from_slice(start.as_bytes());
            assert!(
                r.feed(&all).is_empty(),
                "{:?}",
                String::from_utf8_lossy(&bytes[..20])
            );
            assert!(!r.is_reading());
        }
        assert!(RequestReader::unread().feed(start.as_bytes()).is_empty());
    }

    #[test]
    fn only_a_start_that_happened_has_its_answer_held() {
        assert!(answer_is_held(
            b"HTTP/1.1 204 No Content\r\nApi-Version: 1.41\r\n\r\n"
        ));
        assert!(!answer_is_held(b"HTTP/1.1 304 Not Modified\r\n\r\n"));
        assert!(!answer_is_held(b"HTTP/1.1 404 Not Found\r\n"));
        assert!(!answer_is_held(b"HTTP/1.1 2"));
    }

    #[test]
    fn only_a_start_by_id_is_a_start() {
        let mut r = RequestReader::new();
        for target in [
            format!("/containers/{ID}/stop"),
            "/containers/my-name/start".to_string(),
            format!("/containers/{ID}/start/extra"),
            format!("/networks/{ID}/start"),
            format!("/vX/containers/{ID}/start"),
        ] {
            let req = format!("POST {target} HTTP/1.1\r\nHost: x\r\n\r\n");
            assert!(r.feed(req.as_bytes()).is_empty(), "{target}");
        }
        let get = format!("GET /containers/{ID}/start HTTP/1.1\r\n\r\n");
        assert!(r.feed(get.as_bytes()).is_empty());
        let post = format!("POST /v1.52/containers/{ID}/start HTTP/1.1\r\n\r\n");
        assert_eq!(r.feed(post.as_bytes()), [ID]);
    }
}
