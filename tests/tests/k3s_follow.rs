//! The `k3s` block: daas-lb follows K3s's agent load-balancer state file
//! (`<data-dir>/agent/etc/k3s-agent-load-balancer.json`) as K3s rewrites it.
//!
//! The file is written exactly as K3s writes it: Go's
//! `json.MarshalIndent(…, "", "  ")` (no trailing newline), in place
//! (`os.WriteFile`: truncate, then write; K3s `pkg/agent/util/file.go`).
//! The re-read interval is an hour, so every change within the test's
//! bounds was seen through inotify. Until the file exists nothing is
//! installed for the balancer's address, so connects reach K3s's own proxy
//! (a stand-in listening on 127.0.0.1:6444).

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use lb_tests::{Daemon, Node, TestEnv, control_socket_in, put_servers};
use lb_userspace::api::status::{K3sFileStatus, ServiceStatus, Status};

const SERVICE: &str = "k3s-agent-load-balancer";
const VIP: &str = "127.0.0.1:6444";
/// How long a rewrite may take to show in the status.
const FOLLOW: Duration = Duration::from_secs(5);

fn node(name: &str, octet: u8) -> Node {
    Node::start(name, Ipv4Addr::new(127, 0, 0, octet), 6443)
}

/// The file as K3s writes it (`json.MarshalIndent` with two spaces).
fn k3s_json(server_url: &str, servers: &[SocketAddr]) -> String {
    let addresses: Vec<String> = servers.iter().map(|s| format!("    \"{s}\"")).collect();
    format!(
        "{{\n  \"ServerURL\": \"{server_url}\",\n  \"ServerAddresses\": [\n{}\n  ]\n}}",
        addresses.join(",\n")
    )
}

/// Writes the file in place, as K3s's `os.WriteFile` does.
fn write_in_place(file: &Path, contents: &str) {
    fs::write(file, contents).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
}

fn service(status: &Status) -> Option<&ServiceStatus> {
    status.services.iter().find(|s| s.name == SERVICE)
}

fn file_status(status: &Status) -> &K3sFileStatus {
    status
        .k3s
        .iter()
        .find(|f| f.service == SERVICE)
        .unwrap_or_else(|| panic!("no k3s file status in {status:#?}"))
}

fn servers(status: &Status) -> Vec<String> {
    service(status).map_or_else(Vec::new, |s| {
        s.servers
            .iter()
            .map(|server| server.address.clone())
            .collect()
    })
}

fn default_server(status: &Status) -> Option<String> {
    service(status)?
        .servers
        .iter()
        .find(|s| s.default)
        .map(|s| s.address.clone())
}

/// The name of whoever answers a fresh connect to the VIP from the test
/// cgroup (replies are `<name>:<payload>`).
fn answered_by(env: &TestEnv) -> String {
    let out = env.cgroup.client(&["tcp", VIP, "ping"]);
    assert!(out.ok, "connect through {VIP}: {out:?}");
    out.reply
        .as_deref()
        .and_then(|reply| reply.split(':').next())
        .unwrap_or_default()
        .to_owned()
}

