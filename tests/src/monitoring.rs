//! The monitoring files of `scripts/monitoring/` (the Grafana dashboard and
//! the Prometheus alerting rules), read the way Grafana and Prometheus read
//! them, and a real Prometheus server (Debian package `prometheus`) for the
//! tests that evaluate them against a live daemon (`tests/tests/obs.rs`).
//!
//! The `PromQL` helpers here are deliberately small: they find metric names,
//! label names and a rule's top-level threshold by scanning tokens outside
//! quotes, braces and brackets. They are checked against the real parser
//! anyway: every expression they touch is evaluated by Prometheus.
//!
//! [`Prometheus`] is killed on drop (also while a test unwinds), and its
//! TSDB lives in the caller's temp directory; every wait is bounded.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::env::KillOnDrop;

/// `scripts/monitoring/` of this checkout.
pub fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/monitoring")
}

/// The alerting rules file.
pub fn rules_file() -> PathBuf {
    monitoring_dir().join("daas-lb.rules.yml")
}

/// The Grafana dashboard.
pub fn dashboard_file() -> PathBuf {
    monitoring_dir().join("daas-lb.dashboard.json")
}

/// The Prometheus job name the rules and the dashboard expect.
pub const JOB: &str = "daas-lb";

/// One query of a dashboard panel.
#[derive(Debug, Clone)]
pub struct PanelQuery {
    /// The panel's title.
    pub panel: String,
    /// The target's `refId`.
    pub ref_id: String,
    /// The `PromQL` as written, with Grafana variables.
    pub expr: String,
}

/// The dashboard as JSON (panics naming the file if it does not parse).
pub fn dashboard() -> Value {
    let path = dashboard_file();
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every target `expr` of every panel (rows' nested panels included).
pub fn dashboard_queries(dashboard: &Value) -> Vec<PanelQuery> {
    fn walk(panels: &Value, out: &mut Vec<PanelQuery>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or_default();
            for target in panel["targets"].as_array().into_iter().flatten() {
                out.push(PanelQuery {
                    panel: title.to_owned(),
                    ref_id: target["refId"].as_str().unwrap_or_default().to_owned(),
                    expr: target["expr"]
                        .as_str()
                        .unwrap_or_else(|| panic!("panel {title:?}: a target without expr"))
                        .to_owned(),
                });
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The dashboard's template variables and the value a test substitutes for
/// each: the `allValue` of a query variable (`.*`), none for the data
/// source.
pub fn dashboard_variables(dashboard: &Value) -> BTreeMap<String, String> {
    dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            (
                v["name"].as_str().expect("variable name").to_owned(),
                v["allValue"].as_str().unwrap_or(".*").to_owned(),
            )
        })
        .collect()
}

/// `expr` with Grafana's `$__rate_interval`/`$__interval` replaced by
/// `interval` and every `$var`/`${var}` of `variables` by its value.
/// Panics on any other `$` reference (Prometheus would reject it anyway).
pub fn grafana_to_promql(
    expr: &str,
    variables: &BTreeMap<String, String>,
    interval: &str,
) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}').expect("unclosed ${");
            (&braced[..end], end + 2)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        match name {
            "__rate_interval" | "__interval" => out.push_str(interval),
            name => out.push_str(
                variables
                    .get(name)
                    .unwrap_or_else(|| panic!("{expr}: unknown variable ${name}")),
            ),
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// One alerting rule.
#[derive(Debug, Clone)]
pub struct AlertRule {
    /// `alert:`.
    pub name: String,
    /// `expr:`.
    pub expr: String,
    /// `for:` (empty when absent).
    pub for_: String,
    /// `labels:`.
    pub labels: BTreeMap<String, String>,
    /// `annotations:`.
    pub annotations: BTreeMap<String, String>,
}

/// The alerting rules of every group of the rules file (panics naming the
/// file if it does not parse).
pub fn alert_rules() -> Vec<AlertRule> {
    let path = rules_file();
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let doc: Value =
        serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let strings = |v: &Value| -> BTreeMap<String, String> {
        v.as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect()
    };
    doc["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|rule| {
            Some(AlertRule {
                name: rule["alert"].as_str()?.to_owned(),
                expr: rule["expr"].as_str().expect("rule expr").to_owned(),
                for_: rule["for"].as_str().unwrap_or_default().to_owned(),
                labels: strings(&rule["labels"]),
                annotations: strings(&rule["annotations"]),
            })
        })
        .collect()
}

/// A token of `PromQL` outside string literals.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// An identifier (metric, function, keyword or label name).
    Ident(String),
    /// A number or a duration.
    Number(String),
    /// Anything else, one operator or punctuation at a time.
    Punct(String),
    /// A quoted string.
    Str,
}

/// Splits `PromQL` into tokens.
fn tokens(expr: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = expr.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let mut ident = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                    ident.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(Token::Ident(ident));
        } else if c.is_ascii_digit() || c == '.' {
            let mut number = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '.' {
                    number.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(Token::Number(number));
        } else if c == '"' || c == '\'' || c == '`' {
            chars.next();
            while let Some(d) = chars.next() {
                if d == '\\' {
                    chars.next();
                } else if d == c {
                    break;
                }
            }
            out.push(Token::Str);
        } else {
            chars.next();
            let mut op = c.to_string();
            if let Some(&next) = chars.peek()
                && matches!((c, next), ('=' | '!' | '<' | '>', '=') | ('=' | '!', '~'))
            {
                op.push(next);
                chars.next();
            }
            out.push(Token::Punct(op));
        }
    }
    out
}

