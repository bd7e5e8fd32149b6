//! The proxy's own measurements, as Redis 7.0 reports its own: `SLOWLOG` (`slowlog.c`),
//! `LATENCY` (`latency.c`: the monitor's events and the per-command histograms) and
//! `CONFIG RESETSTAT`, which resets the proxy's statistics and those of every node of every
//! shard (replicas included, so a failover does not bring old figures back).

use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::backend::BackendConn;
use crate::context::ClientCtx;
use crate::replies::Pending;
use crate::resp::{error_reply, reply, Proto, ReplyWriter, Request};
use crate::stats::EventSeries;

/// Redis's `addReplyHelp`: the command's usage line, its lines, then HELP.
fn help(d: &ClientCtx, command: &str, lines: &[&str]) -> Pending {
    Pending::Ready(reply(d.proto(), |w| {
        w.array(lines.len() + 3);
        w.simple(&format!("{command} <subcommand> [<arg> [value] [opt] ...]. Subcommands are:"));
        for line in lines {
            w.simple(line);
        }
        w.simple("HELP").simple("    Prints this help.");
    }))
}

/// `SLOWLOG GET [count] | LEN | RESET | HELP`.
pub(crate) fn slowlog(d: &ClientCtx, sub: &str, request: &Request) -> Pending {
    let slowlog = &d.proxy.stats.slowlog;
    let args = &request.args;
    match (sub, args.len()) {
        ("help", 2) => help(
            d,
            "SLOWLOG",
            &[
                "GET [<count>]",
                "    Return top <count> entries from the slowlog (default: 10, -1 mean all).",
                "    Entries are made of:",
                "    id, timestamp, time in microseconds, arguments array, client IP and port,",
                "    client name",
                "LEN",
                "    Return the length of the slowlog.",
                "RESET",
                "    Reset the slowlog.",
            ],
        ),
        ("reset", 2) => {
            slowlog.reset();
            Pending::Ready(reply(d.proto(), |w| {
                w.simple("OK");
            }))
        }
        ("len", 2) => Pending::Ready(reply(d.proto(), |w| {
            w.int(slowlog.len() as i64);
        })),
        ("get", 2 | 3) => {
            let count = match args.get(2) {
                None => Some(10),
                Some(count) => match crate::resp::parse_int(count) {
                    Some(-1) => None,
                    // A count past memory is as good as all of them.
                    Some(n) if n >= 0 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
                    _ => return Pending::error("ERR count should be greater than or equal to -1"),
                },
            };
            let entries = slowlog.newest(count);
            Pending::Ready(reply(d.proto(), |w| {
                w.array(entries.len());
                for entry in &entries {
                    w.array(6).int(entry.id as i64).int(entry.time as i64).int(entry.duration_usec as i64);
                    w.array(entry.args.len());
                    for arg in &entry.args {
                        w.bulk(arg);
                    }
                    w.bulk(entry.client_addr.as_bytes()).bulk(entry.client_name.as_bytes());
                }
            }))
        }
        _ => subcommand_syntax_error(request),
    }
}

/// Redis's `addReplySubcommandSyntaxError`.
fn subcommand_syntax_error(request: &Request) -> Pending {
    let sub = String::from_utf8_lossy(&request.args[1][..request.args[1].len().min(128)]).into_owned();
    let command = String::from_utf8_lossy(&request.args[0]).to_uppercase();
    Pending::error(&format!("ERR unknown subcommand or wrong number of arguments for '{sub}'. Try {command} HELP."))
}

