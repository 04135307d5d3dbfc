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
            control_socket: PathBuf::from("/run/daas-lb/control.sock"),
            control_group: None,
            api_token_file: None,
            services: vec![ServiceConfig {
                name: "supervisor".to_owned(),
                vip: addr("127.0.0.1:6444"),
                protocol: Protocol::Tcp,
                servers: vec![addr("10.0.0.1:9345"), addr("10.0.0.2:9345")],
                default_server: Some(addr("10.0.0.1:9345")),
                server_names: Vec::new(),
                default_server_name: None,
                policy: Policy::Failover,
                maglev_table_size: ServiceConfig::DEFAULT_MAGLEV_TABLE_SIZE,
                health_check: HealthCheckConfig {
                    check: CheckSpec::Tcp,
                    timeout: Duration::from_millis(500),
                    intervals: Intervals::uniform(Duration::from_secs(1)),
                    jitter_percent: 10,
                },
                remote: false,
                dial_tracking: true,
                dial_stall_timeout: DialStall::Auto,
                discovery: None,
                dataplane: ServiceDataplane::Ebpf,
                dial_timeout: Duration::from_secs(10),
                keepalive: Duration::from_secs(30),
            }],
            max_concurrent_checks: 64,
            connection_poll_interval: Duration::from_millis(200),
            dns_refresh: Duration::from_secs(30),
            xdp: None,
            chain: None,
            k3s: None,
            features: Features::default(),
            kernel_log: KernelLog::Off,
            dataplane: DaemonDataplane::Ebpf,
            http_proxy_allowed: HttpProxyAllowed::Auto,
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
    assert_eq!(
        config.control_socket,
        Path::new(Config::DEFAULT_CONTROL_SOCKET)
    );
    assert_eq!(config.control_group, None);
    assert_eq!(config.api_token_file, None);
    assert_eq!(config.max_concurrent_checks, 64);
    assert_eq!(config.connection_poll_interval, Duration::from_millis(200));
    let service = &config.services[0];
    assert_eq!(service.protocol, Protocol::Udp);
    assert!(service.servers.is_empty());
    assert_eq!(service.default_server, None);
    assert_eq!(service.policy, Policy::Failover);
    assert_eq!(service.maglev_table_size, 16381);
    assert_eq!(
        service.health_check,
        HealthCheckConfig {
            check: CheckSpec::Udp,
            timeout: Duration::from_secs(1),
            intervals: Intervals::DEFAULT,
            jitter_percent: 10,
        }
    );

    let config = parse(&with_service(""));
    assert_eq!(config.services[0].protocol, Protocol::Tcp);
    assert_eq!(
        config.services[0].health_check,
        HealthCheckConfig::default_for(Protocol::Tcp)
    );
    assert_eq!(config.services[0].health_check.check, CheckSpec::Tcp);
}

#[test]
fn partial_health_check_block() {
    let config = parse(&with_service("    health_check: { interval: 200ms }\n"));
    let check = &config.services[0].health_check;
    assert_eq!(check.check, CheckSpec::Tcp);
    assert_eq!(
        check.intervals,
        Intervals::uniform(Duration::from_millis(200))
    );
    // The default timeout (1s) is shortened to the interval.
    assert_eq!(check.timeout, Duration::from_millis(200));
    assert_eq!(check.jitter_percent, 10);

    let config = parse(&with_service("    health_check: { timeout: 3s }\n"));
    assert_eq!(
        config.services[0].health_check.intervals,
        Intervals::DEFAULT
    );
    assert_eq!(
        config.services[0].health_check.timeout,
        Duration::from_secs(3)
    );

    // A udp service may be checked with tcp connects.
    let config = parse(
        "services:\n  - name: a\n    vip: 127.0.0.1:53\n    protocol: udp\n    servers: []\n    health_check: { kind: tcp }\n",
    );
    assert_eq!(config.services[0].health_check.check, CheckSpec::Tcp);
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
    assert_eq!(CheckSpec::Udp.kind(), "udp");
    assert_eq!(CheckSpec::Http(HttpCheck::new()).kind(), "http");
    let https = HttpCheck {
        tls: Some(TlsOptions {
            ca_file: None,
            insecure: true,
        }),
        ..HttpCheck::new()
    };
    assert_eq!(CheckSpec::Http(https).kind(), "https");
    assert_eq!(CheckSpec::All(vec![CheckSpec::Tcp]).kind(), "all");
}

#[test]
fn serializes_for_status() {
    let json = serde_json::to_value(parse(EXAMPLE)).unwrap();
    let service = &json["services"][0];
    assert_eq!(service["protocol"], "tcp");
    assert_eq!(service["vip"], "127.0.0.1:6444");
    assert_eq!(service["health_check"]["kind"], "tcp");
    assert_eq!(service["health_check"]["intervals"]["active"], "1s");
    assert_eq!(service["health_check"]["intervals"]["other"], "1s");
    assert_eq!(service["health_check"]["timeout"], "500ms");
    assert_eq!(service["health_check"]["jitter"], "10%");
    assert_eq!(service["policy"], "failover");
    // Only spread services show their table size.
    assert!(service.get("maglev_table_size").is_none(), "{service}");
    assert_eq!(json["max_concurrent_checks"], 64);
    assert_eq!(json["connection_poll_interval"], "200ms");
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
        "expected one of profile, kind, interval, intervals, timeout, jitter, path",
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
        &with_service("    health_check:\n      kind: grpc\n"),
        "services[0].health_check.kind",
        6,
        "expected tcp, udp, http, https, sui_sync, nautilus or all",
    );
    assert_error(
        &with_service("    health_check: { kind: udp }\n"),
        "services[0].health_check.kind",
        5,
        "kind udp cannot check a tcp service",
    );
}

#[test]
fn policy_strings() {
    assert_eq!(Policy::Failover.to_string(), "failover");
    assert_eq!(Policy::Spread.as_str(), "spread");
    assert_eq!("spread".parse::<Policy>(), Ok(Policy::Spread));
    assert_eq!("failover".parse::<Policy>(), Ok(Policy::Failover));
    assert_eq!(
        "maglev".parse::<Policy>(),
        Err("unknown policy \"maglev\"; expected failover or spread".to_owned())
    );
    assert_eq!(serde_json::to_value(Policy::Spread).unwrap(), "spread");
}

#[test]
fn spread_policy() {
    let config = parse(&with_service(
        "    policy: spread\n    maglev_table_size: 65537\n",
    ));
    assert_eq!(config.services[0].policy, Policy::Spread);
    assert_eq!(config.services[0].maglev_table_size, 65537);
    // The default table size; udp services may spread too.
    let config = parse(
        "services:\n  - name: dns\n    vip: 10.96.0.10:53\n    protocol: udp\n    policy: spread\n    servers: [\"10.0.0.1:53\", \"10.0.0.2:53\"]\n",
    );
    let service = &config.services[0];
    assert_eq!(
        (service.protocol, service.policy, service.maglev_table_size),
        (Protocol::Udp, Policy::Spread, 16381)
    );
    // Explicit failover; small primes are fine for few servers.
    let config = parse(&with_service("    policy: failover\n"));
    assert_eq!(config.services[0].policy, Policy::Failover);
    assert_eq!(config.services[0].maglev_table_size, 16381);
    let config = parse(&with_service(
        "    policy: spread\n    maglev_table_size: 101\n",
    ));
    assert_eq!(config.services[0].maglev_table_size, 101);
    let config = parse(
        "services:\n  - name: a\n    vip: 127.0.0.1:80\n    servers: []\n    policy: spread\n    maglev_table_size: 2\n",
    );
    assert_eq!(config.services[0].maglev_table_size, 2);
}

#[test]
fn bad_policy() {
    assert_error(
        &with_service("    policy: random\n"),
        "services[0].policy",
        5,
        "unknown policy \"random\"; expected failover or spread",
    );
    assert_error(
        &with_service("    policy: Spread\n"),
        "services[0].policy",
        5,
        "expected failover or spread",
    );
    assert_error(
        &with_service("    policy: [spread]\n"),
        "services[0].policy",
        5,
        "expected a single value",
    );
}

#[test]
fn maglev_table_size_needs_spread() {
    let message = error(&with_service("    maglev_table_size: 16381\n"));
    assert_eq!(
        message,
        "test.yaml:5:24: services[0].maglev_table_size: `maglev_table_size` is only valid with policy spread, not with policy failover (the default)"
    );
    assert_error(
        &with_service("    policy: failover\n    maglev_table_size: 16381\n"),
        "services[0].maglev_table_size",
        6,
        "`maglev_table_size` is only valid with policy spread, not with policy failover",
    );
}

/// A spread service with `servers` servers (10.0.x.y:80), `rest` and a
/// table size, if given; the table size is on line `5 + rest's lines`.
fn spread_service(servers: usize, rest: &str, size: Option<&str>) -> String {
    let mut yaml =
        String::from("services:\n  - name: a\n    vip: 127.0.0.1:80\n    policy: spread\n");
    yaml.push_str(rest);
    if let Some(size) = size {
        writeln!(yaml, "    maglev_table_size: {size}").unwrap();
    }
    yaml.push_str("    servers: [");
    for server in 0..servers {
        write!(yaml, "\"10.0.{}.{}:80\",", server / 256, server % 256).unwrap();
    }
    yaml.push_str("]\n");
    yaml
}

#[test]
fn bad_maglev_table_sizes() {
    let size = |size: &str| spread_service(1, "", Some(size));
    let message = error(&size("16384"));
    assert_eq!(
        message,
        "test.yaml:5:24: services[0].maglev_table_size: 16384 is not a prime; try 16381 or 16411"
    );
    assert_error(
        &size("16380"),
        "services[0].maglev_table_size",
        5,
        "16380 is not a prime; try 16369 or 16381",
    );
    assert_error(
        &size("65536"),
        "services[0].maglev_table_size",
        5,
        "65536 is not a prime; try 65521 or 65537",
    );
    assert_error(
        &size("65538"),
        "services[0].maglev_table_size",
        5,
        "65538 is too large; at most 65537 Maglev table slots are supported",
    );
    assert_error(
        &size("4294967296"),
        "services[0].maglev_table_size",
        5,
        "invalid number \"4294967296\"; expected a prime number of table slots, at most 65537",
    );
    assert_error(
        &size("big"),
        "services[0].maglev_table_size",
        5,
        "invalid number \"big\"",
    );
    assert_error(
        &size("-7"),
        "services[0].maglev_table_size",
        5,
        "invalid number",
    );
    // Only primes of at least 100 slots per server are suggested.
    assert_error(
        &size("100"),
        "services[0].maglev_table_size",
        5,
        "100 is not a prime; try 101",
    );
    assert_error(
        &size("97"),
        "services[0].maglev_table_size",
        5,
        "97 is too small for 1 servers: Maglev needs at least 100 slots per server for an even spread; use a prime of at least 100, such as 101",
    );
    assert_error(
        &spread_service(200, "", Some("16381")),
        "services[0].maglev_table_size",
        5,
        "16381 is too small for 200 servers: Maglev needs at least 100 slots per server for an even spread; use a prime of at least 20000, such as 20011",
    );
    parse(&spread_service(200, "", Some("20011")));
    // Beyond 655 servers, 100 slots each do not fit: the largest table.
    assert_error(
        &spread_service(700, "", Some("65521")),
        "services[0].maglev_table_size",
        5,
        "65521 is too small for 700 servers: Maglev needs at least 100 slots per server for an even spread, and 65537 is the most supported; use 65537",
    );
    parse(&spread_service(700, "", Some("65537")));
    // No servers: any prime.
    assert_error(
        &spread_service(0, "", Some("0")),
        "services[0].maglev_table_size",
        5,
        "0 is not a prime; try 2",
    );
    assert_error(
        &spread_service(0, "", Some("1")),
        "services[0].maglev_table_size",
        5,
        "1 is not a prime; try 2",
    );
}

#[test]
fn default_maglev_table_size_must_fit_the_servers() {
    // 163 servers fit the default 16381 slots, 164 do not.
    parse(&spread_service(163, "", None));
    assert_error(
        &spread_service(164, "", None),
        "services[0].policy",
        4,
        "spread over 164 servers needs at least 16400 Maglev table slots (100 per server for an even spread, at most 65537), more than the default maglev_table_size 16381; set `maglev_table_size` to a prime such as 16411",
    );
    // The default server counts unless it is also listed.
    assert_error(
        &spread_service(163, "    default_server: 10.9.9.9:80\n", None),
        "services[0].policy",
        4,
        "spread over 164 servers",
    );
    parse(&spread_service(
        163,
        "    default_server: 10.0.0.5:80\n",
        None,
    ));
    assert_error(
        &spread_service(1000, "", None),
        "services[0].policy",
        4,
        "spread over 1000 servers needs at least 65537 Maglev table slots",
    );
    // With failover, the table size does not matter.
    parse(&many_services(1, 1000));
}

/// `sizes.len()` spread services with one server each, and the given
/// `maglev_table_size` (or none); service `i` starts on line `2 + 5 * i`.
fn spread_services(sizes: &[Option<u32>]) -> String {
    let mut yaml = String::from("services:\n");
    for (index, size) in sizes.iter().enumerate() {
        write!(
            yaml,
            "  - name: s{index}\n    vip: 10.1.0.{index}:80\n    servers: [\"10.2.0.{index}:80\"]\n    policy: spread\n"
        )
        .unwrap();
        match size {
            Some(size) => writeln!(yaml, "    maglev_table_size: {size}").unwrap(),
            None => yaml.push_str("    # default table size\n"),
        }
    }
    yaml
}

