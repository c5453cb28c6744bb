//! Fuzzing the mux reader from what a real master sent: OpenSSH 9.2's
//! answers on its control socket (tests/fuzz/corpus/mux, recorded between
//! `ssh -O check|forward|cancel|stop` and the master), read and decoded as
//! they are, then mutated (a length grown past the bound included) and read
//! in any cuts. Whatever the master sends: no panic, the same messages
//! however the bytes are cut, no message over the bound taken, and every
//! message a reply or an error. The generated replies and framing are
//! fuzzed in `fuzz.rs`.

#[path = "../../../../tests/fuzz/mutate.rs"]
mod mutate;

use super::codec::*;
use proptest::prelude::*;
use tokio::io::{AsyncRead, AsyncReadExt};

fn corpus_dir() -> std::path::PathBuf {
    mutate::repo_root(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus/mux")
}

/// Every message of `data`, read in `lengths` cuts, and how the reading ended.
fn read_all(data: &[u8], lengths: &[usize]) -> (Vec<Vec<u8>>, Result<(), String>) {
    let mut r: Box<dyn AsyncRead + Unpin + '_> = Box::new(&[][..]);
    for piece in mutate::cut(data, lengths) {
        r = Box::new(r.chain(piece));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let mut msgs = Vec::new();
        // Each message read takes at least its 4-byte length.
        for _ in 0..=data.len() {
            match read_msg(&mut r).await {
                Ok(Some(m)) => msgs.push(m),
                Ok(None) => return (msgs, Ok(())),
                Err(e) => return (msgs, Err(e.to_string())),
            }
        }
        panic!("read_msg made no progress");
    })
}

#[test]
fn every_seed_reads_as_the_master_sent_it() {
    let read = |name: &str| {
        let data = std::fs::read(corpus_dir().join(name)).expect("seed");
        let (msgs, end) = read_all(&data, &[]);
        assert_eq!(end, Ok(()), "{name}");
        msgs.iter()
            .map(|m| decode_reply(m).expect("a reply"))
            .collect::<Vec<_>>()
    };
    let hello = Reply::Hello { version: 4 };
    let check = read("openssh-9.2-check.bin");
    assert!(
        matches!(check.as_slice(), [h, Reply::Alive { rid: 0, pid }] if *h == hello && *pid > 1),
        "{check:?}"
    );
    for ok in ["openssh-9.2-forward-local-ok.bin", "openssh-9.2-stop.bin"] {
        assert_eq!(read(ok), [hello.clone(), Reply::Ok { rid: 0 }], "{ok}");
    }
    // MUX_S_REMOTE_PORT: a reply fwd does not ask for.
    assert_eq!(
        read("openssh-9.2-forward-remote-port.bin"),
        [
            hello.clone(),
            Reply::Other {
                msg_type: 0x8000_0007
            }
        ]
    );
    assert_eq!(
        read("openssh-9.2-forward-remote-path-failed.bin"),
        [
            hello.clone(),
            Reply::Failure {
                rid: 0,
                reason: "remote port forwarding failed for listen path /proc/forbidden.sock".into()
            }
        ]
    );
    assert_eq!(
        read("openssh-9.2-cancel-not-forwarded.bin"),
        [
            hello,
            Reply::Failure {
                rid: 0,
                reason: "port not forwarded".into()
            }
        ]
    );
}

proptest! {
    #![proptest_config(mutate::config(8192))]

    #[test]
    fn mutated_answers_read_the_same_however_they_are_cut(
        data in mutate::mutated(mutate::seeds_in(&corpus_dir()), 6, 512),
        lengths in mutate::pieces(),
    ) {
        let (whole, end) = read_all(&data, &[]);
        let (cut, cut_end) = read_all(&data, &lengths);
        prop_assert_eq!(&whole, &cut);
        prop_assert_eq!(&end, &cut_end);
        for m in &whole {
            prop_assert!(m.len() <= MAX_MESSAGE_LEN);
            let _ = decode_reply(m);
        }
    }

    /// A length past the bound, whatever follows: refused before anything
    /// of the message is read or allocated.
    #[test]
    fn a_length_past_the_bound_is_refused(
        len in (MAX_MESSAGE_LEN as u32 + 1)..=u32::MAX,
        seed in proptest::sample::select(mutate::seeds_in(&corpus_dir())),
    ) {
        let mut data = seed[..12].to_vec(); // the master's hello
        data.extend_from_slice(&len.to_be_bytes());
        data.extend_from_slice(&seed[12..]);
        let (msgs, end) = read_all(&data, &[]);
        prop_assert_eq!(msgs.len(), 1);
        prop_assert!(end.is_err_and(|e| e.contains("exceeds the limit")));
    }
}
