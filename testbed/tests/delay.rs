//! The latency injector (`trainjob_testbed::delay`) on a real link, without Kubernetes: two
//! throwaway network namespaces joined by a veth pair (`eth0` in each, 10.250.0.1 and
//! 10.250.0.2), with UDP round trips measured from the first to an echo in the second. Needs
//! root: it creates network namespaces and iptables rules.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use trainjob_testbed::delay::{Delay, Direction};

const A: &str = "10.250.0.1";
const B: &str = "10.250.0.2";
const C: &str = "10.250.1.2";

/// Three network namespaces, deleted (and so their veth pairs) when dropped: A and B joined by
/// a veth pair (`eth0` in each), and C, a pod's namespace, behind A (C's `eth0` to A's `pod0`,
/// 10.250.1.2 and 10.250.1.1): A routes between them, as a node does for its pods.
struct Pair {
    names: [String; 3],
}

impl Pair {
    fn new() -> Pair {
        // SAFETY: no arguments.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the delay tests need root (network namespaces, iptables)"
        );
        static PAIRS: AtomicU32 = AtomicU32::new(0);
        let n = PAIRS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let pair = Pair {
            names: ["a", "b", "c"].map(|x| format!("tjdelay-{x}-{pid}-{n}")),
        };
        let [a, b, c] = &pair.names;
        for name in [a, b, c] {
            ip(&["netns", "add", name]);
            ip(&["-n", name, "link", "set", "lo", "up"]);
        }
        ip(&[
            "-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b,
        ]);
        ip(&[
            "-n", a, "link", "add", "pod0", "type", "veth", "peer", "name", "eth0", "netns", c,
        ]);
        for (name, device, address) in [
            (a, "eth0", A),
            (b, "eth0", B),
            (a, "pod0", "10.250.1.1"),
            (c, "eth0", C),
        ] {
            ip(&["-n", name, "addr", "add", &format!("{address}/30"), "dev", device]);
            ip(&["-n", name, "link", "set", device, "up"]);
        }
        ip(&["-n", c, "route", "add", "default", "via", "10.250.1.1"]);
        ip(&["-n", b, "route", "add", "10.250.1.0/30", "via", A]);
        pair.in_a(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        pair
    }