/// Keywords and aggregation modifiers that are not metric names.
const KEYWORDS: [&str; 12] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
];

/// The metric names `expr` selects, and the label names it matches on or
/// groups by.
pub fn names_in(expr: &str) -> (Vec<String>, Vec<String>) {
    let tokens = tokens(expr);
    let (mut metrics, mut labels) = (Vec::new(), Vec::new());
    // Inside `{...}`: label matchers; inside `by (...)`: label lists.
    let (mut in_braces, mut in_brackets, mut label_list) = (false, false, false);
    for (i, token) in tokens.iter().enumerate() {
        let next = tokens.get(i + 1);
        match token {
            Token::Punct(p) => match p.as_str() {
                "{" => in_braces = true,
                "}" => in_braces = false,
                "[" => in_brackets = true,
                "]" => in_brackets = false,
                ")" => label_list = false,
                _ => {}
            },
            // A duration's unit inside `[...]`.
            Token::Ident(_) if in_brackets => {}
            Token::Ident(ident) if in_braces || label_list => labels.push(ident.clone()),
            Token::Ident(ident) => {
                let lower = ident.to_ascii_lowercase();
                if matches!(lower.as_str(), "by" | "without" | "on" | "ignoring") {
                    label_list = next == Some(&Token::Punct("(".to_owned()));
                } else if next == Some(&Token::Punct("(".to_owned()))
                    || matches!(next, Some(Token::Ident(n)) if matches!(n.as_str(), "by" | "without"))
                    || KEYWORDS.contains(&lower.as_str())
                    || lower == "nan"
                {
                    // A function call or a keyword.
                } else {
                    metrics.push(ident.clone());
                }
            }
            Token::Number(_) | Token::Str => {}
        }
    }
    (metrics, labels)
}

/// The left side of `expr`'s top-level comparison with a number (`X > 50`
/// -> `X`), i.e. the value an alert's threshold is applied to; `None`
/// without one.
pub fn strip_threshold(expr: &str) -> Option<String> {
    let chars: Vec<(usize, char)> = expr.char_indices().collect();
    let (mut depth, mut quote, mut last) = (0i32, None, None);
    for (i, &(at, c)) in chars.iter().enumerate() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        let prev = i.checked_sub(1).map(|j| chars[j].1);
        let next = chars.get(i + 1).map(|&(_, c)| c);
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '(' | '{' | '[' => depth += 1,
            ')' | '}' | ']' => depth -= 1,
            // The first character of `>`, `<`, `>=`, `<=`, `==`, `!=`.
            '>' | '<' | '=' | '!' if depth == 0 && !matches!(prev, Some('=' | '!' | '<' | '>')) => {
                let two = next == Some('=');
                if two || matches!(c, '>' | '<') {
                    last = Some((at, if two { 2 } else { 1 }));
                }
            }
            _ => {}
        }
    }
    let (at, len) = last?;
    let right = expr[at + len..].trim();
    let right = right.strip_prefix("bool").map_or(right, str::trim);
    right.parse::<f64>().ok()?;
    Some(expr[..at].trim().to_owned())
}

/// Percent-encodes `text` for a URL query value.
fn encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// A tool from the Debian package `prometheus` (`promtool`, `prometheus`):
/// its path, or `None` (with a message) when it is missing and `CI` is not
/// `true`; under `CI=true` a missing tool panics.
pub fn prometheus_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but there is no {name} (apt-get install prometheus; `CI=true cargo xtask setup` does)"
        );
        eprintln!("skipping: no {name} (apt-get install prometheus; CI=true makes this a failure)");
    }
    found
}

