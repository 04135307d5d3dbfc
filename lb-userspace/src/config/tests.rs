use std::fmt::Write as _;

use super::*;

const EXAMPLE: &str = "\
bpffs_dir: /sys/fs/bpf/daas-lb
cgroup: /sys/fs/cgroup/unified
data_dir: /var/lib/daas-lb
metrics_addr: 127.0.0.1:9464
api_addr: 127.0.0.1:9465
services:
  - name: supervisor
    vip: 127.0.0.1:6444
    protocol: tcp
    servers: [\"10.0.0.1:9345\", \"10.0.0.2:9345\"]
    default_server: \"10.0.0.1:9345\"
    health_check: { kind: tcp, interval: 1s, timeout: 500ms }
";

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn parse(yaml: &str) -> Config {
    match Config::from_yaml(yaml, "test.yaml") {
        Ok(config) => config,
        Err(error) => panic!("unexpected error:\n{error:#}"),
    }
}

fn error(yaml: &str) -> String {
    match Config::from_yaml(yaml, "test.yaml") {
        Ok(config) => panic!("expected an error, got {config:#?}"),
        Err(error) => format!("{error:#}"),
    }
}

/// Asserts that one line of the error for `yaml` names `path` at `line`
/// and contains `text`.
#[track_caller]
fn assert_error(yaml: &str, path: &str, line: u64, text: &str) {
    let error = error(yaml);
    let prefix = format!("test.yaml:{line}:");
    let found = error.lines().any(|message| {
        message.starts_with(&prefix)
            && message.contains(&format!(" {path}: "))
            && message.contains(text)
    });
    assert!(
        found,
        "no line with {prefix:?}, {path:?} and {text:?} in:\n{error}"
    );
}

/// One valid service (lines 1-4) followed by `rest`.
fn with_service(rest: &str) -> String {
    format!("services:\n  - name: a\n    vip: 127.0.0.1:80\n    servers: [\"10.0.0.1:80\"]\n{rest}")
}

#[test]
fn full_example() {
    let config = parse(EXAMPLE);
    assert_eq!(
        config,
        Config {
            bpffs_dir: PathBuf::from("/sys/fs/bpf/daas-lb"),
            cgroup: Some(PathBuf::from("/sys/fs/cgroup/unified")),
            data_dir: PathBuf::from("/var/lib/daas-lb"),
            metrics_addr: addr("127.0.0.1:9464"),
            api_addr: addr("127.0.0.1:9465"),
            services: vec![ServiceConfig {
                name: "supervisor".to_owned(),
                vip: addr("127.0.0.1:6444"),
                protocol: Protocol::Tcp,
                servers: vec![addr("10.0.0.1:9345"), addr("10.0.0.2:9345")],
                default_server: Some(addr("10.0.0.1:9345")),
                health_check: HealthCheckConfig {
                    kind: HealthCheckKind::Tcp,
                    interval: Duration::from_secs(1),
                    timeout: Duration::from_millis(500),
                },
            }],
        }
    );
}

#[test]
fn defaults() {
    let config = parse(
        "services:\n  - name: dns\n    vip: 10.96.0.10:53\n    protocol: udp\n    servers: []\n",
    );
    assert_eq!(config.bpffs_dir, Path::new(Config::DEFAULT_BPFFS_DIR));
    assert_eq!(config.cgroup, None);
    assert_eq!(config.data_dir, Path::new(Config::DEFAULT_DATA_DIR));
    assert_eq!(config.metrics_addr, addr("127.0.0.1:9464"));
    assert_eq!(config.api_addr, addr("127.0.0.1:9465"));
    let service = &config.services[0];
    assert_eq!(service.protocol, Protocol::Udp);
    assert!(service.servers.is_empty());
    assert_eq!(service.default_server, None);
    assert_eq!(
        service.health_check,
        HealthCheckConfig {
            kind: HealthCheckKind::Udp,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
        }
    );

    let config = parse(&with_service(""));
    assert_eq!(config.services[0].protocol, Protocol::Tcp);
    assert_eq!(
        config.services[0].health_check,
        HealthCheckConfig::default_for(Protocol::Tcp)
    );
    assert_eq!(config.services[0].health_check.kind, HealthCheckKind::Tcp);
}

#[test]
fn partial_health_check_block() {
    let config = parse(&with_service("    health_check: { interval: 200ms }\n"));
    let check = &config.services[0].health_check;
    assert_eq!(check.kind, HealthCheckKind::Tcp);
    assert_eq!(check.interval, Duration::from_millis(200));
    // The default timeout (1s) is shortened to the interval.
    assert_eq!(check.timeout, Duration::from_millis(200));

    let config = parse(&with_service("    health_check: { timeout: 3s }\n"));
    assert_eq!(
        config.services[0].health_check.interval,
        Duration::from_secs(5)
    );
    assert_eq!(
        config.services[0].health_check.timeout,
        Duration::from_secs(3)
    );

    // A udp service may be checked with tcp connects.
    let config = parse(
        "services:\n  - name: a\n    vip: 127.0.0.1:53\n    protocol: udp\n    servers: []\n    health_check: { kind: tcp }\n",
    );
    assert_eq!(config.services[0].health_check.kind, HealthCheckKind::Tcp);
}

#[test]
fn empty_services() {
    assert!(parse("services: []\n").services.is_empty());
}

#[test]
fn ipv6() {
    let config = parse(
        "services:\n  - name: v6\n    vip: \"[::1]:6444\"\n    servers: [\"[fd00::1]:9345\"]\n    default_server: \"[fd00::2]:9345\"\n",
    );
    let service = &config.services[0];
    assert_eq!(service.vip, addr("[::1]:6444"));
    assert_eq!(service.servers, vec![addr("[fd00::1]:9345")]);
    assert_eq!(service.default_server, Some(addr("[fd00::2]:9345")));
}

#[test]
fn same_vip_with_tcp_and_udp() {
    let config = parse(
        "services:\n  - name: dns-tcp\n    vip: 127.0.0.1:53\n    servers: [\"10.0.0.1:53\"]\n  - name: dns-udp\n    vip: 127.0.0.1:53\n    protocol: udp\n    servers: [\"10.0.0.1:53\"]\n",
    );
    assert_eq!(config.services.len(), 2);
}

#[test]
fn protocol_and_kind_strings() {
    assert_eq!(Protocol::Tcp.to_string(), "tcp");
    assert_eq!(Protocol::Udp.to_string(), "udp");
    assert_eq!(Protocol::Tcp.number(), 6);
    assert_eq!(Protocol::Udp.number(), 17);
    assert_eq!("udp".parse::<Protocol>(), Ok(Protocol::Udp));
    assert!("sctp".parse::<Protocol>().is_err());
    assert_eq!(HealthCheckKind::Udp.to_string(), "udp");
    assert_eq!("tcp".parse::<HealthCheckKind>(), Ok(HealthCheckKind::Tcp));
}

#[test]
fn serializes_for_status() {
    let json = serde_json::to_value(parse(EXAMPLE)).unwrap();
    let service = &json["services"][0];
    assert_eq!(service["protocol"], "tcp");
    assert_eq!(service["vip"], "127.0.0.1:6444");
    assert_eq!(service["health_check"]["kind"], "tcp");
    assert_eq!(service["health_check"]["interval"], "1s");
    assert_eq!(service["health_check"]["timeout"], "500ms");
}

#[test]
fn load_reads_file_and_names_missing_file() {
    let dir = std::env::temp_dir().join(format!("daas-lb-config-test-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.yaml");
    fs::write(&path, EXAMPLE).unwrap();
    assert_eq!(Config::load(&path).unwrap(), parse(EXAMPLE));

    fs::write(&path, "services: []\nbogus: 1\n").unwrap();
    let error = format!("{:#}", Config::load(&path).unwrap_err());
    assert!(
        error.starts_with(&format!("{}:2:1: bogus: ", path.display())),
        "{error}"
    );

    let missing = dir.join("missing.yaml");
    let error = format!("{:#}", Config::load(&missing).unwrap_err());
    assert!(error.contains(&missing.display().to_string()), "{error}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unknown_fields() {
    assert_error(
        "services: []\nmetrics: 1\n",
        "metrics",
        2,
        "unknown field `metrics`",
    );
    assert_error("services: []\nmetrics: 1\n", "metrics", 2, "metrics_addr");
    assert_error(
        &with_service("    weight: 3\n"),
        "services[0].weight",
        5,
        "unknown field `weight`",
    );
    assert_error(
        &with_service("    health_check:\n      kind: tcp\n      retries: 3\n"),
        "services[0].health_check.retries",
        7,
        "expected one of kind, interval, timeout",
    );
}

#[test]
fn syntax_and_type_errors() {
    assert_error("services: 5\n", "services", 1, "expected a list");
    // Unquoted IPv6: a flow list followed by a syntax error.
    assert_error(
        "services:\n  - name: a\n    vip: [::1]:6444\n    servers: []\n",
        "services[0].vip",
        3,
        "quote values that start with [",
    );
    assert_error(
        "services:\n  - name: a\n    vip: 127.0.0.1:80\n    servers: [\"10.0.0.1:80\", {a: b}]\n",
        "services[0].servers[1]",
        4,
        "expected a single value",
    );
    assert_error("services:\n  - 5\n", "services[0]", 2, "mapping");
    let message = error("services: [\n");
    assert!(
        message.starts_with("test.yaml:1:11: unclosed bracket"),
        "{message}"
    );
    let message = error("services: []\nservices: []\n");
    assert!(
        message.starts_with("test.yaml:2:1: services: duplicate"),
        "{message}"
    );
}

#[test]
fn missing_fields() {
    assert_error(
        "bpffs_dir: /x\n",
        "services",
        1,
        "missing required field `services`",
    );
    assert_error(
        "services:\n  - vip: 127.0.0.1:80\n    servers: []\n",
        "services[0]",
        2,
        "`name`",
    );
    assert_error(
        "services:\n  - name: a\n    servers: []\n",
        "services[0]",
        2,
        "`vip`",
    );
    assert_error(
        "services:\n  - name: a\n    vip: 127.0.0.1:80\n",
        "services[0]",
        2,
        "`servers`",
    );
}

#[test]
fn bad_addresses() {
    let vip = |vip: &str| format!("services:\n  - name: a\n    vip: \"{vip}\"\n    servers: []\n");
    assert_error(
        &vip("localhost:80"),
        "services[0].vip",
        3,
        "host names are not resolved",
    );
    assert_error(&vip("127.0.0.1"), "services[0].vip", 3, "port is missing");
    assert_error(&vip("::1:80"), "services[0].vip", 3, "brackets");
    assert_error(&vip("fe80::1%eth0:80"), "services[0].vip", 3, "brackets");
    assert_error(
        &vip("127.0.0.1:99999"),
        "services[0].vip",
        3,
        "not a port number",
    );
    assert_error(&vip("127.0.0.1:0"), "services[0].vip", 3, "port 0");
    assert_error(&vip("0.0.0.0:80"), "services[0].vip", 3, "unspecified");
    assert_error(&vip("[::]:80"), "services[0].vip", 3, "unspecified");
    assert_error(&vip("224.0.0.1:80"), "services[0].vip", 3, "multicast");
    assert_error(
        &vip("[::ffff:1.2.3.4]:80"),
        "services[0].vip",
        3,
        "write it as IPv4: 1.2.3.4:80",
    );

    assert_error(
        &with_service("    default_server: 10.0.0.9:0\n"),
        "services[0].default_server",
        5,
        "port 0",
    );
    assert_error(
        "services:\n  - name: a\n    vip: 127.0.0.1:80\n    servers:\n      - 10.0.0.1:80\n      - 0.0.0.0:80\n",
        "services[0].servers[1]",
        6,
        "unspecified",
    );
    assert_error(
        "services:\n  - name: a\n    vip: 127.0.0.1:80\n    servers: [\"ff02::1:80\"]\n",
        "services[0].servers[0]",
        4,
        "brackets",
    );
    assert_error(
        "services:\n  - name: a\n    vip: 127.0.0.1:80\n    servers: [\"[ff02::1]:80\"]\n",
        "services[0].servers[0]",
        4,
        "multicast",
    );
    assert_error(
        "services: []\nmetrics_addr: example.com:9464\n",
        "metrics_addr",
        2,
        "host names are not resolved",
    );
    assert_error(
        "services: []\napi_addr: 9465\n",
        "api_addr",
        2,
        "expected a literal IP:port",
    );
    assert_error(
        "services: []\nmetrics_addr: 127.0.0.1:9000\napi_addr: 127.0.0.1:9000\n",
        "api_addr",
        3,
        "also metrics_addr",
    );
    // The default api_addr has no position: point at metrics_addr instead.
    assert_error(
        "services: []\nmetrics_addr: 127.0.0.1:9465\n",
        "metrics_addr",
        2,
        "also api_addr (its default)",
    );
    // Listen addresses may use any address and port 0.
    let config = parse("services: []\nmetrics_addr: 0.0.0.0:0\napi_addr: \"[::]:0\"\n");
    assert_eq!(config.api_addr, addr("[::]:0"));
}

#[test]
fn bad_names() {
    let name = |name: &str| {
        format!("services:\n  - name: \"{name}\"\n    vip: 127.0.0.1:80\n    servers: []\n")
    };
    assert_error(&name(""), "services[0].name", 2, "must not be empty");
    assert_error(&name("a b"), "services[0].name", 2, "A-Z a-z 0-9 . _ -");
    assert_error(
        &name("grüße"),
        "services[0].name",
        2,
        "invalid service name",
    );
    assert_error(
        &name(&"x".repeat(64)),
        "services[0].name",
        2,
        "1 to 63 characters",
    );
    parse(&name(&"x".repeat(63)));
    parse(&name("Kube-API_server.1"));
    assert_error(
        "services:\n  - name: a\n    vip: 127.0.0.1:80\n    servers: []\n  - name: a\n    vip: 127.0.0.1:81\n    servers: []\n",
        "services[1].name",
        5,
        "duplicate service name \"a\", already used by services[0] (line 2)",
    );
}

#[test]
fn duplicate_vip() {
    assert_error(
        "services:\n  - name: a\n    vip: 127.0.0.1:6444\n    servers: []\n  - name: b\n    vip: 127.0.0.1:6444\n    protocol: tcp\n    servers: []\n",
        "services[1].vip",
        6,
        "duplicate VIP 127.0.0.1:6444/tcp, already used by services[0] (line 3)",
    );
}

#[test]
fn family_mismatch() {
    assert_error(
        &with_service("    default_server: \"[::1]:80\"\n"),
        "services[0].default_server",
        5,
        "VIP is IPv4, default_server is IPv6",
    );
    assert_error(
        "services:\n  - name: a\n    vip: \"[::1]:80\"\n    servers: [\"10.0.0.1:80\"]\n",
        "services[0].servers[0]",
        4,
        "VIP is IPv6, server is IPv4",
    );
}

#[test]
fn duplicate_server() {
    assert_error(
        "services:\n  - name: a\n    vip: 127.0.0.1:80\n    servers:\n      - 10.0.0.1:80\n      - 10.0.0.1:80\n",
        "services[0].servers[1]",
        6,
        "duplicate server 10.0.0.1:80, already listed as services[0].servers[0] (line 5)",
    );
}

#[test]
fn forwarding_loop() {
    assert_error(
        "services:\n  - name: a\n    vip: 127.0.0.1:80\n    servers: []\n  - name: b\n    vip: 127.0.0.1:81\n    servers: [\"127.0.0.1:80\"]\n",
        "services[1].servers[0]",
        7,
        "forwarding loop: 127.0.0.1:80/tcp is the VIP of services[0] (line 3)",
    );
    assert_error(
        &with_service("    default_server: 127.0.0.1:80\n"),
        "services[0].default_server",
        5,
        "forwarding loop",
    );
    // Another protocol's VIP is not a loop.
    parse(
        "services:\n  - name: a\n    vip: 127.0.0.1:80\n    protocol: udp\n    servers: []\n  - name: b\n    vip: 127.0.0.1:81\n    servers: [\"127.0.0.1:80\"]\n",
    );
}

#[test]
fn bad_protocol_and_kind() {
    assert_error(
        &with_service("    protocol: sctp\n"),
        "services[0].protocol",
        5,
        "expected tcp or udp",
    );
    assert_error(
        &with_service("    protocol: TCP\n"),
        "services[0].protocol",
        5,
        "expected tcp or udp",
    );
    assert_error(
        &with_service("    health_check:\n      kind: http\n"),
        "services[0].health_check.kind",
        6,
        "expected tcp or udp",
    );
    assert_error(
        &with_service("    health_check: { kind: udp }\n"),
        "services[0].health_check.kind",
        5,
        "kind udp cannot check a tcp service",
    );
}

#[test]
fn bad_durations() {
    let check = |block: &str| with_service(&format!("    health_check:\n{block}"));
    assert_error(
        &check("      interval: 0s\n"),
        "services[0].health_check.interval",
        6,
        "must not be zero",
    );
    assert_error(
        &check("      timeout: 0ms\n"),
        "services[0].health_check.timeout",
        6,
        "must not be zero",
    );
    assert_error(
        &check("      interval: 5ms\n"),
        "services[0].health_check.interval",
        6,
        "at least 10ms",
    );
    assert_error(
        &check("      interval: 5\n"),
        "services[0].health_check.interval",
        6,
        "invalid duration",
    );
    assert_error(
        &check("      interval: soon\n"),
        "services[0].health_check.interval",
        6,
        "expected e.g. 1s",
    );
    assert_error(
        &check("      interval: 1s\n      timeout: 2s\n"),
        "services[0].health_check.timeout",
        7,
        "timeout 2s is longer than interval 1s",
    );
    assert_error(
        &check("      timeout: 6s\n"),
        "services[0].health_check.timeout",
        6,
        "longer than interval 5s",
    );
    parse(&check("      interval: 10ms\n      timeout: 10ms\n"));
    parse(&check("      interval: 1m\n      timeout: 1m\n"));
}

#[test]
fn relative_paths() {
    assert_error(
        "bpffs_dir: bpf\nservices: []\n",
        "bpffs_dir",
        1,
        "not an absolute path",
    );
    assert_error(
        "services: []\ncgroup: ./cg\n",
        "cgroup",
        2,
        "not an absolute path",
    );
    assert_error(
        "services: []\ndata_dir: \"\"\n",
        "data_dir",
        2,
        "not an absolute path",
    );
}

/// `count` services, each with `servers_each` servers (the same ones).
fn many_services(count: usize, servers_each: usize) -> String {
    let mut yaml = String::from("services:\n");
    for index in 0..count {
        let (high, low) = (index / 256, index % 256);
        write!(
            yaml,
            "  - name: s{index}\n    vip: 10.1.{high}.{low}:80\n    servers: ["
        )
        .unwrap();
        for server in 0..servers_each {
            write!(yaml, "\"10.2.{}.{}:80\",", server / 256, server % 256).unwrap();
        }
        yaml.push_str("]\n");
    }
    yaml
}

#[test]
fn capacity_limits() {
    assert_eq!(parse(&many_services(1024, 0)).services.len(), 1024);
    assert_error(
        &many_services(1025, 0),
        "services",
        2,
        "too many services: 1025; at most 1024",
    );

    // 4095 backends fit, 4096 do not; a default_server counts unless it is also a server.
    assert_eq!(parse(&many_services(5, 819)).services.len(), 5);
    let mut yaml = many_services(5, 819);
    yaml.push_str("    default_server: \"10.2.0.0:80\"\n");
    parse(&yaml);
    yaml.push_str("  - name: extra\n    vip: 10.3.0.1:80\n    servers: []\n    default_server: \"10.2.0.0:80\"\n");
    assert_error(&yaml, "services", 2, "too many backends: 4096");
}

#[test]
fn several_errors_together() {
    let yaml = "\
bpffs_dir: relative
services:
  - name: a
    vip: 127.0.0.1:80
    servers: [\"[::1]:80\"]
  - name: a
    vip: 127.0.0.1:80
    servers: []
    health_check: { interval: 0s }
";
    let error = error(yaml);
    let lines: Vec<&str> = error.lines().collect();
    assert_eq!(lines.len(), 5, "{error}");
    assert!(
        lines[0].starts_with("test.yaml:1:12: bpffs_dir: "),
        "{error}"
    );
    assert!(
        lines[1].starts_with("test.yaml:5:15: services[0].servers[0]: "),
        "{error}"
    );
    assert!(
        lines[2].starts_with("test.yaml:6:11: services[1].name: "),
        "{error}"
    );
    assert!(
        lines[3].starts_with("test.yaml:7:10: services[1].vip: "),
        "{error}"
    );
    assert!(
        lines[4].starts_with("test.yaml:9:31: services[1].health_check.interval: "),
        "{error}"
    );
}