    fn c(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.names[2])
    }

    fn a(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.names[0])
    }

    fn b(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.names[1])
    }

    /// Runs `command` in namespace A; its stdout.
    fn in_a(&self, command: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.names[0]])
            .args(command)
            .output()
            .expect("running ip netns exec");
        assert!(
            out.status.success(),
            "{command:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for name in &self.names {
            // A namespace that was never made fails here; nothing else to do either way.
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What `make` returns, made in the network namespace `netns` (a socket stays in the namespace
/// it was made in, whichever thread uses it later).
fn made_in<T: Send + 'static>(netns: &Path, make: impl FnOnce() -> T + Send + 'static) -> T {
    let file = File::open(netns).expect("opening the network namespace");
    std::thread::spawn(move || {
        // SAFETY: a live descriptor; this thread only, which ends right after.
        assert_eq!(
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            0,
            "setns"
        );
        make()
    })
    .join()
    .expect("the thread in the namespace")
}

fn force_buffer(socket: &UdpSocket, option: libc::c_int, bytes: libc::c_int) {
    // SAFETY: the value and its size match.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw const bytes).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "setsockopt: {}", std::io::Error::last_os_error());
}

/// A UDP echo server in namespace B, stopped when dropped.
struct Echo {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    address: std::net::SocketAddr,
}

impl Echo {
    fn start(pair: &Pair) -> Echo {
        let socket = made_in(&pair.b(), || UdpSocket::bind((B, 0)).expect("binding the echo"));
        let address = socket.local_addr().expect("the echo's address");
        // Its wait is bounded, so that it sees `stop`.
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("set_read_timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buffer = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = socket.recv_from(&mut buffer) {
                        socket.send_to(&buffer[..n], from).expect("echoing");
                    }
                }
            })
        };
        Echo {
            stop,
            thread: Some(thread),
            address,
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A client in namespace A measuring round trips to the echo.
struct Client {
    socket: UdpSocket,
    sent: u64,
}

impl Client {
    fn new(pair: &Pair, echo: &Echo) -> Client {
        let to = echo.address;
        let socket = made_in(&pair.a(), move || {
            let socket = UdpSocket::bind((A, 0)).expect("binding the client");
            socket.connect(to).expect("connecting the client");
            socket
        });
        Client { socket, sent: 0 }
    }

    /// The round trip of one datagram (no loss on this link: one that does not come back within
    /// 5 s fails the test).
    fn rtt(&mut self) -> Duration {
        self.sent += 1;
        let started = Instant::now();
        self.socket.send(&self.sent.to_le_bytes()).expect("sending");
        let mut buffer = [0u8; 64];
        loop {
            let left = Duration::from_secs(5).saturating_sub(started.elapsed());
            assert!(
                !left.is_zero(),
                "datagram {} did not come back within 5 s",
                self.sent
            );
            self.socket
                .set_read_timeout(Some(left))
                .expect("set_read_timeout");
            // A time-out ends in the assertion above; an earlier datagram's late echo is skipped.
            if let Ok(8) = self.socket.recv(&mut buffer)
                && buffer[..8] == self.sent.to_le_bytes()
            {
                return started.elapsed();
            }
        }
    }

    /// `n` round trips, sorted.
    fn rtts(&mut self, n: usize) -> Vec<Duration> {
        let mut rtts: Vec<Duration> = (0..n).map(|_| self.rtt()).collect();
        rtts.sort();
        rtts
    }
}

fn ms(rtts: &[Duration]) -> String {
    let ms: Vec<String> = rtts
        .iter()
        .map(|d| format!("{:.1}", d.as_secs_f64() * 1e3))
        .collect();
    format!("[{}] ms", ms.join(", "))
}

/// The kernel's NFQUEUE queues in namespace A.
fn queues(pair: &Pair) -> String {
    pair.in_a(&["cat", "/proc/net/netfilter/nfnetlink_queue"])
}

#[test]
fn a_delay_holds_every_packet_until_it_is_dropped() {
    let pair = Pair::new();
    let echo = Echo::start(&pair);
    let mut client = Client::new(&pair, &echo);
    client.rtt(); // the neighbours find each other (ARP is not delayed, IPv4 only)
    let rules = pair.in_a(&["iptables", "-t", "mangle", "-S"]);

    let before = client.rtts(10);
    eprintln!("before: {}", ms(&before));
    let delay_of = Duration::from_millis(100);
    assert!(
        before[5] < delay_of / 2,
        "a round trip before the delay: {}",
        ms(&before)
    );

    let delay = Delay::start(&pair.a(), "eth0", delay_of, Duration::ZERO).expect("starting the delay");
    let during = client.rtts(10);
    eprintln!("during (100 ms on A's eth0): {}", ms(&during));
    assert!(
        during[0] >= delay_of,
        "every round trip takes the delay: {}",
        ms(&during)
    );
    // Generous: the machine is small and shared.
    assert!(
        during[5] < delay_of * 4,
        "round trips with the delay: {}",
        ms(&during)
    );
    assert!(
        delay.delayed() >= 10,
        "delayed {} packets, sent 10",
        delay.delayed()
    );
    assert_eq!(delay.dropped().expect("the queue's drops"), 0);
    let queue = delay.queue().to_string();
    assert!(
        queues(&pair)
            .lines()
            .any(|line| line.split_whitespace().next() == Some(queue.as_str())),
        "queue {queue} bound in A: {}",
        queues(&pair)
    );
    delay.stop().expect("stopping the delay");

    let after = client.rtts(10);
    eprintln!("after: {}", ms(&after));
    assert!(
        after[5] < delay_of / 2,
        "a round trip after the delay: {}",
        ms(&after)
    );
    assert_eq!(
        pair.in_a(&["iptables", "-t", "mangle", "-S"]),
        rules,
        "the delay's rules are gone"
    );
    assert_eq!(queues(&pair), "", "no queue is left bound");
}

#[test]
fn a_burst_goes_through_the_delay_whole_and_in_order() {
    const BURST: u32 = 5000;
    let pair = Pair::new();
    let receiver = made_in(&pair.b(), || {
        UdpSocket::bind((B, 0)).expect("binding the receiver")
    });
    // The burst arrives at once after the delay: room for all of it.
    force_buffer(&receiver, libc::SO_RCVBUFFORCE, 64 << 20);
    let to = receiver.local_addr().expect("the receiver's address");
    let sender = made_in(&pair.a(), move || {
        UdpSocket::bind((A, 0)).expect("binding the sender")
    });
    // A datagram held in the queue still counts against its sender's buffer: room for all, so
    // that the queue holds the whole burst at once (more than the kernel's default of 1024).
    force_buffer(&sender, libc::SO_SNDBUFFORCE, 64 << 20);
    sender.send_to(b"hello", to).expect("sending"); // ARP first
    let mut buffer = [0u8; 16];
    receiver
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set_read_timeout");
    receiver.recv(&mut buffer).expect("the first datagram");

    let delay = Delay::start(
        &pair.a(),
        "eth0",
        Duration::from_millis(50),
        Duration::from_millis(20),
    )
    .expect("starting the delay");
    let started = Instant::now();
    for n in 0..BURST {
        sender.send_to(&n.to_le_bytes(), to).expect("sending");
    }
    let sent_in = started.elapsed();
    let mut received = Vec::new();
    let deadline = started + Duration::from_secs(60);
    while received.len() < BURST as usize {
        assert!(
            Instant::now() < deadline,
            "{} of {BURST} datagrams arrived within 60 s",
            received.len()
        );
        // A dropped datagram never comes: checked every 200 ms.
        assert_eq!(
            delay.dropped().expect("the queue's drops"),
            0,
            "{} datagrams arrived",
            received.len()
        );
        receiver
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("set_read_timeout");
        if let Ok(4) = receiver.recv(&mut buffer) {
            received.push(u32::from_le_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]));
        }
    }
    let all_in = started.elapsed();
    eprintln!(
        "{BURST} datagrams sent in {sent_in:?}, all received after {all_in:?}; delayed {}, dropped {}",
        delay.delayed(),
        delay.dropped().expect("the queue's drops")
    );
    assert!(all_in >= Duration::from_millis(30), "the burst took the delay");
    assert_eq!(delay.dropped().expect("the queue's drops"), 0);
    assert!(delay.delayed() >= u64::from(BURST), "delayed {}", delay.delayed());
    assert_eq!(
        received.iter().collect::<BTreeSet<_>>().len(),
        BURST as usize,
        "no duplicates"
    );
    assert!(received.is_sorted(), "jitter does not reorder packets");
    delay.stop().expect("stopping the delay");
}