/// A real Prometheus server scraping `targets` every second as job
/// [`JOB`], evaluating the rules file every second; killed on drop.
pub struct Prometheus {
    child: KillOnDrop,
    log: PathBuf,
    /// Where its HTTP API listens.
    pub addr: SocketAddr,
}

impl Prometheus {
    /// Starts `binary` with a config written to `dir` (its TSDB goes to
    /// `dir/tsdb`), listening on `addr`, and waits (bounded) until it is
    /// ready.
    pub fn start(binary: &Path, dir: &Path, addr: SocketAddr, targets: &[SocketAddr]) -> Self {
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files: [\"{}\"]\n\
             scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: [{}]\n",
            rules_file().display(),
            targets.join(", ")
        );
        let config_path = dir.join("prometheus.yml");
        fs::write(&config_path, config).expect("write prometheus.yml");
        let log = dir.join("prometheus.log");
        let log_file = fs::File::create(&log).expect("create prometheus.log");
        let child = KillOnDrop::spawn(
            Command::new(binary)
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("tsdb").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn")
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("dup log"))
                .stderr(log_file),
            None,
        )
        .expect("start prometheus");
        let mut prometheus = Self { child, log, addr };
        prometheus.wait_ready(Duration::from_secs(20));
        prometheus
    }

    fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok((200, _)) =
                lb_userspace::api::client::request(&self.addr.into(), "GET", "/-/ready", None)
            {
                return;
            }
            if let Ok(Some(code)) = self.child.0.try_wait() {
                panic!("prometheus exited ({code}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within {within:?}:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` on its API: the `data` of a `success` answer.
    fn api(&self, path: &str) -> anyhow::Result<Value> {
        let (code, body) = lb_userspace::api::client::request(&self.addr.into(), "GET", path, None)
            .with_context(|| format!("GET {path} on prometheus {}", self.addr))?;
        let answer: Value = serde_json::from_str(&body)
            .with_context(|| format!("GET {path} answered {code}, not JSON: {body}"))?;
        if answer["status"] != "success" {
            bail!(
                "GET {path} answered {code}: {} {}",
                answer["errorType"],
                answer["error"]
            );
        }
        Ok(answer["data"].clone())
    }

    /// Evaluates `promql` now (`/api/v1/query`): the result's series
    /// (an error if Prometheus refuses the expression).
    pub fn query(&self, promql: &str) -> anyhow::Result<Vec<Value>> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(promql)))?;
        match data["resultType"].as_str() {
            Some("vector" | "matrix") => Ok(data["result"].as_array().cloned().unwrap_or_default()),
            // A scalar or string is one value.
            Some(_) => Ok(vec![data["result"].clone()]),
            None => bail!("{promql}: no resultType in {data}"),
        }
    }

    /// The state of every alerting rule it loaded (`/api/v1/rules`):
    /// `inactive`, `pending` or `firing`, by alert name.
    pub fn alert_states(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let data = self.api("/api/v1/rules?type=alert")?;
        Ok(data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .map(|r| {
                (
                    r["name"].as_str().unwrap_or_default().to_owned(),
                    r["state"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect())
    }

    /// The health of its scrape targets (`up`, `down`, `unknown`) by URL.
    pub fn targets(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let data = self.api("/api/v1/targets?state=active")?;
        Ok(data["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                (
                    t["scrapeUrl"].as_str().unwrap_or_default().to_owned(),
                    t["health"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_thresholds() {
        let (metrics, labels) = names_in(
            "sum by (name, le) (rate(k3s_x_bucket{instance=~\"a\", name!=\"b\"}[5m])) > bool 0 or up{job=\"x\"} == 0",
        );
        assert_eq!(metrics, ["k3s_x_bucket", "up"]);
        assert_eq!(labels, ["name", "le", "instance", "name", "job"]);
        assert_eq!(
            strip_threshold("time() - a{x=\"1\"} > 120").as_deref(),
            Some("time() - a{x=\"1\"}")
        );
        assert_eq!(strip_threshold("a == 1").as_deref(), Some("a"));
        assert_eq!(strip_threshold("a{b=~\"x>1\"}"), None);
        assert_eq!(
            strip_threshold("sum by (a) (increase(x[5m])) >= 3").as_deref(),
            Some("sum by (a) (increase(x[5m]))")
        );
        let vars = BTreeMap::from([("name".to_owned(), ".*".to_owned())]);
        assert_eq!(
            grafana_to_promql("rate(x{name=~\"$name\"}[$__rate_interval])", &vars, "10s"),
            "rate(x{name=~\".*\"}[10s])"
        );
        assert_eq!(encode("a{b=\"c\"} > 1"), "a%7Bb%3D%22c%22%7D%20%3E%201");
    }
}
