//! `mcrelay bench`: drives a relay with many clients and reports
//! throughput, loss, latency and what each delivery cost the relay in CPU;
//! `--limit` measures the machine's ceiling for the same work on one core,
//! `--footprint` the binary size and memory a router would pay,
//! `--federation` two relays federated through a NATS server.
//!
//! The bench is a client, not the relay, so it may use threads: receivers
//! are spread over a few threads, each polling its share of the client
//! sockets. It reports its own CPU use so a saturated bench is not taken
//! for a slow relay.

mod child;
mod churn;
mod federation;
mod footprint;
mod hist;
mod limit;
mod load;
mod procfs;
mod report;
mod swarm;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use super::{finish, many, opt};
use child::Relay;
use churn::Churn;
use load::{Load, Outcome};

const HELP: &str = "\
mcrelay bench: measure a relay under load

USAGE:
    mcrelay bench [OPTIONS]              drive a relay (started as a child unless --target)
    mcrelay bench --limit [OPTIONS]      the machine's limit: encrypt + send on one core
    mcrelay bench --footprint [OPTIONS]  binary size and memory, checked against the limits
    mcrelay bench --federation [OPTIONS] two relays federated through nats-server
                                         its own options: mcrelay bench --federation --help

RELAY UNDER TEST:
    --target HOST:PORT     a running relay [default: start `serve` on free loopback ports]
    --server-pid PID       with --target: read that process's CPU time from /proc
    --server-exe PATH      binary to start as the relay [default: this one]; repeat to
                           compare binaries side by side (runs alternate between them)
    --server-arg ARG       extra flag for the started relay's `serve`; repeatable

LOAD:
    --clients N            receiving clients [default: 50]
    --passive N            of which N only take their datagrams off the socket, unopened:
                           hundreds of group members without one signature check each
                           per message in the bench; their datagrams count as
                           deliveries, loss and latency are the others' [default: 0]
    --senders N            sending clients (they also get each other's messages) [default: 1]
    --body BYTES           message body size, at least 20 [default: 100]
    --duration SECS        measured time per run [default: 5]
    --messages N           end each run after N messages instead of --duration
    --warmup SECS          sending before the measurement starts [default: 1]
    --window N             closed loop: messages in flight per sender [default: 32]
    --rate N               open loop: messages per second over all senders
    --threads N            receiver threads [default: 2]
    --nap-us N             a receiver thread that got datagrams sleeps this long before
                           polling again, so it is woken once per burst (0: every time)
                           [default: 100]
    --runs N               runs per relay and mode; medians are reported [default: 3]
    --group-mode           receivers ask for group mode (protocol v2): one signed
                           multicast datagram per message for all of them, on
                           loopback (the senders are served one by one);
                           the same as --modes group
    --modes LIST           delivery modes to measure, comma-separated: per-recipient
                           (one sealed datagram per receiver), group; with both,
                           runs alternate between them on the same binary and the
                           medians are shown side by side [default: per-recipient]
    --compare-modes        the same as --modes per-recipient,group
    --churn RATE           extra clients join and leave at RATE a second during the run
                           (warm-up included): each completes a handshake (in group
                           mode when the receivers are), stays --churn-stay, sends
                           BYE; loss counts the stable receivers only
    --churn-stay SECS      how long each churner stays [default: 0.5]

LIMIT AND FOOTPRINT:
    --limit-secs SECS      length of each limit loop [default: 1]
    --no-limit             do not measure the limit after a closed-loop benchmark
    --footprint-clients N  clients registered for the memory check [default: 1000]

OUTPUT:
    --json                 one JSON object on stdout instead of the text report
    --quiet                no progress line
";

/// Receivers' nap (see `--nap-us`): well under the latency target (2 ms)
/// and long enough to gather a burst of a 50-client fan-out.
const DEFAULT_NAP_US: u64 = 100;

/// The two ways the relay can deliver a message to the receivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Delivery {
    /// One datagram sealed for each receiver's session (protocol v1 or v2
    /// without group mode).
    PerRecipient,
    /// One signed GROUP_DATA multicast on the downlink for all of them.
    Group,
}

impl Delivery {
    fn name(self) -> &'static str {
        match self {
            Delivery::PerRecipient => "per-recipient",
            Delivery::Group => "group",
        }
    }

    fn parse(s: &str) -> Result<Delivery, String> {
        match s.trim() {
            "per-recipient" => Ok(Delivery::PerRecipient),
            "group" => Ok(Delivery::Group),
            m => Err(format!(
                "--modes: '{m}' is not a delivery mode (per-recipient, group)"
            )),
        }
    }
}

/// Parsed `bench` flags.
struct Opts {
    target: Option<SocketAddr>,
    server_pid: Option<u32>,
    exes: Vec<PathBuf>,
    server_args: Vec<String>,
    /// Delivery modes, each measured on every binary (runs alternate).
    modes: Vec<Delivery>,
    load: Load,
    runs: usize,
    limit_secs: f64,
    no_limit: bool,
    footprint_clients: usize,
    json: bool,
}

