//! Each service's server list across restarts, kept as
//! `<data_dir>/<service>.json` in the K3s agent load balancer's format:
//!
//! ```json
//! {
//!   "ServerURL": "10.0.0.1:6443",
//!   "ServerAddresses": [
//!     "10.0.0.1:6443",
//!     "[fd00::1]:6443"
//!   ]
//! }
//! ```
//!
//! `ServerURL` is the service's configured default server (`""` when it has
//! none). As in K3s, a saved list is used at start only when its `ServerURL`
//! matches the configured default server; a file that does not match or
//! cannot be used is reported (and logged) so that the caller replaces it.
//! Nothing here is ever fatal at load time.

use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    io::{ErrorKind, Write as _},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::Context as _;
use serde::{Deserialize, Deserializer, Serialize};
use tracing::{debug, info, warn};

/// What was found in a service's state file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// No file (first start).
    Missing,
    /// The file matches the configured default server: use these servers.
    Servers(Vec<SocketAddr>),
    /// The file belongs to another default server (`ServerURL` shown as found).
    Mismatch {
        /// The file's `ServerURL`, verbatim.
        found: String,
    },
    /// The file cannot be used; why, in words (includes the path).
    Corrupt(String),
}

/// The on-disk shape of a state file (K3s `lbConfig`).
///
/// Unknown keys are ignored; a `null` `ServerAddresses` (what Go writes for
/// an empty list it never filled) reads as an empty list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFile {
    /// The default server as `ip:port`, or `""`. K3s writes a URL here
    /// (`https://10.0.0.1:6443`); [`load`] accepts both.
    #[serde(rename = "ServerURL")]
    pub server_url: String,
    /// The servers, each as `ip:port` (IPv6 in brackets).
    #[serde(rename = "ServerAddresses", deserialize_with = "null_as_empty")]
    pub server_addresses: Vec<String>,
}

/// Deserializes a list that may be `null` (Go's nil slice) as an empty list.
fn null_as_empty<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(deserializer)?.unwrap_or_default())
}

/// `<data_dir>/<service>.json`.
pub fn state_file(data_dir: &Path, service: &str) -> PathBuf {
    data_dir.join(format!("{service}.json"))
}

/// Reads and checks a state file. `vip_is_ipv4` = family every address must have.
///
/// A missing file is [`Loaded::Missing`] (logged at debug); a mismatched
/// or corrupt one is logged at warn, a used one at info.
pub fn load(
    data_dir: &Path,
    service: &str,
    default_server: Option<SocketAddr>,
    vip_is_ipv4: bool,
    max_servers: usize,
) -> Loaded {
    let path = state_file(data_dir, service);
    let loaded = check(&path, default_server, vip_is_ipv4, max_servers);
    match &loaded {
        Loaded::Missing => {
            debug!(
                service,
                "no state file at {}; starting from the config",
                path.display()
            );
        }
        Loaded::Servers(servers) => info!(
            service,
            "using {} servers saved in {} at runtime",
            servers.len(),
            path.display()
        ),
        Loaded::Mismatch { found } => warn!(
            service,
            "ignoring state file {}: its ServerURL {found:?} does not match the configured default server ({}); it will be replaced",
            path.display(),
            default_server.map_or_else(|| "none".to_owned(), |address| address.to_string()),
        ),
        Loaded::Corrupt(reason) => {
            warn!(
                service,
                "ignoring unusable state file: {reason}; it will be replaced"
            );
        }
    }
    loaded
}

/// [`load`] without the logging.
fn check(
    path: &Path,
    default_server: Option<SocketAddr>,
    vip_is_ipv4: bool,
    max_servers: usize,
) -> Loaded {
    let file = match read_file(path) {
        Ok(Some(file)) => file,
        Ok(None) => return Loaded::Missing,
        Err(reason) => return Loaded::Corrupt(reason),
    };
    if !server_url_matches(&file.server_url, default_server) {
        return Loaded::Mismatch {
            found: file.server_url,
        };
    }
    match addresses(path, &file, vip_is_ipv4, max_servers) {
        Ok(servers) => Loaded::Servers(servers),
        Err(reason) => Loaded::Corrupt(reason),
    }
}

