//! Random input never crashes, hangs or wedges the server: seeded random
//! sessions mixing valid commands, binary noise, NUL, bare CR/LF and long
//! lines, cut into random write sizes. Every connection must end (the
//! server answers EOF or times out), no task may panic, and a well-behaved
//! client must still be served afterwards.

mod harness;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use harness::{connect, start};
use postern_core::Config;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SESSIONS: usize = 300;
const FRAGMENTS: &[&[u8]] = &[
    b"EHLO fuzz.test\r\n",
    b"HELO fuzz.test\r\n",
    b"MAIL FROM:<a@example.org>\r\n",
    b"MAIL FROM:<a@example.org> SIZE=100 BODY=8BITMIME SMTPUTF8\r\n",
    b"RCPT TO:<u@relay.example>\r\n",
    b"RCPT TO:<u@elsewhere.example> NOTIFY=NEVER\r\n",
    b"DATA\r\n",
    b"BDAT 5\r\n",
    b"BDAT 0 LAST\r\n",
    b"BDAT 99999999999999999999\r\n",
    b"AUTH PLAIN AGFwaWtleQBwc3Rf\r\n",
    b"AUTH LOGIN\r\n",
    b"STARTTLS\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"VRFY x\r\n",
    b"\r\n.\r\n",
    b"\n.\n",
    b"\r.\r",
    b".\r\n",
    b"\0\0\0",
    b"\xff\xfe\xc3",
    b"Subject: x\r\n\r\nbody\r\n",
    b"MAIL FROM:<\"q@x\"@relay.example>\r\n",
    b"RCPT TO:<@a,@b:u@relay.example>\r\n",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sessions_never_crash_or_hang_the_server() {
    let panicked = Arc::new(AtomicBool::new(false));
    let flag = panicked.clone();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        flag.store(true, Ordering::SeqCst);
        default_hook(info);
    }));

    let mut config = Config::default();
    config.limits.command_timeout = Duration::from_millis(500);
    config.limits.data_timeout = Duration::from_millis(500);
    config.limits.max_message_size = 64 * 1024;
    let server = start(config).await;
    let mut rng = StdRng::seed_from_u64(0x0050_5745_524e);
    let mut inputs = Vec::new();
    for _ in 0..SESSIONS {
        let mut input = Vec::new();
        for _ in 0..rng.random_range(1..40) {
            match rng.random_range(0..10) {
                0 => input.extend((0..rng.random_range(1..64)).map(|_| rng.random::<u8>())),
                1 => input.extend(std::iter::repeat_n(b'A', rng.random_range(400..5000))),
                _ => input.extend_from_slice(FRAGMENTS[rng.random_range(0..FRAGMENTS.len())]),
            }
        }
        let cuts: Vec<usize> = (0..rng.random_range(1..8))
            .map(|_| rng.random_range(0..=input.len()))
            .collect();
        inputs.push((input, cuts));
    }
    for batch in inputs.chunks(25) {
        let mut tasks = Vec::new();
        for (input, cuts) in batch.iter().cloned() {
            let addr = server.mx;
            tasks.push(tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                let mut cuts = cuts;
                cuts.sort_unstable();
                let mut last = 0;
                for c in cuts.into_iter().chain(std::iter::once(input.len())) {
                    if s.write_all(&input[last..c]).await.is_err() {
                        break; // the server closed on us: allowed
                    }
                    last = c;
                }
                let _ = s.shutdown().await;
                let mut sink = Vec::new();
                // The server must finish the session by itself.
                tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut sink))
                    .await
                    .expect("session never ended")
                    .ok();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
    assert!(!panicked.load(Ordering::SeqCst), "a server task panicked");
    let mut c = connect(server.mx).await;
    assert!(c.reply().await.unwrap().starts_with("220 "));
    assert!(c.cmd("EHLO ok.test").await.starts_with("250-"));
    assert_eq!(
        c.cmd("QUIT").await,
        "221 2.0.0 mx.test closing connection\r\n"
    );
}