/// Parses `bench` flags and runs the chosen measurement.
pub fn run(mut args: pico_args::Arguments) -> Result<(), String> {
    if args.contains("--federation") {
        return federation::run(args);
    }
    if args.contains(["-h", "--help"]) {
        print!("{HELP}");
        return Ok(());
    }
    let limit_only = args.contains("--limit");
    let footprint_only = args.contains("--footprint");
    let target: Option<String> = opt(&mut args, "--target")?;
    let target = target
        .map(|t| {
            t.to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or(format!("--target {t} is not a HOST:PORT"))
        })
        .transpose()?;
    let secs = |v: Option<f64>, d: f64, name: &str| -> Result<Duration, String> {
        let v = v.unwrap_or(d);
        Duration::try_from_secs_f64(v)
            .map_err(|_| format!("{name} {v} is not a duration in seconds"))
    };
    let mut load = Load {
        clients: opt(&mut args, "--clients")?.unwrap_or(50),
        passive: opt(&mut args, "--passive")?.unwrap_or(0),
        senders: opt(&mut args, "--senders")?.unwrap_or(1),
        body: opt(&mut args, "--body")?.unwrap_or(100),
        duration: secs(opt(&mut args, "--duration")?, 5.0, "--duration")?,
        messages: opt(&mut args, "--messages")?,
        warmup: secs(opt(&mut args, "--warmup")?, 1.0, "--warmup")?,
        window: opt(&mut args, "--window")?.unwrap_or(32),
        rate: opt(&mut args, "--rate")?,
        threads: opt(&mut args, "--threads")?.unwrap_or(2),
        nap: Duration::from_micros(opt(&mut args, "--nap-us")?.unwrap_or(DEFAULT_NAP_US)),
        progress: true,
        group: false,
        churn: None,
    };
    let group_mode = args.contains("--group-mode");
    let compare = args.contains("--compare-modes");
    let modes: Option<String> = opt(&mut args, "--modes")?;
    let modes = match (modes, compare, group_mode) {
        (None, false, false) => vec![Delivery::PerRecipient],
        (None, false, true) => vec![Delivery::Group],
        (None, true, false) => vec![Delivery::PerRecipient, Delivery::Group],
        (Some(m), false, false) => {
            let mut v = Vec::new();
            for d in m.split(',').map(Delivery::parse) {
                let d = d?;
                if !v.contains(&d) {
                    v.push(d);
                }
            }
            v
        }
        _ => return Err("--modes, --compare-modes and --group-mode exclude each other".into()),
    };
    let churn: Option<f64> = opt(&mut args, "--churn")?;
    let stay = secs(opt(&mut args, "--churn-stay")?, 0.5, "--churn-stay")?;
    if churn.is_some_and(|r| !(r > 0.0 && r.is_finite() && r <= 10_000.0)) {
        return Err("--churn must be a rate above 0 and at most 10000 a second".into());
    }
    load.churn = churn.map(|rate| Churn {
        rate,
        stay,
        group: false,
    });
    let mut o = Opts {
        target,
        server_pid: opt(&mut args, "--server-pid")?,
        exes: many(&mut args, "--server-exe")?,
        server_args: many(&mut args, "--server-arg")?,
        modes,
        runs: opt(&mut args, "--runs")?.unwrap_or(3),
        limit_secs: secs(opt(&mut args, "--limit-secs")?, 1.0, "--limit-secs")?.as_secs_f64(),
        no_limit: args.contains("--no-limit"),
        footprint_clients: opt(&mut args, "--footprint-clients")?.unwrap_or(1000),
        json: args.contains("--json"),
        load,
    };
    o.load.progress = !args.contains("--quiet");
    finish(args)?;
    check(&o)?;
    if limit_only {
        let l = limit::measure(
            o.load.body,
            o.load.clients,
            o.limit_secs,
            o.runs,
            o.load.nap,
        )?;
        report::limit(&o, &l);
        Ok(())
    } else if footprint_only {
        let exe = child::resolve_exe(o.exes.first().map(PathBuf::as_path))?;
        let f = footprint::measure(&exe, o.footprint_clients)?;
        report::footprint(&o, &exe, &f);
        match f.violations() {
            v if v.is_empty() => Ok(()),
            v => Err(format!("footprint over the limits: {}", v.join("; "))),
        }
    } else {
        relay(&o)
    }
}

