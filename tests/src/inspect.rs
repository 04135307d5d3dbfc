//! Looking at the daemon and the kernel from outside, and poking the daemon:
//! bpftool, the status document, Prometheus samples, the `closed
//! connections` log lines, RFC 3339 times, the server-list API on the control
//! socket, and the YAML of one service entry.
//!
//! Everything but the bpftool helpers and the control-socket calls
//! ([`http_put`], [`put_servers`]) is a pure function over text or a status
//! document.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::Path,
    time::{Duration, SystemTime},
};

use lb_userspace::api::status::{ServiceStatus, Status};

use crate::env::sh;

/// The service named `name` in a status document.
pub fn service<'a>(status: &'a Status, name: &str) -> &'a ServiceStatus {
    status
        .services
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("service {name} not in status {status:?}"))
}

/// The server addresses of service `name`, in status order.
pub fn server_addresses(status: &Status, name: &str) -> Vec<String> {
    service(status, name)
        .servers
        .iter()
        .map(|s| s.address.clone())
        .collect()
}

/// `bpftool -j ARGS` parsed as JSON.
pub fn bpftool(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["-j"];
    all.extend_from_slice(args);
    let out = sh("bpftool", &all);
    if out.trim().is_empty() {
        return serde_json::Value::Array(Vec::new());
    }
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bpftool {args:?} output {out:?}: {e}"))
}

