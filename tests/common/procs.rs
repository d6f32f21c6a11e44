//! Worker processes as /proc shows them: counted now, or sampled for their peak.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub fn children_of(pid: u32) -> usize {
    let mut n = 0;
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
                continue;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if fields.get(1) == Some(&pid.to_string().as_str()) && fields.first() != Some(&"Z") {
                n += 1;
            }
        }
    }
    n
}

/// Sample the number of worker processes in the background, keeping the peak.
pub struct PeakSampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<usize>,
}

impl PeakSampler {
    pub fn start(baton_pid: u32) -> PeakSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = 0;
            while !s.load(Ordering::SeqCst) {
                peak = peak.max(children_of(baton_pid));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        PeakSampler { stop, handle }
    }

    pub fn stop(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap()
    }
}

/// One IPv4 TCP socket as `/proc/net/tcp` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpSocket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The kernel's state number: 1 ESTABLISHED, 2 SYN_SENT, ... 8 CLOSE_WAIT, 10 LISTEN.
    pub state: u8,
    /// Bytes sent and not yet acknowledged by the peer (a full window: the peer reads nothing).
    pub tx_queue: u64,
    /// Bytes received and not yet read by the socket's owner.
    pub rx_queue: u64,
}

pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_CLOSE_WAIT: u8 = 8;

/// The IPv4 TCP sockets of this network namespace (the tests' and baton's).
pub fn tcp_sockets() -> Vec<TcpSocket> {
    fn addr(hex: &str) -> Option<SocketAddr> {
        let (ip, port) = hex.split_once(':')?;
        // The address is the kernel's u32 printed in host order (little-endian here).
        let ip = u32::from_str_radix(ip, 16).ok()?;
        let ip = std::net::Ipv4Addr::from(ip.to_le_bytes());
        Some(SocketAddr::from((ip, u16::from_str_radix(port, 16).ok()?)))
    }
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (tx, rx) = f.get(4)?.split_once(':')?;
            Some(TcpSocket {
                local: addr(f.get(1)?)?,
                remote: addr(f.get(2)?)?,
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                tx_queue: u64::from_str_radix(tx, 16).ok()?,
                rx_queue: u64::from_str_radix(rx, 16).ok()?,
            })
        })
        .collect()
}

/// The server's end of the connection from `client` to `server`, while the kernel has it.
pub fn server_end(server: SocketAddr, client: SocketAddr) -> Option<TcpSocket> {
    tcp_sockets()
        .into_iter()
        .find(|s| s.local == server && s.remote == client)
}

/// The resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for process {pid}"))
}

/// A process's resident memory once it has settled: read every 100 ms until three readings in
/// a row are within `tolerance_kib` of each other (nothing is being allocated or given back
/// any more), and fail if that does not come within `limit`.
pub fn settled_rss_kib(pid: u32, tolerance_kib: u64, limit: Duration) -> u64 {
    let start = Instant::now();
    let mut seen = vec![rss_kib(pid)];
    loop {
        std::thread::sleep(Duration::from_millis(100));
        seen.push(rss_kib(pid));
        let last = &seen[seen.len().saturating_sub(3)..];
        let (lo, hi) = (
            last.iter().min().copied().unwrap_or(0),
            last.iter().max().copied().unwrap_or(0),
        );
        if last.len() == 3 && hi - lo <= tolerance_kib {
            return seen[seen.len() - 1];
        }
        assert!(
            start.elapsed() < limit,
            "the RSS of process {pid} never settled within {tolerance_kib} KiB over three \
             readings 100 ms apart, within {limit:?}: {seen:?}"
        );
    }
}