fn check(o: &Opts) -> Result<(), String> {
    let l = &o.load;
    if l.clients == 0 || l.senders == 0 || l.threads == 0 || l.window == 0 || o.runs == 0 {
        return Err(
            "--clients, --senders, --threads, --window and --runs must be at least 1".into(),
        );
    }
    if l.passive >= l.clients {
        return Err("--passive must leave at least one of the --clients active".into());
    }
    if l.body < load::STAMP_LEN {
        return Err(format!(
            "--body {} is too small: the send time stamp needs {} bytes",
            l.body,
            load::STAMP_LEN
        ));
    }
    if l.rate.is_some_and(|r: f64| !(r > 0.0 && r.is_finite())) {
        return Err("--rate must be a positive number".into());
    }
    if o.target.is_some() && !o.exes.is_empty() {
        return Err("--target and --server-exe exclude each other".into());
    }
    if o.server_pid.is_some() && o.target.is_none() {
        return Err("--server-pid goes with --target (a started relay's pid is known)".into());
    }
    Ok(())
}

/// One column of the report: a relay (binary or target) in one delivery mode.
pub struct Variant {
    /// The binary started, or the target's address.
    pub server: String,
    /// Delivery mode.
    delivery: Delivery,
    /// The column's heading.
    pub label: String,
}

impl Variant {
    /// The delivery mode's name, as `--modes` spells it.
    pub fn delivery(&self) -> &'static str {
        self.delivery.name()
    }
}

/// Every (relay, mode) pair, in the order runs alternate between them.
fn variants(o: &Opts) -> Result<Vec<Variant>, String> {
    let servers: Vec<String> = match o.target {
        Some(t) => vec![t.to_string()],
        None if o.exes.is_empty() => vec![child::resolve_exe(None)?.display().to_string()],
        None => o.exes.iter().map(|e| e.display().to_string()).collect(),
    };
    let mut v = Vec::new();
    for s in &servers {
        for &d in &o.modes {
            let label = match (servers.len(), o.modes.len()) {
                (1, 1) if d == Delivery::Group => format!("{s} (group)"),
                (1, 1) => s.clone(),
                (1, _) => d.name().to_string(),
                _ => format!("{s} ({})", d.name()),
            };
            v.push(Variant {
                server: s.clone(),
                delivery: d,
                label,
            });
        }
    }
    Ok(v)
}

/// The relay benchmark: every run of every binary in every mode, then the limit.
fn relay(o: &Opts) -> Result<(), String> {
    let variants = variants(o)?;
    swarm::ensure_fds(fds_needed(o))?;
    let mut results: Vec<Vec<Outcome>> = vec![Vec::new(); variants.len()];
    for run in 0..o.runs {
        // Alternating binaries and modes within each round spreads the
        // machine's drift (other work, thermal state) evenly over them.
        for (i, v) in variants.iter().enumerate() {
            let load = Load {
                group: v.delivery == Delivery::Group,
                ..o.load.clone()
            };
            let out = match o.target {
                Some(t) => load::run(t, o.server_pid, &load)?,
                None => {
                    let relay = Relay::start(&PathBuf::from(&v.server), &relay_args(o))?;
                    let r = load::run(relay.addr, Some(relay.pid), &load)
                        .map_err(|e| format!("{e}\nrelay log:\n{}", relay.log_tail()));
                    relay.stop();
                    r?
                }
            };
            if o.load.progress {
                eprintln!(
                    "run {}/{} {}: {}",
                    run + 1,
                    o.runs,
                    v.label,
                    report::one_line(&out)
                );
            }
            results[i].push(out);
        }
    }
    let limit = if o.no_limit || o.load.rate.is_some() {
        None
    } else {
        Some(limit::measure(
            o.load.body,
            o.load.clients,
            o.limit_secs,
            o.runs,
            o.load.nap,
        )?)
    };
    report::relay(o, &variants, &results, limit.as_ref());
    Ok(())
}

/// Clients the relay may hold at once: receivers, senders and churners.
fn population(o: &Opts) -> usize {
    let churners = o.load.churn.as_ref().map_or(0, Churn::population);
    o.load.clients + o.load.senders + churners
}

/// File descriptors the bench may hold at once: a socket per client, a
/// downlink socket per group member, the poll instances, the relay's pipe.
fn fds_needed(o: &Opts) -> usize {
    2 * population(o) + 64
}

/// Flags for a started relay: generous limits plus the user's own.
fn relay_args(o: &Opts) -> Vec<String> {
    let mut a = child::generous_args(population(o));
    a.extend(o.server_args.iter().cloned());
    a
}

/// The median of some numbers (NaN when there are none).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::{median, Delivery};

    #[test]
    fn delivery_modes_parse() {
        assert_eq!(Delivery::parse(" group"), Ok(Delivery::Group));
        assert_eq!(Delivery::parse("per-recipient"), Ok(Delivery::PerRecipient));
        assert!(Delivery::parse("unicast").is_err());
        assert_eq!(Delivery::Group.name(), "group");
    }

    #[test]
    fn medians() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), 2.5);
        assert!(median(std::iter::empty()).is_nan());
    }
}
