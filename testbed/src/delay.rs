//! Latency on one network namespace's link, for tests that show a job survives a slow network.
//!
//! The kernels the bed runs on have no `sch_netem`, so the delay is made in user space with
//! NFQUEUE: an iptables rule in the namespace hands every IPv4 packet leaving (or arriving)
//! through the interface to a queue, and a thread of ours, inside that namespace, holds each
//! packet until its time has come and then lets it go (ACCEPT). The queue is spoken to over
//! netlink directly (see [`Queue`]): the one pure-Rust NFQUEUE crate released (`nfq` 0.2.5) gives
//! no access to its socket, so it can neither wait with a timeout nor take a larger receive
//! buffer.
//!
//! What [`Delay::start`] puts in the namespace, all removed when the [`Delay`] is dropped: a chain
//! `TJDELAY-<queue>` in the `mangle` table holding `-j NFQUEUE --queue-num <queue>
//! --queue-bypass`, and a jump to it appended to `POSTROUTING -o <interface>` (to `PREROUTING -i
//! <interface>` for [`Direction::In`]). With `--queue-bypass`, packets pass undelayed whenever no
//! thread listens on the queue, so a test killed outright (SIGKILL, when no `Drop` runs) leaves a
//! harmless rule behind, which the next `Delay` given the same queue number removes.
//!
//! Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN: `setns`, iptables), `nsenter` and `iptables`.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::BedError;

/// The queue's length: packets held at once (the kernel's default is 1024). A packet past it is
/// dropped, and counted ([`Delay::dropped`]); at 100 ms this is 650,000 packets a second.
const QUEUE_MAX_LEN: u32 = 65_536;

/// The netlink socket's receive buffer: room for the queue's messages the thread has not read
/// yet, e.g. while it waits for a CPU on a busy machine (each costs ~1 KiB of it).
const RECEIVE_BUFFER: libc::c_int = 32 << 20;

/// How many queue numbers [`Delay::start`] tries before it gives up; one is taken when another
/// `Delay` (of any process) uses it in the same namespace.
const QUEUE_TRIES: u16 = 64;

/// How long start-up may take: the thread's set-up, each netlink answer.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Which packets of an interface a [`Delay`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Those leaving through it, forwarded ones too (`POSTROUTING -o`).
    ///
    /// A TCP sender in the namespace itself (not one forwarded from a pod's namespace) then sends
    /// no more than about two packets per delay: the kernel's TCP Small Queues wait for the
    /// packets held to be sent before it queues more (netem lets go of their sockets; a queue
    /// cannot). Delay such a sender's traffic with [`Direction::In`] at the other end.
    Out,
    /// Those arriving through it (`PREROUTING -i`): they belong to no socket by then.
    In,
}

/// Delays every IPv4 packet leaving (or arriving at) a network namespace through one interface,
/// until dropped.
///
/// A packet leaves no earlier than the one queued before it, so jitter does not reorder packets
/// (unlike netem's). One `Delay` per namespace, interface and direction: a second one would not
/// add to the first (a packet let go by the first skips the rest of that table's chain).
pub struct Delay {
    netns: PathBuf,
    interface: String,
    direction: Direction,
    queue: u16,
    chain: String,
    /// The worker thread's id, for its namespace's `/proc/<tid>/net`.
    tid: libc::pid_t,
    delayed: Arc<AtomicU64>,
    /// Written to stop the worker (an eventfd).
    stop: Arc<OwnedFd>,
    worker: Option<JoinHandle<Result<(), BedError>>>,
}

impl Delay {
    /// Delays every IPv4 packet leaving `netns` (a network namespace file, e.g.
    /// `/run/netns/tjnode-2`) through `interface` by `delay`, give or take up to `jitter` (uniformly
    /// spread; no more than `delay`). See [`Direction::Out`] for what this does to TCP senders in
    /// the namespace itself.
    pub fn start(
        netns: &Path,
        interface: &str,
        delay: Duration,
        jitter: Duration,
    ) -> Result<Delay, BedError> {
        Delay::start_on(netns, interface, Direction::Out, delay, jitter)
    }

