//! What the kernel says about a process: CPU time and resident memory, from `/proc/<pid>`.
//!
//! CPU time is read from the process's own accounting rather than from a load generator's view:
//! on a shared 2-core machine throughput moves with whatever else runs, the CPU time Envoy spent per
//! request much less.

use anyhow::Context;
use std::process::Command;

/// utime + stime of the whole process (all threads), in clock ticks, from a `/proc/<pid>/stat` line.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may itself contain spaces and parentheses:
    // fields are counted from the last `)`. After it come field 3 (state) onwards.
    let after_name = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime is field 14 and stime field 15 (proc(5)), i.e. indexes 11 and 12 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` in bytes from a `/proc/<pid>/status` text.
pub fn parse_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let mut words = line.split_whitespace().skip(1);
    let value: u64 = words.next()?.parse().ok()?;
    match words.next()? {
        "kB" => Some(value * 1024),
        _ => None,
    }
}

/// CPU time of process `pid` so far, in clock ticks.
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat).with_context(|| format!("parse /proc/{pid}/stat: {stat}"))
}

/// Resident memory of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    parse_rss_bytes(&status).with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// Clock ticks per second (`getconf CLK_TCK`); 100 on every Linux this runs on, used if getconf fails.
pub fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .filter(|ticks| *ticks > 0)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_from_stat_lines() {
        let cases = [
            (
                "4242 (envoy) S 1 4242 4242 0 -1 4194560 25311 0 0 0 1234 567 0 0 20 0 12 0 9 1 2 3",
                Some(1801),
            ),
            // A command name with spaces and a parenthesis must not shift the fields.
            (
                "7 (wrk: a (b) c) R 1 7 7 0 -1 0 0 0 0 0 10 20 0 0 20 0 1 0",
                Some(30),
            ),
            ("4242 (envoy) S 1 2 3", None),
            ("4242 envoy S 1", None),
            ("", None),
            (
                "1 (x) S 1 1 1 0 -1 0 0 0 0 0 notanumber 20 0 0 20 0 1 0",
                None,
            ),
        ];
        for (stat, expected) in cases {
            assert_eq!(parse_cpu_ticks(stat), expected, "{stat}");
        }
    }

    #[test]
    fn rss_from_status() {
        let cases = [
            (
                "Name:\tenvoy\nVmPeak:\t 999 kB\nVmRSS:\t   51200 kB\nThreads: 9\n",
                Some(51200 * 1024),
            ),
            ("Name:\tenvoy\n", None),
            ("VmRSS:\t 12 MB\n", None),
            ("VmRSS:\n", None),
        ];
        for (status, expected) in cases {
            assert_eq!(parse_rss_bytes(status), expected, "{status}");
        }
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).unwrap() > 0);
        cpu_ticks(pid).unwrap();
        assert!(clock_ticks_per_second() > 0);
    }
}
