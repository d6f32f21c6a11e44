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