/// `LATENCY LATEST | HISTORY event | RESET [event …] | DOCTOR | HISTOGRAM [command …] | HELP`.
pub(crate) fn latency(d: &ClientCtx, sub: &str, request: &Request) -> Pending {
    let monitor = &d.proxy.stats.latency;
    let args = &request.args;
    let proto = d.proto();
    match (sub, args.len()) {
        ("latest", 2) => {
            let events = monitor.events();
            Pending::Ready(reply(proto, |w| {
                w.array(events.len());
                for (event, series) in &events {
                    let last = series.samples.back().copied().unwrap_or(crate::stats::LatencySample::default());
                    w.array(4).bulk(event.as_bytes()).int(last.time as i64).int(last.latency_ms as i64);
                    w.int(series.max_ms as i64);
                }
            }))
        }
        ("history", 3) => {
            let name = String::from_utf8_lossy(&args[2]).into_owned();
            let events = monitor.events();
            let samples = events.get(name.as_str()).map(|s| s.samples.clone()).unwrap_or_default();
            Pending::Ready(reply(proto, |w| {
                w.array(samples.len());
                for sample in &samples {
                    w.array(2).int(sample.time as i64).int(sample.latency_ms as i64);
                }
            }))
        }
        ("reset", _) => {
            let names: Vec<String> = args[2..].iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            let resets = monitor.reset(&names);
            Pending::Ready(reply(proto, |w| {
                w.int(resets as i64);
            }))
        }
        ("graph", 3) => {
            let name = String::from_utf8_lossy(&args[2]).into_owned();
            let events = monitor.events();
            match events.get(name.as_str()).filter(|series| !series.samples.is_empty()) {
                Some(series) => {
                    let graph = crate::stats::latency_graph(&name, series, crate::units::unix_ms() / 1000);
                    Pending::Ready(reply(proto, |w| {
                        w.verbatim(&graph);
                    }))
                }
                None => Pending::error(&format!("ERR No samples available for event '{name}'")),
            }
        }
        ("doctor", 2) => {
            let report = doctor(&monitor.events(), monitor.threshold_ms.load(Ordering::Relaxed));
            Pending::Ready(reply(proto, |w| {
                w.verbatim(&report);
            }))
        }
        ("histogram", _) => Pending::Ready(reply(proto, |w| histogram(d, &args[2..], w))),
        ("help", 2) => help(
            d,
            "LATENCY",
            &[
                "DOCTOR",
                "    Return a human readable latency analysis report.",
                "GRAPH <event>",
                "    Return an ASCII latency graph for the <event> class.",
                "HISTORY <event>",
                "    Return time-latency samples for the <event> class.",
                "LATEST",
                "    Return the latest latency samples for all events.",
                "RESET [<event> ...]",
                "    Reset latency data of one or more <event> classes.",
                "    (default: reset all data for all event classes)",
                "HISTOGRAM [COMMAND ...]",
                "    Return a cumulative distribution of latencies in the format of a histogram for the specified command names.",
                "    If no commands are specified then all histograms are replied.",
            ],
        ),
        _ => subcommand_syntax_error(request),
    }
}

/// `LATENCY HISTOGRAM`: for each command with calls (all, or the named ones that exist), its
/// calls and cumulative counts at power-of-two microsecond steps.
fn histogram(d: &ClientCtx, names: &[Bytes], w: &mut ReplyWriter) {
    let commands: Vec<_> = if names.is_empty() {
        d.proxy.table.all()
    } else {
        names
            .iter()
            .filter_map(|name| {
                let name = String::from_utf8_lossy(name).to_ascii_lowercase();
                match name.split_once('|') {
                    Some((container, sub)) => d.proxy.table.get(container)?.subcommands.get(sub).cloned(),
                    None => d.proxy.table.get(&name).cloned(),
                }
            })
            .collect()
    };
    let with_data: Vec<_> = commands.iter().filter_map(|c| Some((c, c.stats.histogram()?))).collect();
    w.map(with_data.len());
    for (command, histogram) in with_data {
        let steps = histogram.cumulative_usec();
        w.bulk(command.name.as_bytes()).map(2).bulk(b"calls").int(histogram.total() as i64);
        w.bulk(b"histogram_usec").map(steps.len());
        for (usec, count) in steps {
            w.int(usec as i64).int(count as i64);
        }
    }
}