#[test]
fn maglev_slots_in_total() {
    // 16 default tables (262096 slots) fit, a 17th does not.
    assert_eq!(parse(&spread_services(&[None; 16])).services.len(), 16);
    let message = error(&spread_services(&[None; 17]));
    assert_eq!(
        message,
        "test.yaml:85:13: services[16].policy: too many Maglev table slots: the spread services up to this one (this one with the default maglev_table_size 16381) need 278477, all spread services 278477; at most 262144 are supported in total, use smaller maglev_table_size values"
    );
    // Reported once, on the service that crosses the limit, with the total
    // of all; failover services do not count.
    let mut yaml = spread_services(&[Some(65537), Some(65537), None, Some(65537), Some(65537)]);
    yaml.push_str("  - name: f\n    vip: 10.1.1.1:80\n    servers: []\n");
    let message = error(&yaml);
    assert_eq!(
        message,
        "test.yaml:26:24: services[4].maglev_table_size: too many Maglev table slots: the spread services up to this one need 278529, all spread services 278529; at most 262144 are supported in total, use smaller maglev_table_size values"
    );
    // The total names every spread service, also those after the crossing.
    let message = error(&spread_services(&[
        Some(65537),
        Some(65537),
        Some(65537),
        Some(65537),
        Some(101),
    ]));
    assert!(
        message.starts_with("test.yaml:21:24: services[3].maglev_table_size: too many Maglev table slots: the spread services up to this one need 262148, all spread services 262249;"),
        "{message}"
    );
}

