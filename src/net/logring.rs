//! The process logger: records go to stderr (through simplelog, at the
//! configured level) and into an in-process ring of fixed capacity that
//! admin sessions read with their own cursors.
//!
//! The ring is thread-local: the relay is one thread, so the loop and the
//! logger share it without a lock, and a reader can never block a writer.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Longest line kept in the ring; longer ones are cut (a log line is for a person).
pub const MAX_LINE: usize = 400;

/// One formatted record.
#[derive(Clone, Debug)]
pub struct Line {
    /// Position in the stream of all records (never reused).
    pub seq: u64,
    /// Record level, for per-session filtering.
    pub level: Level,
    /// `2026-01-01T00:00:00.000Z [INFO] text`.
    pub text: String,
}

/// Fixed-capacity ring of the newest records.
#[derive(Debug)]
pub struct Ring {
    lines: VecDeque<Line>,
    capacity: usize,
    next_seq: u64,
}

impl Ring {
    /// An empty ring holding at most `capacity` records (at least 1).
    pub fn new(capacity: usize) -> Self {
        Ring {
            lines: VecDeque::with_capacity(capacity.clamp(1, 4096)),
            capacity: capacity.max(1),
            next_seq: 0,
        }
    }

    /// Appends a record, evicting the oldest when full.
    pub fn push(&mut self, level: Level, mut text: String) {
        if text.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push('…');
        }
        if self.lines.len() == self.capacity {
            self.lines.pop_front();
        }
        self.lines.push_back(Line {
            seq: self.next_seq,
            level,
            text,
        });
        self.next_seq += 1;
    }

    /// The sequence number the next record will get: a new reader's cursor.
    pub fn end(&self) -> u64 {
        self.next_seq
    }

    /// Records from `cursor` on: how many were lost because the ring
    /// overwrote them, and an iterator over the ones still here.
    pub fn read_from(&self, cursor: u64) -> (u64, impl Iterator<Item = &Line>) {
        let oldest = self.lines.front().map_or(self.next_seq, |l| l.seq);
        let lost = oldest.saturating_sub(cursor);
        let skip = cursor.saturating_sub(oldest) as usize;
        (lost, self.lines.iter().skip(skip))
    }

    /// The last `n` records, oldest first (reversible, so a reader can
    /// keep the newest when it has room for only some).
    pub fn tail(&self, n: usize) -> impl DoubleEndedIterator<Item = &Line> {
        self.lines.iter().skip(self.lines.len().saturating_sub(n))
    }
}

thread_local! {
    static RING: RefCell<Ring> = RefCell::new(Ring::new(1024));
}

/// Runs `f` with this thread's ring.
pub fn with_ring<R>(f: impl FnOnce(&mut Ring) -> R) -> R {
    RING.with(|r| f(&mut r.borrow_mut()))
}

/// The most verbose level the ring captures (raised when a session asks for more).
static RING_LEVEL: AtomicUsize = AtomicUsize::new(LevelFilter::Info as usize);
static STDERR_LEVEL: AtomicUsize = AtomicUsize::new(LevelFilter::Info as usize);

fn filter_from(v: usize) -> LevelFilter {
    LevelFilter::iter().nth(v).unwrap_or(LevelFilter::Trace)
}

/// Makes the ring capture records up to `level` (never less than info, so
/// `log tail` always has the useful lines), and lets them past the facade.
pub fn set_ring_level(level: LevelFilter) {
    let level = level.max(LevelFilter::Info);
    RING_LEVEL.store(level as usize, Ordering::Relaxed);
    log::set_max_level(level.max(filter_from(STDERR_LEVEL.load(Ordering::Relaxed))));
}

/// Logger that writes to stderr via simplelog and to the ring.
struct Logger {
    stderr: Box<simplelog::WriteLogger<std::io::Stderr>>,
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= filter_from(RING_LEVEL.load(Ordering::Relaxed)) || stderr_enabled(m)
    }

    fn log(&self, record: &Record<'_>) {
        if stderr_enabled(record.metadata()) {
            self.stderr.log(record);
        }
        if record.level() <= filter_from(RING_LEVEL.load(Ordering::Relaxed)) {
            let text = format!(
                "{} [{}] {}",
                timestamp(SystemTime::now()),
                record.level(),
                record.args()
            );
            // try_with: a record logged while the thread is being torn down is just dropped.
            let _ = RING.try_with(|r| {
                if let Ok(mut r) = r.try_borrow_mut() {
                    r.push(record.level(), text);
                }
            });
        }
    }

    fn flush(&self) {
        self.stderr.flush();
    }
}

/// Whether a record goes to stderr at the current stderr level.
fn stderr_enabled(m: &Metadata<'_>) -> bool {
    m.level() <= filter_from(STDERR_LEVEL.load(Ordering::Relaxed))
}

/// Changes the stderr level (a configuration reload).
pub fn set_stderr_level(level: LevelFilter) {
    STDERR_LEVEL.store(level as usize, Ordering::Relaxed);
    set_ring_level(filter_from(RING_LEVEL.load(Ordering::Relaxed)));
}

/// Installs the logger: stderr at `stderr_level`, ring of `capacity` records.
pub fn init(stderr_level: LevelFilter, capacity: usize) {
    with_ring(|r| *r = Ring::new(capacity));
    STDERR_LEVEL.store(stderr_level as usize, Ordering::Relaxed);
    let config = simplelog::ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_target_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        .build();
    // simplelog writes what it is given; the level is ours (STDERR_LEVEL),
    // so that a reload can change it.
    let stderr = simplelog::WriteLogger::new(LevelFilter::Trace, config, std::io::stderr());
    if log::set_boxed_logger(Box::new(Logger { stderr })).is_ok() {
        set_ring_level(LevelFilter::Info);
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` in UTC, without a date crate.
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil-from-days (H. Hinnant): proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ring_keeps_the_newest_and_counts_losses() {
        let mut r = Ring::new(3);
        for i in 0..5 {
            r.push(Level::Info, format!("l{i}"));
        }
        let (lost, rest) = r.read_from(0);
        assert_eq!(lost, 2);
        assert_eq!(
            rest.map(|l| l.text.as_str()).collect::<Vec<_>>(),
            ["l2", "l3", "l4"]
        );
        let (lost, rest) = r.read_from(4);
        assert_eq!((lost, rest.count()), (0, 1));
        assert_eq!(r.read_from(5).1.count(), 0);
        assert_eq!(r.tail(2).map(|l| l.seq).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(r.end(), 5);
    }

    #[test]
    fn long_lines_are_cut_on_a_char_boundary() {
        let mut r = Ring::new(1);
        r.push(Level::Info, "é".repeat(MAX_LINE));
        assert!(r.tail(1).next().unwrap().text.len() <= MAX_LINE + '…'.len_utf8());
    }

    #[test]
    fn timestamps_are_utc_iso8601() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(timestamp(t), "2026-11-18T11:06:40.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(timestamp(leap), "2000-02-29T00:00:00.000Z");
    }
}
