//! Sync over a slow, lossy link between real `dbox` processes.
//!
//! This kernel may lack `netem`, so the link is a relay on loopback that
//! does what a slow path does to UDP: it delays every datagram, sends at
//! most a given rate through a bounded queue (dropping what overflows it),
//! loses some at random (a fixed seed), and can go silent for a while.
//! The client talks to the relay's address; the server sees the relay.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::peers::{json, token, Dev};
use common::{write, TestResult};

/// What the relay does to each direction.
#[derive(Clone, Copy)]
struct Link {
    /// One-way delay.
    delay: Duration,
    /// Bytes per second through the bottleneck.
    rate: u64,
    /// Bytes waiting for the bottleneck at most; beyond that, datagrams
    /// drop (the delay line after it does not count).
    queue: u64,
    /// Datagrams lost at random, per thousand.
    loss_per_mille: u64,
}

/// Counts of one relay, both directions together.
#[derive(Default)]
struct Counts {
    passed: AtomicU64,
    lost: AtomicU64,
    overflowed: AtomicU64,
    /// Dropped during an outage.
    silenced: AtomicU64,
    bytes: AtomicU64,
}

/// A relay between a client (one at a time: replies go to whoever sent
/// last) and `server`; stops when dropped.
struct Relay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Until when everything is dropped (an outage), if set.
    silent_until: Arc<Mutex<Option<Instant>>>,
    counts: Arc<Counts>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn start(server: SocketAddr, link: Link) -> std::io::Result<Self> {
        let front = UdpSocket::bind("127.0.0.1:0")?;
        let back = UdpSocket::bind("127.0.0.1:0")?;
        back.connect(server)?;
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(50)))?;
        }
        let addr = front.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let silent_until = Arc::new(Mutex::new(None));
        let counts = Arc::new(Counts::default());
        // The client's address, learned from what it sends.
        let client = Arc::new(Mutex::new(None::<SocketAddr>));
        let mut threads = Vec::new();
        let (front, back) = (Arc::new(front), Arc::new(back));
        for to_server in [true, false] {
            let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
            let (from, to) =
                if to_server { (front.clone(), back.clone()) } else { (back.clone(), front.clone()) };
            let (stop2, silent2, counts2, client2) =
                (stop.clone(), silent_until.clone(), counts.clone(), client.clone());
            // Receives, decides each datagram's fate, and queues it with the
            // moment it leaves the bottleneck and the delay has passed.
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                let mut seed: u64 = if to_server { 0x9e37_79b9_7f4a_7c15 } else { 0xd1b5_4a32_d192_ed03 };
                // When the bottleneck is next free.
                let mut free_at = Instant::now();
                while !stop2.load(Ordering::Relaxed) {
                    let n = if to_server {
                        match from.recv_from(&mut buf) {
                            Ok((n, peer)) => {
                                // The latest sender: each command is a new client.
                                if let Ok(mut c) = client2.lock() {
                                    *c = Some(peer);
                                }
                                n
                            }
                            Err(_) => continue,
                        }
                    } else {
                        match from.recv(&mut buf) {
                            Ok(n) => n,
                            Err(_) => continue,
                        }
                    };
                    let now = Instant::now();
                    let silent = silent2.lock().ok().and_then(|s| *s).is_some_and(|t| now < t);
                    seed =
                        seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                    if silent {
                        counts2.silenced.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if (seed >> 33) % 1000 < link.loss_per_mille {
                        counts2.lost.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    // What still waits for the bottleneck, in bytes.
                    let wait = free_at.saturating_duration_since(now).as_nanos() as u64;
                    if wait * link.rate / 1_000_000_000 + n as u64 > link.queue {
                        counts2.overflowed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    free_at = free_at.max(now) + Duration::from_nanos(n as u64 * 1_000_000_000 / link.rate);
                    if tx.send((free_at + link.delay, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }));
            let (stop3, counts3, client3) = (stop.clone(), counts.clone(), client.clone());
            // Sends each datagram when its moment comes (they come in order).
            threads.push(std::thread::spawn(move || {
                while !stop3.load(Ordering::Relaxed) {
                    let Ok((at, d)) = rx.recv_timeout(Duration::from_millis(50)) else { continue };
                    let now = Instant::now();
                    if at > now {
                        std::thread::sleep(at - now);
                    }
                    let sent = if to_server {
                        to.send(&d)
                    } else {
                        match client3.lock().ok().and_then(|c| *c) {
                            Some(c) => to.send_to(&d, c),
                            None => continue,
                        }
                    };
                    if sent.is_ok() {
                        counts3.passed.fetch_add(1, Ordering::Relaxed);
                        counts3.bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
                    }
                }
            }));
        }
        Ok(Self { addr, stop, silent_until, counts, threads })
    }

    /// Drops everything for `d` from now.
    fn go_silent(&self, d: Duration) {
        if let Ok(mut s) = self.silent_until.lock() {
            *s = Some(Instant::now() + d);
        }
    }

    fn summary(&self) -> String {
        let c = &self.counts;
        format!(
            "{} datagrams passed ({} bytes), {} lost, {} dropped by the full queue, {} in the outage",
            c.passed.load(Ordering::Relaxed),
            c.bytes.load(Ordering::Relaxed),
            c.lost.load(Ordering::Relaxed),
            c.overflowed.load(Ordering::Relaxed),
            c.silenced.load(Ordering::Relaxed)
        )
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// 25 ms each way, 40 Mbit/s through a queue of 128 KiB, 1 % lost.
const SLOW: Link =
    Link { delay: Duration::from_millis(25), rate: 5_000_000, queue: 128 << 10, loss_per_mille: 10 };

/// A pull, a push and a pull with nothing new, over the slow link; then a
/// pull through an outage of 4 s in the middle of the transfer. Every
/// one completes, and the trees match.
#[test]
fn sync_over_a_slow_lossy_link_completes() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (a, b) = (Dev::new(tmp.path(), "a")?, Dev::new(tmp.path(), "b")?);
    let (ra, rb) = (tmp.path().join("a"), tmp.path().join("b"));
    a.ok(tmp.path(), &["init", "a"])?;
    write(&ra.join("readme.txt"), "hello\n")?;
    a.ok(&ra, &["commit", "-m", "first"])?;
    let server = a.serve(&ra)?;
    // The clone goes straight to the server; the rest through the relay.
    let tok = token(&a.ok(&ra, &["invite"])?);
    b.ok(tmp.path(), &["clone", &tok, "b"])?;
    let relay = Relay::start(server.addr.parse()?, SLOW)?;
    let via = format!("origin@{}", relay.addr);

    // 6 MB in two large files and 300 small ones.
    for i in 0..2u64 {
        write(&ra.join(format!("big/b{i}.bin")), common::bytes(40 + i, 3 << 20))?;
    }
    for i in 0..300 {
        write(&ra.join(format!("notes/n{:03}/{i}.txt", i / 30)), format!("note {i}\n").repeat(20))?;
    }
    a.ok(&ra, &["commit", "-m", "more"])?;
    let t = Instant::now();
    let j = json(&b.ok(&rb, &["pull", &via, "--json"])?)?;
    let pull_s = t.elapsed().as_secs_f64();
    assert_eq!(j["pulled"]["versions"], 1, "{j}");
    assert_eq!(common::snapshot(&ra)?, common::snapshot(&rb)?);
    assert!(
        relay.counts.bytes.load(Ordering::Relaxed) > 6_000_000,
        "not through the relay: {}",
        relay.summary()
    );

    // An edit on b goes back the same way.
    write(&rb.join("notes/n000/0.txt"), "changed on b\n")?;
    b.ok(&rb, &["commit", "-m", "from b"])?;
    let t = Instant::now();
    b.ok(&rb, &["push", &via])?;
    let push_s = t.elapsed().as_secs_f64();
    common::wait_for("the push did not reach a's working tree", Duration::from_secs(20), || {
        Ok(std::fs::read_to_string(ra.join("notes/n000/0.txt"))? == "changed on b\n")
    })?;

    // Nothing new: a handshake and a few round trips.
    let t = Instant::now();
    let j = json(&b.ok(&rb, &["pull", &via, "--json"])?)?;
    let idle_s = t.elapsed().as_secs_f64();
    assert_eq!(j["pulled"]["versions"], 0, "{j}");

    // An outage of 4 s while 8 MB are on their way: below the idle and
    // request timeouts, so the same transfer goes on.
    write(&ra.join("big/b9.bin"), common::bytes(49, 8 << 20))?;
    a.ok(&ra, &["commit", "-m", "large"])?;
    let mut pull = b.command(&rb, &["pull", &via, "--json"]).stdout(std::process::Stdio::piped()).spawn()?;
    std::thread::sleep(Duration::from_millis(600));
    relay.go_silent(Duration::from_secs(4));
    let t = Instant::now();
    let out = ended(&mut pull, "the pull through the outage", &relay)?;
    assert!(out.success(), "the pull through the outage failed: {}", relay.summary());
    // The outage fell in the transfer: datagrams were dropped in it, and the
    // pull ended after it.
    assert!(relay.counts.silenced.load(Ordering::Relaxed) > 0, "{}", relay.summary());
    assert!(t.elapsed() > Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(common::snapshot(&ra)?, common::snapshot(&rb)?);
    b.ok(&rb, &["fsck", "--read-data"])?;
    eprintln!(
        "slow link: pull of 6 MB {pull_s:.2} s, push of one edit {push_s:.2} s, pull of nothing {idle_s:.2} s; {}",
        relay.summary()
    );
    drop(relay);
    drop(server);
    Ok(())
}

/// A clone over the slow link, with an outage of 3 s in the middle: its
/// checkout, which writes files beside the transfer from what arrives,
/// waits through the loss and the silence, and the clone completes with
/// the same tree.
#[test]
fn a_clone_over_a_slow_lossy_link_completes() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (a, b) = (Dev::new(tmp.path(), "a")?, Dev::new(tmp.path(), "b")?);
    let (ra, rb) = (tmp.path().join("a"), tmp.path().join("b"));
    a.ok(tmp.path(), &["init", "a"])?;
    // 5 MB: two large files, and 400 small ones in 20 folders.
    for i in 0..2u64 {
        write(&ra.join(format!("big/b{i}.bin")), common::bytes(60 + i, 2 << 20))?;
    }
    for i in 0..400u64 {
        write(
            &ra.join(format!("small/s{:02}/{i}.bin", i % 20)),
            common::bytes(i, 1000 + (i as usize * 37) % 3000),
        )?;
    }
    a.ok(&ra, &["commit", "-m", "first"])?;
    let server = a.serve(&ra)?;
    let relay = Relay::start(server.addr.parse()?, SLOW)?;
    // The invitation names the relay rather than the server.
    let mut tok = dbox::net::invite::Token::decode(&token(&a.ok(&ra, &["invite"])?))?;
    tok.addrs = vec![relay.addr.to_string()];
    let mut clone = b.command(tmp.path(), &["clone", &tok.encode(), "b"]).spawn()?;
    std::thread::sleep(Duration::from_millis(800));
    relay.go_silent(Duration::from_secs(3));
    let t = Instant::now();
    let out = ended(&mut clone, "the clone through the outage", &relay)?;
    assert!(out.success(), "the clone through the outage failed: {}", relay.summary());
    assert!(relay.counts.silenced.load(Ordering::Relaxed) > 0, "{}", relay.summary());
    assert!(relay.counts.bytes.load(Ordering::Relaxed) > 4_500_000, "{}", relay.summary());
    assert_eq!(common::snapshot(&ra)?, common::snapshot(&rb)?);
    b.ok(&rb, &["fsck", "--read-data"])?;
    eprintln!(
        "slow link: clone of 5 MB through a 3 s outage {:.2} s; {}",
        t.elapsed().as_secs_f64() + 0.8,
        relay.summary()
    );
    drop(relay);
    drop(server);
    Ok(())
}

/// Waits (90 s at most) for `child`, `what` through `relay`; kills it
/// and fails past that.
fn ended(
    child: &mut std::process::Child,
    what: &str,
    relay: &Relay,
) -> Result<std::process::ExitStatus, Box<dyn std::error::Error>> {
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if t.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            return Err(format!("{what} did not end: {}", relay.summary()).into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The relay itself: what goes in comes out, later, at most at the rate.
#[test]
fn the_relay_delays_limits_and_loses() -> TestResult {
    let server = UdpSocket::bind("127.0.0.1:0")?;
    server.set_read_timeout(Some(Duration::from_millis(500)))?;
    let link =
        Link { delay: Duration::from_millis(30), rate: 1_000_000, queue: 1 << 20, loss_per_mille: 100 };
    let relay = Relay::start(server.local_addr()?, link)?;
    let client = UdpSocket::bind("127.0.0.1:0")?;
    let t = Instant::now();
    for i in 0..200u32 {
        let mut d = vec![0u8; 1000];
        d[..4].copy_from_slice(&i.to_be_bytes());
        client.send_to(&d, relay.addr)?;
        // Paced, so that the relay's socket buffer is not what drops them.
        if i % 10 == 9 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 2000];
    let mut first = None;
    let mut back_addr = None;
    while let Ok((n, from)) = server.recv_from(&mut buf) {
        first.get_or_insert(t.elapsed());
        back_addr = Some(from);
        assert_eq!(n, 1000);
        got.push(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
    }
    let first = first.ok_or("nothing came through")?;
    assert!(first >= Duration::from_millis(30), "delayed: {first:?}");
    // About a tenth lost (the seed fixes which), nothing else dropped by
    // the relay; what came, in order. (A loaded machine may drop more in
    // the receiving socket: the relay's counts are what is checked.)
    let c = &relay.counts;
    let (passed, lost) = (c.passed.load(Ordering::Relaxed), c.lost.load(Ordering::Relaxed));
    assert!((10..=40).contains(&lost), "{}", relay.summary());
    assert_eq!(passed + lost, 200, "{}", relay.summary());
    assert!(!got.is_empty() && got.len() as u64 <= passed, "{} came: {}", got.len(), relay.summary());
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order");
    // 1 MB/s: the ~180 kB took at least 0.15 s to come through.
    assert!(t.elapsed() >= Duration::from_millis(150), "{:?}", t.elapsed());
    // Replies reach the client.
    server.send_to(b"back", back_addr.ok_or("no sender")?)?;
    client.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut back = [0u8; 16];
    let (n, from) = client.recv_from(&mut back)?;
    assert_eq!((&back[..n], from), (&b"back"[..], relay.addr));
    Ok(())
}