    /// Delays every IPv4 packet leaving or arriving at `netns` through `interface`, as
    /// `direction` says, like [`Delay::start`].
    pub fn start_on(
        netns: &Path,
        interface: &str,
        direction: Direction,
        delay: Duration,
        jitter: Duration,
    ) -> Result<Delay, BedError> {
        if jitter > delay {
            return Err(BedError::Command(format!(
                "a delay of {delay:?} with a jitter of {jitter:?}: the jitter must not exceed the delay"
            )));
        }
        if interface.is_empty()
            || interface.len() >= libc::IFNAMSIZ
            || interface.contains(|c: char| c.is_whitespace() || c == '/')
        {
            return Err(BedError::Command(format!(
                "{interface:?} is not an interface name"
            )));
        }
        let what = format!("delaying {interface} in {}", netns.display());
        let file = File::open(netns).map_err(|source| BedError::Io {
            what: format!("opening the network namespace {}", netns.display()),
            source,
        })?;
        // SAFETY: eventfd takes no pointers; the descriptor is checked and then owned.
        let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if stop < 0 {
            return Err(BedError::Io {
                what: format!("{what}: creating an eventfd"),
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: a fresh descriptor, owned by nothing else.
        let stop = Arc::new(unsafe { OwnedFd::from_raw_fd(stop) });
        let delayed = Arc::new(AtomicU64::new(0));
        let (ready, started) = mpsc::channel();
        let worker = {
            let (stop, delayed, interface) = (stop.clone(), delayed.clone(), interface.to_owned());
            let netns = netns.display().to_string();
            std::thread::Builder::new()
                .name(format!("delay-{interface}"))
                .spawn(move || {
                    let worker = Worker {
                        place: format!("delaying {interface} in {netns}"),
                        interface,
                        delay,
                        jitter,
                    };
                    worker.run(file, &delayed, stop.as_raw_fd(), ready)
                })
                .map_err(|source| BedError::Io {
                    what: format!("{what}: starting its thread"),
                    source,
                })?
        };
        let (queue, tid) = match started.recv_timeout(START_TIMEOUT) {
            Ok(Ok(started)) => started,
            Ok(Err(e)) => {
                let _ = worker.join();
                return Err(e);
            }
            // The thread is stuck (it ends by itself once it finds `started` gone), or panicked.
            Err(_) => {
                wake(&stop);
                return Err(BedError::Command(format!(
                    "{what}: its thread did not start within {START_TIMEOUT:?}"
                )));
            }
        };
        let mut delay = Delay {
            netns: netns.to_owned(),
            interface: interface.to_owned(),
            direction,
            queue,
            chain: format!("TJDELAY-{queue}"),
            tid,
            delayed,
            stop,
            worker: Some(worker),
        };
        // On an error, dropping `delay` removes what was added and stops the thread.
        delay.install()?;
        Ok(delay)
    }

    /// Packets delayed so far (let go after their delay).
    pub fn delayed(&self) -> u64 {
        self.delayed.load(Ordering::Relaxed)
    }

    /// Packets the kernel dropped so far instead of queueing them: the queue was full, or its
    /// messages overflowed the thread's socket.
    pub fn dropped(&self) -> Result<u64, BedError> {
        // The worker's own view of /proc/net: its network namespace's.
        let path = format!("/proc/{}/net/netfilter/nfnetlink_queue", self.tid);
        let text = std::fs::read_to_string(&path).map_err(|source| BedError::Io {
            what: format!("reading {path} (the delay's thread is gone?)"),
            source,
        })?;
        // `queue peer_portid queue_total copy_mode copy_range queue_dropped user_dropped id 1`
        text.lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|fields| fields.first() == Some(&self.queue.to_string().as_str()))
            .and_then(|fields| {
                Some(fields.get(5)?.parse::<u64>().ok()? + fields.get(6)?.parse::<u64>().ok()?)
            })
            .ok_or_else(|| BedError::Command(format!("queue {} not in {path}:\n{text}", self.queue)))
    }

    /// The NFQUEUE queue number this delay uses in its namespace.
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// Removes the rules and stops the thread, letting every held packet go at once; returns
    /// what went wrong on the way, or in the thread since it started.
    pub fn stop(mut self) -> Result<(), BedError> {
        self.shutdown()
    }

    fn install(&mut self) -> Result<(), BedError> {
        let queue = self.queue.to_string();
        if let Err(e) = self.iptables(&["-N", &self.chain]) {
            // A killed test's chain, as this queue number was free: remove it and its jumps.
            self.uninstall().map_err(|_| e)?;
            self.iptables(&["-N", &self.chain])?;
        }
        self.iptables(&[
            "-A",
            &self.chain,
            "-j",
            "NFQUEUE",
            "--queue-num",
            &queue,
            "--queue-bypass",
        ])?;
        let (hook, interface) = match self.direction {
            Direction::Out => ("POSTROUTING", "-o"),
            Direction::In => ("PREROUTING", "-i"),
        };
        self.iptables(&["-A", hook, interface, &self.interface, "-j", &self.chain])?;
        Ok(())
    }

    /// Removes every jump to the chain, then the chain.
    fn uninstall(&self) -> Result<(), BedError> {
        let rules = self.iptables(&["-S", "PREROUTING"])? + &self.iptables(&["-S", "POSTROUTING"])?;
        let mut first_error = None;
        for rule in rules.lines() {
            let words: Vec<&str> = rule.split_whitespace().collect();
            if words.first() == Some(&"-A") && words.windows(2).any(|w| w == ["-j", self.chain.as_str()]) {
                let mut delete = vec!["-D"];
                delete.extend(&words[1..]);
                if let Err(e) = self.iptables(&delete) {
                    first_error.get_or_insert(e);
                }
            }
        }
        let exists = self.iptables(&["-S", &self.chain]).is_ok();
        if exists
            && let Err(e) = self
                .iptables(&["-F", &self.chain])
                .and_then(|_| self.iptables(&["-X", &self.chain]))
        {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    }

    fn iptables(&self, args: &[&str]) -> Result<String, BedError> {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.netns.display()))
            .args(["iptables", "-w", "-t", "mangle"])
            .args(args);
        crate::process::run(
            &mut command,
            "",
            &format!(
                "iptables -t mangle {} in {}",
                args.join(" "),
                self.netns.display()
            ),
        )
    }

    fn shutdown(&mut self) -> Result<(), BedError> {
        let Some(worker) = self.worker.take() else {
            return Ok(());
        };
        // Rules first, so that no packet is queued once the thread has gone (it would be dropped).
        let removed = self.uninstall();
        wake(&self.stop);
        let ran = match worker.join() {
            Ok(ran) => ran,
            Err(_) => Err(BedError::Command(format!(
                "the thread delaying {} in {} panicked",
                self.interface,
                self.netns.display()
            ))),
        };
        removed.and(ran)
    }
}

impl Drop for Delay {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!(
                "removing the delay on {} in {}: {e}",
                self.interface,
                self.netns.display()
            );
        }
    }
}

