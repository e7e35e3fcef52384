//! CPU time, name and peak memory of processes, read from `/proc` (Linux).

/// `AT_CLKTCK` in the auxiliary vector: the kernel's `USER_HZ`, the unit of
/// the CPU times in `/proc/<pid>/stat`.
const AT_CLKTCK: u64 = 17;

/// Clock ticks per second of `/proc/<pid>/stat`'s `utime` and `stime`, and
/// where the figure came from. It is the `AT_CLKTCK` entry that the kernel
/// hands every process in its auxiliary vector (what `getconf CLK_TCK`
/// reports), read from `/proc/self/auxv` so no libc call is needed; when that
/// cannot be read, 100, which is `USER_HZ` on every mainstream Linux build.
pub fn clock_ticks_per_second() -> (u64, &'static str) {
    let word = std::mem::size_of::<usize>();
    let Ok(auxv) = std::fs::read("/proc/self/auxv") else {
        return (100, "assumed (no /proc/self/auxv)");
    };
    let read = |bytes: &[u8]| -> u64 {
        let mut buf = [0u8; 8];
        if cfg!(target_endian = "little") {
            buf[..word].copy_from_slice(bytes);
            u64::from_le_bytes(buf)
        } else {
            buf[8 - word..].copy_from_slice(bytes);
            u64::from_be_bytes(buf)
        }
    };
    for pair in auxv.chunks_exact(2 * word) {
        let (key, value) = (read(&pair[..word]), read(&pair[word..]));
        if key == AT_CLKTCK && value > 0 {
            return (value, "AT_CLKTCK");
        }
        if key == 0 {
            break;
        }
    }
    (100, "assumed (no AT_CLKTCK)")
}

/// `proc` is a pid or `self`.
fn path(proc: &str, file: &str) -> String {
    format!("/proc/{proc}/{file}")
}

/// `utime + stime` of the whole process (every thread, living or exited), in
/// clock ticks; `None` when the process is gone or unreadable.
pub fn cpu_ticks(proc: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(path(proc, "stat")).ok()?;
    // The name (field 2) is in parentheses and may hold spaces: count from
    // the last ')'. After it come field 3 (state) onwards; utime and stime
    // are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// The process's name (`/proc/<pid>/comm`); empty when unreadable.
pub fn name(proc: &str) -> String {
    std::fs::read_to_string(path(proc, "comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Peak resident set (VmHWM), in MiB; 0 when unreadable.
pub fn peak_rss_mib(proc: &str) -> f64 {
    std::fs::read_to_string(path(proc, "status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// The soft limit on open files of this process, if readable: each request
/// in flight holds a socket.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let (hz, _) = clock_ticks_per_second();
        assert!(hz > 0);
        assert!(cpu_ticks("self").is_some());
        assert!(!name("self").is_empty());
        assert!(peak_rss_mib("self") > 0.0);
    }
}
