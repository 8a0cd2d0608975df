//! A bounded, non-blocking line sink: callers hand over finished lines and never wait on
//! I/O; a dedicated thread writes them. When the queue is full the line is dropped and
//! counted, so a slow disk or a stuck stdout pipe never stalls a request.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Mutex;
use std::thread::JoinHandle;

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    Stdout,
    Stderr,
    File(PathBuf),
}

enum Msg {
    Line(String),
    Flush(SyncSender<()>),
}

pub struct LineWriter {
    tx: SyncSender<Msg>,
    thread: Mutex<Option<JoinHandle<()>>>,
    on_drop: fn(),
}

impl LineWriter {
    /// Starts the writer thread. `on_drop` is called for each line dropped.
    pub fn start(sink: Sink, capacity: usize, on_drop: fn()) -> io::Result<LineWriter> {
        let out: Box<dyn Write + Send> = match &sink {
            Sink::Stdout => Box::new(io::stdout()),
            Sink::Stderr => Box::new(io::stderr()),
            Sink::File(path) => Box::new(OpenOptions::new().create(true).append(true).open(path)?),
        };
        let (tx, rx) = mpsc::sync_channel(capacity);
        let thread = std::thread::Builder::new()
            .name("agentgate-log".into())
            .spawn(move || write_loop(rx, out))?;
        Ok(LineWriter {
            tx,
            thread: Mutex::new(Some(thread)),
            on_drop,
        })
    }

    /// Queues one line (without its newline); drops it if the queue is full.
    pub fn write(&self, line: String) {
        match self.tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => (self.on_drop)(),
        }
    }

    /// Waits until everything queued so far is written (used at shutdown).
    pub fn flush(&self) {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        if self.tx.send(Msg::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv_timeout(std::time::Duration::from_secs(5));
        }
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.flush();
        if let Ok(mut t) = self.thread.lock() {
            drop(t.take());
        }
    }
}

fn write_loop(rx: Receiver<Msg>, out: Box<dyn Write + Send>) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut poll = Poller::default();
    loop {
        let Some(first) = poll.next(&rx) else { break };
        let mut next = Some(first);
        // Drain what is queued, then flush once: one write syscall for a burst of lines.
        while let Some(msg) = next.take() {
            match msg {
                Msg::Line(line) => {
                    let _ = out.write_all(line.as_bytes());
                    let _ = out.write_all(b"\n");
                }
                Msg::Flush(done) => {
                    let _ = out.flush();
                    let _ = done.send(());
                }
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}

/// Waits for the next message without making busy senders pay for wake-ups: while
/// traffic flows the consumer naps briefly between drains (a send to a consumer that is
/// not blocked costs no syscall); after a quiet spell it blocks until woken.
#[derive(Default)]
pub struct Poller {
    idle_naps: u32,
}

impl Poller {
    const NAP: std::time::Duration = std::time::Duration::from_millis(2);
    /// Naps before blocking: 50 x 2 ms = 100 ms without a message.
    const NAPS_BEFORE_BLOCKING: u32 = 50;

    pub fn next<T>(&mut self, rx: &Receiver<T>) -> Option<T> {
        loop {
            match rx.try_recv() {
                Ok(msg) => {
                    self.idle_naps = 0;
                    return Some(msg);
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return None,
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
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
