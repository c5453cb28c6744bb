//! The client against a master stand-in and the fd hand-over against a reader
//! that reads the way the master does.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::client::*;
use super::codec::*;
use super::fds::*;

/// Reads what `send_with_fds` sent the way the master does: the request
/// with exact reads, then one `recvmsg` of one byte per fd.
fn read_like_master(sock: &std::os::unix::net::UnixStream, fds: usize) -> (Vec<u8>, Vec<OwnedFd>) {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let mut r = sock;
    let mut len = [0u8; 4];
    r.read_exact(&mut len).expect("length");
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    r.read_exact(&mut body).expect("body");
    let mut got = Vec::new();
    for _ in 0..fds {
        let mut byte = [0u8; 1];
        let mut iov = [io::IoSliceMut::new(&mut byte)];
        let mut space = nix::cmsg_space!(RawFd);
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .expect("recvmsg");
        assert_eq!(msg.bytes, 1);
        let mut n = 0;
        for c in msg.cmsgs().expect("cmsgs") {
            if let ControlMessageOwned::ScmRights(rights) = c {
                for fd in rights {
                    n += 1;
                    // SAFETY: just received, owned by nobody else.
                    got.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        assert_eq!(n, 1, "one fd per message, as mm_receive_fd expects");
    }
    (body, got)
}

fn inode(fd: BorrowedFd<'_>) -> u64 {
    nix::sys::stat::fstat(fd.as_raw_fd()).expect("fstat").st_ino as u64
}

#[test]
fn a_request_and_its_fds_arrive_as_the_master_reads_them() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // 2 fds (stdio forward), 3 (session), 5 (more than one call takes),
    // and a request too long to go with its fds.
    for (body_len, nfds) in [(40usize, 2usize), (60, 3), (8, 5), (3000, 2)] {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("pair");
        let passed: Vec<_> = (0..nfds)
            .map(|_| std::os::unix::net::UnixStream::pair().expect("pair").0)
            .collect();
        let body: Vec<u8> = (0..body_len).map(|i| i as u8).collect();
        let mut request = (body_len as u32).to_be_bytes().to_vec();
        request.extend_from_slice(&body);
        let raw: Vec<RawFd> = passed.iter().map(|p| p.as_raw_fd()).collect();
        rt.block_on(async {
            ours.set_nonblocking(true).expect("nonblocking");
            let ours = UnixStream::from_std(ours).expect("tokio");
            send_with_fds(&ours, &request, &raw).await.expect("sent");
        });
        let (got_body, got) = read_like_master(&theirs, nfds);
        assert_eq!(got_body, body, "{body_len} bytes, {nfds} fds");
        let want: Vec<u64> = passed.iter().map(|p| inode(p.as_fd())).collect();
        let have: Vec<u64> = got.iter().map(|g| inode(g.as_fd())).collect();
        assert_eq!(have, want, "the fds arrive in order");
    }
}

#[test]
fn hello_encoding() {
    assert_eq!(
        encode_hello().framed(),
        [0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 4]
    );
}

#[test]
fn alive_and_terminate_encoding() {
    assert_eq!(
        encode_alive_check(7).framed(),
        [0, 0, 0, 8, 0x10, 0, 0, 4, 0, 0, 0, 7]
    );
    assert_eq!(
        encode_terminate(1).framed(),
        [0, 0, 0, 8, 0x10, 0, 0, 5, 0, 0, 0, 1]
    );
}

#[test]
fn stdio_fwd_encoding() {
    let m = encode_stdio_fwd(3, "db", 5432).unwrap().framed();
    let expect: Vec<u8> = [
        &[0, 0, 0, 22][..],
        &[0x10, 0, 0, 8],
        &[0, 0, 0, 3],
        &[0, 0, 0, 0],
        &[0, 0, 0, 2],
        b"db",
        &[0, 0, 0x15, 0x38],
    ]
    .concat();
    assert_eq!(m, expect);
}

#[test]
fn new_session_encoding() {
    let m = encode_new_session(1, "true").unwrap();
    let mut r = MsgReader::new(&m.0);
    assert_eq!(r.get_u32().unwrap(), MUX_C_NEW_SESSION);
    assert_eq!(r.get_u32().unwrap(), 1);
    assert_eq!(r.get_bytes().unwrap(), b"");
    for _ in 0..4 {
        assert_eq!(r.get_u32().unwrap(), 0);
    }
    assert_eq!(r.get_u32().unwrap(), 0xffff_ffff);
    assert_eq!(r.get_bytes().unwrap(), b"");
    assert_eq!(r.get_bytes().unwrap(), b"true");
    assert_eq!(r.remaining(), 0);
    let framed = m.framed();
    assert_eq!(&framed[..4], &(m.0.len() as u32).to_be_bytes());
}

#[test]
fn decode_replies() {
    let mut m = MsgBuf::new(MUX_MSG_HELLO);
    m.put_u32(4);
    m.put_str("ext").unwrap().put_str("val").unwrap();
    assert_eq!(decode_reply(&m.0).unwrap(), Reply::Hello { version: 4 });

    let mut m = MsgBuf::new(MUX_S_ALIVE);
    m.put_u32(0).put_u32(1234);
    assert_eq!(
        decode_reply(&m.0).unwrap(),
        Reply::Alive { rid: 0, pid: 1234 }
    );

    let mut m = MsgBuf::new(MUX_S_FAILURE);
    m.put_u32(5)
        .put_str("Session open refused by peer")
        .unwrap();
    let r = decode_reply(&m.0).unwrap();
    assert!(
        matches!(unexpected(5, r), MuxError::Refused(s) if s == "Session open refused by peer")
    );

    let mut m = MsgBuf::new(MUX_S_EXIT_MESSAGE);
    m.put_u32(2).put_u32(3);
    assert_eq!(
        decode_reply(&m.0).unwrap(),
        Reply::ExitMessage {
            session_id: 2,
            exit_value: 3
        }
    );
    let mut m = MsgBuf::new(0x8000_00ff);
    m.put_u32(0);
    assert_eq!(
        decode_reply(&m.0).unwrap(),
        Reply::Other {
            msg_type: 0x8000_00ff
        }
    );
}

#[test]
fn decode_rejects_truncated() {
    assert!(decode_reply(&[0x80, 0, 0]).is_err());
    assert!(decode_reply(&[0x80, 0, 0, 5, 0, 0]).is_err());
    // string length beyond the buffer
    assert!(decode_reply(&[0x80, 0, 0, 3, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]).is_err());
    // hello with a dangling extension name
    assert!(decode_reply(&[0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0, 1, b'x']).is_err());
}

#[test]
fn rejects_bad_hosts() {
    assert!(validate_forward_host("").is_err());
    assert!(validate_forward_host("a b").is_err());
    assert!(validate_forward_host("a\nb").is_err());
    assert!(validate_forward_host("127.0.0.1").is_ok());
    assert!(validate_forward_host("::1").is_ok());
}

#[test]
fn path_fwd_encoding() {
    let m = encode_path_fwd(true, 9, b"/l.sock", b"/var/run/docker.sock")
        .unwrap()
        .framed();
    let expect: Vec<u8> = [
        &[0, 0, 0, 55][..],
        &[0x10, 0, 0, 6],
        &[0, 0, 0, 9],
        &[0, 0, 0, 1],
        &[0, 0, 0, 7],
        b"/l.sock",
        &[0xff, 0xff, 0xff, 0xfe],
        &[0, 0, 0, 20],
        b"/var/run/docker.sock",
        &[0xff, 0xff, 0xff, 0xfe],
    ]
    .concat();
    assert_eq!(m, expect);
    let c = encode_path_fwd(false, 9, b"/l.sock", b"/var/run/docker.sock")
        .unwrap()
        .framed();
    assert_eq!(&c[4..8], &[0x10, 0, 0, 7]);
    assert_eq!(&c[..4], &m[..4]);
    assert_eq!(&c[8..], &m[8..]);
}

#[test]
fn remote_fwd_encoding() {
    let m = encode_remote_fwd(true, 3, "172.17.0.1", 18080, b"/r/x.sock")
        .unwrap()
        .framed();
    let expect: Vec<u8> = [
        &[0, 0, 0, 47][..],
        &[0x10, 0, 0, 6],
        &[0, 0, 0, 3],
        &[0, 0, 0, 2],
        &[0, 0, 0, 10],
        b"172.17.0.1",
        &[0, 0, 0x46, 0xa0],
        &[0, 0, 0, 9],
        b"/r/x.sock",
        &[0xff, 0xff, 0xff, 0xfe],
    ]
    .concat();
    assert_eq!(m, expect);
    let c = encode_remote_fwd(false, 3, "172.17.0.1", 18080, b"/r/x.sock")
        .unwrap()
        .framed();
    assert_eq!(&c[4..8], &[0x10, 0, 0, 7]);
    assert_eq!(&c[8..], &m[8..]);
}

#[test]
fn socket_path_validation() {
    let local = |p: &str| validate_socket_path("local", p.as_bytes(), MAX_LOCAL_SOCKET_PATH_LEN);
    let remote = |p: &str| validate_socket_path("remote", p.as_bytes(), MAX_REMOTE_SOCKET_PATH_LEN);
    assert!(local("/run/user/1000/fwd/docker-a.sock").is_ok());
    assert!(remote("/var/run/docker.sock").is_ok());
    let max_local = format!("/{}", "a".repeat(MAX_LOCAL_SOCKET_PATH_LEN - 1));
    assert!(local(&max_local).is_ok());
    let e = local(&format!("{max_local}b")).expect_err("104 bytes");
    assert!(
        e.to_string().contains("104 bytes long") && e.to_string().contains("103 bytes"),
        "{e}"
    );
    let max_remote = format!("/{}", "a".repeat(MAX_REMOTE_SOCKET_PATH_LEN - 1));
    assert!(remote(&max_remote).is_ok());
    assert!(remote(&format!("{max_remote}b")).is_err());
    for bad in [
        "", "rel.sock", "./x", "/a\0b", "/a\nb", "/a\tb", "/a\u{7f}", "/a\u{85}",
    ] {
        assert!(local(bad).is_err(), "{bad:?}");
        assert!(remote(bad).is_err(), "{bad:?}");
    }
    let e = remote("docker.sock").expect_err("relative");
    let s = e.to_string();
    assert!(
        s.contains("\"docker.sock\" is not absolute") && s.contains("/var/run/docker.sock"),
        "{s}"
    );
    // Non-UTF-8 bytes are not control characters; the master takes any bytes.
    assert!(validate_socket_path("local", b"/a\xffb", MAX_LOCAL_SOCKET_PATH_LEN).is_ok());
}

#[tokio::test]
async fn path_forward_rejects_bad_paths_before_sending() {
    // A peer that would fail the test if anything but the hello reached it.
    let dir = tempfile::tempdir().unwrap();
    let (a, mut b) = UnixStream::pair().unwrap();
    let mut c = MuxClient::past_hello(a, 0);
    let bad: [(&Path, &str); 3] = [
        (Path::new("rel.sock"), "/r.sock"),
        (Path::new("/l.sock"), ""),
        (Path::new("/l.sock"), "/r\n.sock"),
    ];
    for (l, r) in bad {
        assert!(matches!(
            c.open_local_path_forward(l, r).await,
            Err(MuxError::InvalidArgument(_))
        ));
        assert!(matches!(
            c.close_local_path_forward(l, r).await,
            Err(MuxError::InvalidArgument(_))
        ));
    }
    // A regular file at the listen path is never handed to the master (which,
    // with StreamLocalBindUnlink=yes, would delete it).
    let file = dir.path().join("file");
    std::fs::write(&file, b"keep me").unwrap();
    let e = c
        .open_local_path_forward(&file, "/r.sock")
        .await
        .expect_err("not a socket");
    assert!(
        matches!(&e, MuxError::InvalidArgument(m) if m.contains("is not a socket")),
        "{e}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    drop(c);
    let mut rest = Vec::new();
    b.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "sent {rest:?}");
}

/// The first request goes out before the master's hello has arrived,
/// and that hello is still read and checked before the reply.
#[tokio::test]
async fn a_request_does_not_wait_for_the_masters_hello() {
    for (version, want_pid) in [(MUX_VERSION, Some(4242)), (3, None)] {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut c = MuxClient::hello_sent(a);
        let master = tokio::spawn(async move {
            // The request, already sent: nothing has been answered yet.
            let req = read_msg(&mut b).await.unwrap().unwrap();
            let rid = MsgReader::new(&req[4..]).get_u32().unwrap();
            let mut hello = MsgBuf::new(MUX_MSG_HELLO);
            hello.put_u32(version);
            let mut alive = MsgBuf::new(MUX_S_ALIVE);
            alive.put_u32(rid).put_u32(4242);
            b.write_all(&hello.framed()).await.unwrap();
            b.write_all(&alive.framed()).await.unwrap();
            MsgReader::new(&req).get_u32().unwrap()
        });
        let got = c.alive_check().await;
        assert_eq!(master.await.unwrap(), MUX_C_ALIVE_CHECK);
        match want_pid {
            Some(pid) => assert_eq!(got.unwrap(), pid),
            None => assert!(
                matches!(&got, Err(MuxError::Protocol(m)) if m.contains("version 3")),
                "{got:?}"
            ),
        }
    }
}

#[tokio::test]
async fn path_forward_replies() {
    let (a, mut b) = UnixStream::pair().unwrap();
    let mut c = MuxClient::past_hello(a, 5);
    let server = tokio::spawn(async move {
        let mut replies = vec![];
        for reply in [
            {
                let mut m = MsgBuf::new(MUX_S_OK);
                m.put_u32(5);
                m
            },
            {
                let mut m = MsgBuf::new(MUX_S_FAILURE);
                m.put_u32(6).put_str("Port forwarding failed").unwrap();
                m
            },
            {
                let mut m = MsgBuf::new(MUX_S_PERMISSION_DENIED);
                m.put_u32(7).put_str("Permission denied").unwrap();
                m
            },
            {
                let mut m = MsgBuf::new(MUX_S_OK);
                m.put_u32(99); // wrong request id
                m
            },
        ] {
            let req = read_msg(&mut b).await.unwrap().unwrap();
            replies.push(req);
            b.write_all(&reply.framed()).await.unwrap();
        }
        replies
    });
    let l = Path::new("/nonexistent-fwdssh-dir/l.sock");
    c.open_local_path_forward(l, "/r").await.unwrap();
    assert!(matches!(
        c.open_local_path_forward(l, "/r").await,
        Err(MuxError::Refused(r)) if r == "Port forwarding failed"
    ));
    assert!(matches!(
        c.close_local_path_forward(l, "/r").await,
        Err(MuxError::PermissionDenied(r)) if r == "Permission denied"
    ));
    assert!(matches!(
        c.close_local_path_forward(l, "/r").await,
        Err(MuxError::Protocol(_))
    ));
    let reqs = server.await.unwrap();
    let types: Vec<u32> = reqs
        .iter()
        .map(|r| MsgReader::new(r).get_u32().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            MUX_C_OPEN_FWD,
            MUX_C_OPEN_FWD,
            MUX_C_CLOSE_FWD,
            MUX_C_CLOSE_FWD
        ]
    );
    assert_eq!(
        reqs[0],
        encode_path_fwd(true, 5, l.as_os_str().as_bytes(), b"/r")
            .unwrap()
            .0
    );
}

#[tokio::test]
async fn oversized_message_is_rejected() {
    let (mut a, mut b) = UnixStream::pair().unwrap();
    b.write_all(&(MAX_MESSAGE_LEN as u32 + 1).to_be_bytes())
        .await
        .unwrap();
    assert!(matches!(read_msg(&mut a).await, Err(MuxError::Protocol(_))));
    drop(b);
}

#[tokio::test]
async fn eof_mid_message_is_closed() {
    let (mut a, mut b) = UnixStream::pair().unwrap();
    b.write_all(&[0, 0, 0, 8, 0, 0]).await.unwrap();
    drop(b);
    assert!(matches!(read_msg(&mut a).await, Err(MuxError::Closed)));
}

/// `build/platform.rs`: the Linux-only calls are compiled in on Linux, and
/// left out (the code macOS runs instead) with the `portable` feature.
#[test]
fn linux_calls_are_used_on_linux_unless_built_portable() {
    let linux = cfg!(any(target_os = "linux", target_os = "android"));
    assert_eq!(cfg!(linux_calls), linux && !cfg!(feature = "portable"));
}
