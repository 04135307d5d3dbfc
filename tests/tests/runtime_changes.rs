//! Changing a running daemon: SIGHUP reloads (a bad file changes nothing),
//! `PUT /services/{name}/servers`, and the server lists persisted in
//! `<data_dir>/<service>.json` (K3s's format) across restarts.
//!
//! Reloads and server-list changes are observed through their counters
//! (`daas_lb_config_reloads_total`, `daas_lb_server_list_changes_total`),
//! not log lines; the log is read only where a test is about what is
//! logged (the state files named in it).

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use lb_tests::{Daemon, Node, TestEnv, http_put, metric, put_servers, service, service_yaml};
use lb_userspace::{api::status::Status, policy::state_machine::ServerState};

const SVC: &str = "api";
const VIP: &str = "127.0.0.1:6444";
const TOP: &str = "connection_poll_interval: 100ms\n";
const CHECK: &str =
    "{ kind: http, path: /healthz, port: 8080, interval: 250ms, timeout: 200ms, jitter: 0% }";
/// Reloads by `result` (`applied`, `rejected`).
const RELOADS: &str = "daas_lb_config_reloads_total";
/// Server-list changes by `service` and `result`.
const LIST_CHANGES: &str = "daas_lb_server_list_changes_total";

fn node(name: &str, octet: u8) -> Node {
    Node::start(name, Ipv4Addr::new(127, 0, 0, octet), 6443)
}

fn api(servers: &[&Node], default: &Node) -> String {
    let servers: Vec<SocketAddr> = servers.iter().map(|n| n.addr).collect();
    service_yaml(SVC, VIP, &servers, Some(default.addr), CHECK)
}

fn addresses(status: &Status) -> Vec<String> {
    lb_tests::server_addresses(status, SVC)
}

fn names(nodes: &[&Node]) -> Vec<String> {
    nodes.iter().map(|n| n.addr.to_string()).collect()
}

/// Waits until the service lists exactly `nodes` (in order).
fn wait_listed(daemon: &mut Daemon, nodes: &[&Node]) -> Status {
    let want = names(nodes);
    daemon.wait_for(Duration::from_secs(10), &format!("servers {want:?}"), |s| {
        s.services.iter().any(|svc| svc.name == SVC) && addresses(s) == want
    })
}

/// `daas_lb_config_reloads_total{result}` now.
fn reloads(daemon: &Daemon, result: &str) -> u64 {
    daemon.counter(RELOADS, &[("result", result)])
}

/// `daas_lb_server_list_changes_total{name="api",result}` now.
fn list_changes(daemon: &Daemon, result: &str) -> u64 {
    daemon.counter(LIST_CHANGES, &[("name", SVC), ("result", result)])
}

/// The state of `node` and since when.
fn state_of(status: &Status, node: &Node) -> (ServerState, String) {
    let server = service(status, SVC)
        .servers
        .iter()
        .find(|s| s.address == node.addr.to_string())
        .unwrap_or_else(|| panic!("{} not in {status:#?}", node.addr));
    (server.state, server.state_since.clone())
}