fn wake(stop: &OwnedFd) {
    let one = 1u64;
    // SAFETY: writes 8 bytes from a live u64. It cannot fail but at 2^64-1 wake-ups.
    unsafe { libc::write(stop.as_raw_fd(), (&raw const one).cast(), 8) };
}

/// The thread that holds the packets.
struct Worker {
    /// What it does, for its errors.
    place: String,
    interface: String,
    delay: Duration,
    jitter: Duration,
}

impl Worker {
    /// Joins the namespace, takes a queue, tells `ready` its number and the thread's id, and
    /// delays packets until `stop` is readable.
    fn run(
        self,
        netns: File,
        delayed: &AtomicU64,
        stop: libc::c_int,
        ready: mpsc::Sender<Result<(u16, libc::pid_t), BedError>>,
    ) -> Result<(), BedError> {
        let mut queue = match self.open(netns) {
            Ok((queue, tid)) => {
                if ready.send(Ok((queue.number, tid))).is_err() {
                    return Ok(()); // `start` gave up waiting
                }
                queue
            }
            Err(e) => {
                let _ = ready.send(Err(self.context(e)));
                return Ok(());
            }
        };
        let mut line = Line::new(self.delay, self.jitter);
        let served = queue.serve(&mut line, delayed, stop);
        // Whatever happened, the held packets go now (a queue that closes drops them).
        let released = queue.release(&mut line, None, delayed);
        served.and(released).map_err(|e| self.context(e))
    }

