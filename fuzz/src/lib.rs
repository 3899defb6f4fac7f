//! Fuzz suites for every decoder that reads from disk or the network: plans, snapshots,
//! procedure records, task-journal records and files, consensus-log segments during
//! recovery, Raft entries, vote records and snapshots, and Cap'n Proto messages through a
//! node's server (well-framed requests with every field corrupted, and raw frames).
//!
//! Each [`Target`] has seeds (valid encodings) and a function that must return for any
//! input — an error is fine, a panic, a hang or unbounded memory is a finding. Inputs are
//! random bytes or seeds mutated by [`mutate`]. [`run_target`] runs one target for a budget
//! and reports cases/s; the short CI run is `cargo test -p shoal-fuzz`, the long one
//! `cargo run --release -p shoal-fuzz -- --secs 600`.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod alloc;
pub mod targets;

pub use alloc::{CountingAlloc, MemoryProbe};

/// What a target does with one input: `Err` is a finding the target detected itself (a
/// server that stopped answering, a call that hung).
pub type RunFn = Box<dyn FnMut(&[u8]) -> Result<(), String>>;

/// One fuzz target.
pub struct Target {
    /// Its name (for `--target` and reports).
    pub name: &'static str,
    /// Valid encodings to mutate.
    pub seeds: Vec<Vec<u8>>,
    /// Runs one input.
    pub run: RunFn,
    /// Counters the target keeps (e.g. inputs that reached the server), for the report.
    pub counters: Vec<(&'static str, Arc<AtomicU64>)>,
}

/// Largest input generated.
pub const MAX_INPUT: usize = 256 << 10;

/// Interesting values for 32-bit fields (lengths, counts, codes).
const INTERESTING: [u32; 10] = [
    0,
    1,
    2,
    0x7f,
    0xff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
];

/// A new input: random bytes (1 in 10), or a seed mutated 1-8 times.
pub fn generate(rng: &mut fastrand::Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if seeds.is_empty() || rng.u8(..10) == 0 {
        let len = rng.usize(..2048);
        return (0..len).map(|_| rng.u8(..)).collect();
    }
    let mut input = seeds[rng.usize(..seeds.len())].clone();
    for _ in 0..rng.usize(1..=8) {
        mutate(rng, &mut input, seeds);
    }
    input.truncate(MAX_INPUT);
    input
}

/// One mutation of `input`.
pub fn mutate(rng: &mut fastrand::Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    let len = input.len();
    match rng.u8(..9) {
        // Flip one bit.
        0 if len > 0 => input[rng.usize(..len)] ^= 1 << rng.u8(..8),
        // A random byte.
        1 if len > 0 => input[rng.usize(..len)] = rng.u8(..),
        // An interesting 32-bit value (little- or big-endian) somewhere.
        2 if len >= 4 => {
            let at = rng.usize(..=len - 4);
            let v = INTERESTING[rng.usize(..INTERESTING.len())];
            let bytes = if rng.bool() {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            };
            input[at..at + 4].copy_from_slice(&bytes);
        }
        // Truncate.
        3 if len > 0 => input.truncate(rng.usize(..len)),
        // Delete a range.
        4 if len > 1 => {
            let start = rng.usize(..len);
            let end = (start + rng.usize(1..=16.min(len - start))).min(len);
            input.drain(start..end);
        }
        // Insert random bytes.
        5 => {
            let at = rng.usize(..=len);
            let n = rng.usize(1..=16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
            input.splice(at..at, bytes);
        }
        // Duplicate a range.
        6 if len > 1 => {
            let start = rng.usize(..len);
            let end = (start + rng.usize(1..=64.min(len - start))).min(len);
            let copy = input[start..end].to_vec();
            let at = rng.usize(..=len);
            input.splice(at..at, copy);
        }
        // Splice with another seed.
        7 if !seeds.is_empty() => {
            let other = &seeds[rng.usize(..seeds.len())];
            if !other.is_empty() {
                let from = rng.usize(..other.len());
                let at = rng.usize(..=len);
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
        }
        // Zero a range.
        _ if len > 0 => {
            let start = rng.usize(..len);
            let end = (start + rng.usize(1..=32.min(len - start))).min(len);
            input[start..end].fill(0);
        }
        _ => input.push(rng.u8(..)),
    }
}

/// How long to run a target.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    /// This many cases.
    Cases(u64),
    /// This long.
    Time(Duration),
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct Finding {
    /// Panic, hang, memory or the target's own error.
    pub what: String,
    /// Where the input was saved.
    pub input: PathBuf,
}

/// One target's run.
#[derive(Debug, Clone)]
pub struct Report {
    /// Target name.
    pub name: &'static str,
    /// Inputs run.
    pub cases: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Slowest input.
    pub slowest: Duration,
    /// Largest growth of allocated bytes during one input (0 without a probe).
    pub peak_bytes: u64,
    /// What went wrong.
    pub findings: Vec<Finding>,
    /// The target's own counters at the end.
    pub counters: Vec<(&'static str, u64)>,
}

impl Report {
    /// Inputs per second.
    pub fn cases_per_sec(&self) -> f64 {
        self.cases as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let counters: String = self
            .counters
            .iter()
            .map(|(name, n)| format!("  {name} {n}"))
            .collect();
        write!(
            f,
            "{:<18} {:>9} cases {:>10.0} cases/s  slowest {:>8.2?}  peak alloc {:>7} KiB  {}{counters}",
            self.name,
            self.cases,
            self.cases_per_sec(),
            self.slowest,
            self.peak_bytes >> 10,
            if self.findings.is_empty() {
                "ok".to_string()
            } else {
                format!("{} FINDINGS", self.findings.len())
            }
        )
    }
}

/// Limits every input must respect.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Slower than this is a finding (a hang, or near one).
    pub slow: Duration,
    /// More growth of allocated bytes during one input than this is a finding.
    pub memory: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            slow: Duration::from_secs(2),
            memory: 64 << 20,
        }
    }
}

/// Where findings are saved.
pub fn findings_dir() -> PathBuf {
    std::env::var_os("SHOAL_FUZZ_FINDINGS")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("shoal-fuzz-findings"))
}