#[test]
fn sighup_reloads_a_valid_file_and_keeps_running_on_a_bad_one() {
    let Some(env) = TestEnv::new("rt_sighup") else {
        return;
    };
    let (node0, node1, node2) = (node("node0", 10), node("node1", 11), node("node2", 12));
    let mut daemon = env.start_with(TOP, &api(&[&node1], &node0));
    let before = daemon.wait_for(Duration::from_secs(5), "node1 preferred", |s| {
        service(s, SVC)
            .servers
            .iter()
            .any(|srv| srv.address == node1.addr.to_string() && srv.state == ServerState::Preferred)
    });
    let config = env.config_with(TOP, &api(&[&node1], &node0));
    // Both results are in the first scrape, at zero.
    assert_eq!(
        (reloads(&daemon, "applied"), reloads(&daemon, "rejected")),
        (0, 0)
    );

    // A file that is not even YAML.
    fs::write(&config, "services:\n  - name: api\n    vip: [oops\n").unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_counter(
        Duration::from_secs(5),
        RELOADS,
        &[("result", "rejected")],
        1,
    );
    // Valid YAML, invalid config (a server that is the VIP).
    env.config_with(
        TOP,
        &service_yaml(
            SVC,
            VIP,
            &[node1.addr, VIP.parse().unwrap()],
            Some(node0.addr),
            CHECK,
        ),
    );
    daemon.signal(libc::SIGHUP);
    daemon.wait_counter(
        Duration::from_secs(5),
        RELOADS,
        &[("result", "rejected")],
        2,
    );
    let after = daemon.status();
    assert_eq!(addresses(&after), addresses(&before));
    assert_eq!(
        service(&after, SVC).selected,
        service(&before, SVC).selected
    );
    assert_eq!(
        state_of(&after, &node1),
        state_of(&before, &node1),
        "node1 untouched"
    );
    assert_eq!(reloads(&daemon, "applied"), 0, "no reload applied");
    let out = env.cgroup.client(&["tcp", VIP, "still"]);
    assert_eq!(out.reply.as_deref(), Some("node1:still"), "{out:?}");
    // That connect is a successful dial: node1 becomes active once the
    // poller sees it. Wait for it, so the reload below is compared with a
    // settled state rather than racing the poller.
    let settled = daemon.wait_for(Duration::from_secs(5), "node1 active", |s| {
        state_of(s, &node1).0 == ServerState::Active
    });

    // A good file: node2 joins; node1 keeps its state (and since when).
    env.config_with(TOP, &api(&[&node1, &node2], &node0));
    daemon.signal(libc::SIGHUP);
    daemon.wait_counter(Duration::from_secs(5), RELOADS, &[("result", "applied")], 1);
    assert_eq!(
        reloads(&daemon, "rejected"),
        2,
        "the good file is no rejection"
    );
    let status = wait_listed(&mut daemon, &[&node1, &node2, &node0]);
    assert_eq!(
        state_of(&status, &node1),
        state_of(&settled, &node1),
        "node1 kept its state"
    );
    daemon.wait_for(Duration::from_secs(5), "node2 preferred", |s| {
        state_of(s, &node2).0 == ServerState::Preferred
    });
}

#[test]
fn put_servers_validates_every_entry_and_names_the_bad_one() {
    let Some(env) = TestEnv::new("rt_put") else {
        return;
    };
    let (node0, node1, node2) = (node("node0", 10), node("node1", 11), node("node2", 12));
    let mut daemon = env.start_with(TOP, &api(&[&node1], &node0));
    wait_listed(&mut daemon, &[&node1, &node0]);
    // Both results of the configured service are in the first scrape.
    assert_eq!(
        (
            list_changes(&daemon, "applied"),
            list_changes(&daemon, "rejected")
        ),
        (0, 0)
    );

    let cases: [(&[&str], &str); 3] = [
        (&["127.0.0.11:6443", "not-an-address"], "servers[1]"),
        (&["[::1]:6443"], "servers[0]"),
        (
            &["127.0.0.11:6443", "127.0.0.12:6443", "127.0.0.1:6444"],
            "servers[2]",
        ),
    ];
    for (servers, names_entry) in cases {
        let (code, body) = put_servers(&daemon.control, SVC, servers);
        assert_eq!(code, 400, "{servers:?}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(names_entry), "{servers:?}: {body}");
        eprintln!("PUT {servers:?} -> 400 {error}");
    }
    let (code, body) =
        http_put(&daemon.control, "/services/api/servers", "{\"servers\": 1}").unwrap();
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        list_changes(&daemon, "rejected"),
        4,
        "three invalid lists and a body that is no list"
    );
    let (code, body) = put_servers(&daemon.control, "nope", &["127.0.0.11:6443"]);
    assert_eq!(code, 404, "{body}");
    // An unknown name is not counted, so it never becomes a label value.
    let text = daemon.metrics();
    assert_eq!(
        metric(&text, LIST_CHANGES, &[("name", "nope")]),
        None,
        "{text}"
    );
    assert_eq!(metric(&text, LIST_CHANGES, &[]), Some(4.0), "{text}");
    // Nothing changed.
    assert_eq!(
        addresses(&daemon.status()),
        names(&[&node1, &node0]),
        "bad requests must not change the list"
    );

    let (code, body) = put_servers(&daemon.control, SVC, &[&node2.addr.to_string()]);
    assert_eq!(code, 200, "{body}");
    let returned: lb_userspace::api::status::ServiceStatus =
        serde_json::from_value(body.clone()).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(returned.name, SVC);
    let listed: Vec<String> = returned.servers.iter().map(|s| s.address.clone()).collect();
    assert_eq!(listed, names(&[&node2, &node0]));
    wait_listed(&mut daemon, &[&node2, &node0]);
    assert_eq!(
        (
            list_changes(&daemon, "applied"),
            list_changes(&daemon, "rejected")
        ),
        (1, 4)
    );
    daemon.wait_for(Duration::from_secs(5), "node2 preferred", |s| {
        state_of(s, &node2).0 == ServerState::Preferred
    });
    let out = env.cgroup.client(&["tcp", VIP, "x"]);
    assert_eq!(out.reply.as_deref(), Some("node2:x"), "{out:?}");
}

