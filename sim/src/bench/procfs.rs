//! What the benchmark reads from `/proc`: the machine (cores, memory, CPU model, kernel) and
//! the CPU time of processes — one `ldr` node, or a PostgreSQL postmaster with every backend,
//! walsender and apply worker under it.
//!
//! CPU time is `utime + stime` from `/proc/<pid>/stat` (fields 14 and 15, in clock ticks).
//! For a process tree the reaped children's time (`cutime + cstime`, fields 16 and 17) of the
//! root is added, so a backend that exited during the measured window still counts. The
//! parsers are pure and unit-tested; the readers tolerate processes vanishing mid-scan.

use serde::{Deserialize, Serialize};

/// The machine the run measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// Logical CPUs available to this process.
    pub cores: usize,
    /// Total memory, human readable (`23.5 GiB`).
    pub memory: String,
    pub memory_bytes: u64,
    pub cpu_model: String,
    pub kernel: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| parse_mem_total(&text))
            .unwrap_or(0);
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| parse_cpu_model(&text))
            .unwrap_or_default();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Machine {
            cores,
            memory: format!("{:.1} GiB", memory_bytes as f64 / (1u64 << 30) as f64),
            memory_bytes,
            cpu_model,
            kernel,
        }
    }
}

/// `MemTotal:  24578236 kB` → bytes.
pub fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The first `model name : …` of `/proc/cpuinfo`.
pub fn parse_cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// The fields of `/proc/<pid>/stat` the benchmark needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    pub ppid: u32,
    /// utime + stime, clock ticks.
    pub own_ticks: u64,
    /// cutime + cstime (children that were waited for), clock ticks.
    pub reaped_children_ticks: u64,
}

/// Parses one `/proc/<pid>/stat` line. The command name (field 2) is in parentheses and may
/// contain spaces and parentheses, so fields are counted after the last `)`.
pub fn parse_stat(line: &str) -> Option<ProcStat> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let pid: u32 = line[..open].trim().parse().ok()?;
    // After ")": field 3 (state) is index 0.
    let rest: Vec<&str> = line.get(close + 1..)?.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { rest.get(n - 3)?.parse().ok() };
    Some(ProcStat {
        pid,
        ppid: field(4)? as u32,
        own_ticks: field(14)? + field(15)?,
        reaped_children_ticks: field(16)? + field(17)?,
    })
}

/// Clock ticks per second of `/proc` times: the kernel reports them in `USER_HZ`, which is
/// 100 on Linux whatever the kernel's internal tick rate (`sysconf` would need `unsafe`).
pub fn ticks_per_second() -> f64 {
    100.0
}

fn read_stat(pid: u32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn all_stats() -> Vec<ProcStat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(read_stat)
        .collect()
}

/// CPU seconds of one process (0 if it is gone).
pub fn process_cpu_seconds(pid: u32) -> f64 {
    read_stat(pid)
        .map(|s| s.own_ticks as f64 / ticks_per_second())
        .unwrap_or(0.0)
}

/// CPU seconds of `root`, every live descendant, and the root's reaped children.
pub fn tree_cpu_seconds(root: u32) -> f64 {
    tree_ticks(root, &all_stats()) as f64 / ticks_per_second()
}

/// Sum of ticks over `root`'s tree in a snapshot of the process table (pure).
pub fn tree_ticks(root: u32, stats: &[ProcStat]) -> u64 {
    let Some(root_stat) = stats.iter().find(|s| s.pid == root) else {
        return 0;
    };
    let mut total = root_stat.own_ticks + root_stat.reaped_children_ticks;
    let mut frontier = vec![root];
    let mut seen = std::collections::BTreeSet::from([root]);
    // Bounded: each pid is visited at most once.
    while let Some(parent) = frontier.pop() {
        for child in stats.iter().filter(|s| s.ppid == parent) {
            if seen.insert(child.pid) {
                total += child.own_ticks;
                frontier.push(child.pid);
            }
        }
    }
    total
}

/// The postmaster pid of a PostgreSQL data directory (first line of `postmaster.pid`).
pub fn postmaster_pid(data_dir: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_lines_with_awkward_names() {
        let line = "1234 (post (gres) x) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 50 7 3 20 0 1 0 100 1000 10";
        let s = parse_stat(line).expect("parse");
        assert_eq!(s.pid, 1234);
        assert_eq!(s.ppid, 1);
        assert_eq!(s.own_ticks, 300);
        assert_eq!(s.reaped_children_ticks, 10);
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("12 (x) S 1").is_none());
    }

    #[test]
    fn tree_sums_descendants_once_and_the_roots_reaped_children() {
        let s = |pid, ppid, own, reaped| ProcStat {
            pid,
            ppid,
            own_ticks: own,
            reaped_children_ticks: reaped,
        };
        let table = vec![
            s(10, 1, 5, 100),
            s(11, 10, 7, 0),
            s(12, 11, 3, 50), // grandchild; its reaped children are not the root's concern
            s(20, 1, 1000, 0),
        ];
        assert_eq!(tree_ticks(10, &table), 5 + 100 + 7 + 3);
        assert_eq!(tree_ticks(99, &table), 0);
    }

    #[test]
    fn machine_parsers() {
        assert_eq!(
            parse_mem_total("MemFree: 1 kB\nMemTotal:       24578236 kB\n"),
            Some(24578236 * 1024)
        );
        assert_eq!(
            parse_cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n").as_deref(),
            Some("AMD EPYC 7B13")
        );
        let m = Machine::detect();
        assert!(m.cores >= 1);
        // The live process table includes us.
        assert!(process_cpu_seconds(std::process::id()) >= 0.0);
        assert!(tree_cpu_seconds(std::process::id()) >= 0.0);
    }
}
