//! The `process_*` metrics every Prometheus client library exports (CPU, memory, file
//! descriptors, start time), read from `/proc` when `/metrics` is scraped: nothing is
//! kept or sampled between scrapes, and the reads are of kernel memory, not disk.

use std::fmt::Write;

/// The host's name (`gethostname`), for alert labels and the span resource.
pub fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into our buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// Appends the process metrics in the text exposition format; on a system without
/// `/proc` it appends nothing.
pub fn render_into(out: &mut String) {
    let Some(stat) = read_stat() else { return };
    // SAFETY: sysconf and getrlimit only read process-wide settings into values we own.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as f64;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let max_fds = (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0)
        .then_some(limit.rlim_cur as f64);
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as f64)
        .ok();
    let boot = boot_time();
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds",
        (stat.utime + stat.stime) as f64 / ticks,
    );
    metric(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes",
        stat.rss_pages as f64 * page,
    );
    metric(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes",
        stat.vsize as f64,
    );
    if let Some(n) = open_fds {
        metric(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors",
            n,
        );
    }
    if let Some(n) = max_fds {
        metric(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors",
            n,
        );
    }
    if let Some(boot) = boot {
        metric(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds",
            boot as f64 + stat.starttime as f64 / ticks,
        );
    }
}

struct Stat {
    utime: u64,
    stime: u64,
    starttime: u64,
    vsize: u64,
    rss_pages: u64,
}

/// The fields of `/proc/self/stat` the metrics need. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted from its closing parenthesis.
fn read_stat() -> Option<Stat> {
    parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: field 3 (state) is f[0], so field N is f[N - 3].
    let at = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: at(14)?,
        stime: at(15)?,
        starttime: at(22)?,
        vsize: at(23)?,
        rss_pages: at(24)?,
    })
}

/// The system's boot time (`btime` of `/proc/stat`), seconds since the epoch.
fn boot_time() -> Option<u64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_with_a_strange_name_is_read_by_field() {
        let line = "4242 (agent (gate) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 12345 104857600 2560 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!((s.utime, s.stime), (250, 50));
        assert_eq!(s.starttime, 12345);
        assert_eq!(s.vsize, 104_857_600);
        assert_eq!(s.rss_pages, 2560);
        assert!(parse_stat("garbage").is_none());
    }
}
