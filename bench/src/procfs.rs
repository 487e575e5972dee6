//! Figures read from `/proc`.

use std::path::Path;

/// The user + system CPU ticks in a `/proc/…/stat` file (a process's or a thread's).
pub fn cpu_ticks(stat: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(stat).ok()?;
    // Fields after the command's closing parenthesis: state is the first, utime the 12th.
    let rest = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Milliseconds of CPU per tick (`getconf CLK_TCK` is 100 on Linux).
pub const MS_PER_TICK: f64 = 10.0;