/// Programs attached to a cgroup, as `(attach_type, name)` pairs.
pub fn cgroup_programs(cgroup: &Path) -> Vec<(String, String)> {
    let value = bpftool(&["cgroup", "show", &cgroup.display().to_string()]);
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|p| {
                    (
                        p["attach_type"].as_str().unwrap_or_default().to_owned(),
                        p["name"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Ids of the BPF links attached to the cgroup with id `cgroup_id`.
pub fn cgroup_links(cgroup_id: u64) -> Vec<u64> {
    let value = bpftool(&["link", "show"]);
    value
        .as_array()
        .map(|links| {
            links
                .iter()
                .filter(|l| l["cgroup_id"].as_u64() == Some(cgroup_id))
                .filter_map(|l| l["id"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

/// The BPF links attached to the cgroup with id `cgroup_id`, as (attach
/// type, link id, id of the program it runs), sorted.
pub fn cgroup_link_programs(cgroup_id: u64) -> Vec<(String, u64, u64)> {
    let value = bpftool(&["link", "show"]);
    let mut links: Vec<(String, u64, u64)> = value
        .as_array()
        .map(|links| {
            links
                .iter()
                .filter(|l| l["cgroup_id"].as_u64() == Some(cgroup_id))
                .filter_map(|l| {
                    Some((
                        l["attach_type"].as_str()?.to_owned(),
                        l["id"].as_u64()?,
                        l["prog_id"].as_u64()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    links.sort();
    links
}

/// One `closed connections` line of the daemon's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedLog {
    /// `destroyed=N`.
    pub destroyed: u64,
    /// `micros=M`: from the state change to the last socket destroyed.
    pub micros: u64,
    /// The whole line.
    pub line: String,
}

/// The `closed connections` lines of a daemon log (fields `destroyed=N`
/// and `micros=M`; lines without them are skipped).
pub fn closed_connection_logs(log: &str) -> Vec<ClosedLog> {
    log.lines()
        .filter(|l| l.contains("closed connections"))
        .filter_map(|line| {
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|token| token.strip_prefix(name))
                    .and_then(|v| v.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
            };
            Some(ClosedLog {
                destroyed: field("destroyed=")?,
                micros: field("micros=")?,
                line: line.to_owned(),
            })
        })
        .collect()
}

/// `PUT path` with a JSON body on a control socket; the status code and the body.
pub fn http_put(control: &Path, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
    lb_userspace::api::client::request(&control.into(), "PUT", path, Some(body))
}

/// `PUT /services/{service}/servers` with `servers` as a JSON list, on the
/// control socket `control`; the status code and the body parsed as JSON
/// (`null` if it is not JSON).
pub fn put_servers(control: &Path, service: &str, servers: &[&str]) -> (u16, serde_json::Value) {
    let body = serde_json::to_string(servers).expect("encode server list");
    let (code, text) = http_put(control, &format!("/services/{service}/servers"), &body)
        .unwrap_or_else(|e| panic!("PUT /services/{service}/servers: {e:#}"));
    (
        code,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with `_bucket`, `_sum`, `_count` suffixes as written).
    pub name: String,
    /// Labels in written order.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

/// Parses the samples of a Prometheus text exposition (comments skipped).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(parse_sample)
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let Some(open) = line.find('{') else {
        let (name, value) = line.split_once(char::is_whitespace)?;
        return Some(Sample {
            name: name.to_owned(),
            labels: Vec::new(),
            value: parse_value(value)?,
        });
    };
    let (name, rest) = (&line[..open], &line[open + 1..]);
    let mut labels = Vec::new();
    let mut chars = rest.char_indices();
    let mut key = String::new();
    let end = loop {
        let (i, c) = chars.next()?;
        match c {
            '}' => break i,
            ',' | ' ' => {}
            '=' => {
                // Quoted value with \\, \" and \n escapes.
                let (_, quote) = chars.next()?;
                if quote != '"' {
                    return None;
                }
                let mut value = String::new();
                loop {
                    let (_, c) = chars.next()?;
                    match c {
                        '"' => break,
                        '\\' => match chars.next()?.1 {
                            'n' => value.push('\n'),
                            other => value.push(other),
                        },
                        other => value.push(other),
                    }
                }
                labels.push((std::mem::take(&mut key), value));
            }
            other => key.push(other),
        }
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value: parse_value(&rest[end + 1..])?,
    })
}

fn parse_value(text: &str) -> Option<f64> {
    match text.split_whitespace().next()? {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        value => value.parse().ok(),
    }
}

/// The samples of metric `name` that carry all of `labels`.
pub fn samples<'a>(all: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    all.iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .collect()
}

/// The sum of the samples of metric `name` that carry all of `labels`, or
/// `None` when there is no such sample.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let all = parse_metrics(text);
    let found = samples(&all, name, labels);
    (!found.is_empty()).then(|| found.iter().map(|s| s.value).sum())
}

/// Parses the RFC 3339 UTC times the daemon writes
/// (`2026-11-22T05:00:00.123Z`, also without fraction or with `+00:00`).
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let text = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix("+00:00"))?;
    let (date, time) = text.split_once(['T', 't', ' '])?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<u64>().ok());
    let (hour, minute, second) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    // Days from 1970-01-01 to the date (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let nanos = if fraction.is_empty() {
        0
    } else {
        let digits: String = fraction.chars().take(9).collect();
        let value: u64 = digits.parse().ok()?;
        value * 10u64.pow(9 - digits.len() as u32)
    };
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(nanos))
}

/// One `services:` entry in the config's YAML: a TCP service `name` on
/// `vip` with `servers`, an optional `default_server` and `health_check`
/// given as an inline YAML mapping (e.g. `"{ kind: tcp, interval: 200ms }"`).
pub fn service_yaml(
    name: &str,
    vip: &str,
    servers: &[SocketAddr],
    default_server: Option<SocketAddr>,
    health_check: &str,
) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    let mut yaml = format!(
        "  - name: {name}\n    vip: \"{vip}\"\n    protocol: tcp\n    servers: [{}]\n",
        servers.join(", ")
    );
    if let Some(default) = default_server {
        let _ = writeln!(yaml, "    default_server: \"{default}\"");
    }
    let _ = writeln!(yaml, "    health_check: {health_check}");
    yaml
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_samples_are_parsed_with_their_labels() {
        let text = "# TYPE x counter\n\
                    daas_lb_fail_open_total{name=\"a\\\"b\"} 2\n\
                    k3s_loadbalancer_dial_duration_seconds_bucket{name=\"api\",status=\"success\",le=\"+Inf\"} 3\n\
                    k3s_loadbalancer_dial_duration_seconds_sum{name=\"api\",status=\"success\"} 0.0125\n\
                    up 1\n";
        assert_eq!(
            metric(text, "daas_lb_fail_open_total", &[("name", "a\"b")]),
            Some(2.0)
        );
        assert_eq!(
            metric(
                text,
                "k3s_loadbalancer_dial_duration_seconds_bucket",
                &[("le", "+Inf")]
            ),
            Some(3.0)
        );
        assert_eq!(
            metric(text, "k3s_loadbalancer_dial_duration_seconds_sum", &[]),
            Some(0.0125)
        );
        assert_eq!(metric(text, "up", &[]), Some(1.0));
        assert_eq!(metric(text, "up", &[("name", "x")]), None);
    }

    #[test]
    fn rfc3339_times_are_parsed() {
        let t = parse_rfc3339("2026-11-22T05:00:00.123Z").unwrap();
        let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(secs, Duration::from_millis(1_795_323_600_123));
        assert_eq!(
            parse_rfc3339("1970-01-01T00:00:01Z"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1))
        );
        assert_eq!(parse_rfc3339("garbage"), None);
    }

    #[test]
    fn closed_connection_lines_are_found() {
        let log = "2026-11-22T05:47:29.554939Z  INFO lb_userspace::controller: closed connections \
                   service=\"api\" servers=\"127.0.0.11:6443\" destroyed=1 already_gone=0 failed=0 \
                   micros=1880 destroy_micros=1705\nother line\n";
        let found = closed_connection_logs(log);
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].destroyed, found[0].micros), (1, 1880));
    }
}