fn save(name: &str, input: &[u8]) -> PathBuf {
    let dir = findings_dir();
    let _ = std::fs::create_dir_all(&dir);
    let hash = input.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    let path = dir.join(format!("{name}-{hash:016x}.bin"));
    let _ = std::fs::write(&path, input);
    path
}

/// Panics on any thread while a target runs (decoders run on RPC and executor threads
/// too): recorded by a hook instead of printed.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static HOOK: std::sync::Once = std::sync::Once::new();

fn install_panic_hook() {
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let thread = std::thread::current().name().unwrap_or("?").to_string();
            PANICS
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(format!("panic on thread {thread}: {message}{at}"));
        }));
    });
}

/// A watchdog: if one input runs longer than `limit`, saves it, says so and exits, so a
/// true hang is reported rather than waited on forever.
struct Watchdog {
    started_ms: Arc<AtomicU64>,
    input: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
}

impl Watchdog {
    /// `started_ms` counts milliseconds since `origin`, plus one (0: no input running).
    fn start(name: &'static str, limit: Duration, origin: Instant) -> Self {
        let started_ms = Arc::new(AtomicU64::new(0));
        let input = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (started_ms, input, stop) = (started_ms.clone(), input.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    let started = started_ms.load(Ordering::Relaxed);
                    let now = origin.elapsed().as_millis() as u64;
                    if started != 0 && now.saturating_sub(started) > limit.as_millis() as u64 {
                        let input = input.lock().unwrap_or_else(|p| p.into_inner()).clone();
                        let path = save(name, &input);
                        eprintln!(
                            "HANG: {name}: one input ran over {limit:?}; saved to {}",
                            path.display()
                        );
                        std::process::exit(3);
                    }
                }
            });
        }
        Self {
            started_ms,
            input,
            stop,
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Runs `target` for `budget` with inputs from `seed`; `probe` (if any) measures memory.
pub fn run_target(
    target: &mut Target,
    budget: Budget,
    seed: u64,
    limits: Limits,
    probe: Option<&dyn MemoryProbe>,
) -> Report {
    install_panic_hook();
    PANICS.lock().unwrap_or_else(|p| p.into_inner()).clear();
    let mut rng = fastrand::Rng::with_seed(seed);
    let origin = Instant::now();
    let watchdog = Watchdog::start(
        target.name,
        limits.slow.max(Duration::from_secs(30)),
        origin,
    );
    let started = Instant::now();
    let mut report = Report {
        name: target.name,
        cases: 0,
        elapsed: Duration::ZERO,
        slowest: Duration::ZERO,
        peak_bytes: 0,
        findings: Vec::new(),
        counters: Vec::new(),
    };
    // Seeds run as they are first: they must pass too.
    let mut pending: Vec<Vec<u8>> = target.seeds.iter().rev().cloned().collect();
    loop {
        let done = match budget {
            Budget::Cases(n) => report.cases >= n,
            Budget::Time(t) => started.elapsed() >= t,
        };
        if done || report.findings.len() >= 5 {
            break;
        }
        let input = pending
            .pop()
            .unwrap_or_else(|| generate(&mut rng, &target.seeds));
        *watchdog.input.lock().unwrap_or_else(|p| p.into_inner()) = input.clone();
        watchdog
            .started_ms
            .store(origin.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
        let base = probe.map(|p| p.reset_peak());
        let case_started = Instant::now();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| (target.run)(&input)));
        let took = case_started.elapsed();
        watchdog.started_ms.store(0, Ordering::Relaxed);
        let grown = match (probe, base) {
            (Some(p), Some(base)) => p.peak().saturating_sub(base),
            _ => 0,
        };
        report.cases += 1;
        report.slowest = report.slowest.max(took);
        report.peak_bytes = report.peak_bytes.max(grown);
        let mut what = Vec::new();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => what.push(e),
            Err(_) => {}
        }
        what.extend(std::mem::take(
            &mut *PANICS.lock().unwrap_or_else(|p| p.into_inner()),
        ));
        if took > limits.slow {
            what.push(format!("slow: one input took {took:?}"));
        }
        if grown > limits.memory {
            what.push(format!("memory: one input allocated {} MiB", grown >> 20));
        }
        if !what.is_empty() {
            report.findings.push(Finding {
                what: what.join("; "),
                input: save(target.name, &input),
            });
        }
    }
    report.elapsed = started.elapsed();
    report.counters = target
        .counters
        .iter()
        .map(|(name, n)| (*name, n.load(Ordering::Relaxed)))
        .collect();
    report
}