/// `LATENCY DOCTOR`'s report, with Redis's wording, from the proxy's events.
fn doctor(events: &std::collections::BTreeMap<&'static str, EventSeries>, threshold_ms: u64) -> String {
    if events.is_empty() && threshold_ms == 0 {
        return "I'm sorry, Dave, I can't do that. Latency monitoring is disabled in this Redis instance. You may use \"CONFIG SET latency-monitor-threshold <milliseconds>.\" in order to enable it. If we weren't in a deep space mission I'd suggest to take a look at https://redis.io/topics/latency-monitor.\n".into();
    }
    if events.is_empty() {
        return "Dave, no latency spike was observed during the lifetime of this Redis instance, not in the slightest bit. I honestly think you ought to sit down calmly, take a stress pill, and think things over.\n".into();
    }
    let mut report = String::from(
        "Dave, I have observed latency spikes in this Redis instance. You don't mind talking about it, do you Dave?\n\n",
    );
    for (i, (event, series)) in events.iter().enumerate() {
        let samples = series.samples.len().max(1) as u64;
        let average = series.samples.iter().map(|s| s.latency_ms).sum::<u64>() / samples;
        let deviation = series.samples.iter().map(|s| s.latency_ms.abs_diff(average)).sum::<u64>() / samples;
        let first = series.samples.front().map_or(0, |s| s.time);
        let last = series.samples.back().map_or(0, |s| s.time);
        report.push_str(&format!(
            "{}. {event}: {samples} latency spikes (average {average}ms, mean deviation {deviation}ms, period {:.2} sec). Worst all time event {}ms.\n",
            i + 1,
            (last - first) as f64 / samples as f64,
            series.max_ms
        ));
    }
    report.push_str("\nWhile there are latency events logged, I'm not able to suggest any easy fix. Please use the Redis community to get some help, providing this report in your help request.\n");
    report
}

/// `CONFIG RESETSTAT`: the proxy's counters and command statistics, then every node's. Every
/// primary must answer OK; a replica that cannot be reached is logged, not an error (it is
/// reset when it is back and the command is sent again).
pub(crate) fn resetstat(d: &ClientCtx) -> Pending {
    let proxy = d.proxy.clone();
    let proto = d.proto();
    Pending::Deferred(Box::pin(async move {
        proxy.stats.reset();
        for command in proxy.table.all() {
            command.stats.reset();
        }
        // `rdb_saves`, which Redis's `resetServerStats` clears too.
        for snapshots in proxy.shards.iter().filter_map(|shard| shard.snapshots.as_ref()) {
            snapshots.activity.saves.store(0, Ordering::Relaxed);
        }
        proxy.shards.iter().for_each(|shard| shard.memory.reset_stats());
        let mut calls = Vec::new();
        for shard in &proxy.shards {
            let nodes = std::iter::once((shard.current_primary(), true))
                .chain(shard.current_replicas().into_iter().map(|replica| (replica, false)));
            for (addr, required) in nodes {
                let conn = BackendConn::spawn(&addr, Proto::Resp2, proxy.backend.clone());
                calls.push((
                    conn.send(Bytes::from_static(b"*2\r\n$6\r\nCONFIG\r\n$9\r\nRESETSTAT\r\n")),
                    addr,
                    required,
                    conn,
                ));
            }
        }
        let timeout = std::time::Duration::from_millis(proxy.cfg.backend_timeout_ms);
        for (answer, addr, required, _conn) in calls {
            let answer = match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(Ok(answer))) if &answer[..] == b"+OK\r\n" => continue,
                Ok(Ok(Ok(answer))) => String::from_utf8_lossy(&answer).trim().to_string(),
                Ok(Ok(Err(e))) => e.to_string(),
                Ok(Err(_)) => "the connection was dropped".into(),
                Err(_) => "no answer in time".into(),
            };
            if required {
                return error_reply(&format!("ERR memlog: CONFIG RESETSTAT failed on primary {addr}: {answer}"));
            }
            tracing::warn!(node = %addr, "CONFIG RESETSTAT not applied on a replica: {answer}");
        }
        reply(proto, |w| {
            w.simple("OK");
        })
    }))
}