/// Connects until one reaches a node named in `names`, for at most 5 s.
fn wait_answered_by(env: &TestEnv, names: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = String::new();
    while Instant::now() < deadline {
        last = answered_by(env);
        if names.contains(&last.as_str()) {
            return last;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("connects through {VIP} reached {last:?}, never one of {names:?}");
}

fn wait(daemon: &mut Daemon, what: &str, ready: impl Fn(&Status) -> bool) -> Status {
    daemon.wait_for(FOLLOW, what, ready)
}

/// The K3s data dir of the test and its balancer file (`agent/etc` made).
fn k3s_dir(env: &TestEnv) -> (PathBuf, PathBuf) {
    let data_dir = env.tmp.path().join("k3s");
    let etc = data_dir.join("agent").join("etc");
    fs::create_dir_all(&etc).expect("create agent/etc");
    let file = etc.join(format!("{SERVICE}.json"));
    (data_dir, file)
}

fn names(nodes: &[&Node]) -> Vec<String> {
    nodes.iter().map(|n| n.addr.to_string()).collect()
}

#[test]
fn daas_lb_follows_k3s_agent_load_balancer_file_as_k3s_rewrites_it() {
    let Some(env) = TestEnv::new("k3s_follow") else {
        return;
    };
    // K3s's own proxy, before daas-lb has a list for its address.
    let proxy = Node::start("k3s-proxy", Ipv4Addr::LOCALHOST, 6444);
    let (node1, node2, node3) = (node("node1", 11), node("node2", 12), node("node3", 13));
    let (data_dir, file) = k3s_dir(&env);
    let top = format!(
        "k3s:\n  data_dir: {}\n  balancers: [supervisor]\n  reread_interval: 1h\n",
        data_dir.display()
    );
    let mut daemon = env.start_with(&top, "  []\n");

    // No file yet: no service; connects reach K3s's proxy.
    let status = wait(&mut daemon, "the missing file reported", |s| {
        s.k3s.len() == 1
            && file_status(s)
                .problem
                .as_deref()
                .is_some_and(|p| p.contains("no such file"))
    });
    assert!(service(&status).is_none(), "{status:#?}");
    assert_eq!(file_status(&status).vip, VIP);
    assert_eq!(file_status(&status).file, file.display().to_string());
    assert_eq!(answered_by(&env), proxy.name);

    // The file appears (as K3s writes it at agent start).
    write_in_place(
        &file,
        &k3s_json("https://127.0.0.11:6443", &[node1.addr, node2.addr]),
    );
    let status = wait(&mut daemon, "the service from the file", |s| {
        servers(s) == names(&[&node1, &node2])
    });
    let svc = service(&status).expect("service");
    assert_eq!(svc.vip, VIP);
    assert_eq!(svc.source, format!("k3s:{}", file.display()));
    assert_eq!(default_server(&status), Some(node1.addr.to_string()));
    assert_eq!(
        file_status(&status).server_url.as_deref(),
        Some("https://127.0.0.11:6443")
    );
    assert_eq!(file_status(&status).problem, None);
    let first = wait_answered_by(&env, &[&node1.name, &node2.name]);

    // K3s rewrites it: the answering server goes, node3 comes and becomes
    // the ServerURL.
    let (kept, gone) = if first == node1.name {
        (&node2, &node1)
    } else {
        (&node1, &node2)
    };
    write_in_place(
        &file,
        &k3s_json("https://127.0.0.13:6443", &[kept.addr, node3.addr]),
    );
    let status = wait(&mut daemon, "the rewritten list", |s| {
        servers(s) == names(&[kept, &node3]) && default_server(s) == Some(node3.addr.to_string())
    });
    assert!(
        !servers(&status).contains(&gone.addr.to_string()),
        "{status:#?}"
    );
    for _ in 0..5 {
        let answer = answered_by(&env);
        assert_ne!(answer, gone.name, "a removed server still got a connect");
        assert!(
            answer == kept.name || answer == node3.name,
            "unexpected answer {answer:?}"
        );
    }

    // A half-written file (K3s truncates, then writes): reported, the last
    // good list stays and traffic keeps flowing.
    write_in_place(
        &file,
        "{\n  \"ServerURL\": \"https://127.0.0.13:6443\",\n  \"ServerAdd",
    );
    let status = wait(&mut daemon, "the half-written file reported", |s| {
        file_status(s)
            .problem
            .as_deref()
            .is_some_and(|p| p.contains("not a valid state file"))
    });
    assert_eq!(servers(&status), names(&[kept, &node3]));
    let answer = answered_by(&env);
    assert!(answer == kept.name || answer == node3.name, "{answer:?}");

    // The list cannot be changed past K3s: set-servers is refused.
    let control = control_socket_in(env.tmp.path());
    let (code, body) = put_servers(&control, SERVICE, &[&node1.addr.to_string()]);
    assert_eq!(code, 400, "{body}");
    assert!(
        body.to_string().contains("follows K3s's state file"),
        "{body}"
    );

    // Whole again: the problem clears.
    write_in_place(&file, &k3s_json("https://127.0.0.13:6443", &[node3.addr]));
    let status = wait(&mut daemon, "the file whole again", |s| {
        file_status(s).problem.is_none() && servers(s) == names(&[&node3])
    });
    assert_eq!(default_server(&status), Some(node3.addr.to_string()));
    wait_answered_by(&env, &[&node3.name]);

    // Removed (K3s reset): the last list stays.
    fs::remove_file(&file).expect("remove the file");
    let status = wait(&mut daemon, "the removed file reported", |s| {
        file_status(s)
            .problem
            .as_deref()
            .is_some_and(|p| p.contains("no such file"))
    });
    assert_eq!(servers(&status), names(&[&node3]));
    assert_eq!(answered_by(&env), node3.name);

    // K3s's file was only read.
    assert!(!file.exists());
    daemon.stop();
}