/// Reads a state file in K3s's `lbConfig` format (daas-lb's own, or one
/// K3s writes). `Ok(None)`: there is no file; an error says why the file
/// cannot be used, naming the path.
pub fn read_file(path: &Path) -> Result<Option<StateFile>, String> {
    let shown = path.display();
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(format!("{shown}: cannot read: {err}")),
    };
    let file: StateFile = serde_json::from_slice(&bytes)
        .map_err(|err| format!("{shown}: not a valid state file: {err}"))?;
    // serde also accepts a struct written as a JSON array; K3s does not.
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(format!(
            "{shown}: not a valid state file: expected a JSON object"
        ));
    }
    Ok(Some(file))
}

/// The file's `ServerAddresses` as addresses: each an `IP:port` of the
/// VIP's family, none twice, at most `max_servers`; an error names the
/// path and the entry.
pub fn addresses(
    path: &Path,
    file: &StateFile,
    vip_is_ipv4: bool,
    max_servers: usize,
) -> Result<Vec<SocketAddr>, String> {
    let shown = path.display();
    if file.server_addresses.len() > max_servers {
        return Err(format!(
            "{shown}: too many servers: {} ServerAddresses, at most {max_servers} allowed",
            file.server_addresses.len()
        ));
    }
    let wanted = if vip_is_ipv4 { "IPv4" } else { "IPv6" };
    let mut seen = HashMap::with_capacity(file.server_addresses.len());
    let mut servers = Vec::with_capacity(file.server_addresses.len());
    for (i, text) in file.server_addresses.iter().enumerate() {
        let Ok(address) = text.parse::<SocketAddr>() else {
            return Err(format!(
                "{shown}: ServerAddresses[{i}]: bad address {text:?}, expected IP:port (IPv6 in brackets)"
            ));
        };
        if address.is_ipv4() != vip_is_ipv4 {
            let found = if address.is_ipv4() { "IPv4" } else { "IPv6" };
            return Err(format!(
                "{shown}: ServerAddresses[{i}]: address family mismatch: {address} is {found}, the VIP is {wanted}"
            ));
        }
        if let Some(first) = seen.insert(address, i) {
            return Err(format!(
                "{shown}: ServerAddresses[{i}]: duplicate address {address}, already at ServerAddresses[{first}]"
            ));
        }
        servers.push(address);
    }
    Ok(servers)
}

/// Whether a file's `ServerURL` names the configured default server.
///
/// `""` means no default server. Otherwise an `http://`/`https://` scheme
/// and one trailing `/` are dropped and the rest is parsed as an `ip:port`;
/// a value that does not parse matches nothing.
fn server_url_matches(found: &str, default_server: Option<SocketAddr>) -> bool {
    if found.is_empty() {
        return default_server.is_none();
    }
    let without_scheme = ["https://", "http://"]
        .iter()
        .find_map(|scheme| strip_prefix_ignore_case(found, scheme))
        .unwrap_or(found);
    let bare = without_scheme.strip_suffix('/').unwrap_or(without_scheme);
    default_server.is_some() && bare.parse::<SocketAddr>().ok() == default_server
}

/// `text` without `prefix`, compared ignoring ASCII case.
fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// The `ServerURL` written for a default server.
fn url_of(default_server: Option<SocketAddr>) -> String {
    default_server.map_or_else(String::new, |address| address.to_string())
}

