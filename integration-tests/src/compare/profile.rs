//! Profiling Millrace during a drain with `perf`: samples with call stacks
//! (DWARF unwinding, since the release build keeps no frame pointers), then
//! the time per function (self) and per component (a sample counts for a
//! component when any frame of its stack is in it), and folded stacks for a
//! flame graph.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;

/// Whether `perf` can count on this machine.
pub fn available() -> bool {
    Command::new("perf")
        .args(["stat", "-e", "instructions", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A `perf record` attached to a process.
pub struct Recording {
    child: Child,
    data: PathBuf,
    /// perf record's messages.
    log: PathBuf,
}

/// Starts sampling `pid` at `frequency` Hz into `data`.
pub fn record(pid: u32, frequency: u32, data: &Path) -> anyhow::Result<Recording> {
    let log = data.with_extension("log");
    let child = Command::new("perf")
        .args(["record", "-F", &frequency.to_string()])
        .args(["--call-graph", "dwarf,8192", "-p", &pid.to_string(), "-o"])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting perf record")?;
    Ok(Recording {
        child,
        data: data.to_path_buf(),
        log,
    })
}

/// Components a sample's stack may pass through. A name belongs to the
/// first component one of whose patterns it contains.
const COMPONENTS: &[(&str, &[&str])] = &[
    ("kernel (system calls, network, page faults)", &["[kernel"]),
    ("RocksDB", &["rocksdb::", "rocksdb_", "librocksdb"]),
    (
        "librdkafka",
        &[
            "rd_kafka", "rd_buf", "rd_slice", "rd_crc32", "rd_list", "rd_avg", "rd_tmr", "rd_ut",
        ],
    ),
    ("JSON (serde_json)", &["serde_json::"]),
    (
        "CEL expressions (event time, value)",
        &["cel::", "millrace::expr"],
    ),
    (
        "window step",
        &["millrace::steps::window", "millrace::steps::aggregates"],
    ),
    (
        "state layer (task stores, changelog)",
        &["millrace::state::"],
    ),
    ("runtime loop and transactions", &["millrace::runtime::"]),
    ("pipeline and other Millrace code", &["millrace::"]),
    (
        ALLOCATOR,
        &[
            "malloc", "free", "realloc", "memcpy", "memmove", "memset", "memcmp", "tcache_",
        ],
    ),
];

/// Claims only the samples no other component does: a `malloc` called by
/// the state layer is the state layer's cost.
const ALLOCATOR: &str = "allocator and memcpy (libc), unclaimed";

/// The profile of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub samples: usize,
    pub frequency: u32,
    /// (share of samples, function) by time in the function itself.
    pub self_top: Vec<(f64, String)>,
    /// (share of samples, component) by the innermost component in the
    /// sample's stack (see [`owner`]).
    pub self_components: Vec<(f64, String)>,
    /// (share of samples, component) counting a sample for every component
    /// its stack passes through.
    pub inclusive_components: Vec<(f64, String)>,
    /// (share, function) by samples whose stack passes through it.
    pub inclusive_top: Vec<(f64, String)>,
    /// (share of samples, thread name without digits).
    pub threads: Vec<(f64, String)>,
    /// Per component (by self time, largest first): its share and its
    /// functions by self time.
    pub breakdown: Vec<Component>,
}

/// One component's share (by [`owner`]) and the frames that claimed it.
#[derive(Debug, Clone, Serialize)]
pub struct Component {
    pub name: String,
    pub share: f64,
    pub functions: Vec<(f64, String)>,
}

impl Recording {
    /// Stops sampling (SIGINT, as perf expects) and analyses the samples;
    /// writes folded stacks (`frame;frame;... count`) to `folded`.
    pub fn finish(mut self, frequency: u32, folded: &Path) -> anyhow::Result<Profile> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while self.child.try_wait()?.is_none() {
            if std::time::Instant::now() > deadline {
                self.child.kill()?;
                bail!("perf record did not stop");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let script = Command::new("perf")
            .args(["script", "-F", "comm,tid,ip,sym,dso", "-i"])
            .arg(&self.data)
            .output()
            .context("running perf script")?;
        let record_log = std::fs::read_to_string(&self.log).unwrap_or_default();
        if !script.status.success() {
            bail!(
                "perf script failed ({}): {}; perf record said: {record_log}",
                script.status,
                String::from_utf8_lossy(&script.stderr)
            );
        }
        let stacks = parse_script(&String::from_utf8_lossy(&script.stdout));
        anyhow::ensure!(
            !stacks.is_empty(),
            "perf recorded no samples ({} bytes from perf script); perf record said: {record_log}",
            script.stdout.len()
        );
        let _ = std::fs::remove_file(&self.data);
        write_folded(&stacks, folded)?;
        Ok(analyse(&stacks, frequency))
    }
}

/// One sample: the thread's name and its frames from the leaf up.
struct Stack {
    thread: String,
    frames: Vec<String>,
}

/// Parses `perf script` output: a header line per sample, then one line
/// per frame (`address symbol+offset (dso)`), then a blank line.
fn parse_script(text: &str) -> Vec<Stack> {
    let mut stacks = Vec::new();
    let mut current: Option<Stack> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            if let Some(stack) = current.take()
                && !stack.frames.is_empty()
            {
                stacks.push(stack);
            }
            continue;
        }
        if !line.starts_with([' ', '\t']) {
            // "comm tid": thread names such as `rdk:broker3` lose their
            // digits so that threads of one kind add up.
            let line = line.trim_end();
            let comm = line.rsplit_once(' ').map_or(line, |(c, _)| c).trim();
            let thread: String = comm.chars().filter(|c| !c.is_ascii_digit()).collect();
            current = Some(Stack {
                thread,
                frames: Vec::new(),
            });
            continue;
        }
        let Some(stack) = current.as_mut() else {
            continue;
        };
        // "    55d0c3 serde_json::de::foo+0x12 (/path/millrace-it)"
        let frame = line.trim();
        let rest = frame.split_once(' ').map_or("", |(_, r)| r);
        let (symbol, dso) = match rest.rsplit_once(" (") {
            Some((s, d)) => (s, d.trim_end_matches(')')),
            None => (rest, ""),
        };
        let symbol = strip_offset(symbol);
        let dso = Path::new(dso)
            .file_name()
            .map_or(dso.to_string(), |f| f.to_string_lossy().into_owned());
        let name = if symbol == "[unknown]" {
            format!("[unknown] ({dso})")
        } else if dso.starts_with("[kernel") {
            format!("{symbol} [kernel]")
        } else {
            strip_hash(symbol).to_string()
        };
        stack.frames.push(name);
    }
    if let Some(stack) = current
        && !stack.frames.is_empty()
    {
        stacks.push(stack);
    }
    stacks
}

/// `foo+0x1a` → `foo`.
fn strip_offset(symbol: &str) -> &str {
    match symbol.rsplit_once("+0x") {
        Some((name, off)) if off.chars().all(|c| c.is_ascii_hexdigit()) => name,
        _ => symbol,
    }
}

/// `foo::bar::h0123456789abcdef` → `foo::bar`.
fn strip_hash(symbol: &str) -> &str {
    match symbol.rsplit_once("::h") {
        Some((name, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
            name
        }
        _ => symbol,
    }
}

fn component(frame: &str) -> Option<&'static str> {
    let frame = if frame.ends_with("[kernel]") {
        "[kernel"
    } else {
        frame
    };
    COMPONENTS
        .iter()
        .find(|(_, patterns)| patterns.iter().any(|p| frame.contains(p)))
        .map(|(name, _)| *name)
}

/// The component a sample's cost belongs to, and the frame that puts it
/// there: the innermost frame of a component other than the allocator,
/// else the innermost allocator frame, else the leaf ("other").
fn owner(frames: &[String]) -> (&'static str, &str) {
    let mut allocator = None;
    for frame in frames {
        match component(frame) {
            Some(ALLOCATOR) => {
                allocator.get_or_insert((ALLOCATOR, frame.as_str()));
            }
            Some(c) => return (c, frame),
            None => {}
        }
    }
    allocator.unwrap_or(("other", frames.first().map_or("", String::as_str)))
}

fn analyse(stacks: &[Stack], frequency: u32) -> Profile {
    let total = stacks.len() as f64;
    let mut self_fn: HashMap<&str, usize> = HashMap::new();
    let mut self_comp: HashMap<&str, usize> = HashMap::new();
    let mut incl_comp: HashMap<&str, usize> = HashMap::new();
    let mut incl_fn: HashMap<&str, usize> = HashMap::new();
    let mut threads: HashMap<&str, usize> = HashMap::new();
    let mut by_comp: HashMap<&str, HashMap<&str, usize>> = HashMap::new();
    for Stack {
        thread,
        frames: stack,
    } in stacks
    {
        *threads.entry(thread).or_default() += 1;
        if let Some(leaf) = stack.first() {
            *self_fn.entry(leaf).or_default() += 1;
        }
        let (comp, frame) = owner(stack);
        *self_comp.entry(comp).or_default() += 1;
        *by_comp.entry(comp).or_default().entry(frame).or_default() += 1;
        let mut comps: Vec<&str> = stack.iter().filter_map(|f| component(f)).collect();
        comps.sort_unstable();
        comps.dedup();
        for c in comps {
            *incl_comp.entry(c).or_default() += 1;
        }
        let mut frames: Vec<&str> = stack.iter().map(String::as_str).collect();
        frames.sort_unstable();
        frames.dedup();
        for f in frames {
            *incl_fn.entry(f).or_default() += 1;
        }
    }
    let top = |map: HashMap<&str, usize>, n: usize| {
        let mut v: Vec<(f64, String)> = map
            .into_iter()
            .map(|(k, c)| (c as f64 / total * 100.0, k.to_string()))
            .collect();
        v.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        v.truncate(n);
        v
    };
    let mut breakdown: Vec<Component> = by_comp
        .into_iter()
        .map(|(name, functions)| {
            let n: usize = functions.values().sum();
            Component {
                name: name.to_string(),
                share: n as f64 / total * 100.0,
                functions: top(functions, 6),
            }
        })
        .collect();
    breakdown.sort_by(|a, b| b.share.total_cmp(&a.share));
    Profile {
        samples: stacks.len(),
        frequency,
        self_top: top(self_fn, 15),
        self_components: top(self_comp, 12),
        inclusive_components: top(incl_comp, 12),
        inclusive_top: top(incl_fn, 40),
        threads: top(threads, 10),
        breakdown,
    }
}

/// Folded stacks, root first, for flame graph tools.
fn write_folded(stacks: &[Stack], path: &Path) -> anyhow::Result<()> {
    let mut folded: HashMap<String, usize> = HashMap::new();
    for stack in stacks {
        let line: Vec<&str> = std::iter::once(stack.thread.as_str())
            .chain(stack.frames.iter().rev().map(String::as_str))
            .collect();
        *folded.entry(line.join(";").replace(' ', "_")).or_default() += 1;
    }
    let mut lines: Vec<String> = folded
        .into_iter()
        .map(|(stack, n)| format!("{stack} {n}"))
        .collect();
    lines.sort();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, lines.join("\n") + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_script_samples_are_parsed_and_attributed() {
        let text = "\
millrace-it 123/124
\t    55d0 serde_json::de::from_slice::h0123456789abcdef+0x1a (/t/millrace-it)
\t    55e0 millrace::pipeline::Pipeline::process::h0123456789abcdef+0x2 (/t/millrace-it)

rdk:broker1 123/125
\t    ffff entry_SYSCALL_64+0x10 ([kernel.kallsyms])
\t    55f0 rd_kafka_poll+0x3 (/t/millrace-it)

";
        let stacks = parse_script(text);
        assert_eq!(
            stacks[0].frames,
            vec![
                "serde_json::de::from_slice",
                "millrace::pipeline::Pipeline::process"
            ]
        );
        assert_eq!(stacks[0].thread, "millrace-it");
        let p = analyse(&stacks, 99);
        assert_eq!(p.samples, 2);
        let share = |list: &[(f64, String)], name: &str| {
            list.iter().find(|(_, n)| n == name).map(|(s, _)| *s)
        };
        assert_eq!(share(&p.self_components, "JSON (serde_json)"), Some(50.0));
        assert_eq!(
            share(
                &p.self_components,
                "kernel (system calls, network, page faults)"
            ),
            Some(50.0)
        );
        assert_eq!(share(&p.inclusive_components, "librdkafka"), Some(50.0));
        assert_eq!(share(&p.threads, "rdk:broker"), Some(50.0));
        // malloc is its caller's cost; alone, the allocator's.
        let frames = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let stack = frames(&["_int_malloc", "millrace::state::task::Store::remember"]);
        assert_eq!(
            owner(&stack),
            (
                "state layer (task stores, changelog)",
                "millrace::state::task::Store::remember"
            )
        );
        assert_eq!(
            owner(&frames(&["_int_free", "start_thread"])),
            (ALLOCATOR, "_int_free")
        );
        assert_eq!(owner(&frames(&["start_thread"])), ("other", "start_thread"));
        assert_eq!(
            share(&p.inclusive_components, "pipeline and other Millrace code"),
            Some(50.0)
        );
    }
}
