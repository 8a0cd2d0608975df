//! A non-blocking line sink: callers append finished lines into their thread's buffer
//! (see `shards`) and never wait on I/O; a dedicated thread writes them out in batches.
//! Lines from one thread keep their order; lines from different threads interleave
//! batch by batch.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::time::Duration;

use super::shards::{Drain, DrainThread};

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    Stdout,
    Stderr,
    File(PathBuf),
}

pub struct LineWriter {
    thread: DrainThread,
    on_drop: fn(),
}

/// A worker's lines at least this long are written as they are, not copied into the
/// write buffer first (the buffer only gathers small chunks into one write).
const DIRECT_WRITE: usize = 16 * 1024;

/// Lines go to the sink as they are taken, flushed at the end of every sweep.
struct WriteOut(BufWriter<Box<dyn Write + Send>>);

impl Drain for WriteOut {
    fn take(&mut self, lines: &[u8]) {
        let _ = if lines.len() >= DIRECT_WRITE && self.0.buffer().is_empty() {
            self.0.get_mut().write_all(lines)
        } else {
            self.0.write_all(lines)
        };
    }

    fn end_sweep(&mut self, _took_any: bool, _urgent: bool) {
        let _ = self.0.flush();
    }
}

impl LineWriter {
    /// Starts the writer thread. `cap_bytes` bounds what one thread may have waiting;
    /// `on_drop` is called for each line dropped.
    pub fn start(sink: Sink, cap_bytes: usize, on_drop: fn()) -> io::Result<LineWriter> {
        let out: Box<dyn Write + Send> = match &sink {
            Sink::Stdout => Box::new(io::stdout()),
            Sink::Stderr => Box::new(io::stderr()),
            Sink::File(path) => Box::new(OpenOptions::new().create(true).append(true).open(path)?),
        };
        let drain = WriteOut(BufWriter::with_capacity(256 * 1024, out));
        Ok(LineWriter {
            thread: DrainThread::start("agentgate-log", cap_bytes, drain)?,
            on_drop,
        })
    }

    /// Appends one line (without its newline); drops it when this thread's buffer is full.
    pub fn write(&self, line: &str) {
        self.write_with(|buf| buf.extend_from_slice(line.as_bytes()));
    }

    /// Appends the line `format` writes (without its newline) straight into this thread's
    /// buffer; drops it when the buffer is full.
    pub fn write_with(&self, format: impl FnOnce(&mut Vec<u8>)) {
        let appended = self.thread.append(|buf| {
            format(buf);
            buf.push(b'\n');
        });
        if !appended {
            (self.on_drop)();
        }
    }

    /// Waits until everything appended so far is written (used at shutdown).
    pub fn flush(&self) {
        self.thread.flush(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

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

    /// A sink the test can read while the writer still holds it.
    #[derive(Clone, Default)]
    struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Large chunks skip the write buffer only when nothing is waiting in it, so bytes
    /// reach the sink in the order they were taken.
    #[test]
    fn large_chunks_go_straight_out_and_order_is_kept() {
        let sink = Shared::default();
        let mut out = WriteOut(BufWriter::with_capacity(256 * 1024, Box::new(sink.clone())));
        let small = b"small line\n".to_vec();
        let large = vec![b'x'; DIRECT_WRITE];
        out.take(&small);
        out.take(&large);
        assert!(
            sink.0.lock().unwrap().is_empty(),
            "a small chunk was waiting: the large one queues behind it"
        );
        out.end_sweep(true, false);
        let after_first_sweep = small.len() + large.len();
        assert_eq!(sink.0.lock().unwrap().len(), after_first_sweep);
        let large2 = vec![b'y'; DIRECT_WRITE + 1];
        out.take(&large2);
        assert_eq!(
            sink.0.lock().unwrap().len(),
            after_first_sweep + large2.len(),
            "an empty buffer: written at once"
        );
        out.take(&small);
        out.end_sweep(true, false);
        let expected = [small.clone(), large, large2, small].concat();
        assert_eq!(*sink.0.lock().unwrap(), expected);
    }

    static DIR_ID: AtomicUsize = AtomicUsize::new(0);

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "agentgate-lw-{}-{}",
            std::process::id(),
            DIR_ID.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