    fn open(&self, netns: File) -> Result<(Queue, libc::pid_t), BedError> {
        // SAFETY: a live descriptor. setns changes the namespace of this thread only, which
        // nothing else runs on.
        if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(os_error("joining the network namespace (setns)"));
        }
        drop(netns);
        let name = std::ffi::CString::new(self.interface.as_str())
            .map_err(|_| BedError::Command(format!("{:?} is not an interface name", self.interface)))?;
        // SAFETY: a NUL-terminated string.
        if unsafe { libc::if_nametoindex(name.as_ptr()) } == 0 {
            return Err(BedError::Command(format!(
                "no interface {} there",
                self.interface
            )));
        }
        let mut queue = Queue::open()?;
        queue.bind_free()?;
        // SAFETY: no arguments.
        Ok((queue, unsafe { libc::gettid() }))
    }

    /// `error`, saying which delay it is of.
    fn context(&self, error: BedError) -> BedError {
        match error {
            BedError::Io { what, source } => BedError::Io {
                what: format!("{}: {what}", self.place),
                source,
            },
            other => BedError::Command(format!("{}: {other}", self.place)),
        }
    }
}

fn os_error(what: &str) -> BedError {
    BedError::Io {
        what: what.to_owned(),
        source: std::io::Error::last_os_error(),
    }
}

/// The packets held: ids with their release times, in queue order.
struct Line {
    delay: Duration,
    jitter: Duration,
    held: VecDeque<(u32, Instant)>,
    /// xorshift64 state, for the jitter.
    random: u64,
}

impl Line {
    fn new(delay: Duration, jitter: Duration) -> Line {
        let random = (u64::from(crate::rand_u32()) << 32 | u64::from(crate::rand_u32())) | 1;
        Line {
            delay,
            jitter,
            held: VecDeque::new(),
            random,
        }
    }

    fn hold(&mut self, id: u32, now: Instant) {
        let mut due = now + self.delay;
        if !self.jitter.is_zero() {
            self.random ^= self.random << 13;
            self.random ^= self.random >> 7;
            self.random ^= self.random << 17;
            let span = 2 * self.jitter.as_nanos() as u64;
            due = due - self.jitter + Duration::from_nanos(self.random % (span + 1));
        }
        // Never before the packet ahead: no reordering.
        if let Some(&(_, last)) = self.held.back() {
            due = due.max(last);
        }
        self.held.push_back((id, due));
    }
}

// nfnetlink_queue, from <linux/netfilter/nfnetlink_queue.h> and <linux/netfilter/nfnetlink.h>.
const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;
const NFQNL_CFG_CMD_BIND: u8 = 1;
/// Only the packet's metadata (its id) comes to us, not its bytes.
const NFQNL_COPY_META: u8 = 1;
/// Hand over segmentation-offloaded packets whole, instead of segmenting them first.
const NFQA_CFG_F_GSO: u32 = 4;
const NF_ACCEPT: u32 = 1;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

/// One verdict message: header, nfgenmsg, and the verdict attribute (4 + 8 bytes).
const VERDICT_LEN: usize = NLMSG_HDRLEN + NFGENMSG_LEN + 12;

/// A netlink socket bound to one queue number in the thread's network namespace.
struct Queue {
    fd: OwnedFd,
    number: u16,
    seq: u32,
    /// Packets that came while waiting for an answer to a request.
    early: Vec<u32>,
    buffer: Vec<u8>,
}

