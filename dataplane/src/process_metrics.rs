//! The standard `process_*` metrics (the Prometheus client libraries' names and meanings) read
//! from `/proc/self`, for both admin listeners' `/metrics`: CPU seconds, resident and virtual
//! memory, open and maximum descriptors, start time. Left out where `/proc` cannot be read.

use std::fmt::Write as _;

/// Appends the `process_*` metrics to `w`.
pub fn write(w: &mut String) {
    let Some(stat) = std::fs::read_to_string("/proc/self/stat").ok() else {
        return;
    };
    // Fields after the command name, which is in parentheses and may hold spaces: the first
    // of them is field 3 (state) of proc(5).
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let page = rustix::param::page_size() as u64;
    let mut gauge = |name: &str, kind: &str, help: &str, v: f64| {
        let _ = writeln!(w, "# HELP {name} {help}");
        let _ = writeln!(w, "# TYPE {name} {kind}");
        let _ = writeln!(w, "{name} {v}");
    };
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        gauge(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            (utime + stime) as f64 / ticks,
        );
    }
    if let Some(rss) = field(24) {
        gauge(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            (rss * page) as f64,
        );
    }
    if let Some(vsize) = field(23) {
        gauge(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            vsize as f64,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        gauge(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            fds.count() as f64,
        );
    }
    gauge(
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        crate::edge::descriptor_limit() as f64,
    );
    // Start: ticks after boot (field 22) plus the boot time (`btime` in /proc/stat).
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    });
    if let (Some(start), Some(boot)) = (field(22), boot) {
        gauge(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            boot as f64 + start as f64 / ticks,
        );
    }
}