/// The state file as JSON, once it satisfies `ok` (waits up to 5 s).
fn wait_state_file(
    env: &TestEnv,
    daemon: &Daemon,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let path = env.state_file(SVC);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = fs::read_to_string(&path).unwrap_or_default();
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(&text)
            && ok(&value)
        {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {what}; it holds {text:?}\nlog:\n{}",
            path.display(),
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops the daemon once it is fully up. The status API answers before the
/// daemon installs its SIGTERM handler (logged as "daas-lb running"); a
/// SIGTERM in between kills it without cleanup, so wait for that line.
fn stop_when_running(daemon: &mut Daemon) {
    daemon.wait_log(Duration::from_secs(10), "daas-lb running", 1);
    daemon.stop();
}

/// A K3s state file with exactly `url` and `servers`.
fn k3s_shape(value: &serde_json::Value, url: &str, servers: &[String]) -> bool {
    value.as_object().is_some_and(|o| o.len() == 2)
        && value["ServerURL"] == url
        && value["ServerAddresses"] == serde_json::json!(servers)
}

#[test]
fn put_server_lists_survive_a_restart_and_bad_state_files_are_replaced() {
    let Some(env) = TestEnv::new("rt_persist") else {
        return;
    };
    let (node0, node1, node2) = (node("node0", 10), node("node1", 11), node("node2", 12));
    let url = node0.addr.to_string();
    let mut daemon = env.start_with(TOP, &api(&[&node1], &node0));
    wait_listed(&mut daemon, &[&node1, &node0]);

    // PUT, then the file has the K3s shape.
    let put = names(&[&node2, &node1]);
    let (code, body) = put_servers(&daemon.control, SVC, &[&put[0], &put[1]]);
    assert_eq!(code, 200, "{body}");
    wait_state_file(&env, &daemon, "the PUT list", |v| k3s_shape(v, &url, &put));
    let saved = fs::read_to_string(env.state_file(SVC)).unwrap();
    eprintln!("state file after PUT:\n{saved}");
    assert!(
        saved.find("\"ServerURL\"") < saved.find("\"ServerAddresses\""),
        "fields in K3s order: {saved}"
    );

    // Restart: the saved list wins over the config's.
    stop_when_running(&mut daemon);
    daemon.relaunch();
    wait_listed(&mut daemon, &[&node2, &node1, &node0]);
    assert!(daemon.log().contains("api.json"), "{}", daemon.log());

    // A K3s-written file (ServerURL as a URL) is used too.
    stop_when_running(&mut daemon);
    let state_file = env.state_file(SVC);
    fs::write(
        &state_file,
        format!(
            "{{\"ServerURL\":\"https://{url}\",\"ServerAddresses\":[\"{}\"]}}",
            node2.addr
        ),
    )
    .unwrap();
    daemon.relaunch();
    wait_listed(&mut daemon, &[&node2, &node0]);

    // A corrupt file is logged and replaced; the config's list is used.
    stop_when_running(&mut daemon);
    fs::write(&state_file, "{ this is not json").unwrap();
    daemon.relaunch();
    wait_listed(&mut daemon, &[&node1, &node0]);
    let config_list = names(&[&node1]);
    wait_state_file(&env, &daemon, "replaced with the config's list", |v| {
        k3s_shape(v, &url, &config_list)
    });
    let log = daemon.log();
    let mentions: Vec<&str> = log.lines().filter(|l| l.contains("api.json")).collect();
    assert!(
        !mentions.is_empty(),
        "the corrupt file must be logged:\n{log}"
    );
    eprintln!("corrupt state file logged as:\n{}", mentions.join("\n"));

    // A file for another default server is ignored (and replaced).
    stop_when_running(&mut daemon);
    fs::write(
        &state_file,
        format!(
            "{{\"ServerURL\":\"127.0.0.99:6443\",\"ServerAddresses\":[\"{}\"]}}",
            node2.addr
        ),
    )
    .unwrap();
    daemon.relaunch();
    wait_listed(&mut daemon, &[&node1, &node0]);
    wait_state_file(&env, &daemon, "replaced for the configured default", |v| {
        k3s_shape(v, &url, &config_list)
    });
    let log = daemon.log();
    assert!(
        log.lines()
            .any(|l| l.contains("api.json") && l.contains("127.0.0.99:6443")),
        "the mismatching file must be logged:\n{log}"
    );
}