/// Sends `bytes` over TCP from a socket made in `from` to a listener in B; how long it took.
fn send_over_tcp(pair: &Pair, from: &Path, bytes: usize) -> Duration {
    let listener = made_in(&pair.b(), || TcpListener::bind((B, 0)).expect("listening"));
    let to = listener.local_addr().expect("the listener's address");
    let receiver = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accepting");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("set_read_timeout");
        let (mut buffer, mut total) = (vec![0u8; 1 << 16], 0);
        loop {
            match stream.read(&mut buffer).expect("receiving") {
                0 => return total,
                n => total += n,
            }
        }
    });
    let started = Instant::now();
    let mut stream = made_in(from, move || TcpStream::connect(to).expect("connecting"));
    stream
        .set_write_timeout(Some(Duration::from_secs(60)))
        .expect("set_write_timeout");
    stream.write_all(&vec![7u8; bytes]).expect("sending");
    drop(stream);
    assert_eq!(receiver.join().expect("the receiver"), bytes);
    started.elapsed()
}

#[test]
fn tcp_streams_go_through_the_delay() {
    const BYTES: usize = 16 << 20;
    let pair = Pair::new();
    let (delay_of, jitter) = (Duration::from_millis(20), Duration::from_millis(5));
    let cases = [
        ("from a pod behind A, delayed out of A", pair.c(), Direction::Out),
        ("from A itself, its ACKs delayed into A", pair.a(), Direction::In),
    ];
    for (what, from, direction) in cases {
        let delay =
            Delay::start_on(&pair.a(), "eth0", direction, delay_of, jitter).expect("starting the delay");
        let took = send_over_tcp(&pair, &from, BYTES);
        let (delayed, dropped) = (delay.delayed(), delay.dropped().expect("the queue's drops"));
        delay.stop().expect("stopping the delay");
        eprintln!(
            "{} MiB over TCP {what} by {delay_of:?}: {took:?}; delayed {delayed} packets \
             (segmentation-offloaded ones whole), dropped {dropped}",
            BYTES >> 20
        );
        assert!(took >= delay_of, "{what}: the handshake alone takes the delay");
        // Not TCP Small Queues' pace of two packets per delay (~1 min for this): see
        // `Direction::Out`. Generous: the machine is small and shared.
        assert!(took < Duration::from_secs(20), "{what}: {took:?}");
        assert!(delayed > 0, "{what}");
        assert_eq!(dropped, 0, "{what}");
    }
}

#[test]
fn a_delay_on_what_does_not_exist_fails_and_leaves_nothing() {
    let pair = Pair::new();
    let rules = pair.in_a(&["iptables", "-t", "mangle", "-S"]);
    let error = Delay::start(&pair.a(), "eth9", Duration::from_millis(10), Duration::ZERO)
        .err()
        .expect("no eth9 in A");
    assert!(error.to_string().contains("no interface eth9"), "{error}");
    let error = Delay::start(
        Path::new("/run/netns/tjdelay-none"),
        "eth0",
        Duration::from_millis(10),
        Duration::ZERO,
    )
    .err()
    .expect("no such namespace");
    assert!(error.to_string().contains("/run/netns/tjdelay-none"), "{error}");
    let error = Delay::start(
        &pair.a(),
        "eth0",
        Duration::from_millis(10),
        Duration::from_millis(11),
    )
    .err()
    .expect("more jitter than delay");
    assert!(error.to_string().contains("jitter"), "{error}");
    assert_eq!(pair.in_a(&["iptables", "-t", "mangle", "-S"]), rules);
    assert_eq!(queues(&pair), "");
}