#[test]
fn policy_errors_are_reported_together() {
    let yaml = "\
services:
  - name: a
    vip: 127.0.0.1:80
    policy: random
    maglev_table_size: 16384
    servers: []
  - name: b
    vip: 127.0.0.1:81
    maglev_table_size: 101
    servers: []
  - name: c
    vip: 127.0.0.1:82
    policy: spread
    maglev_table_size: 16384
    servers: [\"10.0.0.1:80\", \"[::1]:80\"]
";
    assert_eq!(
        error(yaml).lines().collect::<Vec<_>>(),
        [
            "test.yaml:4:13: services[0].policy: unknown policy \"random\"; expected failover or spread",
            // An invalid policy still lets the size itself be checked.
            "test.yaml:5:24: services[0].maglev_table_size: 16384 is not a prime; try 16381 or 16411",
            "test.yaml:9:24: services[1].maglev_table_size: `maglev_table_size` is only valid with policy spread, not with policy failover (the default)",
            "test.yaml:14:24: services[2].maglev_table_size: 16384 is not a prime; try 16381 or 16411",
            "test.yaml:15:30: services[2].servers[1]: address family mismatch: VIP is IPv4, server is IPv6 ([::1]:80); a service's servers must use the VIP's family",
        ]
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
        "timeout 6s is longer than the recovering interval 3s, the shortest",
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

/// A self-signed CA certificate (no key needed: it is only read).
const CA_PEM: &str = "\
-----BEGIN CERTIFICATE-----
MIIBizCCATGgAwIBAgIUZmoS6u87cpDKqnOf6+F2m/r2Z1gwCgYIKoZIzj0EAwIw
GjEYMBYGA1UEAwwPZGFhcy1sYi10ZXN0LWNhMCAXDTI2MTEyMjA1Mzc0NVoYDzIx
MjYxMDI5MDUzNzQ1WjAaMRgwFgYDVQQDDA9kYWFzLWxiLXRlc3QtY2EwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAAR5padUOUFxwfKtCAVlET1+gcqbyihCh1bKgbNt
vSFReE+zTQLSzzDZnQE0Nwd8hwVL+rkv+5h8Z2HuEkZyp8mdo1MwUTAdBgNVHQ4E
FgQU4SqV/ojZHftIw49QTi3h29uYyYswHwYDVR0jBBgwFoAU4SqV/ojZHftIw49Q
Ti3h29uYyYswDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEAmSHj
AYvOgugUEXMc5ojRs0BR+cUCpc3iXUvfQh3uKiwCIE9byJh8ysKLbLjWzkPzpgdN
UHWh590HCnB5QLujMpdG
-----END CERTIFICATE-----
";

/// A directory removed when dropped.
struct TestDir(PathBuf);

impl TestDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("daas-lb-config-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `with_service` with a `health_check:` block of `lines` (line 5 is
/// `health_check:`, the block starts at line 6).
fn with_check(lines: &str) -> String {
    with_service(&format!("    health_check:\n{lines}"))
}

fn check_of(yaml: &str) -> HealthCheckConfig {
    parse(yaml).services[0].health_check.clone()
}

#[test]
fn top_level_check_settings() {
    let config =
        parse("services: []\nmax_concurrent_checks: 4096\nconnection_poll_interval: 10s\n");
    assert_eq!(config.max_concurrent_checks, 4096);
    assert_eq!(config.connection_poll_interval, Duration::from_secs(10));
    let config = parse("services: []\nmax_concurrent_checks: 1\nconnection_poll_interval: 10ms\n");
    assert_eq!(config.max_concurrent_checks, 1);
    assert_eq!(config.connection_poll_interval, Duration::from_millis(10));

    let top = |line: &str| format!("services: []\n{line}\n");
    assert_error(
        &top("max_concurrent_checks: 0"),
        "max_concurrent_checks",
        2,
        "0 is out of range; expected 1 to 4096",
    );
    assert_error(
        &top("max_concurrent_checks: 4097"),
        "max_concurrent_checks",
        2,
        "out of range",
    );
    assert_error(
        &top("max_concurrent_checks: lots"),
        "max_concurrent_checks",
        2,
        "invalid number \"lots\"",
    );
    assert_error(
        &top("connection_poll_interval: 5ms"),
        "connection_poll_interval",
        2,
        "5ms is too short; expected at least 10ms",
    );
    assert_error(
        &top("connection_poll_interval: 11s"),
        "connection_poll_interval",
        2,
        "11s is too long; expected at most 10s",
    );
    assert_error(
        &top("connection_poll_interval: 0s"),
        "connection_poll_interval",
        2,
        "must not be zero",
    );
}

#[test]
fn http_check_defaults() {
    let check = check_of(&with_check("      kind: http\n"));
    assert_eq!(check.check, CheckSpec::Http(HttpCheck::new()));
    assert_eq!(
        HttpCheck::new(),
        HttpCheck {
            tls: None,
            path: "/".to_owned(),
            port: None,
            host: None,
            expected_status: vec![200],
            body_contains: None,
        }
    );
    assert_eq!(check.timeout, Duration::from_secs(1));
    assert_eq!(check.intervals, Intervals::DEFAULT);
    assert_eq!(check.jitter_percent, 10);
}

#[test]
fn http_check_with_every_field() {
    let check = check_of(&with_check(
        "      kind: http\n      path: /healthz?full=1\n      port: 8080\n      host: api.example\n      expected_status: [200, 204]\n      body_contains: ok\n",
    ));
    assert_eq!(
        check.check,
        CheckSpec::Http(HttpCheck {
            tls: None,
            path: "/healthz?full=1".to_owned(),
            port: Some(8080),
            host: Some("api.example".to_owned()),
            expected_status: vec![200, 204],
            body_contains: Some("ok".to_owned()),
        })
    );
}

#[test]
fn https_check_options() {
    let dir = TestDir::new("https");
    let ca = dir.file("ca.pem", CA_PEM);
    let check = check_of(&with_check(&format!(
        "      kind: https\n      ca_file: {}\n      insecure: false\n",
        ca.display()
    )));
    assert_eq!(
        check.check,
        CheckSpec::Http(HttpCheck {
            tls: Some(TlsOptions {
                ca_file: Some(ca.clone()),
                insecure: false,
            }),
            ..HttpCheck::new()
        })
    );
    let check = check_of(&with_check("      kind: https\n      insecure: true\n"));
    assert_eq!(
        check.check,
        CheckSpec::Http(HttpCheck {
            tls: Some(TlsOptions {
                ca_file: None,
                insecure: true,
            }),
            ..HttpCheck::new()
        })
    );
    let check = check_of(&with_check("      kind: https\n"));
    assert_eq!(
        check.check,
        CheckSpec::Http(HttpCheck {
            tls: Some(TlsOptions {
                ca_file: None,
                insecure: false,
            }),
            ..HttpCheck::new()
        })
    );
}

#[test]
fn ca_file_must_be_a_readable_certificate() {
    let dir = TestDir::new("ca-file");
    let missing = dir.0.join("missing.pem");
    assert_error(
        &with_check(&format!(
            "      kind: https\n      ca_file: {}\n",
            missing.display()
        )),
        "services[0].health_check.ca_file",
        7,
        &format!("cannot read CA file {}", missing.display()),
    );
    let junk = dir.file("junk.pem", "not a certificate\n");
    assert_error(
        &with_check(&format!(
            "      kind: https\n      ca_file: {}\n",
            junk.display()
        )),
        "services[0].health_check.ca_file",
        7,
        &format!("CA file {} holds no certificate", junk.display()),
    );
    let broken = dir.file(
        "broken.pem",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    assert_error(
        &with_check(&format!(
            "      kind: https\n      ca_file: {}\n",
            broken.display()
        )),
        "services[0].health_check.ca_file",
        7,
        &broken.display().to_string(),
    );
    assert_error(
        &with_check("      kind: https\n      ca_file: ca.pem\n"),
        "services[0].health_check.ca_file",
        7,
        "not an absolute path",
    );
}

#[test]
fn insecure_with_ca_file_is_rejected() {
    let dir = TestDir::new("insecure");
    let ca = dir.file("ca.pem", CA_PEM);
    assert_error(
        &with_check(&format!(
            "      kind: https\n      ca_file: {}\n      insecure: true\n",
            ca.display()
        )),
        "services[0].health_check.insecure",
        8,
        "use one or the other",
    );
    assert_error(
        &with_check("      kind: https\n      insecure: maybe\n"),
        "services[0].health_check.insecure",
        7,
        "expected true or false",
    );
}

#[test]
fn http_fields_need_an_http_kind() {
    for field in [
        "path: /x",
        "port: 80",
        "host: a.example",
        "expected_status: [200]",
        "body_contains: ok",
    ] {
        let name = field.split(':').next().unwrap();
        assert_error(
            &with_check(&format!("      kind: tcp\n      {field}\n")),
            &format!("services[0].health_check.{name}"),
            7,
            "only valid with kind http or https, not with kind tcp",
        );
    }
    // Without a kind, a tcp service is checked with tcp.
    assert_error(
        &with_check("      path: /x\n"),
        "services[0].health_check.path",
        6,
        "only valid with kind http or https",
    );
    assert_error(
        "services:\n  - name: a\n    vip: 127.0.0.1:53\n    protocol: udp\n    servers: []\n    health_check: { kind: udp, port: 53 }\n",
        "services[0].health_check.port",
        6,
        "only valid with kind http or https, not with kind udp",
    );
    assert_error(
        &with_check("      kind: tcp\n      insecure: true\n"),
        "services[0].health_check.insecure",
        7,
        "only valid with kind https, not with kind tcp",
    );
    assert_error(
        &with_check("      kind: http\n      insecure: true\n"),
        "services[0].health_check.insecure",
        7,
        "only valid with kind https, not with kind http",
    );
    assert_error(
        &with_check("      kind: http\n      ca_file: /etc/ca.pem\n"),
        "services[0].health_check.ca_file",
        7,
        "only valid with kind https",
    );
}

#[test]
fn bad_http_values() {
    let http = |line: &str| with_check(&format!("      kind: http\n      {line}\n"));
    assert_error(
        &http("path: healthz"),
        "services[0].health_check.path",
        7,
        "does not start with /",
    );
    assert_error(
        &http("path: \"/a b\""),
        "services[0].health_check.path",
        7,
        "percent-encode",
    );
    assert_error(
        &http("port: 0"),
        "services[0].health_check.port",
        7,
        "port 0 is not allowed",
    );
    assert_error(
        &http("port: 70000"),
        "services[0].health_check.port",
        7,
        "not a port number",
    );
    assert_error(
        &http("host: \"api example\""),
        "services[0].health_check.host",
        7,
        "invalid host name",
    );
    assert_error(
        &http("host: api.example:8080"),
        "services[0].health_check.host",
        7,
        "the port goes in `port`",
    );
    assert_error(
        &http("host: 10.0.0.1"),
        "services[0].health_check.host",
        7,
        "is an IP address",
    );
    assert_error(
        &http("expected_status: [200, 99]"),
        "services[0].health_check.expected_status[1]",
        7,
        "status 99 is out of range; expected 100 to 599",
    );
    assert_error(
        &http("expected_status: [600]"),
        "services[0].health_check.expected_status[0]",
        7,
        "out of range",
    );
    assert_error(
        &http("expected_status: [ok]"),
        "services[0].health_check.expected_status[0]",
        7,
        "invalid status code",
    );
    assert_error(
        &http("expected_status: []"),
        "services[0].health_check.expected_status",
        7,
        "must not be empty",
    );
    assert_error(
        &http("body_contains: \"\""),
        "services[0].health_check.body_contains",
        7,
        "must not be empty",
    );
    let check = check_of(&http("expected_status: [100, 599, 301]"));
    let CheckSpec::Http(http) = check.check else {
        panic!("{check:?}");
    };
    assert_eq!(http.expected_status, vec![100, 599, 301]);
}

#[test]
fn kind_all() {
    let check = check_of(&with_check(
        "      kind: all\n      checks:\n        - { kind: tcp }\n        - { kind: http, path: /readyz, port: 8080 }\n        - kind: https\n          insecure: true\n",
    ));
    assert_eq!(
        check.check,
        CheckSpec::All(vec![
            CheckSpec::Tcp,
            CheckSpec::Http(HttpCheck {
                path: "/readyz".to_owned(),
                port: Some(8080),
                ..HttpCheck::new()
            }),
            CheckSpec::Http(HttpCheck {
                tls: Some(TlsOptions {
                    ca_file: None,
                    insecure: true,
                }),
                ..HttpCheck::new()
            }),
        ])
    );

    assert_error(
        &with_check("      kind: all\n"),
        "services[0].health_check.kind",
        6,
        "kind all needs `checks`",
    );
    assert_error(
        &with_check("      kind: all\n      checks: []\n"),
        "services[0].health_check.checks",
        7,
        "must not be empty with kind all",
    );
    assert_error(
        &with_check("      kind: tcp\n      checks:\n        - { kind: tcp }\n"),
        "services[0].health_check.checks",
        8,
        "`checks` is only valid with kind all, not with kind tcp",
    );
    assert_error(
        &with_check("      checks:\n        - { kind: tcp }\n"),
        "services[0].health_check.checks",
        7,
        "only valid with kind all",
    );
    assert_error(
        &with_check("      kind: all\n      checks:\n        - { kind: all, checks: [] }\n"),
        "services[0].health_check.checks[0].checks",
        8,
        "unknown field `checks`",
    );
    assert_error(
        &with_check(
            "      kind: all\n      checks:\n        - { kind: tcp }\n        - { kind: all }\n",
        ),
        "services[0].health_check.checks[1].kind",
        9,
        "kind all cannot be nested",
    );
    assert_error(
        &with_check("      kind: all\n      checks:\n        - { port: 80 }\n"),
        "services[0].health_check.checks[0]",
        8,
        "missing required field `kind`",
    );
    assert_error(
        &with_check("      kind: all\n      checks:\n        - { kind: udp }\n"),
        "services[0].health_check.checks[0].kind",
        8,
        "kind udp cannot check a tcp service",
    );
    assert_error(
        &with_check("      kind: all\n      checks:\n        - { kind: tcp, timeout: 1s }\n"),
        "services[0].health_check.checks[0].timeout",
        8,
        "unknown field `timeout`",
    );
    assert_error(
        &with_check("      kind: all\n      checks:\n        - { kind: tcp, path: /x }\n"),
        "services[0].health_check.checks[0].path",
        8,
        "only valid with kind http or https, not with kind tcp",
    );
    assert_error(
        &with_check("      kind: all\n      path: /x\n      checks:\n        - { kind: http }\n"),
        "services[0].health_check.path",
        7,
        "with kind all, write it in an entry of `checks`",
    );
    // Parts of a udp service may use tcp and http.
    let config = parse(
        "services:\n  - name: a\n    vip: 127.0.0.1:53\n    protocol: udp\n    servers: []\n    health_check:\n      kind: all\n      checks: [{ kind: udp }, { kind: http, port: 8080 }]\n",
    );
    assert!(matches!(
        &config.services[0].health_check.check,
        CheckSpec::All(parts) if parts.len() == 2
    ));
}

#[test]
fn jitter() {
    let jitter = |value: &str| with_check(&format!("      jitter: {value}\n"));
    assert_eq!(check_of(&jitter("20%")).jitter_percent, 20);
    assert_eq!(check_of(&jitter("20")).jitter_percent, 20);
    assert_eq!(check_of(&jitter("0%")).jitter_percent, 0);
    assert_eq!(check_of(&jitter("50%")).jitter_percent, 50);
    assert_error(
        &jitter("51%"),
        "services[0].health_check.jitter",
        6,
        "jitter 51% is out of range; expected 0% to 50%",
    );
    assert_error(
        &jitter("300"),
        "services[0].health_check.jitter",
        6,
        "out of range",
    );
    assert_error(
        &jitter("lots"),
        "services[0].health_check.jitter",
        6,
        "invalid jitter \"lots\"",
    );
    assert_error(
        &jitter("-5%"),
        "services[0].health_check.jitter",
        6,
        "invalid jitter",
    );
}

#[test]
fn interval_precedence() {
    // profile alone.
    let check = check_of(&with_check("      profile: k3s\n"));
    assert_eq!(check.intervals, Intervals::K3S);
    assert_eq!(check.timeout, Duration::from_secs(1));
    // interval overrides the profile.
    let check = check_of(&with_check("      profile: k3s\n      interval: 2s\n"));
    assert_eq!(check.intervals, Intervals::uniform(Duration::from_secs(2)));
    // intervals.<state> overrides interval and profile.
    let check = check_of(&with_check(
        "      profile: k3s\n      interval: 2s\n      intervals: { failed: 30s, recovering: 500ms }\n",
    ));
    assert_eq!(
        check.intervals,
        Intervals {
            recovering: Duration::from_millis(500),
            failed: Duration::from_secs(30),
            ..Intervals::uniform(Duration::from_secs(2))
        }
    );
    // The default timeout is shortened to the shortest interval.
    assert_eq!(check.timeout, Duration::from_millis(500));
    // intervals alone change the defaults.
    let check = check_of(&with_check(
        "      intervals:\n        active: 1s\n        preferred: 2s\n        healthy: 3s\n        recovering: 4s\n        failed: 5s\n        other: 6s\n",
    ));
    assert_eq!(
        check.intervals,
        Intervals {
            active: Duration::from_secs(1),
            preferred: Duration::from_secs(2),
            healthy: Duration::from_secs(3),
            recovering: Duration::from_secs(4),
            failed: Duration::from_secs(5),
            other: Duration::from_secs(6),
        }
    );
    let check = check_of(&with_check("      intervals: { failed: 1m }\n"));
    assert_eq!(
        check.intervals,
        Intervals {
            failed: Duration::from_mins(1),
            ..Intervals::DEFAULT
        }
    );
}

#[test]
fn bad_intervals_and_profiles() {
    assert_error(
        &with_check("      intervals: { recovering: 5ms }\n"),
        "services[0].health_check.intervals.recovering",
        6,
        "interval 5ms is too short; expected at least 10ms",
    );
    assert_error(
        &with_check("      intervals:\n        failed: soon\n"),
        "services[0].health_check.intervals.failed",
        7,
        "invalid duration",
    );
    assert_error(
        &with_check("      intervals:\n        standby: 1s\n"),
        "services[0].health_check.intervals.standby",
        7,
        "unknown field `standby`, expected one of active, preferred, healthy, recovering, failed, other",
    );
    assert_error(
        &with_check("      profile: k8s\n"),
        "services[0].health_check.profile",
        6,
        "unknown profile \"k8s\"; expected k3s",
    );
    assert_error(
        &with_check("      intervals: { recovering: 1s }\n      timeout: 2s\n"),
        "services[0].health_check.timeout",
        7,
        "timeout 2s is longer than the recovering interval 1s, the shortest",
    );
    assert_error(
        &with_check("      profile: k3s\n      timeout: 2s\n"),
        "services[0].health_check.timeout",
        7,
        "timeout 2s is longer than interval 1s",
    );
}

#[test]
fn intervals_by_state() {
    use crate::policy::state_machine::ServerState;

    let intervals = Intervals::DEFAULT;
    assert_eq!(
        intervals.for_state(ServerState::Active),
        Duration::from_secs(5)
    );
    assert_eq!(
        intervals.for_state(ServerState::Preferred),
        Duration::from_secs(10)
    );
    assert_eq!(
        intervals.for_state(ServerState::Healthy),
        Duration::from_secs(10)
    );
    assert_eq!(
        intervals.for_state(ServerState::Recovering),
        Duration::from_secs(3)
    );
    assert_eq!(
        intervals.for_state(ServerState::Failed),
        Duration::from_secs(30)
    );
    for state in [
        ServerState::Invalid,
        ServerState::Standby,
        ServerState::Unchecked,
    ] {
        assert_eq!(intervals.for_state(state), Duration::from_secs(15));
    }
    assert_eq!(intervals.shortest(), Duration::from_secs(3));
    assert_eq!(Intervals::K3S, Intervals::uniform(Duration::from_secs(1)));
    assert_eq!(Intervals::K3S.shortest(), Duration::from_secs(1));
    assert_eq!(Intervals::default(), Intervals::DEFAULT);
}

#[test]
fn serialized_config_reads_back() {
    let dir = TestDir::new("round-trip");
    let ca = dir.file("ca.pem", CA_PEM);
    let yaml = format!(
        "\
max_concurrent_checks: 8
connection_poll_interval: 1s
services:
  - name: a
    vip: 127.0.0.1:80
    servers: [\"10.0.0.1:80\"]
    health_check:
      kind: all
      profile: k3s
      intervals: {{ failed: 20s }}
      jitter: 5%
      checks:
        - {{ kind: tcp }}
        - {{ kind: http, path: /readyz, port: 8080, host: api.example, expected_status: [200, 204], body_contains: ok }}
        - {{ kind: https, ca_file: {} }}
  - name: b
    vip: 127.0.0.1:53
    protocol: udp
    servers: []
  - name: c
    vip: 127.0.0.1:81
    policy: spread
    maglev_table_size: 101
    servers: [\"10.0.0.1:80\"]
  - name: d
    vip: 127.0.0.1:82
    policy: spread
    servers: []
",
        ca.display()
    );
    let config = parse(&yaml);
    let json = serde_json::to_string(&config).unwrap();
    // JSON is YAML: the serialized form is a valid config file.
    assert_eq!(parse(&json), config, "{json}");
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let check = &value["services"][0]["health_check"];
    assert_eq!(check["kind"], "all");
    assert_eq!(check["checks"][1]["kind"], "http");
    assert_eq!(check["checks"][1]["path"], "/readyz");
    assert_eq!(check["checks"][2]["kind"], "https");
    assert_eq!(check["checks"][2]["insecure"], false);
    assert_eq!(check["intervals"]["failed"], "20s");
    assert_eq!(check["jitter"], "5%");
    let services = &value["services"];
    assert_eq!(services[0]["policy"], "failover");
    assert!(services[0].get("maglev_table_size").is_none(), "{json}");
    assert_eq!(services[2]["policy"], "spread");
    assert_eq!(services[2]["maglev_table_size"], 101);
    assert_eq!(services[3]["maglev_table_size"], 16381);
}

#[test]
fn word_lists_read_like_prose() {
    assert_eq!(one_of(&["tcp"]), "tcp");
    assert_eq!(one_of(&["tcp", "udp"]), "tcp or udp");
    assert_eq!(one_of(&["a", "b", "c"]), "a, b or c");
    assert_eq!(
        "sctp".parse::<Protocol>(),
        Err("unknown protocol \"sctp\"; expected tcp or udp".to_owned())
    );
    assert_eq!(
        "random".parse::<Policy>(),
        Err("unknown policy \"random\"; expected failover or spread".to_owned())
    );
}

/// An `xdp` block (lines 1..) made of `lines`, then one service.
fn with_xdp(lines: &str) -> String {
    format!("xdp:\n{lines}{}", with_service(""))
}

#[test]
fn xdp_block_with_every_field() {
    let config = parse(&with_xdp(
        "  interfaces: [eth0, \"eth1\"]\n  mode: driver\n  snat_ipv4: 192.0.2.10\n  snat_ipv6: \"2001:db8::10\"\n  snat_ports: 40000-40999\n",
    ));
    assert_eq!(
        config.xdp,
        Some(XdpSettings {
            interfaces: ["eth0", "eth1"]
                .into_iter()
                .map(|name| XdpInterface {
                    name: name.to_owned(),
                    hook: XdpHook::Auto,
                    mode: XdpAttachMode::Driver,
                })
                .collect(),
            hook: XdpHook::Auto,
            mode: XdpAttachMode::Driver,
            snat_ipv4: Some(Ipv4Addr::new(192, 0, 2, 10)),
            snat_ipv6: Some("2001:db8::10".parse().unwrap()),
            snat_ports: PortRange {
                first: 40000,
                last: 40999
            },
            flow_timeouts: FlowTimeouts::DEFAULT,
            flow_gc_interval: FlowTimeouts::DEFAULT_GC_INTERVAL,
        })
    );
}

#[test]
fn xdp_flow_timeouts_and_gc_interval() {
    let xdp = parse(&with_xdp(
        "  interfaces: [eth0]\n  flow_timeouts:\n    tcp: 1h\n    udp: 30s\n  flow_gc_interval: 2s\n",
    ))
    .xdp
    .unwrap();
    assert_eq!(
        xdp.flow_timeouts,
        FlowTimeouts {
            tcp: Duration::from_hours(1),
            udp: Duration::from_secs(30),
            ..FlowTimeouts::DEFAULT
        }
    );
    assert_eq!(xdp.flow_gc_interval, Duration::from_secs(2));
    let defaults = parse(&with_xdp("  interfaces: [eth0]\n")).xdp.unwrap();
    assert_eq!(defaults.flow_timeouts.tcp, Duration::from_hours(2));
    assert_eq!(defaults.flow_timeouts.tcp_closing, Duration::from_secs(10));
    assert_eq!(defaults.flow_timeouts.tcp_unreplied, Duration::from_mins(1));
    assert_eq!(defaults.flow_timeouts.udp, Duration::from_mins(1));
    assert_eq!(defaults.flow_gc_interval, Duration::from_secs(10));

    // Every bad value is reported, each with its path.
    let errors = error(&with_xdp(
        "  interfaces: [eth0]\n  flow_timeouts:\n    tcp: forever\n    tcp_closing: 500ms\n    udp: 0s\n  flow_gc_interval: 30d\n",
    ));
    for expected in [
        "xdp.flow_timeouts.tcp: invalid duration \"forever\"",
        "xdp.flow_timeouts.tcp_closing: 500ms is too short; expected at least 1s",
        "xdp.flow_timeouts.udp: must not be zero",
        "xdp.flow_gc_interval: 30days is too long; expected at most 7days",
    ] {
        assert!(errors.contains(expected), "{expected:?} not in {errors}");
    }
    let unknown = error(&with_xdp(
        "  interfaces: [eth0]\n  flow_timeouts:\n    icmp: 1s\n",
    ));
    assert!(unknown.contains("icmp"), "{unknown}");
}

#[test]
fn xdp_defaults_and_absence() {
    assert_eq!(parse(&with_service("")).xdp, None);
    let xdp = parse(&with_xdp("  interfaces: [eth0]\n")).xdp.unwrap();
    assert_eq!(xdp.mode, XdpAttachMode::Auto);
    assert_eq!(xdp.snat_ipv4, None);
    assert_eq!(xdp.snat_ipv6, None);
    assert_eq!(xdp.snat_ports, PortRange::DEFAULT_SNAT);
    assert_eq!(xdp.snat_ports.to_string(), "61000-65535");
    for (word, mode) in [
        ("auto", XdpAttachMode::Auto),
        ("driver", XdpAttachMode::Driver),
        ("skb", XdpAttachMode::Skb),
    ] {
        let yaml = with_xdp(&format!("  interfaces: [eth0]\n  mode: {word}\n"));
        assert_eq!(parse(&yaml).xdp.unwrap().mode, mode);
        assert_eq!(mode.to_string(), word);
    }
    // One-port range.
    let yaml = with_xdp("  interfaces: [eth0]\n  snat_ports: 7-7\n");
    assert_eq!(
        parse(&yaml).xdp.unwrap().snat_ports,
        PortRange { first: 7, last: 7 }
    );
}

#[test]
fn xdp_hooks_per_interface_and_block_defaults() {
    let xdp = parse(&with_xdp(
        "  interfaces:\n    - eth0\n    - { name: veth1, hook: tc }\n    - { name: eth2, hook: xdp, mode: skb }\n    - name: eth3\n      mode: driver\n  hook: auto\n  mode: auto\n",
    ))
    .xdp
    .unwrap();
    let entry = |name: &str, hook, mode| XdpInterface {
        name: name.to_owned(),
        hook,
        mode,
    };
    assert_eq!(
        xdp.interfaces,
        [
            entry("eth0", XdpHook::Auto, XdpAttachMode::Auto),
            entry("veth1", XdpHook::Tc, XdpAttachMode::Auto),
            entry("eth2", XdpHook::Xdp, XdpAttachMode::Skb),
            entry("eth3", XdpHook::Auto, XdpAttachMode::Driver),
        ]
    );
    assert_eq!(xdp.interface_names(), ["eth0", "veth1", "eth2", "eth3"]);
    // The block's hook and mode are every entry's default; an entry with
    // `hook: tc` takes no XDP mode from the block.
    let xdp = parse(&with_xdp(
        "  interfaces: [eth0, { name: eth1, hook: tc }, { name: eth2, mode: driver }]\n  hook: xdp\n  mode: skb\n",
    ))
    .xdp
    .unwrap();
    assert_eq!(
        xdp.interfaces,
        [
            entry("eth0", XdpHook::Xdp, XdpAttachMode::Skb),
            entry("eth1", XdpHook::Tc, XdpAttachMode::Auto),
            entry("eth2", XdpHook::Xdp, XdpAttachMode::Driver),
        ]
    );
    let xdp = parse(&with_xdp("  interfaces: [eth0]\n  hook: tc\n"))
        .xdp
        .unwrap();
    assert_eq!(
        xdp.interfaces,
        [entry("eth0", XdpHook::Tc, XdpAttachMode::Auto)]
    );
    for (word, hook) in [
        ("auto", XdpHook::Auto),
        ("xdp", XdpHook::Xdp),
        ("tc", XdpHook::Tc),
    ] {
        assert_eq!(hook.to_string(), word);
    }
}

#[test]
fn xdp_hook_errors() {
    assert_error(
        &with_xdp("  interfaces: [eth0]\n  hook: bpf\n"),
        "xdp.hook",
        3,
        "unknown hook \"bpf\"; expected auto, xdp or tc",
    );
    assert_error(
        &with_xdp("  interfaces: [eth0]\n  hook: tc\n  mode: skb\n"),
        "xdp.mode",
        4,
        "`mode: skb` is an XDP attach mode and `hook: tc` has none",
    );
    assert_error(
        &with_xdp("  interfaces:\n    - { name: eth0, hook: tc, mode: driver }\n"),
        "xdp.interfaces[0].mode",
        3,
        "`mode: driver` is an XDP attach mode and `hook: tc` has none",
    );
    assert_error(
        &with_xdp("  interfaces:\n    - { name: eth0, hook: xpd }\n"),
        "xdp.interfaces[0].hook",
        3,
        "unknown hook \"xpd\"; expected auto, xdp or tc",
    );
    assert_error(
        &with_xdp("  interfaces:\n    - { hook: tc }\n"),
        "xdp.interfaces[0]",
        3,
        "missing required field `name`",
    );
    assert_error(
        &with_xdp("  interfaces:\n    - eth0\n    - { name: eth0, hook: tc }\n"),
        "xdp.interfaces[1].name",
        4,
        "duplicate interface eth0, already listed as xdp.interfaces[0] (line 3)",
    );
    assert_error(
        &with_xdp("  interfaces:\n    - { name: \"a/b\" }\n"),
        "xdp.interfaces[0].name",
        3,
        "invalid interface name \"a/b\"",
    );
    assert_error(
        &with_xdp("  interfaces:\n    - { name: eth0, hok: tc }\n"),
        "xdp.interfaces[0].hok",
        3,
        "unknown field",
    );
}

#[test]
fn xdp_interfaces_rules() {
    assert_error(
        &with_xdp("  mode: skb\n"),
        "xdp",
        2,
        "missing required field `interfaces`",
    );
    assert_error(
        &with_xdp("  interfaces: []\n"),
        "xdp.interfaces",
        2,
        "must not be empty",
    );
    assert_error(
        &with_xdp("  interfaces: [eth0, eth1, eth0]\n"),
        "xdp.interfaces[2]",
        2,
        "duplicate interface eth0, already listed as xdp.interfaces[0]",
    );
    assert_error(
        &with_xdp("  interfaces: [averyveryverylongname]\n"),
        "xdp.interfaces[0]",
        2,
        "at most 15",
    );
    assert_error(
        &with_xdp("  interfaces: [\"a/b\"]\n"),
        "xdp.interfaces[0]",
        2,
        "invalid interface name",
    );
    assert_error(
        &with_xdp("  interfaces: [\"\"]\n"),
        "xdp.interfaces[0]",
        2,
        "must not be empty",
    );
    // Existence is checked at start, not here.
    assert!(
        parse(&with_xdp("  interfaces: [no-such-if0]\n"))
            .xdp
            .is_some()
    );
}

#[test]
fn xdp_mode_and_unknown_fields() {
    assert_error(
        &with_xdp("  interfaces: [eth0]\n  mode: native\n"),
        "xdp.mode",
        3,
        "unknown xdp mode \"native\"; expected auto, driver or skb",
    );
    assert_error(
        &with_xdp("  interfaces: [eth0]\n  snat: 1.2.3.4\n"),
        "xdp.snat",
        3,
        "unknown field `snat`",
    );
}

#[test]
fn xdp_snat_addresses() {
    let snat = |field: &str, value: &str| {
        with_xdp(&format!("  interfaces: [eth0]\n  {field}: \"{value}\"\n"))
    };
    for (field, value, text) in [
        (
            "snat_ipv4",
            "2001:db8::1",
            "is not an IPv4 address; write it in `snat_ipv6`",
        ),
        ("snat_ipv4", "0.0.0.0", "unspecified"),
        ("snat_ipv4", "224.0.0.1", "multicast"),
        ("snat_ipv4", "255.255.255.255", "broadcast"),
        ("snat_ipv4", "192.0.2.1:80", "invalid address"),
        ("snat_ipv4", "node.example", "host names are not resolved"),
        (
            "snat_ipv6",
            "192.0.2.1",
            "is not an IPv6 address; write it in `snat_ipv4`",
        ),
        ("snat_ipv6", "::", "unspecified"),
        ("snat_ipv6", "ff02::1", "multicast"),
    ] {
        assert_error(&snat(field, value), &format!("xdp.{field}"), 3, text);
    }
}

#[test]
fn xdp_snat_ports() {
    let ports = |value: &str| with_xdp(&format!("  interfaces: [eth0]\n  snat_ports: {value}\n"));
    for (value, text) in [
        ("61000", "expected first-last"),
        ("a-b", "expected first-last"),
        ("0-100", "port 0 is not allowed"),
        ("1000-70000", "ports go up to 65535"),
        ("2000-1000", "is empty"),
    ] {
        assert_error(&ports(value), "xdp.snat_ports", 3, text);
    }
}

#[test]
fn remote_services() {
    assert!(!parse(&with_service("")).services[0].remote);
    assert!(!parse(&with_service("    remote: false\n")).services[0].remote);
    let yaml = format!(
        "xdp:\n  interfaces: [eth0]\n{}",
        with_service("    remote: true\n")
    );
    assert!(parse(&yaml).services[0].remote);
    assert_error(
        &with_service("    remote: true\n"),
        "services[0].remote",
        5,
        "needs the top-level `xdp` block",
    );
    assert_error(
        &with_service("    remote: yes please\n"),
        "services[0].remote",
        5,
        "expected true or false",
    );
    // An invalid xdp block is reported once, not again for `remote`.
    let yaml = format!(
        "xdp:\n  interfaces: []\n{}",
        with_service("    remote: true\n")
    );
    let message = error(&yaml);
    assert!(!message.contains("services[0].remote"), "{message}");
}

#[test]
fn proxy_mode_settings_and_what_they_refuse() {
    let service = &parse(&with_service("")).services[0];
    assert_eq!(service.dataplane, ServiceDataplane::Ebpf);
    let proxied = &parse(&with_service(
        "    dataplane: proxy
    dial_timeout: 250ms
    keepalive: 0s
",
    ))
    .services[0];
    assert_eq!(proxied.dataplane, ServiceDataplane::Proxy);
    assert_eq!(proxied.dial_timeout, Duration::from_millis(250));
    assert_eq!(proxied.keepalive, Duration::ZERO);
    let defaults = &parse(&with_service(
        "    dataplane: proxy
",
    ))
    .services[0];
    assert_eq!(defaults.dial_timeout, Duration::from_secs(10));
    assert_eq!(defaults.keepalive, Duration::from_secs(30));
    // Read back as written, the proxy settings only in proxy mode.
    let value = serde_json::to_value(parse(&with_service(
        "    dataplane: proxy
",
    )))
    .unwrap();
    assert_eq!(value["services"][0]["dataplane"], "proxy");
    assert_eq!(value["services"][0]["dial_timeout"], "10s");
    assert_eq!(value["services"][0]["keepalive"], "30s");
    let value = serde_json::to_value(parse(&with_service(""))).unwrap();
    assert_eq!(value["services"][0]["dataplane"], "ebpf");
    assert!(value["services"][0].get("dial_timeout").is_none());

    assert_error(
        &with_service(
            "    dataplane: userspace
",
        ),
        "services[0].dataplane",
        5,
        "unknown dataplane \"userspace\"; expected",
    );
    assert_error(
        &with_service(
            "    protocol: udp
    dataplane: proxy
",
        ),
        "services[0].dataplane",
        6,
        "proxy mode carries TCP only",
    );
    for (field, line) in [
        ("policy: spread", "services[0].policy"),
        ("remote: true", "services[0].remote"),
        ("dial_tracking: false", "services[0].dial_tracking"),
        ("dial_stall_timeout: 1s", "services[0].dial_stall_timeout"),
    ] {
        let message = error(&with_service(&format!(
            "    dataplane: proxy
    {field}
"
        )));
        assert!(message.contains(line), "{field}: {message}");
        assert!(
            message.contains("dataplane: ebpf") || message.contains("kernel"),
            "{field}: {message}"
        );
    }
    assert_error(
        &with_service(
            "    dial_timeout: 1s
",
        ),
        "services[0].dial_timeout",
        5,
        "applies to proxy mode only",
    );
    assert_error(
        &with_service(
            "    dataplane: proxy
    dial_timeout: 1ms
",
        ),
        "services[0].dial_timeout",
        6,
        "is too short; expected at least 10ms",
    );
    assert_error(
        &with_service(
            "    dataplane: proxy
    keepalive: 3h
",
        ),
        "services[0].keepalive",
        6,
        "is too long; expected at most 2h",
    );
}

#[test]
fn a_daemon_without_ebpf_proxies_every_service_and_refuses_what_needs_the_kernel() {
    let yaml = format!("dataplane: proxy\n{}", with_service(""));
    let config = parse(&yaml);
    assert_eq!(config.dataplane, DaemonDataplane::Proxy);
    assert_eq!(config.services[0].dataplane, ServiceDataplane::Proxy);
    assert_eq!(
        parse(&format!("dataplane: auto\n{}", with_service(""))).services[0].dataplane,
        ServiceDataplane::Ebpf
    );
    assert_error(
        &format!(
            "dataplane: proxy\n{}",
            with_service("    dataplane: ebpf\n")
        ),
        "services[0].dataplane",
        6,
        "the daemon loads no eBPF programs",
    );
    // UDP is refused at the service, which defaults to proxy mode.
    assert_error(
        &format!("dataplane: proxy\n{}", with_service("    protocol: udp\n")),
        "services[0].protocol",
        6,
        "proxy mode carries TCP only",
    );
    assert_error(
        &format!(
            "dataplane: proxy\nxdp:\n  interfaces: [eth0]\n{}",
            with_service("")
        ),
        "xdp",
        3,
        "needs the XDP/tc programs",
    );
    assert_error(
        "dataplane: kernel\nservices: []\n",
        "dataplane",
        1,
        "unknown dataplane",
    );
}

#[test]
fn dial_tracking_and_stall_settings() {
    let service = &parse(&with_service("")).services[0];
    assert!(service.dial_tracking);
    assert_eq!(service.dial_stall_timeout, DialStall::Auto);
    let stall = |text: &str| {
        parse(&with_service(&format!("    dial_stall_timeout: {text}\n"))).services[0]
            .dial_stall_timeout
    };
    assert_eq!(stall("auto"), DialStall::Auto);
    assert_eq!(stall("0s"), DialStall::Fixed(Duration::ZERO));
    assert_eq!(stall("40ms"), DialStall::Fixed(Duration::from_millis(40)));
    assert_eq!(stall("10s"), DialStall::Fixed(Duration::from_secs(10)));
    assert!(!parse(&with_service("    dial_tracking: false\n")).services[0].dial_tracking);
    assert_error(
        &with_service("    dial_stall_timeout: 11s\n"),
        "services[0].dial_stall_timeout",
        5,
        "11s is too long; expected at most 10s",
    );
    assert_error(
        &with_service("    dial_stall_timeout: soon\n"),
        "services[0].dial_stall_timeout",
        5,
        "expected auto, 0s (off) or a duration",
    );
    assert_error(
        &with_service("    dial_tracking: maybe\n"),
        "services[0].dial_tracking",
        5,
        "expected true or false",
    );
    // Both read back as written.
    let yaml = with_service("    dial_tracking: false\n    dial_stall_timeout: 40ms\n");
    let value = serde_json::to_value(parse(&yaml)).unwrap();
    assert_eq!(value["services"][0]["dial_tracking"], false);
    assert_eq!(value["services"][0]["dial_stall_timeout"], "40ms");
    let value = serde_json::to_value(parse(&with_service(""))).unwrap();
    assert_eq!(value["services"][0]["dial_stall_timeout"], "auto");
}

#[test]
fn xdp_and_remote_read_back() {
    let yaml = format!(
        "xdp:\n  interfaces: [eth0, eth1]\n  mode: skb\n  snat_ipv4: 192.0.2.10\n  snat_ports: 50000-50100\n{}",
        with_service("    remote: true\n")
    );
    let config = parse(&yaml);
    let json = serde_json::to_string(&config).unwrap();
    assert_eq!(parse(&json), config, "{json}");
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["xdp"]["mode"], "skb");
    assert_eq!(value["xdp"]["hook"], "auto");
    assert_eq!(value["xdp"]["interfaces"][1]["name"], "eth1");
    assert_eq!(value["xdp"]["interfaces"][1]["mode"], "skb");
    assert_eq!(value["xdp"]["snat_ports"], "50000-50100");
    assert!(value["xdp"].get("snat_ipv6").is_none(), "{json}");
    assert_eq!(value["services"][0]["remote"], true);
    // Without the block, nothing is written.
    let json = serde_json::to_value(parse(&with_service(""))).unwrap();
    assert!(json.get("xdp").is_none(), "{json}");
}

#[test]
fn port_ranges_overlap() {
    let range = |first, last| PortRange { first, last };
    assert!(range(32768, 60999).overlaps(range(60999, 65535)));
    assert!(range(61000, 65535).overlaps(range(1, 61000)));
    assert!(!range(32768, 60999).overlaps(PortRange::DEFAULT_SNAT));
    assert!(range(5, 5).overlaps(range(1, 10)));
}

const PACKAGE: &str = "0x00000000000000000000000000000000000000000000000000000000000000ab";

/// A valid `chain` block (lines 1-3) followed by `rest`.
fn with_chain(rest: &str) -> String {
    format!(
        "chain:\n  sui_rpc_url: http://127.0.0.1:9000\n  registry: {{ package: \"{PACKAGE}\", object: \"0xcd\" }}\n{rest}"
    )
}

#[test]
fn chain_block_and_discovery() {
    let config = parse(&with_chain(
        "\
services:
  - name: api
    vip: 10.43.0.1:6443
    discovery: { source: sui, port: 6443 }
    health_check: { kind: sui_sync }
  - name: rpc
    vip: 10.43.0.2:80
    servers: [\"10.0.0.1:80\"]
    discovery: { source: sui, port: { from_chain_id: \"35834a8a\", kind: grpc } }
    health_check:
      kind: all
      checks:
        - { kind: tcp }
        - { kind: sui_sync, max_checkpoint_lag: 0, max_sync_age: 1m, max_response_time: 500ms }
",
    ));
    let chain = config.chain.as_ref().unwrap();
    assert_eq!(chain.sui_rpc_url, "http://127.0.0.1:9000");
    assert!(chain.reference_rpc_urls.is_empty());
    assert_eq!(chain.registry.package.to_string(), PACKAGE);
    assert_eq!(
        chain.registry.object.to_string(),
        format!("0x{:0>64}", "cd")
    );
    assert_eq!(chain.registry.module, "registry");
    assert_eq!(chain.min_stake_mist, 0);
    assert_eq!(chain.discovery_interval, Duration::from_mins(5));
    let api = &config.services[0];
    assert!(
        api.servers.is_empty(),
        "servers are optional with discovery"
    );
    let discovery = api.discovery.as_ref().unwrap();
    assert_eq!(discovery.source, DiscoverySource::Sui);
    assert_eq!(discovery.port, DiscoveryPort::Fixed(6443));
    assert_eq!(discovery.max_servers, DiscoveryConfig::DEFAULT_MAX_SERVERS);
    assert_eq!(DiscoveryConfig::DEFAULT_MAX_SERVERS, 256);
    assert_eq!(
        api.health_check.check,
        CheckSpec::SuiSync(SuiSyncCheck::DEFAULT)
    );
    // The default timeout grows to max_response_time (2s).
    assert_eq!(api.health_check.timeout, Duration::from_secs(2));
    let rpc = &config.services[1];
    assert_eq!(rpc.discovery.as_ref().unwrap().port.port(), 31157);
    assert_eq!(
        rpc.health_check.check,
        CheckSpec::All(vec![
            CheckSpec::Tcp,
            CheckSpec::SuiSync(SuiSyncCheck {
                max_checkpoint_lag: 0,
                max_sync_age: Duration::from_mins(1),
                max_response_time: Duration::from_millis(500),
                ..SuiSyncCheck::DEFAULT
            })
        ])
    );
    assert_eq!(rpc.health_check.timeout, Duration::from_secs(1));

    // The serialized form reads back.
    let json = serde_json::to_string(&config).unwrap();
    assert_eq!(parse(&json), config);
    let value = serde_json::to_value(&config).unwrap();
    assert_eq!(value["services"][1]["discovery"]["port"]["kind"], "grpc");
    assert_eq!(value["services"][0]["health_check"]["kind"], "sui_sync");
    assert_eq!(value["chain"]["discovery_interval"], "5m");
}

#[test]
fn chain_block_full() {
    let config = parse(
        "\
chain:
  sui_rpc_url: https://fullnode.testnet.sui.io:443
  reference_rpc_urls: [https://fullnode.mainnet.sui.io, http://10.0.0.9:9000]
  registry: { package: \"0x2\", module: nodes, object: \"0x6\" }
  min_stake_mist: 1_000_000_000
  discovery_interval: 30s
services: []
",
    );
    let chain = config.chain.unwrap();
    assert_eq!(chain.reference_rpc_urls.len(), 2);
    assert_eq!(chain.registry.module, "nodes");
    assert_eq!(chain.min_stake_mist, 1_000_000_000);
    assert_eq!(chain.discovery_interval, Duration::from_secs(30));
}

#[test]
fn chain_errors_name_the_field() {
    assert_error(
        "chain:\n  registry: { package: \"0x1\", object: \"0x2\" }\nservices: []\n",
        "chain",
        2,
        "missing required field `sui_rpc_url`",
    );
    assert_error(
        "chain:\n  sui_rpc_url: http://a:1\nservices: []\n",
        "chain",
        2,
        "missing required field `registry`",
    );
    let bad = |field: &str| {
        format!(
            "chain:\n  sui_rpc_url: http://a:1\n  registry: {{ package: \"0x1\", object: \"0x2\" }}\n  {field}\nservices: []\n"
        )
    };
    assert_error(
        &bad("min_stake_mist: -1"),
        "chain.min_stake_mist",
        4,
        "whole number of MIST",
    );
    assert_error(
        &bad("discovery_interval: 10ms"),
        "chain.discovery_interval",
        4,
        "too short",
    );
    assert_error(
        &bad("discovery_interval: 0s"),
        "chain.discovery_interval",
        4,
        "must not be zero",
    );
    assert_error(
        &bad("reference_rpc_urls: [\"http://b:1\", \"ftp://c\", \"http://b:1\"]"),
        "chain.reference_rpc_urls[1]",
        4,
        "not an http or https URL",
    );
    assert_error(
        &bad("reference_rpc_urls: [\"http://b:1\", \"ftp://c\", \"http://b:1\"]"),
        "chain.reference_rpc_urls[2]",
        4,
        "duplicate URL",
    );
    assert_error(
        "chain:\n  sui_rpc_url: 127.0.0.1:9000\n  registry: { package: \"0x1\", object: \"0x2\" }\nservices: []\n",
        "chain.sui_rpc_url",
        2,
        "",
    );
    assert_error(
        "chain:\n  sui_rpc_url: http://a:1\n  registry: { package: \"0xzz\", module: \"9x\" }\nservices: []\n",
        "chain.registry.package",
        3,
        "invalid Sui address",
    );
    assert_error(
        "chain:\n  sui_rpc_url: http://a:1\n  registry: { package: \"0xzz\", module: \"9x\" }\nservices: []\n",
        "chain.registry.module",
        3,
        "invalid Move module name",
    );
    assert_error(
        "chain:\n  sui_rpc_url: http://a:1\n  registry: { package: \"0xzz\", module: \"9x\" }\nservices: []\n",
        "chain.registry",
        3,
        "missing required field `object`",
    );
    assert_error(&bad("bogus: 1"), "chain.bogus", 4, "");
}

#[test]
fn discovery_errors_name_the_field() {
    assert_error(
        "services:\n  - name: a\n    vip: 127.0.0.1:80\n    discovery: { source: sui, port: 80 }\n",
        "services[0].discovery",
        4,
        "needs the top-level `chain` block",
    );
    assert_error(
        &with_chain(
            "services:\n  - name: a\n    vip: 127.0.0.1:80\n    discovery: { source: eth, port: 0 }\n",
        ),
        "services[0].discovery.source",
        7,
        "unknown discovery source \"eth\"; expected sui",
    );
    assert_error(
        &with_chain(
            "services:\n  - name: a\n    vip: 127.0.0.1:80\n    discovery: { source: sui, port: 0 }\n",
        ),
        "services[0].discovery.port",
        7,
        "port 0",
    );
    assert_error(
        &with_chain(
            "services:\n  - name: a\n    vip: 127.0.0.1:80\n    discovery: { source: sui }\n",
        ),
        "services[0].discovery",
        7,
        "missing required field `port`",
    );
    assert_error(
        &with_chain(
            "services:\n  - name: a\n    vip: 127.0.0.1:80\n    discovery: { source: sui, port: { from_chain_id: \"\", kind: web } }\n",
        ),
        "services[0].discovery.port.kind",
        7,
        "expected p2p, rpc or grpc",
    );
    assert_error(
        &with_chain(
            "services:\n  - name: a\n    vip: 127.0.0.1:80\n    discovery: { source: sui, port: { from_chain_id: \"\", kind: web } }\n",
        ),
        "services[0].discovery.port.from_chain_id",
        7,
        "must not be empty",
    );
    assert_error(
        &with_chain(
            "services:\n  - name: a\n    vip: 127.0.0.1:80\n    discovery: { source: sui, port: { kind: rpc, chain: x } }\n",
        ),
        "services[0].discovery.port.chain",
        7,
        "unknown field `chain`",
    );
    // Without discovery, servers stay required.
    assert_error(
        &with_chain("services:\n  - name: a\n    vip: 127.0.0.1:80\n"),
        "services[0]",
        5,
        "missing required field `servers`",
    );
}

#[test]
fn sui_sync_of_configured_servers_needs_no_chain_nor_discovery() {
    // A pool of full nodes without a registry: compared with each other.
    let config = parse(&with_service("    health_check: { kind: sui_sync }\n"));
    assert_eq!(
        config.services[0].health_check.check,
        CheckSpec::SuiSync(SuiSyncCheck::DEFAULT)
    );
    assert!(config.reference_urls().is_empty());
    // With a chain block but no discovery: the chain's references.
    let config = parse(&with_chain(&with_service(
        "    health_check: { kind: sui_sync, scheme: https }\n",
    )));
    assert_eq!(
        config.services[0].health_check.check,
        CheckSpec::SuiSync(SuiSyncCheck {
            scheme: RpcScheme::Https,
            ..SuiSyncCheck::DEFAULT
        })
    );
    // The check's own references, also as an entry of kind all.
    let config = parse(&with_service(
        "    health_check:\n      kind: all\n      checks:\n        - { kind: tcp }\n        - { kind: sui_sync, scheme: http, reference_rpc_urls: [https://fullnode.mainnet.sui.io, \"http://10.0.0.9:9000\"] }\n",
    ));
    let CheckSpec::All(parts) = &config.services[0].health_check.check else {
        panic!("kind all");
    };
    assert_eq!(
        parts[1],
        CheckSpec::SuiSync(SuiSyncCheck {
            reference_rpc_urls: vec![
                "https://fullnode.mainnet.sui.io".to_owned(),
                "http://10.0.0.9:9000".to_owned()
            ],
            ..SuiSyncCheck::DEFAULT
        })
    );
    // The serialized form reads back.
    let json = serde_json::to_string(&config).unwrap();
    assert_eq!(parse(&json), config);
}

#[test]
fn sui_sync_errors_name_the_field() {
    assert_error(
        &with_service("    health_check: { kind: sui_sync, scheme: grpc }\n"),
        "services[0].health_check.scheme",
        5,
        "unknown scheme \"grpc\"; expected http or https",
    );
    assert_error(
        &with_service("    health_check: { kind: sui_sync, reference_rpc_urls: [] }\n"),
        "services[0].health_check.reference_rpc_urls",
        5,
        "must not be empty",
    );
    assert_error(
        &with_service(
            "    health_check: { kind: sui_sync, reference_rpc_urls: [\"ftp://x\", \"http://a:1\", \"http://a:1\"] }\n",
        ),
        "services[0].health_check.reference_rpc_urls[0]",
        5,
        "is not an http or https URL",
    );
    assert_error(
        &with_service(
            "    health_check: { kind: sui_sync, reference_rpc_urls: [\"ftp://x\", \"http://a:1\", \"http://a:1\"] }\n",
        ),
        "services[0].health_check.reference_rpc_urls[2]",
        5,
        "duplicate URL http://a:1",
    );
    assert_error(
        &with_service("    health_check: { kind: tcp, scheme: https }\n"),
        "services[0].health_check.scheme",
        5,
        "only valid with kind sui_sync, not with kind tcp",
    );
    let discovered = |check: &str| {
        with_chain(&format!(
            "services:\n  - name: a\n    vip: 127.0.0.1:80\n    discovery: {{ source: sui, port: 80 }}\n    health_check: {check}\n"
        ))
    };
    assert_error(
        &discovered("{ kind: sui_sync, max_checkpoint_lag: ten }"),
        "services[0].health_check.max_checkpoint_lag",
        8,
        "invalid number",
    );
    assert_error(
        &discovered("{ kind: sui_sync, max_sync_age: 0s }"),
        "services[0].health_check.max_sync_age",
        8,
        "must not be zero",
    );
    assert_error(
        &discovered("{ kind: sui_sync, max_response_time: 5s, timeout: 1s }"),
        "services[0].health_check.max_response_time",
        8,
        "longer than the check's timeout 1s",
    );
    assert_error(
        &discovered("{ kind: sui_sync, path: /x }"),
        "services[0].health_check.path",
        8,
        "not with kind sui_sync",
    );
    assert_error(
        &discovered("{ kind: tcp, max_sync_age: 1s }"),
        "services[0].health_check.max_sync_age",
        8,
        "only valid with kind sui_sync, not with kind tcp",
    );
    assert_error(
        &discovered("{ kind: all, max_sync_age: 1s, checks: [{ kind: tcp }] }"),
        "services[0].health_check.max_sync_age",
        8,
        "write it in an entry of `checks`",
    );
    assert_error(
        &discovered(
            "{ kind: all, timeout: 1s, checks: [{ kind: sui_sync, max_response_time: 3s }] }",
        ),
        "services[0].health_check.checks[0].max_response_time",
        8,
        "longer than the check's timeout",
    );
    // Fine with discovery and a chain.
    let config = parse(&discovered(
        "{ kind: sui_sync, max_checkpoint_lag: 5, timeout: 3s }",
    ));
    assert_eq!(
        config.services[0].health_check.timeout,
        Duration::from_secs(3)
    );
}

const DISCOVERED: &str =
    "services:\n  - name: a\n    vip: 127.0.0.1:80\n    discovery: { source: sui, port: 80 }\n";

#[test]
fn discovery_max_servers_is_checked() {
    let capped = |max: &str| {
        with_chain(&format!(
            "services:\n  - name: a\n    vip: 127.0.0.1:80\n    discovery: {{ source: sui, port: 80, max_servers: {max} }}\n"
        ))
    };
    let config = parse(&capped("32"));
    assert_eq!(
        config.services[0].discovery.as_ref().unwrap().max_servers,
        32
    );
    let config = parse(&capped("4095"));
    assert_eq!(
        config.services[0].discovery.as_ref().unwrap().max_servers,
        Config::MAX_BACKENDS
    );
    for bad in ["0", "4096", "many", "-1"] {
        assert_error(
            &capped(bad),
            "services[0].discovery.max_servers",
            7,
            "expected a whole number from 1 to 4095",
        );
    }
    let json = serde_json::to_string(&parse(&capped("32"))).unwrap();
    assert_eq!(parse(&json), parse(&capped("32")));
}

#[test]
fn features_default_to_plain_k3s_and_discovery_with_a_chain() {
    let plain = parse(&with_service(""));
    assert_eq!(plain.features, Features::default());
    assert!(!plain.features.blockchain_discovery && !plain.features.performance_ranking);
    assert_eq!(plain.features.stake_weight, StakeWeight::Sqrt);
    let chain = parse(&with_chain(DISCOVERED));
    assert_eq!(
        chain.features,
        Features {
            blockchain_discovery: true,
            nautilus_health_checks: true,
            stake_validation: true,
            ..Features::default()
        }
    );
    // A partial block keeps the other defaults.
    let partial = parse(&with_chain(&format!(
        "features: {{ performance_ranking: true }}\n{DISCOVERED}"
    )));
    assert_eq!(
        partial.features,
        Features {
            blockchain_discovery: true,
            nautilus_health_checks: true,
            stake_validation: true,
            performance_ranking: true,
            ..Features::default()
        }
    );
    let partial = parse(&with_service("features: { performance_ranking: true }\n"));
    assert!(!partial.features.nautilus_health_checks && !partial.features.stake_validation);
}

#[test]
fn features_block_is_read() {
    let config = parse(&with_service(
        "features:\n  performance_ranking: true\n  stake_weight: log\n  nautilus_health_checks: false\n  stake_validation: false\n",
    ));
    assert!(config.features.performance_ranking);
    assert_eq!(config.features.stake_weight, StakeWeight::Log);
    let json = serde_json::to_value(&config).unwrap();
    assert_eq!(json["features"]["stake_weight"], "log");
    assert_eq!(json["features"]["performance_ranking"], true);
    // A chain block with discovery switched off and no discovery service.
    let config = parse(&with_chain(&format!(
        "features: {{ blockchain_discovery: false }}\n{}",
        with_service("")
    )));
    assert!(!config.features.blockchain_discovery);
}

#[test]
fn features_errors() {
    assert_error(
        &with_service("features:\n  performance_ranking: yes\n"),
        "features.performance_ranking",
        6,
        "expected true or false",
    );
    assert_error(
        &with_service("features:\n  stake_weight: cubic\n"),
        "features.stake_weight",
        6,
        "expected linear, sqrt or log",
    );
    assert_error(
        &with_service("features:\n  nautilus_health_checks: true\n"),
        "features.nautilus_health_checks",
        6,
        "needs the top-level `chain` block",
    );
    assert_error(
        &with_service("features:\n  stake_validation: true\n"),
        "features.stake_validation",
        6,
        "needs the top-level `chain` block",
    );
    assert_error(
        &with_service("features:\n  stake_validation: on\n"),
        "features.stake_validation",
        6,
        "expected true or false",
    );
    assert_error(
        &with_service("features:\n  blockchain_discovery: true\n"),
        "features.blockchain_discovery",
        6,
        "needs the top-level `chain` block",
    );
    assert_error(
        &with_chain(&format!(
            "features: {{ blockchain_discovery: false }}\n{DISCOVERED}"
        )),
        "services[0].discovery",
        8,
        "needs features.blockchain_discovery",
    );
    assert!(error(&with_service("features:\n  ranking: true\n")).contains("unknown field"));
}

/// A valid `chain` block with `enclave_config` (lines 1-4) followed by
/// `rest`.
fn with_enclave_chain(rest: &str) -> String {
    format!(
        "chain:\n  sui_rpc_url: http://127.0.0.1:9000\n  registry: {{ package: \"{PACKAGE}\", object: \"0xcd\" }}\n  enclave_config: \"0xe1\"\n{rest}"
    )
}

/// `with_enclave_chain` and one discovered service whose `health_check`
/// (line 9) is `check`.
fn nautilus_service(check: &str) -> String {
    with_enclave_chain(&format!("{DISCOVERED}    health_check: {check}\n"))
}

#[test]
fn nautilus_check_defaults() {
    let config = parse(&nautilus_service("{ kind: nautilus }"));
    let chain = config.chain.as_ref().unwrap();
    assert_eq!(
        chain.enclave_config.unwrap().to_string(),
        format!("0x{:0>64}", "e1")
    );
    assert!(config.features.nautilus_health_checks && config.features.stake_validation);
    let check = &config.services[0].health_check;
    assert_eq!(check.check, CheckSpec::Nautilus(NautilusCheck::DEFAULT));
    assert_eq!(check.check.kind(), "nautilus");
    assert_eq!(NautilusCheck::default().cache_ttl, Duration::from_secs(30));
    assert_eq!(NautilusCheck::DEFAULT.max_age, Duration::from_mins(1));
    // No max_response_time: the timeout keeps its default.
    assert_eq!(check.timeout, HealthCheckConfig::DEFAULT_TIMEOUT);
    // A shorter max_age shortens the default cache_ttl; 0s never reuses.
    let short = parse(&nautilus_service("{ kind: nautilus, max_age: 10s }"));
    let CheckSpec::Nautilus(short) = short.services[0].health_check.check else {
        panic!("not a nautilus check");
    };
    assert_eq!(short.cache_ttl, Duration::from_secs(10));
    let uncached = parse(&nautilus_service("{ kind: nautilus, cache_ttl: 0s }"));
    let CheckSpec::Nautilus(uncached) = uncached.services[0].health_check.check else {
        panic!("not a nautilus check");
    };
    assert_eq!(uncached.cache_ttl, Duration::ZERO);
    // cache_ttl may equal max_age; the bounds of the ranges are accepted.
    parse(&nautilus_service(
        "{ kind: nautilus, cache_ttl: 24h, max_age: 24h, min_performance_score: 10000, intent: 255 }",
    ));
    parse(&nautilus_service(
        "{ kind: nautilus, cache_ttl: 1s, max_age: 1s }",
    ));
}

#[test]
fn nautilus_check_with_every_field_and_in_all() {
    let config = parse(&nautilus_service(
        "
      kind: all
      interval: 2s
      timeout: 2s
      checks:
        - { kind: tcp }
        - kind: nautilus
          cache_ttl: 10s
          max_age: 5m
          min_performance_score: 7_500
          intent: 3
          verify_attestation_document: true
",
    ));
    let check = &config.services[0].health_check;
    assert_eq!(
        check.check,
        CheckSpec::All(vec![
            CheckSpec::Tcp,
            CheckSpec::Nautilus(NautilusCheck {
                cache_ttl: Duration::from_secs(10),
                max_age: Duration::from_mins(5),
                min_performance_score: 7500,
                intent: 3,
                verify_attestation_document: true,
            }),
        ])
    );
    assert_eq!(check.timeout, Duration::from_secs(2));
}

#[test]
fn nautilus_config_reads_back() {
    let config = parse(&with_enclave_chain(
        "  min_stake_mist: 1000
features:
  nautilus_health_checks: true
  stake_validation: true
  performance_ranking: true
  stake_weight: linear
services:
  - name: a
    vip: 127.0.0.1:80
    discovery: { source: sui, port: 80 }
    health_check: { kind: nautilus, cache_ttl: 0s, max_age: 90s, intent: 1 }
  - name: b
    vip: 127.0.0.1:81
    discovery: { source: sui, port: 81 }
    health_check:
      kind: all
      checks:
        - { kind: sui_sync }
        - { kind: nautilus, min_performance_score: 5000, verify_attestation_document: true }
",
    ));
    let json = serde_json::to_string(&config).unwrap();
    // JSON is YAML: the serialized form is a valid config file.
    assert_eq!(parse(&json), config, "{json}");
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["chain"]["enclave_config"], format!("0x{:0>64}", "e1"));
    assert_eq!(value["chain"]["min_stake_mist"], 1000);
    assert_eq!(value["features"]["nautilus_health_checks"], true);
    assert_eq!(value["features"]["stake_validation"], true);
    let check = &value["services"][0]["health_check"];
    assert_eq!(check["kind"], "nautilus");
    assert_eq!(check["cache_ttl"], "0s");
    assert_eq!(check["max_age"], "1m 30s");
    assert_eq!(check["min_performance_score"], 0);
    assert_eq!(check["intent"], 1);
    assert_eq!(check["verify_attestation_document"], false);
    let part = &value["services"][1]["health_check"]["checks"][1];
    assert_eq!(part["kind"], "nautilus");
    assert_eq!(part["cache_ttl"], "30s");
    assert_eq!(part["min_performance_score"], 5000);
    assert_eq!(part["verify_attestation_document"], true);
    // Without enclave_config the chain block serializes without it.
    let plain = parse(&with_chain(DISCOVERED));
    let value = serde_json::to_value(&plain).unwrap();
    assert!(value["chain"].get("enclave_config").is_none(), "{value}");
    assert_eq!(parse(&value.to_string()), plain);
}

#[test]
fn nautilus_needs_chain_enclave_config_discovery_and_the_feature() {
    assert_error(
        &with_service("    health_check: { kind: nautilus }\n"),
        "services[0].health_check.kind",
        5,
        "kind nautilus needs the top-level `chain` block",
    );
    assert_error(
        &with_chain(&format!(
            "{DISCOVERED}    health_check: {{ kind: nautilus }}\n"
        )),
        "services[0].health_check.kind",
        8,
        "kind nautilus needs chain.enclave_config",
    );
    assert_error(
        &with_enclave_chain(&with_service("    health_check: { kind: nautilus }\n")),
        "services[0].health_check.kind",
        9,
        "kind nautilus needs the service's `discovery` block",
    );
    assert_error(
        &with_enclave_chain(&format!(
            "features: {{ nautilus_health_checks: false }}\n{DISCOVERED}    health_check: {{ kind: nautilus }}\n"
        )),
        "services[0].health_check.kind",
        10,
        "kind nautilus needs features.nautilus_health_checks, which is false",
    );
    // Inside kind all, at the entry's kind.
    assert_error(
        &with_enclave_chain(&format!(
            "features: {{ nautilus_health_checks: false }}\n{DISCOVERED}    health_check: {{ kind: all, checks: [{{ kind: tcp }}, {{ kind: nautilus }}] }}\n"
        )),
        "services[0].health_check.checks[1].kind",
        10,
        "needs features.nautilus_health_checks",
    );
    assert_error(
        &with_chain(&format!(
            "{DISCOVERED}    health_check: {{ kind: all, checks: [{{ kind: nautilus }}] }}\n"
        )),
        "services[0].health_check.checks[0].kind",
        8,
        "needs chain.enclave_config",
    );
    // Every missing piece is named at once.
    let error = error(&with_chain(&format!(
        "features: {{ nautilus_health_checks: false }}\n{}",
        with_service("    health_check: { kind: nautilus }\n")
    )));
    for needed in [
        "chain.enclave_config",
        "`discovery` block",
        "features.nautilus_health_checks",
    ] {
        assert!(error.contains(needed), "{needed} not in:\n{error}");
    }
}

#[test]
fn nautilus_field_errors_name_the_field() {
    let path = "services[0].health_check";
    for (check, field, text) in [
        (
            "{ kind: nautilus, cache_ttl: 2m }",
            "cache_ttl",
            "2m is longer than max_age 1m: a cached verdict would outlive max_age",
        ),
        (
            "{ kind: nautilus, cache_ttl: 20s, max_age: 10s }",
            "cache_ttl",
            "would outlive max_age",
        ),
        (
            "{ kind: nautilus, cache_ttl: soon }",
            "cache_ttl",
            "invalid duration",
        ),
        (
            "{ kind: nautilus, max_age: 0s }",
            "max_age",
            "must not be zero",
        ),
        ("{ kind: nautilus, max_age: 500ms }", "max_age", "too short"),
        ("{ kind: nautilus, max_age: 25h }", "max_age", "too long"),
        (
            "{ kind: nautilus, min_performance_score: 10001 }",
            "min_performance_score",
            "from 0 to 10000",
        ),
        (
            "{ kind: nautilus, min_performance_score: -1 }",
            "min_performance_score",
            "invalid score",
        ),
        ("{ kind: nautilus, intent: 256 }", "intent", "from 0 to 255"),
        ("{ kind: nautilus, intent: x }", "intent", "invalid intent"),
        (
            "{ kind: nautilus, verify_attestation_document: yes }",
            "verify_attestation_document",
            "expected true or false",
        ),
        (
            "{ kind: nautilus, path: /healthz }",
            "path",
            "only valid with kind http or https, not with kind nautilus",
        ),
        (
            "{ kind: nautilus, insecure: true }",
            "insecure",
            "only valid with kind https, not with kind nautilus",
        ),
        (
            "{ kind: nautilus, max_sync_age: 1s }",
            "max_sync_age",
            "only valid with kind sui_sync, not with kind nautilus",
        ),
        (
            "{ kind: tcp, cache_ttl: 1s }",
            "cache_ttl",
            "only valid with kind nautilus, not with kind tcp",
        ),
        (
            "{ kind: sui_sync, intent: 1 }",
            "intent",
            "only valid with kind nautilus, not with kind sui_sync",
        ),
        (
            "{ kind: all, max_age: 1m, checks: [{ kind: nautilus }] }",
            "max_age",
            "only valid with kind nautilus; with kind all, write it in an entry of `checks`",
        ),
        (
            "{ kind: all, checks: [{ kind: tcp }, { kind: nautilus, cache_ttl: 5m }] }",
            "checks[1].cache_ttl",
            "would outlive max_age",
        ),
        (
            "{ kind: all, checks: [{ kind: http, min_performance_score: 1 }] }",
            "checks[0].min_performance_score",
            "only valid with kind nautilus, not with kind http",
        ),
    ] {
        assert_error(
            &nautilus_service(check),
            &format!("{path}.{field}"),
            9,
            text,
        );
    }
    assert_error(
        &nautilus_service("{ kind: nautilus, bogus: 1 }"),
        "services[0].health_check.bogus",
        9,
        "unknown field",
    );
}

#[test]
fn enclave_config_is_a_sui_address() {
    let chain = |value: &str| {
        format!(
            "chain:\n  sui_rpc_url: http://a:1\n  registry: {{ package: \"0x1\", object: \"0x2\" }}\n  enclave_config: {value}\nservices: []\n"
        )
    };
    let config = parse(&chain("\"0x5\""));
    assert_eq!(
        config.chain.unwrap().enclave_config.unwrap().to_string(),
        format!("0x{:0>64}", "5")
    );
    for bad in [
        "\"5\"",
        "\"0x\"",
        "\"0xg1\"",
        &format!("\"0x{}\"", "1".repeat(65)),
    ] {
        assert_error(
            &chain(bad),
            "chain.enclave_config",
            4,
            "invalid Sui address",
        );
    }
    // Optional: no nautilus check, no enclave_config.
    assert_eq!(
        parse(&with_chain(DISCOVERED)).chain.unwrap().enclave_config,
        None
    );
}

#[test]
fn min_stake_needs_stake_validation() {
    let chain = |features: &str, stake: &str| {
        format!(
            "chain:\n  sui_rpc_url: http://a:1\n  registry: {{ package: \"0x1\", object: \"0x2\" }}\n  min_stake_mist: {stake}\nfeatures: {{ {features} }}\nservices: []\n"
        )
    };
    assert_error(
        &chain("stake_validation: false", "1_000"),
        "chain.min_stake_mist",
        4,
        "1000 needs features.stake_validation, which is false",
    );
    // 0 enforces nothing: fine with stake validation off.
    let off = parse(&chain("stake_validation: false", "0"));
    assert!(!off.features.stake_validation);
    assert_eq!(off.chain.unwrap().min_stake_mist, 0);
    // On by default with a chain block, or written.
    let on = parse(&chain("", "1_000"));
    assert!(on.features.stake_validation);
    assert_eq!(on.chain.unwrap().min_stake_mist, 1000);
    assert!(
        parse(&chain("stake_validation: true", "5"))
            .features
            .stake_validation
    );
}

#[test]
fn everything_off_is_plain_k3s() {
    let off = parse(&format!(
        "features:\n  nautilus_health_checks: false\n  blockchain_discovery: false\n  stake_validation: false\n  performance_ranking: false\n{EXAMPLE}"
    ));
    assert_eq!(off.features, Features::default());
    assert!(
        !off.features.nautilus_health_checks
            && !off.features.blockchain_discovery
            && !off.features.stake_validation
            && !off.features.performance_ranking
    );
    assert_eq!(off, parse(EXAMPLE));
    assert_eq!(off.chain, None);
    let json = serde_json::to_string(&off).unwrap();
    assert_eq!(parse(&json), off, "{json}");
    // With the chain features off, a chain block reads but nothing uses it.
    let chain_off = parse(&with_chain(&format!(
        "features: {{ nautilus_health_checks: false, blockchain_discovery: false, stake_validation: false }}\n{}",
        with_service("    health_check: { kind: tcp }\n")
    )));
    assert_eq!(chain_off.features, Features::default());
    assert_eq!(chain_off.services[0].health_check.check, CheckSpec::Tcp);
}

#[test]
fn control_socket_group_and_token_file() {
    let config = parse(
        "control_socket: /run/lb/c.sock\ncontrol_group: \"0\"\napi_token_file: /etc/daas-lb/token\nservices: []\n",
    );
    assert_eq!(config.control_socket, Path::new("/run/lb/c.sock"));
    assert_eq!(
        config.control_group,
        Some(ControlGroup {
            name: "0".to_owned(),
            gid: 0
        })
    );
    assert_eq!(
        config.api_token_file,
        Some(PathBuf::from("/etc/daas-lb/token"))
    );
    // Every Linux host has a group called root with gid 0.
    let config = parse("control_group: root\nservices: []\n");
    assert_eq!(config.control_group.map(|g| g.gid), Some(0));

    assert_error(
        "control_socket: run/c.sock\nservices: []\n",
        "control_socket",
        1,
        "not an absolute path",
    );
    let long = format!("/{}", "s".repeat(120));
    assert_error(
        &format!("control_socket: {long}\nservices: []\n"),
        "control_socket",
        1,
        "121 bytes is too long for a Unix socket path; at most 107 allowed",
    );
    assert_error(
        "services: []\ncontrol_group: no-such-group-here\n",
        "control_group",
        2,
        "no group \"no-such-group-here\" on this host",
    );
    assert_error(
        "services: []\napi_token_file: token\n",
        "api_token_file",
        2,
        "not an absolute path",
    );
}

#[test]
fn references_default_to_the_registry_s_full_node() {
    let config = Config::from_yaml(
        "chain:\n  sui_rpc_url: http://a:1\n  registry: { package: \"0x1\", object: \"0x2\" }\nservices: []\n",
        "t.yaml",
    )
    .unwrap();
    assert_eq!(config.reference_urls(), ["http://a:1"]);
    let mut config = config;
    if let Some(chain) = config.chain.as_mut() {
        chain.reference_rpc_urls = vec!["http://b:1".to_owned()];
    }
    assert_eq!(config.reference_urls(), ["http://b:1"]);
    config.chain = None;
    assert!(config.reference_urls().is_empty());
}

/// Valid but almost certainly not meant: listed by `warnings()` (which
/// `run` logs and `check-config` prints), never errors.
#[test]
fn warnings_name_the_service_and_what_is_wrong() {
    assert!(parse(EXAMPLE).warnings().is_empty());
    assert!(parse(&with_service("")).warnings().is_empty());
    let config = parse("services:\n  - name: empty\n    vip: 127.0.0.1:80\n    servers: []\n");
    assert_eq!(
        config.warnings(),
        [
            "services[0] (empty, vip 127.0.0.1:80): no servers and no default_server: every connect will be refused"
        ]
    );
    let yaml = format!(
        "xdp:\n  interfaces: [eth0]\n{}",
        with_service("    remote: true\n")
    );
    let warnings = parse(&yaml).warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0]
            .starts_with("services[0] (a, vip 127.0.0.1:80): remote: true on a loopback VIP"),
        "{warnings:?}"
    );
}

#[test]
fn servers_and_default_server_take_k3s_server_urls() {
    let config = parse(
        "services:\n  - name: a\n    vip: 127.0.0.1:6444\n    servers: [\"https://10.0.0.1:6443\", \"10.0.0.2:6443\"]\n    default_server: https://10.0.0.1:6443/\n",
    );
    assert_eq!(
        config.services[0].servers,
        vec![addr("10.0.0.1:6443"), addr("10.0.0.2:6443")]
    );
    assert_eq!(
        config.services[0].default_server,
        Some(addr("10.0.0.1:6443"))
    );
}

#[test]
fn dns_names_are_servers_beside_the_literal_addresses() {
    let yaml = "services:\n  - name: a\n    vip: 127.0.0.1:6444\n    servers: [\"10.0.0.1:6443\", \"Backend.Test:6443\", \"https://k3s.example.\"]\n    default_server: https://name:6443\n";
    let config = parse(yaml);
    let service = &config.services[0];
    assert_eq!(service.servers, vec![addr("10.0.0.1:6443")]);
    let name = |host: &str, port: u16| ServerName {
        host: host.to_owned(),
        port,
    };
    assert_eq!(
        service.server_names,
        vec![name("backend.test", 6443), name("k3s.example", 443)]
    );
    assert_eq!(service.default_server, None);
    assert_eq!(service.default_server_name, Some(name("name", 6443)));
    assert_eq!(config.dns_refresh, Duration::from_secs(30));
    assert!(config.warnings().is_empty(), "{:?}", config.warnings());
    // Written back as in the file: literal addresses, then the names.
    let json = serde_json::to_value(&config).unwrap();
    assert_eq!(
        json["services"][0]["servers"],
        serde_json::json!(["10.0.0.1:6443", "backend.test:6443", "k3s.example:443"])
    );
    assert_eq!(json["services"][0]["default_server"], "name:6443");
    assert_eq!(json["dns_refresh"], "30s");
    // A name only as the default server is enough for no warning.
    let only_default = parse(
        "services:\n  - name: a\n    vip: 127.0.0.1:6444\n    servers: []\n    default_server: name:6443\n",
    );
    assert!(only_default.warnings().is_empty());
}

#[test]
fn bad_dns_names_and_refresh_get_clear_messages() {
    let server = |text: &str| {
        format!("services:\n  - name: a\n    vip: 127.0.0.1:6444\n    servers: [\"{text}\"]\n")
    };
    assert_error(
        &server("bad_name:6443"),
        "services[0].servers[0]",
        4,
        "not allowed in a host name",
    );
    assert_error(
        &server(&format!("{}.test:1", "a".repeat(64))),
        "services[0].servers[0]",
        4,
        "at most 63",
    );
    assert_error(&server("name:0"), "services[0].servers[0]", 4, "port 0");
    assert_error(
        &server("10.0.0.300:1"),
        "services[0].servers[0]",
        4,
        "not a valid IPv4 address",
    );
    assert_error(
        &server("backend.test"),
        "services[0].servers[0]",
        4,
        "the port is missing",
    );
    assert_error(
        "services:\n  - name: a\n    vip: 127.0.0.1:6444\n    servers: [\"b.test:1\", \"B.test.:1\"]\n",
        "services[0].servers[1]",
        4,
        "duplicate server b.test:1",
    );
    let config = parse("services: []\ndns_refresh: 1s\n");
    assert_eq!(config.dns_refresh, Duration::from_secs(1));
    assert_error("services: []\ndns_refresh: 500ms\n", "dns_refresh", 2, "");
    assert_error("services: []\ndns_refresh: 2h\n", "dns_refresh", 2, "");
}

#[test]
fn a_bad_server_url_gets_a_message_about_it_not_brackets() {
    let yaml = "services:\n  - name: a\n    vip: 127.0.0.1:6444\n    servers: []\n    default_server: https://na_me:6443\n";
    assert_error(
        yaml,
        "services[0].default_server",
        5,
        "neither an IP address nor a DNS name",
    );
    assert!(!error(yaml).contains("brackets"), "{}", error(yaml));
    assert_error(
        "services:\n  - name: a\n    vip: 127.0.0.1:6444\n    servers: [\"ftp://10.0.0.1:21\"]\n",
        "services[0].servers[0]",
        4,
        "unsupported scheme",
    );
    assert_error(
        "services:\n  - name: a\n    vip: 127.0.0.1:6444\n    servers: [\"https://10.0.0.1:6443/api\"]\n",
        "services[0].servers[0]",
        4,
        "has a path",
    );
}

#[test]
fn k3s_block_defaults() {
    let config = parse("k3s: {}\n");
    let k3s = config.k3s.expect("k3s block");
    assert!(config.services.is_empty());
    assert_eq!(k3s.data_dir, PathBuf::from("/var/lib/rancher/k3s"));
    assert_eq!(k3s.program, "k3s");
    assert_eq!(k3s.lb_server_port, 6444);
    assert!(!k3s.ipv6);
    assert_eq!(k3s.reread_interval, Duration::from_secs(10));
    let specs = k3s.specs();
    let found: Vec<(&str, String, String)> = specs
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.vip.to_string(),
                s.file.display().to_string(),
            )
        })
        .collect();
    assert_eq!(
        found,
        vec![
            (
                "k3s-agent-load-balancer",
                "127.0.0.1:6444".to_owned(),
                "/var/lib/rancher/k3s/agent/etc/k3s-agent-load-balancer.json".to_owned()
            ),
            (
                "k3s-api-server-agent-load-balancer",
                "127.0.0.1:6443".to_owned(),
                "/var/lib/rancher/k3s/agent/etc/k3s-api-server-agent-load-balancer.json".to_owned()
            ),
            (
                "k3s-etcd-server-load-balancer",
                "127.0.0.1:2379".to_owned(),
                "/var/lib/rancher/k3s/agent/etc/k3s-etcd-server-load-balancer.json".to_owned()
            ),
        ]
    );
}

#[test]
fn k3s_block_rke2_and_ipv6() {
    let config = parse(
        "k3s:\n  data_dir: /var/lib/rancher/rke2\n  ipv6: true\n  balancers: [api-server]\nservices: []\n",
    );
    let specs = config.k3s.expect("k3s block").specs();
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].name, "rke2-api-server-agent-load-balancer");
    assert_eq!(specs[0].vip, addr("[::1]:6443"));
}

#[test]
fn k3s_block_errors() {
    assert_error(
        "k3s:\n  program: k8s\n",
        "k3s.program",
        2,
        "expected k3s or rke2",
    );
    assert_error(
        "k3s:\n  data_dir: rancher\n",
        "k3s.data_dir",
        2,
        "not an absolute path",
    );
    assert_error(
        "k3s:\n  balancers: [supervisor, proxy]\n",
        "k3s.balancers[1]",
        2,
        "unknown K3s load balancer \"proxy\"",
    );
    assert_error(
        "k3s:\n  balancers: [etcd, etcd]\n",
        "k3s.balancers[1]",
        2,
        "duplicate balancer etcd",
    );
    assert_error(
        "k3s:\n  balancers: []\n",
        "k3s.balancers",
        2,
        "no balancers",
    );
    assert_error(
        "k3s:\n  lb_server_port: 1\n",
        "k3s.lb_server_port",
        2,
        "out of range",
    );
    assert_error(
        "k3s:\n  reread_interval: 100ms\n",
        "k3s.reread_interval",
        2,
        "too short",
    );
    assert_error(
        "k3s: {}\nservices:\n  - name: mine\n    vip: 127.0.0.1:6444\n    servers: [\"10.0.0.1:6443\"]\n",
        "services[0].vip",
        4,
        "also the VIP of K3s's supervisor balancer",
    );
    assert_error(
        "k3s:\n  balancers: [etcd]\nservices:\n  - name: k3s-etcd-server-load-balancer\n    vip: 127.0.0.1:2380\n    servers: [\"10.0.0.1:2379\"]\n",
        "services[0].name",
        4,
        "pick another name",
    );
}

#[test]
fn kernel_log_is_off_by_default_and_takes_three_words() {
    assert_eq!(parse("services: []\n").kernel_log, KernelLog::Off);
    for (word, level, map_value) in [
        ("off", KernelLog::Off, lb_common::kernel_log::OFF),
        ("warn", KernelLog::Warn, lb_common::kernel_log::WARN),
        ("debug", KernelLog::Debug, lb_common::kernel_log::DEBUG),
    ] {
        let config = parse(&format!("services: []\nkernel_log: {word}\n"));
        assert_eq!(config.kernel_log, level);
        assert_eq!(level.map_value(), map_value);
        assert_eq!(level.to_string(), word);
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(json["kernel_log"], word);
    }
    assert_error(
        "services: []\nkernel_log: verbose\n",
        "kernel_log",
        2,
        "unknown kernel_log level \"verbose\"; expected off, warn or debug",
    );
}

/// The packaged default config (`scripts/packaging/config.yaml`, installed as
/// `/etc/daas-lb/config.yaml`).
const PACKAGED: &str = include_str!("../../../scripts/packaging/config.yaml");

/// The packaged default config is valid, balances nothing (no VIP is taken
/// over before the operator opts in) and uses the paths the systemd unit
/// provides (`StateDirectory`, `RuntimeDirectory`).
#[test]
fn the_packaged_default_config_is_valid_and_balances_nothing() {
    let config = parse(PACKAGED);
    assert!(config.services.is_empty(), "{:?}", config.services);
    assert_eq!(config.cgroup, None);
    assert_eq!(config.data_dir, Path::new("/var/lib/daas-lb"));
    assert_eq!(
        config.control_socket,
        Path::new(Config::DEFAULT_CONTROL_SOCKET)
    );
    assert_eq!(config.bpffs_dir, Path::new(Config::DEFAULT_BPFFS_DIR));
}

/// Its commented `services` example is valid too once uncommented (in
/// place of `services: []`), so an operator who follows the file's
/// instructions gets a working K3s supervisor service.
#[test]
fn the_packaged_config_example_is_valid_once_uncommented() {
    let mut in_example = false;
    let mut yaml = String::new();
    for line in PACKAGED.lines() {
        if line == "services: []" {
            continue;
        }
        if line == "# services:" {
            in_example = true;
        }
        if in_example {
            let uncommented = line.strip_prefix("# ").unwrap_or(line);
            writeln!(yaml, "{uncommented}").unwrap();
        } else {
            writeln!(yaml, "{line}").unwrap();
        }
    }
    assert!(
        in_example,
        "no `# services:` example in scripts/packaging/config.yaml"
    );
    let config = parse(&yaml);
    assert_eq!(config.services.len(), 1, "{yaml}");
    let service = &config.services[0];
    assert_eq!(service.name, "supervisor");
    assert_eq!(service.vip, addr("127.0.0.1:6444"));
    assert_eq!(service.servers.len(), 3);
}

/// Its commented `k3s` block is valid once uncommented (next to
/// `services: []`), and follows K3s at its default data dir.
#[test]
fn the_packaged_config_k3s_block_is_valid_once_uncommented() {
    let mut in_block = false;
    let mut yaml = String::new();
    for line in PACKAGED.lines() {
        if line.starts_with("# k3s:") {
            in_block = true;
        } else if in_block && !line.starts_with("#   ") {
            in_block = false;
        }
        let line = if in_block {
            line.strip_prefix("# ").unwrap_or(line)
        } else {
            line
        };
        writeln!(yaml, "{line}").unwrap();
    }
    let config = parse(&yaml);
    let k3s = config.k3s.expect("the uncommented k3s block");
    assert_eq!(k3s.data_dir, Path::new("/var/lib/rancher/k3s"));
    assert!(config.services.is_empty());
}

/// The README's use case "Fronting a pool of Sui full nodes": its example
/// config is accepted and means what the text says.
#[test]
fn readme_full_node_pool_example_parses() {
    const README: &str = include_str!("../../../README.md");
    let section = README
        .split_once("### Fronting a pool of Sui full nodes\n")
        .expect("the README has the section")
        .1;
    let yaml = section
        .split_once("```yaml\n")
        .and_then(|(_, rest)| rest.split_once("```\n"))
        .expect("the section has a yaml block")
        .0;
    let config = parse(yaml);
    assert!(config.chain.is_none());
    assert!(
        config.reference_urls().is_empty(),
        "the pool is the reference"
    );
    let service = &config.services[0];
    assert_eq!(service.servers.len(), 3);
    assert!(service.discovery.is_none());
    assert_eq!(
        service.health_check.check,
        CheckSpec::SuiSync(SuiSyncCheck {
            max_checkpoint_lag: 20,
            max_response_time: Duration::from_secs(1),
            ..SuiSyncCheck::DEFAULT
        })
    );
    assert_eq!(service.health_check.timeout, Duration::from_secs(1));
    // The commented-out options are valid too.
    let uncommented = yaml
        .replace("# scheme: https", "scheme: https")
        .replace("# reference_rpc_urls:", "reference_rpc_urls:");
    let config = parse(&uncommented);
    let CheckSpec::SuiSync(check) = &config.services[0].health_check.check else {
        panic!("kind sui_sync");
    };
    assert_eq!(check.scheme, RpcScheme::Https);
    assert_eq!(
        check.reference_rpc_urls,
        ["https://fullnode.mainnet.sui.io"]
    );
}
