//! A non-blocking line sink: callers append finished lines and never wait on I/O; a
//! dedicated thread writes them out in batches.
//!
//! Each calling thread appends into a buffer of its own (a mutex only that thread and the
//! writer ever touch, so it is uncontended), with no allocation and no wake-up per line.
//! The writer thread sweeps the buffers every few milliseconds while lines flow and backs
//! off when idle. A buffer that reaches its cap (a slow disk, a stuck stdout pipe) drops
//! further lines and counts them rather than stall a request. Lines from one thread keep
//! their order; lines from different threads interleave batch by batch.

use std::cell::RefCell;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    Stdout,
    Stderr,
    File(PathBuf),
}

type Shard = Arc<Mutex<Vec<u8>>>;

struct Shared {
    shards: Mutex<Vec<Shard>>,
    flush_waiters: Mutex<Vec<SyncSender<()>>>,
    stop: AtomicBool,
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// This thread's buffer for each writer it has written to, by writer id.
    static SHARDS: RefCell<Vec<(usize, Shard)>> = const { RefCell::new(Vec::new()) };
}

pub struct LineWriter {
    id: usize,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Bytes one thread may have waiting before its lines are dropped.
    cap_bytes: usize,
    on_drop: fn(),
}

/// Sweep interval while lines flow, and the longest nap when idle.
const BUSY_NAP: Duration = Duration::from_millis(2);
const IDLE_NAP: Duration = Duration::from_millis(50);

impl LineWriter {
    /// Starts the writer thread. `cap_bytes` bounds what one thread may have waiting;
    /// `on_drop` is called for each line dropped.
    pub fn start(sink: Sink, cap_bytes: usize, on_drop: fn()) -> io::Result<LineWriter> {
        let out: Box<dyn Write + Send> = match &sink {
            Sink::Stdout => Box::new(io::stdout()),
            Sink::Stderr => Box::new(io::stderr()),
            Sink::File(path) => Box::new(OpenOptions::new().create(true).append(true).open(path)?),
        };
        let shared = Arc::new(Shared {
            shards: Mutex::new(Vec::new()),
            flush_waiters: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let for_thread = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("agentgate-log".into())
            .spawn(move || write_loop(&for_thread, out))?;
        Ok(LineWriter {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            shared,
            thread: Mutex::new(Some(thread)),
            cap_bytes,
            on_drop,
        })
    }

    /// Appends one line (without its newline); drops it when this thread's buffer is full.
    pub fn write(&self, line: &str) {
        let appended = SHARDS.with(|shards| {
            let mut shards = shards.borrow_mut();
            let shard = match shards.iter().position(|(id, _)| *id == self.id) {
                Some(i) => &shards[i].1,
                None => {
                    let shard: Shard = Arc::new(Mutex::new(Vec::with_capacity(64 * 1024)));
                    lock(&self.shared.shards).push(Arc::clone(&shard));
                    shards.push((self.id, shard));
                    &shards[shards.len() - 1].1
                }
            };
            let mut buf = lock(shard);
            if buf.len() + line.len() + 1 > self.cap_bytes {
                return false;
            }
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
            true
        });
        if !appended {
            (self.on_drop)();
        }
    }

    /// Waits until everything appended so far is written (used at shutdown).
    pub fn flush(&self) {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        lock(&self.shared.flush_waiters).push(done_tx);
        let _ = done_rx.recv_timeout(Duration::from_secs(5));
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn write_loop(shared: &Shared, out: Box<dyn Write + Send>) {
    let mut out = BufWriter::with_capacity(256 * 1024, out);
    let mut spare: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut nap = BUSY_NAP;
    loop {
        let stopping = shared.stop.load(Ordering::Acquire);
        let waiters = std::mem::take(&mut *lock(&shared.flush_waiters));
        let shards = lock(&shared.shards).clone();
        let mut wrote = false;
        for shard in shards {
            {
                let mut buf = lock(&shard);
                if buf.is_empty() {
                    continue;
                }
                std::mem::swap(&mut *buf, &mut spare);
            }
            let _ = out.write_all(&spare);
            spare.clear();
            wrote = true;
        }
        let _ = out.flush();
        for w in waiters {
            let _ = w.send(());
        }
        if stopping {
            return;
        }
        nap = if wrote {
            BUSY_NAP
        } else {
            (nap * 2).min(IDLE_NAP)
        };
        std::thread::sleep(nap);
    }
}

/// Waits for the next message of a channel without making busy senders pay for
/// wake-ups: while traffic flows the consumer naps briefly between drains (a send to a
/// consumer that is not blocked costs no syscall); after a quiet spell it blocks.
#[derive(Default)]
pub struct Poller {
    idle_naps: u32,
}

impl Poller {
    const NAP: Duration = Duration::from_millis(2);
    /// Naps before blocking: 50 x 2 ms = 100 ms without a message.
    const NAPS_BEFORE_BLOCKING: u32 = 50;

    pub fn next<T>(&mut self, rx: &mpsc::Receiver<T>) -> Option<T> {
        loop {
            match rx.try_recv() {
                Ok(msg) => {
                    self.idle_naps = 0;
                    return Some(msg);
                }
                Err(mpsc::TryRecvError::Disconnected) => return None,
                Err(mpsc::TryRecvError::Empty) => {}
            }
            if self.idle_naps >= Self::NAPS_BEFORE_BLOCKING {
                let msg = rx.recv().ok();
                self.idle_naps = 0;
                return msg;
            }
            self.idle_naps += 1;
            std::thread::sleep(Self::NAP);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static DROPPED: AtomicUsize = AtomicUsize::new(0);
    fn count_drop() {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }

    #[test]
    fn lines_from_several_threads_all_arrive_in_order_per_thread() {
        let dir = tempfile_dir();
        let path = dir.join("lines.log");
        let w = Arc::new(LineWriter::start(Sink::File(path.clone()), 1 << 20, count_drop).unwrap());
        let handles: Vec<_> = (0..3)
            .map(|t| {
                let w = Arc::clone(&w);
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        w.write(&format!("{t} {i}"));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        w.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        for t in 0..3 {
            let seq: Vec<u32> = text
                .lines()
                .filter_map(|l| {
                    l.split_once(' ')
                        .filter(|(a, _)| *a == t.to_string())
                        .map(|(_, b)| b.parse().unwrap())
                })
                .collect();
            assert_eq!(seq, (0..1000).collect::<Vec<_>>());
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_full_buffer_drops_and_counts() {
        let dir = tempfile_dir();
        let before = DROPPED.load(Ordering::Relaxed);
        let w = LineWriter::start(Sink::File(dir.join("x.log")), 100, count_drop).unwrap();
        for _ in 0..50 {
            w.write("0123456789012345678901234567890123456789");
        }
        assert!(DROPPED.load(Ordering::Relaxed) > before);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "agentgate-lw-{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