/// Distinguishes temp files of concurrent [`store`] calls in one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes the file atomically (temp file in the same directory + fsync + rename),
/// creating `data_dir` (and parents) if needed; errors name the path.
///
/// The JSON is laid out exactly as K3s writes it (Go's `json.MarshalIndent`
/// with two spaces, no trailing newline).
pub fn store(
    data_dir: &Path,
    service: &str,
    default_server: Option<SocketAddr>,
    servers: &[SocketAddr],
) -> anyhow::Result<()> {
    let path = state_file(data_dir, service);
    let file = StateFile {
        server_url: url_of(default_server),
        server_addresses: servers.iter().map(ToString::to_string).collect(),
    };
    let json = serde_json::to_string_pretty(&file)
        .with_context(|| format!("{}: cannot encode the state", path.display()))?;
    fs::create_dir_all(data_dir)
        .with_context(|| format!("{}: cannot create the data directory", data_dir.display()))?;

    let temp = data_dir.join(format!(
        ".{service}.json.{}.{}.tmp",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = write_synced(&temp, json.as_bytes()).and_then(|()| {
        fs::rename(&temp, &path).with_context(|| {
            format!(
                "{}: cannot rename {} over it",
                path.display(),
                temp.display()
            )
        })
    });
    if let Err(err) = written {
        // Best effort: the error that matters is the one being returned.
        let _ = fs::remove_file(&temp);
        return Err(err);
    }
    // Make the rename itself durable.
    File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("{}: cannot sync the directory", data_dir.display()))?;
    debug!(
        service,
        "saved {} servers in {}",
        servers.len(),
        path.display()
    );
    Ok(())
}

/// Creates `path` (which must not exist), writes `bytes` and fsyncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("{}: cannot create", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    file.sync_all()
        .with_context(|| format!("{}: cannot sync", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed on drop (also
    /// when the test panics).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> Self {
            static COUNTER: AtomicU64 = AtomicU64::new(0);
            let path = std::env::temp_dir().join(format!(
                "daas-lb-persist-{test}-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            // Left over from an earlier run with the same pid: start clean.
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            Self(path)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn addrs(texts: &[&str]) -> Vec<SocketAddr> {
        texts.iter().map(|text| addr(text)).collect()
    }

    const SERVICE: &str = "supervisor";
    const MAX: usize = 8;

    /// Writes `content` as the service's state file.
    fn write_raw(dir: &TempDir, content: &str) -> PathBuf {
        let path = state_file(dir.path(), SERVICE);
        fs::write(&path, content).unwrap();
        path
    }

    /// Loads the service's state file with an IPv4 VIP and `default_server`.
    fn load_v4(dir: &TempDir, default_server: Option<&str>) -> Loaded {
        load(dir.path(), SERVICE, default_server.map(addr), true, MAX)
    }

    /// Asserts that `loaded` is corrupt with a reason naming `path` and containing `what`.
    fn assert_corrupt(loaded: &Loaded, path: &Path, what: &str) {
        let Loaded::Corrupt(reason) = loaded else {
            panic!("expected Corrupt({what:?}), got {loaded:?}");
        };
        assert!(
            reason.contains(&path.display().to_string()),
            "no path in {reason:?}"
        );
        assert!(reason.contains(what), "{what:?} not in {reason:?}");
    }

    fn round_trip(default_server: Option<&str>, servers: &[&str], vip_is_ipv4: bool) {
        let dir = TempDir::new("round-trip");
        let default_server = default_server.map(addr);
        let servers = addrs(servers);
        store(dir.path(), SERVICE, default_server, &servers).unwrap();
        assert_eq!(
            load(dir.path(), SERVICE, default_server, vip_is_ipv4, MAX),
            Loaded::Servers(servers)
        );
    }

    #[test]
    fn state_file_is_service_json_in_data_dir() {
        assert_eq!(
            state_file(Path::new("/var/lib/daas-lb"), "supervisor"),
            PathBuf::from("/var/lib/daas-lb/supervisor.json")
        );
    }

    #[test]
    fn round_trip_ipv4() {
        round_trip(
            Some("10.0.0.1:6443"),
            &["10.0.0.2:6443", "10.0.0.1:6443", "10.0.0.3:9345"],
            true,
        );
    }

    #[test]
    fn round_trip_ipv6() {
        round_trip(
            Some("[fd00::1]:6443"),
            &["[fd00::2]:6443", "[fd00::1]:6443"],
            false,
        );
    }

    #[test]
    fn round_trip_empty_list() {
        round_trip(Some("10.0.0.1:6443"), &[], true);
        round_trip(None, &[], false);
    }

    #[test]
    fn round_trip_no_default() {
        round_trip(None, &["10.0.0.2:6443", "10.0.0.3:6443"], true);
    }

    #[test]
    fn written_file_is_k3s_json() {
        let dir = TempDir::new("k3s-json");
        store(
            dir.path(),
            SERVICE,
            Some(addr("10.0.0.1:6443")),
            &addrs(&["10.0.0.1:6443", "10.0.0.2:6443"]),
        )
        .unwrap();
        let written = fs::read_to_string(state_file(dir.path(), SERVICE)).unwrap();
        assert_eq!(
            written,
            "{\n  \"ServerURL\": \"10.0.0.1:6443\",\n  \"ServerAddresses\": [\n    \"10.0.0.1:6443\",\n    \"10.0.0.2:6443\"\n  ]\n}"
        );

        store(dir.path(), SERVICE, None, &addrs(&["[fd00::1]:6443"])).unwrap();
        let written = fs::read_to_string(state_file(dir.path(), SERVICE)).unwrap();
        assert_eq!(
            written,
            "{\n  \"ServerURL\": \"\",\n  \"ServerAddresses\": [\n    \"[fd00::1]:6443\"\n  ]\n}"
        );

        store(dir.path(), SERVICE, None, &[]).unwrap();
        let written = fs::read_to_string(state_file(dir.path(), SERVICE)).unwrap();
        assert_eq!(
            written,
            "{\n  \"ServerURL\": \"\",\n  \"ServerAddresses\": []\n}"
        );
    }

    #[test]
    fn url_form_server_url_matches() {
        let dir = TempDir::new("url-form");
        let servers = Loaded::Servers(addrs(&["10.0.0.2:6443"]));
        for url in [
            "https://10.0.0.1:6443",
            "https://10.0.0.1:6443/",
            "http://10.0.0.1:6443",
            "HTTPS://10.0.0.1:6443/",
            "10.0.0.1:6443/",
        ] {
            write_raw(
                &dir,
                &format!(r#"{{"ServerURL": "{url}", "ServerAddresses": ["10.0.0.2:6443"]}}"#),
            );
            assert_eq!(load_v4(&dir, Some("10.0.0.1:6443")), servers, "{url}");
        }

        write_raw(
            &dir,
            r#"{"ServerURL": "https://[fd00::1]:6443/", "ServerAddresses": ["[fd00::2]:6443"]}"#,
        );
        assert_eq!(
            load(
                dir.path(),
                SERVICE,
                Some(addr("[fd00::1]:6443")),
                false,
                MAX
            ),
            Loaded::Servers(addrs(&["[fd00::2]:6443"]))
        );
    }

    #[test]
    fn mismatch() {
        let dir = TempDir::new("mismatch");
        let file =
            r#"{"ServerURL": "https://10.0.0.1:6443", "ServerAddresses": ["10.0.0.2:6443"]}"#;
        write_raw(&dir, file);
        let found = "https://10.0.0.1:6443".to_owned();
        // Another default server, another port, no default server.
        for default_server in [Some("10.0.0.9:6443"), Some("10.0.0.1:6444"), None] {
            assert_eq!(
                load_v4(&dir, default_server),
                Loaded::Mismatch {
                    found: found.clone()
                },
                "{default_server:?}"
            );
        }

        // The file has no default server, the config has one.
        store(dir.path(), SERVICE, None, &addrs(&["10.0.0.2:6443"])).unwrap();
        assert_eq!(
            load_v4(&dir, Some("10.0.0.1:6443")),
            Loaded::Mismatch {
                found: String::new()
            }
        );

        // A ServerURL that is no IP:port (a host name) matches nothing.
        write_raw(
            &dir,
            r#"{"ServerURL": "https://server.example:6443", "ServerAddresses": []}"#,
        );
        for default_server in [Some("10.0.0.1:6443"), None] {
            assert_eq!(
                load_v4(&dir, default_server),
                Loaded::Mismatch {
                    found: "https://server.example:6443".to_owned()
                }
            );
        }
    }

    #[test]
    fn missing_file() {
        let dir = TempDir::new("missing");
        assert_eq!(load_v4(&dir, Some("10.0.0.1:6443")), Loaded::Missing);
        assert_eq!(load_v4(&dir, None), Loaded::Missing);
        // A data dir that does not exist yet is a first start too.
        assert_eq!(
            load(&dir.path().join("not-yet"), SERVICE, None, true, MAX),
            Loaded::Missing
        );
    }

    #[test]
    fn corrupt_truncated_json() {
        let dir = TempDir::new("truncated");
        let path = write_raw(
            &dir,
            r#"{"ServerURL": "", "ServerAddresses": ["10.0.0.2:64"#,
        );
        assert_corrupt(&load_v4(&dir, None), &path, "EOF while parsing");
        let path = write_raw(&dir, "");
        assert_corrupt(&load_v4(&dir, None), &path, "EOF while parsing");
    }

    #[test]
    fn corrupt_wrong_types() {
        let dir = TempDir::new("wrong-types");
        for content in [
            r#"{"ServerURL": 5, "ServerAddresses": []}"#,
            r#"{"ServerURL": "", "ServerAddresses": "10.0.0.2:6443"}"#,
            r#"{"ServerURL": "", "ServerAddresses": [6443]}"#,
        ] {
            let path = write_raw(&dir, content);
            assert_corrupt(&load_v4(&dir, None), &path, "invalid type");
        }
        // serde would take a struct as an array; the K3s format is an object.
        let path = write_raw(&dir, r#"["", ["10.0.0.2:6443"]]"#);
        assert_corrupt(&load_v4(&dir, None), &path, "expected a JSON object");
        let path = write_raw(&dir, r#"["10.0.0.2:6443"]"#);
        assert_corrupt(&load_v4(&dir, None), &path, "not a valid state file");
    }

    #[test]
    fn corrupt_missing_key() {
        let dir = TempDir::new("missing-key");
        let path = write_raw(&dir, r#"{"ServerAddresses": []}"#);
        assert_corrupt(&load_v4(&dir, None), &path, "missing field `ServerURL`");
        let path = write_raw(&dir, r#"{"ServerURL": ""}"#);
        assert_corrupt(
            &load_v4(&dir, None),
            &path,
            "missing field `ServerAddresses`",
        );
    }

    #[test]
    fn null_server_addresses_is_empty_and_unknown_keys_are_ignored() {
        let dir = TempDir::new("null");
        write_raw(&dir, r#"{"ServerURL": "", "ServerAddresses": null}"#);
        assert_eq!(load_v4(&dir, None), Loaded::Servers(Vec::new()));
        write_raw(
            &dir,
            r#"{"ServerURL": "", "ServerAddresses": ["10.0.0.2:6443"], "Extra": 1}"#,
        );
        assert_eq!(
            load_v4(&dir, None),
            Loaded::Servers(addrs(&["10.0.0.2:6443"]))
        );
    }

    #[test]
    fn corrupt_bad_address() {
        let dir = TempDir::new("bad-address");
        for bad in [
            "server.example:6443",
            "10.0.0.2",
            "fd00::2:6443",
            "10.0.0.2:70000",
            "",
        ] {
            let path = write_raw(
                &dir,
                &format!(r#"{{"ServerURL": "", "ServerAddresses": ["10.0.0.1:6443", "{bad}"]}}"#),
            );
            assert_corrupt(
                &load_v4(&dir, None),
                &path,
                &format!("ServerAddresses[1]: bad address {bad:?}"),
            );
        }
    }

    #[test]
    fn corrupt_wrong_family() {
        let dir = TempDir::new("wrong-family");
        let path = write_raw(
            &dir,
            r#"{"ServerURL": "", "ServerAddresses": ["10.0.0.1:6443", "[fd00::2]:6443"]}"#,
        );
        assert_corrupt(
            &load_v4(&dir, None),
            &path,
            "ServerAddresses[1]: address family mismatch: [fd00::2]:6443 is IPv6, the VIP is IPv4",
        );
        assert_corrupt(
            &load(dir.path(), SERVICE, None, false, MAX),
            &path,
            "ServerAddresses[0]: address family mismatch: 10.0.0.1:6443 is IPv4, the VIP is IPv6",
        );
    }

    #[test]
    fn corrupt_duplicate() {
        let dir = TempDir::new("duplicate");
        let path = write_raw(
            &dir,
            r#"{"ServerURL": "", "ServerAddresses": ["10.0.0.1:6443", "10.0.0.2:6443", "10.0.0.1:6443"]}"#,
        );
        assert_corrupt(
            &load_v4(&dir, None),
            &path,
            "ServerAddresses[2]: duplicate address 10.0.0.1:6443, already at ServerAddresses[0]",
        );
    }

    #[test]
    fn corrupt_too_many() {
        let dir = TempDir::new("too-many");
        let servers: Vec<SocketAddr> = (1..=3).map(|i| addr(&format!("10.0.0.{i}:6443"))).collect();
        store(dir.path(), SERVICE, None, &servers).unwrap();
        let path = state_file(dir.path(), SERVICE);
        assert_corrupt(
            &load(dir.path(), SERVICE, None, true, 2),
            &path,
            "too many servers: 3 ServerAddresses, at most 2 allowed",
        );
        // Exactly the maximum is fine.
        assert_eq!(
            load(dir.path(), SERVICE, None, true, 3),
            Loaded::Servers(servers)
        );
    }

    #[test]
    fn corrupt_unreadable() {
        let dir = TempDir::new("unreadable");
        let path = state_file(dir.path(), SERVICE);
        fs::create_dir(&path).unwrap();
        assert_corrupt(&load_v4(&dir, None), &path, "cannot read");
    }

    #[test]
    fn store_creates_missing_data_dir() {
        let dir = TempDir::new("create-dir");
        let data_dir = dir.path().join("a/b/c");
        let servers = addrs(&["10.0.0.2:6443"]);
        store(&data_dir, SERVICE, None, &servers).unwrap();
        assert_eq!(
            load(&data_dir, SERVICE, None, true, MAX),
            Loaded::Servers(servers)
        );
    }

    #[test]
    fn store_replaces_existing_file() {
        let dir = TempDir::new("replace");
        write_raw(
            &dir,
            "garbage that is much longer than the new content will be ......",
        );
        let servers = addrs(&["10.0.0.2:6443"]);
        store(dir.path(), SERVICE, Some(addr("10.0.0.1:6443")), &servers).unwrap();
        assert_eq!(
            load_v4(&dir, Some("10.0.0.1:6443")),
            Loaded::Servers(servers)
        );
        let servers = addrs(&["10.0.0.3:6443", "10.0.0.4:6443"]);
        store(dir.path(), SERVICE, Some(addr("10.0.0.1:6443")), &servers).unwrap();
        assert_eq!(
            load_v4(&dir, Some("10.0.0.1:6443")),
            Loaded::Servers(servers)
        );
    }

    #[test]
    fn store_leaves_no_temp_file() {
        let dir = TempDir::new("no-temp");
        store(dir.path(), SERVICE, None, &addrs(&["10.0.0.2:6443"])).unwrap();
        store(dir.path(), "other", None, &[]).unwrap();
        store(dir.path(), SERVICE, None, &[]).unwrap();
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["other.json", "supervisor.json"]);
    }

    #[test]
    fn store_error_names_the_path() {
        let dir = TempDir::new("store-error");
        // data_dir is a regular file: it cannot be created as a directory.
        let data_dir = dir.path().join("file");
        fs::write(&data_dir, "").unwrap();
        let err = format!("{:#}", store(&data_dir, SERVICE, None, &[]).unwrap_err());
        assert!(err.contains(&data_dir.display().to_string()), "{err}");
    }
}