/// What the kernel sent.
enum Message {
    Packet(u32),
    /// An answer to request `seq`: 0 is success, else an errno.
    Answer {
        seq: u32,
        errno: i32,
    },
}

impl Queue {
    fn open() -> Result<Queue, BedError> {
        // SAFETY: plain system calls; the descriptor is checked, then owned.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(os_error("opening a netfilter netlink socket"));
        }
        // SAFETY: a fresh descriptor, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a zeroed sockaddr_nl is valid: the kernel picks our port id.
        let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: the address and its size match.
        let bound = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const address).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if bound != 0 {
            return Err(os_error("binding a netfilter netlink socket"));
        }
        let queue = Queue {
            fd,
            number: 0,
            seq: 0,
            early: Vec::new(),
            buffer: vec![0; 1 << 16],
        };
        // Larger than the limit of net.core.rmem_max (root may), else as large as that allows.
        if queue
            .set_option(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RECEIVE_BUFFER)
            .is_err()
        {
            queue
                .set_option(libc::SOL_SOCKET, libc::SO_RCVBUF, RECEIVE_BUFFER)
                .map_err(|source| BedError::Io {
                    what: "setting the netlink socket's receive buffer".into(),
                    source,
                })?;
        }
        // Overflows are counted by the kernel (`Delay::dropped`); no ENOBUFS for each.
        queue
            .set_option(libc::SOL_NETLINK, libc::NETLINK_NO_ENOBUFS, 1)
            .map_err(|source| BedError::Io {
                what: "setting NETLINK_NO_ENOBUFS".into(),
                source,
            })?;
        Ok(queue)
    }

    fn set_option(&self, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> std::io::Result<()> {
        // SAFETY: the value and its size match.
        let set = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&raw const value).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if set != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Binds the first free queue number of a run that depends on the process and on how many
    /// delays it started, then sets the queue up.
    fn bind_free(&mut self) -> Result<(), BedError> {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let first = std::process::id()
            .wrapping_mul(QUEUE_TRIES.into())
            .wrapping_add(STARTED.fetch_add(1, Ordering::Relaxed));
        let mut last = None;
        for n in 0..QUEUE_TRIES {
            // In the upper half of the numbers, away from those other tools pick (0, 1, ...).
            let number = 0x8000 | (first.wrapping_add(n.into()) % 0x8000) as u16;
            let mut command = [0u8; 4]; // struct nfqnl_msg_config_cmd: command, pad, pf (unused)
            command[0] = NFQNL_CFG_CMD_BIND;
            match self.request(number, &[(NFQA_CFG_CMD, &command)]) {
                Ok(()) => {
                    self.number = number;
                    return self.configure();
                }
                // Taken: by another socket (EPERM) or, oddly, by this one (EBUSY).
                Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EBUSY)) => last = Some(e),
                Err(source) => {
                    return Err(BedError::Io {
                        what: format!("binding NFQUEUE queue {number}"),
                        source,
                    });
                }
            }
        }
        Err(BedError::Command(format!(
            "binding an NFQUEUE queue: {QUEUE_TRIES} numbers tried from {}, none free ({}; \
             EPERM also means no CAP_NET_ADMIN: run as root)",
            0x8000 | (first % 0x8000),
            last.map_or_else(String::new, |e| e.to_string()),
        )))
    }

    fn configure(&mut self) -> Result<(), BedError> {
        let number = self.number;
        let io = |what: &'static str| {
            move |source| BedError::Io {
                what: format!("setting up NFQUEUE queue {number}: {what}"),
                source,
            }
        };
        // struct nfqnl_msg_config_params (packed): be32 copy_range, u8 copy_mode.
        let mut params = [0u8; 5];
        params[4] = NFQNL_COPY_META;
        self.request(number, &[(NFQA_CFG_PARAMS, &params)])
            .map_err(io("copy metadata only"))?;
        self.request(number, &[(NFQA_CFG_QUEUE_MAXLEN, &QUEUE_MAX_LEN.to_be_bytes())])
            .map_err(io("its length"))?;
        self.request(
            number,
            &[
                (NFQA_CFG_FLAGS, &NFQA_CFG_F_GSO.to_be_bytes()),
                (NFQA_CFG_MASK, &NFQA_CFG_F_GSO.to_be_bytes()),
            ],
        )
        .map_err(io("whole GSO packets"))
    }

    /// Sends a configuration request for queue `number` and waits for its answer.
    fn request(&mut self, number: u16, attributes: &[(u16, &[u8])]) -> std::io::Result<()> {
        self.seq += 1;
        let seq = self.seq;
        let mut message = Vec::with_capacity(64);
        put_message(
            &mut message,
            NFQNL_MSG_CONFIG,
            (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
            seq,
            number,
            attributes,
        );
        self.send(&message)?;
        let deadline = Instant::now() + START_TIMEOUT;
        let mut answer = None;
        while answer.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.wait(None, Some(left))?.0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no answer from the kernel",
                ));
            }
            let mut early = std::mem::take(&mut self.early);
            self.receive(|message| match message {
                Message::Packet(id) => early.push(id),
                Message::Answer { seq: s, errno } if s == seq => answer = Some(errno),
                Message::Answer { .. } => {}
            })?;
            self.early = early;
        }
        match answer {
            Some(0) | None => Ok(()),
            Some(errno) => Err(std::io::Error::from_raw_os_error(errno)),
        }
    }

    fn send(&self, bytes: &[u8]) -> std::io::Result<()> {
        loop {
            // SAFETY: sends from a live buffer of that length; netlink's default peer: the kernel.
            let sent = unsafe { libc::send(self.fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
            if sent >= 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Waits until the socket or `stop` (if any) is readable, at most `timeout` (`None`: no
    /// limit); tells which are: (the socket, `stop`).
    fn wait(&self, stop: Option<libc::c_int>, timeout: Option<Duration>) -> std::io::Result<(bool, bool)> {
        let mut fds = [
            libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let timeout = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: t.subsec_nanos().into(),
        });
        let timeout_ptr = timeout
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: two live pollfds, a live timespec or null, no signal mask.
        let ready = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, timeout_ptr, std::ptr::null()) };
        if ready < 0 {
            let e = std::io::Error::last_os_error();
            return if e.kind() == std::io::ErrorKind::Interrupted {
                Ok((false, false))
            } else {
                Err(e)
            };
        }
        Ok((fds[0].revents != 0, fds[1].revents != 0))
    }

    /// Reads every message waiting on the socket, without blocking.
    fn receive(&mut self, mut each: impl FnMut(Message)) -> std::io::Result<()> {
        loop {
            // SAFETY: receives into a live buffer of that length.
            let got = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buffer.as_mut_ptr().cast(),
                    self.buffer.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if got < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(()),
                    Some(libc::EINTR | libc::ENOBUFS) => continue,
                    _ => return Err(e),
                }
            }
            parse(&self.buffer[..got as usize], &mut each);
        }
    }

    /// Holds the queue's packets in `line` and lets them go when due, until `stop` is readable.
    fn serve(&mut self, line: &mut Line, delayed: &AtomicU64, stop: libc::c_int) -> Result<(), BedError> {
        let number = self.number;
        let io = |what: &'static str| {
            move |source| BedError::Io {
                what: format!("NFQUEUE queue {number}: {what}"),
                source,
            }
        };
        let now = Instant::now();
        for id in std::mem::take(&mut self.early) {
            line.hold(id, now);
        }
        let mut failed = 0u64;
        loop {
            let now = Instant::now();
            self.release(line, Some(now), delayed)?;
            let timeout = line
                .held
                .front()
                .map(|&(_, due)| due.saturating_duration_since(now));
            let (readable, stopped) = self
                .wait(Some(stop), timeout)
                .map_err(io("waiting for packets"))?;
            // When stopped: those queued before the rules went, too.
            if readable || stopped {
                self.take(line, &mut failed).map_err(io("receiving packets"))?;
            }
            if stopped {
                return Ok(());
            }
        }
    }

    fn take(&mut self, line: &mut Line, failed: &mut u64) -> std::io::Result<()> {
        let now = Instant::now();
        let number = self.number;
        self.receive(|message| match message {
            Message::Packet(id) => line.hold(id, now),
            // A verdict refused (they are sent without asking for answers: only errors come).
            Message::Answer { errno, .. } if errno != 0 => {
                *failed += 1;
                if failed.is_power_of_two() {
                    eprintln!(
                        "delay: NFQUEUE queue {number}: {failed} verdict(s) refused, the last: {}",
                        std::io::Error::from_raw_os_error(errno)
                    );
                }
            }
            Message::Answer { .. } => {}
        })
    }

    /// Accepts the held packets due by `now` (all with `None`), in batches of verdicts.
    fn release(
        &mut self,
        line: &mut Line,
        now: Option<Instant>,
        delayed: &AtomicU64,
    ) -> Result<(), BedError> {
        let mut batch = Vec::with_capacity(VERDICT_LEN * 1024);
        let mut count = 0;
        while let Some(&(id, due)) = line.held.front() {
            if now.is_some_and(|now| due > now) {
                break;
            }
            line.held.pop_front();
            // struct nfqnl_msg_verdict_hdr: be32 verdict, be32 id.
            let mut verdict = [0u8; 8];
            verdict[..4].copy_from_slice(&NF_ACCEPT.to_be_bytes());
            verdict[4..].copy_from_slice(&id.to_be_bytes());
            put_message(
                &mut batch,
                NFQNL_MSG_VERDICT,
                libc::NLM_F_REQUEST as u16,
                0,
                self.number,
                &[(NFQA_VERDICT_HDR, &verdict)],
            );
            count += 1;
            if batch.len() + VERDICT_LEN > 1 << 16 || line.held.is_empty() {
                self.flush(&mut batch, &mut count, delayed)?;
            }
        }
        self.flush(&mut batch, &mut count, delayed)
    }

    fn flush(&self, batch: &mut Vec<u8>, count: &mut u64, delayed: &AtomicU64) -> Result<(), BedError> {
        if batch.is_empty() {
            return Ok(());
        }
        // Counted first: the packets may reach their receiver before `send` returns.
        delayed.fetch_add(*count, Ordering::Relaxed);
        self.send(batch).map_err(|source| BedError::Io {
            what: format!("NFQUEUE queue {}: letting {count} packets go", self.number),
            source,
        })?;
        batch.clear();
        *count = 0;
        Ok(())
    }
}

/// Appends one nfnetlink_queue message to `out`.
fn put_message(out: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, queue: u16, attributes: &[(u16, &[u8])]) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]); // nlmsg_len, below
    out.extend_from_slice(&(NFNL_SUBSYS_QUEUE << 8 | kind).to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel's
    // struct nfgenmsg: family (AF_UNSPEC), version (NFNETLINK_V0), be16 res_id (the queue).
    out.extend_from_slice(&[libc::AF_UNSPEC as u8, 0]);
    out.extend_from_slice(&queue.to_be_bytes());
    for (kind, payload) in attributes {
        out.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(payload);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// Calls `each` for the packets and answers in a datagram from the kernel.
fn parse(mut bytes: &[u8], each: &mut impl FnMut(Message)) {
    let u16_at = |b: &[u8], at: usize| u16::from_ne_bytes([b[at], b[at + 1]]);
    let u32_at = |b: &[u8], at: usize| u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    while bytes.len() >= NLMSG_HDRLEN {
        let len = u32_at(bytes, 0) as usize;
        if len < NLMSG_HDRLEN || len > bytes.len() {
            return;
        }
        let (kind, seq) = (u16_at(bytes, 4), u32_at(bytes, 8));
        let body = &bytes[NLMSG_HDRLEN..len];
        if kind == libc::NLMSG_ERROR as u16 && body.len() >= 4 {
            let error = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
            each(Message::Answer { seq, errno: -error });
        } else if kind == NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_PACKET && body.len() >= NFGENMSG_LEN {
            let mut attributes = &body[NFGENMSG_LEN..];
            while attributes.len() >= 4 {
                let attribute_len = u16_at(attributes, 0) as usize;
                if attribute_len < 4 || attribute_len > attributes.len() {
                    break;
                }
                // struct nfqnl_msg_packet_hdr: be32 packet_id, be16 hw_protocol, u8 hook.
                if u16_at(attributes, 2) & libc::NLA_TYPE_MASK as u16 == NFQA_PACKET_HDR && attribute_len >= 8
                {
                    let id = u32::from_be_bytes([attributes[4], attributes[5], attributes[6], attributes[7]]);
                    each(Message::Packet(id));
                    break;
                }
                attributes = &attributes[attribute_len.next_multiple_of(4).min(attributes.len())..];
            }
        }
        bytes = &bytes[len.next_multiple_of(4).min(bytes.len())..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_message_is_laid_out_as_the_kernel_reads_it() {
        let mut out = Vec::new();
        put_message(
            &mut out,
            NFQNL_MSG_VERDICT,
            1,
            7,
            0x8001,
            &[(NFQA_VERDICT_HDR, &[0, 0, 0, 1, 0, 0, 0, 42])],
        );
        assert_eq!(out.len(), VERDICT_LEN);
        assert_eq!(
            u32::from_ne_bytes(out[0..4].try_into().unwrap()),
            VERDICT_LEN as u32
        );
        assert_eq!(u16::from_ne_bytes(out[4..6].try_into().unwrap()), 0x301);
        assert_eq!(&out[18..20], &[0x80, 0x01]);
        assert_eq!(u16::from_ne_bytes(out[20..22].try_into().unwrap()), 12);
        assert_eq!(&out[24..], &[0, 0, 0, 1, 0, 0, 0, 42]);
    }

    #[test]
    fn packets_and_answers_are_read_from_a_datagram() {
        let mut datagram = Vec::new();
        // A packet message: an unknown attribute of 5 bytes (padded), then the packet header.
        put_message(
            &mut datagram,
            NFQNL_MSG_PACKET,
            0,
            0,
            0x8001,
            &[(9, &[1, 2, 3, 4, 5]), (NFQA_PACKET_HDR, &[0, 0, 1, 2, 8, 0, 3])],
        );
        let error = datagram.len();
        datagram.extend_from_slice(&36u32.to_ne_bytes());
        datagram.extend_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        datagram.extend_from_slice(&[0; 2]);
        datagram.extend_from_slice(&5u32.to_ne_bytes());
        datagram.extend_from_slice(&[0; 4]);
        datagram.extend_from_slice(&(-libc::EPERM).to_ne_bytes());
        datagram.extend_from_slice(&[0; 16]);
        assert_eq!(datagram.len(), error + 36);
        let mut seen = Vec::new();
        parse(&datagram, &mut |message| {
            seen.push(match message {
                Message::Packet(id) => format!("packet {id}"),
                Message::Answer { seq, errno } => format!("answer {seq} {errno}"),
            })
        });
        assert_eq!(seen, ["packet 258", &format!("answer 5 {}", libc::EPERM)]);
    }

    #[test]
    fn jitter_never_reorders_and_stays_within_its_bounds() {
        let mut line = Line::new(Duration::from_millis(100), Duration::from_millis(30));
        let now = Instant::now();
        for id in 0..1000 {
            line.hold(id, now + Duration::from_micros(u64::from(id) * 10));
        }
        let dues: Vec<Instant> = line.held.iter().map(|&(_, due)| due).collect();
        assert!(dues.windows(2).all(|w| w[0] <= w[1]));
        assert!(dues[0] >= now + Duration::from_millis(70));
        assert!(dues[999] <= now + Duration::from_millis(140));
        assert!(dues.iter().any(|&due| due > now + Duration::from_millis(120)));
    }
}
