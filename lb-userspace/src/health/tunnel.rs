//! `http` and `https` probes through an HTTP CONNECT tunnel: what a check
//! of a proxied service does when its server is dialed through the
//! `HTTPS_PROXY` forward proxy ([`Prober::through`]).
//!
//! The tunnel to the server's address (its IP and the check's port) is one
//! [`connect::dial`], the same dial the proxy mode makes for a client; over
//! it, `GET <path>` in HTTP/1.1 (hyper), inside TLS (rustls) for `https`.
//! The semantics are the direct path's ([`super::http`]): the `Host` header
//! and TLS server name are the check's `host` or the server's IP, the
//! status must be expected, the body's first 64 KiB must contain
//! `body_contains`, redirects are not followed, and every check opens a
//! fresh tunnel, closed when the check ends. The whole exchange, CONNECT
//! included, is bounded by the check's budget.
//!
//! TLS as the direct path's reqwest client does it: ring as the crypto
//! provider; the webpki roots, or only the CA file's certificates; with
//! `insecure`, any certificate (the handshake's signatures are still
//! checked).
//!
//! Dials: the CONNECT is the connection to the server. A proxy that is down
//! or refuses the CONNECT (403, 407, ...) is a failed dial whose reason
//! carries [`connect::ConnectError`] (it names the proxy and the server);
//! once the tunnel is up, a TLS or HTTP failure, or no answer in time, is a
//! check failure only (the server took the connection).

use std::{
    fs,
    future::poll_fn,
    net::{IpAddr, SocketAddr},
    path::Path,
    pin::{Pin, pin},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use hyper::{
    Request, Uri,
    body::{Body as _, Incoming},
    header::{HOST, USER_AGENT},
};
use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject as _},
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    time::timeout_at,
};
use tokio_rustls::TlsConnector;

use super::{
    Budget, DialOutcome, HttpPart, PartOutcome, Prober, Transport,
    http::{
        AGENT, body_failure, body_unread, innermost_io, keep_up_to, passed, root_cause,
        status_failure,
    },
    millis,
};
use crate::{
    config::{HttpCheck, TlsOptions},
    proxy::connect::{self, ProxyUrl},
};

/// The CA certificates of `path` (PEM) for rustls; the file was checked by
/// [`crate::config::tls::read_ca_file`] already. Errors name the file.
pub(super) fn read_ca_der(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = fs::read(path).with_context(|| format!("cannot read CA file {}", path.display()))?;
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("CA file {} is not valid PEM", path.display()))
}

/// The rustls client of an https check through a tunnel: `options` as the
/// direct path's client reads them, `ca` the CA file's certificates (empty
/// for the webpki roots); HTTP/1.1 offered by ALPN.
pub(super) fn tls_config(
    options: &TlsOptions,
    ca: &[CertificateDer<'static>],
) -> anyhow::Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let mut config = if options.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        if ca.is_empty() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        } else {
            for certificate in ca {
                roots
                    .add(certificate.clone())
                    .context("a CA certificate rustls cannot use as a root")?;
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// `insecure`: any server certificate is accepted; the handshake's
/// signatures are still verified with the provider's algorithms.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The request an http part makes over its tunnel and how its answer is
/// judged.
struct Ask<'a> {
    check: &'a HttpCheck,
    /// Starts the reasons, e.g. `http via proxy 10.0.0.5:3128`.
    label: &'a str,
    /// The server's IP: the TLS server name without a `host`.
    ip: IpAddr,
    /// The `Host` header ([`authority`]).
    authority: String,
    path: Uri,
    /// When the check started (a passing reason gives the time since).
    start: Instant,
}

/// How an exchange over an open tunnel failed (never a failed dial).
enum Failure {
    /// The TLS handshake.
    Tls(String),
    /// HTTP: the request, the answer or the connection under them.
    Http(String),
}

impl Prober {
    /// An http/https `part` of `server` through `proxy` (see the module
    /// docs).
    pub(super) async fn probe_http_via(
        &self,
        part: &HttpPart,
        server: SocketAddr,
        proxy: &ProxyUrl,
        budget: Budget,
    ) -> PartOutcome {
        let start = Instant::now();
        let check = &part.check;
        let target = SocketAddr::new(server.ip(), check.port.unwrap_or(server.port()));
        let label = format!("{} via proxy {proxy}", part.label);
        // The tunnel is the dial when it goes to the server's own port.
        let dial = |ok: bool, duration: Duration| {
            (target == server).then_some((Transport::Tcp, DialOutcome { ok, duration }))
        };
        let path = match check.path.parse::<Uri>() {
            Ok(path) => path,
            Err(error) => {
                return PartOutcome::plain(
                    false,
                    format!("{label}: bad path {:?}: {error}", check.path),
                    None,
                );
            }
        };
        let tunnel = match connect::dial(proxy, target, budget.remaining()).await {
            Ok(tunnel) => tunnel,
            Err(error) => {
                tracing::debug!(%server, %error, "health check: no tunnel through the proxy");
                return PartOutcome::plain(
                    false,
                    format!("{}: {error}", part.label),
                    dial(false, start.elapsed()),
                );
            }
        };
        let connected = start.elapsed();
        let tls = self.inner.tls[part.tls].tunnel.as_ref();
        let ask = Ask {
            check,
            label: &label,
            ip: server.ip(),
            authority: authority(check, server.ip(), target.port()),
            path,
            start,
        };
        let exchange = exchange(tunnel, tls, ask);
        let (ok, reason) = match timeout_at(budget.deadline, exchange).await {
            Ok(Ok(judged)) => judged,
            Ok(Err(Failure::Tls(what))) => (false, format!("{label}: tls: {what}")),
            Ok(Err(Failure::Http(what))) => (false, format!("{label}: {what}")),
            Err(_) => (
                false,
                format!("{label}: no answer within {}", millis(budget.timeout)),
            ),
        };
        PartOutcome::plain(ok, reason, dial(true, connected))
    }
}

/// TLS (for https: `tls` is set) and `GET path` over `tunnel`, judged as
/// the direct path judges an answer: pass or fail and the reason.
async fn exchange(
    tunnel: TcpStream,
    tls: Option<&Arc<ClientConfig>>,
    ask: Ask<'_>,
) -> Result<(bool, String), Failure> {
    let Some(config) = tls else {
        return request(tunnel, ask).await;
    };
    let name = match &ask.check.host {
        Some(host) => ServerName::try_from(host.clone())
            .map_err(|error| Failure::Tls(format!("server name {host:?}: {error}")))?,
        None => ServerName::from(ask.ip),
    };
    let stream = TlsConnector::from(Arc::clone(config))
        .connect(name, tunnel)
        .await
        .map_err(|error| Failure::Tls(innermost_io(&error).to_string()))?;
    request(stream, ask).await
}

/// `GET path` in HTTP/1.1 over `stream`; the connection is driven in this
/// task and closed when the request is judged (or dropped at the deadline).
async fn request<S>(stream: S, ask: Ask<'_>) -> Result<(bool, String), Failure>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ask {
        check,
        label,
        authority,
        path,
        start,
        ..
    } = ask;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| Failure::Http(root_cause(&error)))?;
    let request = Request::get(path)
        .header(HOST, authority)
        .header(USER_AGENT, AGENT)
        .body(String::new())
        .map_err(|error| Failure::Http(format!("request: {error}")))?;
    let judged = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| Failure::Http(root_cause(&error)))?;
        let status = response.status().as_u16();
        if let Some(failure) = status_failure(label, check, status) {
            return Ok((false, failure));
        }
        if let Some(needle) = &check.body_contains {
            let (body, truncated) =
                match read_body(response.into_body(), HttpCheck::BODY_LIMIT).await {
                    Ok(body) => body,
                    Err(error) => return Ok((false, body_unread(label, status, &error))),
                };
            if let Some(failure) = body_failure(label, needle, &body, truncated) {
                return Ok((false, failure));
            }
        }
        Ok((true, passed(label, status, start.elapsed())))
    };
    // The connection ends (say, the server closes after its answer) before
    // its last bytes are judged: keep judging, they are buffered.
    let mut judged = pin!(judged);
    let mut connection = pin!(connection);
    let mut driving = true;
    loop {
        tokio::select! {
            judged = &mut judged => return judged,
            ended = &mut connection, if driving => {
                if let Err(error) = ended {
                    tracing::trace!(%error, "health check connection through the proxy ended");
                }
                driving = false;
            }
        }
    }
}

/// The `Host` header: the check's `host` or the server's IP, with the port
/// unless it is the scheme's default (as reqwest writes it on the direct
/// path).
fn authority(check: &HttpCheck, ip: IpAddr, port: u16) -> String {
    let host = check.host.clone().unwrap_or_else(|| match ip {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    });
    let default_port = if check.tls.is_some() { 443 } else { 80 };
    if port == default_port {
        host
    } else {
        format!("{host}:{port}")
    }
}

/// Reads at most `limit` bytes of the body; `true` when it stopped early.
async fn read_body(mut body: Incoming, limit: usize) -> hyper::Result<(Vec<u8>, bool)> {
    let mut read = Vec::new();
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        // Trailers carry no body bytes.
        let Ok(chunk) = frame?.into_data() else {
            continue;
        };
        if keep_up_to(&mut read, &chunk, limit) {
            return Ok((read, true));
        }
    }
    Ok((read, false))
}

#[cfg(test)]
mod tests {
    use std::{
        net::Ipv4Addr,
        sync::atomic::{AtomicUsize, Ordering},
    };

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
    };

    use super::{
        super::tests::{
            SLACK, TlsServer, closed_port, http, http_server, https, prober, silent_server,
        },
        *,
    };
    use crate::{
        config::CheckSpec,
        proxy::{ProxyEnv, connect::NoProxy},
    };

    /// The server the checks are about: never connected to by these tests
    /// (a documentation address), the fake proxy stands in for it.
    const SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)), 7000);
    const TIMEOUT: Duration = Duration::from_secs(2);

    /// A fake HTTP CONNECT proxy on 127.0.0.1: a CONNECT to a target of its
    /// routes is answered 200 and tunnelled to that target's local stand-in;
    /// any other target is answered 403. Counts the CONNECTs.
    struct FakeProxy {
        env: Arc<ProxyEnv>,
        /// `127.0.0.1:port`, as reasons name it.
        name: String,
        connects: Arc<AtomicUsize>,
    }

    impl FakeProxy {
        async fn start(routes: Vec<(SocketAddr, SocketAddr)>) -> Self {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let connects = Arc::new(AtomicUsize::new(0));
            let counted = Arc::clone(&connects);
            tokio::spawn(async move {
                while let Ok((conn, _)) = listener.accept().await {
                    let routes = routes.clone();
                    let counted = Arc::clone(&counted);
                    tokio::spawn(async move {
                        tunnel_one(conn, &routes, &counted).await;
                    });
                }
            });
            let env = ProxyEnv::new(Some(ProxyUrl::new("127.0.0.1", port)), NoProxy::default());
            Self {
                env: Arc::new(env),
                name: format!("127.0.0.1:{port}"),
                connects,
            }
        }

        fn connects(&self) -> usize {
            self.connects.load(Ordering::Relaxed)
        }
    }

    /// One client of [`FakeProxy`]: reads the CONNECT head, answers, then
    /// copies both ways.
    async fn tunnel_one(
        mut conn: TcpStream,
        routes: &[(SocketAddr, SocketAddr)],
        connects: &AtomicUsize,
    ) {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if conn.read(&mut byte).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        connects.fetch_add(1, Ordering::Relaxed);
        let head = String::from_utf8_lossy(&head);
        let target: Option<SocketAddr> = head
            .strip_prefix("CONNECT ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|target| target.parse().ok());
        let upstream = routes
            .iter()
            .find(|(routed, _)| Some(*routed) == target)
            .map(|&(_, upstream)| upstream);
        let Some(upstream) = upstream else {
            let _ = conn.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
            return;
        };
        let Ok(mut upstream) = TcpStream::connect(upstream).await else {
            let _ = conn.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
            return;
        };
        if conn
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .is_ok()
        {
            let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
        }
    }

    fn at_port(port: u16) -> SocketAddr {
        SocketAddr::new(SERVER.ip(), port)
    }

    #[tokio::test]
    async fn a_tcp_check_through_a_proxy_is_a_connect_it_answers() {
        let backend = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let proxy = FakeProxy::start(vec![(SERVER, backend.local_addr().unwrap())]).await;
        let tcp = prober(&CheckSpec::Tcp).through(Some(Arc::clone(&proxy.env)));
        let outcome = tcp.probe(SERVER, TIMEOUT, true).await;
        assert!(outcome.ok, "{outcome:?}");
        let prefix = format!("tcp via proxy {} ok in ", proxy.name);
        assert!(outcome.reason.starts_with(&prefix), "{outcome:?}");
        assert!(outcome.dial.is_some_and(|dial| dial.ok), "{outcome:?}");
        assert_eq!(proxy.connects(), 1);

        // A target the proxy refuses: a failed dial naming the proxy and
        // its status.
        let refused = tcp.probe(at_port(7001), TIMEOUT, true).await;
        assert!(!refused.ok, "{refused:?}");
        assert_eq!(
            refused.reason,
            format!(
                "tcp: proxy {} refused CONNECT to 192.0.2.10:7001: 403 Forbidden",
                proxy.name
            )
        );
        assert!(refused.dial.is_some_and(|dial| !dial.ok), "{refused:?}");

        // Loopback servers are never proxied: checked directly.
        let direct = tcp
            .probe(backend.local_addr().unwrap(), TIMEOUT, true)
            .await;
        assert!(
            direct.reason.starts_with("tcp connect ok in "),
            "{direct:?}"
        );
        assert_eq!(proxy.connects(), 2);
    }

    #[tokio::test]
    async fn a_proxy_that_is_down_fails_the_check_and_the_dial() {
        let closed = closed_port().await;
        let env = ProxyEnv::new(
            Some(ProxyUrl::new("127.0.0.1", closed.port())),
            NoProxy::default(),
        );
        let via = Some(Arc::new(env));
        for (check, label) in [
            (CheckSpec::Tcp, "tcp"),
            (CheckSpec::Http(HttpCheck::new()), "http"),
        ] {
            let outcome = prober(&check)
                .through(via.clone())
                .probe(SERVER, TIMEOUT, true)
                .await;
            assert!(!outcome.ok, "{outcome:?}");
            let prefix =
                format!("{label}: proxy {closed} unreachable (for CONNECT to 192.0.2.10:7000): ");
            assert!(outcome.reason.starts_with(&prefix), "{outcome:?}");
            assert!(outcome.dial.is_some_and(|dial| !dial.ok), "{outcome:?}");
        }
    }

    #[tokio::test]
    async fn a_no_proxy_match_is_checked_directly() {
        let proxy = FakeProxy::start(Vec::new()).await;
        let env = ProxyEnv::from_lookup(|name| match name {
            "HTTPS_PROXY" => Some(format!("http://{}", proxy.name)),
            "NO_PROXY" => Some("192.0.2.0/24".to_owned()),
            _ => None,
        })
        .unwrap();
        let outcome = prober(&CheckSpec::Tcp)
            .through(Some(Arc::new(env)))
            .probe(SERVER, Duration::from_millis(300), true)
            .await;
        // Whatever the direct connect to a documentation address gives
        // (unreachable, timeout), it is a direct one.
        assert!(outcome.reason.starts_with("tcp connect "), "{outcome:?}");
        assert_eq!(proxy.connects(), 0);
    }

    #[tokio::test]
    async fn http_checks_run_through_a_connect_tunnel() {
        let backend = http_server().await;
        let proxy = FakeProxy::start(vec![(SERVER, backend)]).await;
        let name = &proxy.name;
        let via = |check: HttpCheck| {
            prober(&CheckSpec::Http(check)).through(Some(Arc::clone(&proxy.env)))
        };

        let outcome = via(HttpCheck::new()).probe(SERVER, TIMEOUT, true).await;
        assert!(outcome.ok, "{outcome:?}");
        let prefix = format!("http via proxy {name} 200 in ");
        assert!(outcome.reason.starts_with(&prefix), "{outcome:?}");
        assert!(outcome.dial.is_some_and(|dial| dial.ok), "{outcome:?}");
        // UDP services get no dial from an http check.
        let outcome = via(HttpCheck::new()).probe(SERVER, TIMEOUT, false).await;
        assert!(outcome.ok, "{outcome:?}");
        assert_eq!(outcome.dial, None);

        // An unexpected status is a check failure, not a failed dial.
        let outcome = via(http("/fail")).probe(SERVER, TIMEOUT, true).await;
        assert!(!outcome.ok, "{outcome:?}");
        assert_eq!(
            outcome.reason,
            format!("http via proxy {name} 503 (expected 200)")
        );
        assert!(outcome.dial.is_some_and(|dial| dial.ok), "{outcome:?}");
        let accept_503 = HttpCheck {
            expected_status: vec![200, 503],
            ..http("/fail")
        };
        let outcome = via(accept_503).probe(SERVER, TIMEOUT, true).await;
        assert!(outcome.ok, "{outcome:?}");
        // Redirects are not followed.
        let outcome = via(http("/redirect")).probe(SERVER, TIMEOUT, true).await;
        assert_eq!(
            outcome.reason,
            format!("http via proxy {name} 302 (expected 200)")
        );

        let with_body = |needle: &str| HttpCheck {
            body_contains: Some(needle.to_owned()),
            ..HttpCheck::new()
        };
        let outcome = via(with_body("all ok")).probe(SERVER, TIMEOUT, true).await;
        assert!(outcome.ok, "{outcome:?}");
        let outcome = via(with_body("nope")).probe(SERVER, TIMEOUT, true).await;
        assert!(!outcome.ok, "{outcome:?}");
        assert_eq!(
            outcome.reason,
            format!("http via proxy {name}: body lacks \"nope\"")
        );
        assert!(outcome.dial.is_some_and(|dial| dial.ok), "{outcome:?}");

        // Host: the server's address, or the check's `host`, with the port.
        let host_is = |host: Option<&str>, expected: &str| HttpCheck {
            host: host.map(str::to_owned),
            body_contains: Some(format!("host=Some(\"{expected}\")")),
            ..http("/host")
        };
        let outcome = via(host_is(None, "192.0.2.10:7000"))
            .probe(SERVER, TIMEOUT, true)
            .await;
        assert!(outcome.ok, "{outcome:?}");
        let outcome = via(host_is(Some("health.invalid"), "health.invalid:7000"))
            .probe(SERVER, TIMEOUT, true)
            .await;
        assert!(outcome.ok, "{outcome:?}");
        // A fresh tunnel for every check.
        assert_eq!(proxy.connects(), 9);
    }

    #[tokio::test]
    async fn an_http_check_on_another_port_leaves_the_dial_to_a_connect_of_its_own() {
        let health = http_server().await;
        let service = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        // The proxy tunnels to the health port only.
        let proxy = FakeProxy::start(vec![(at_port(8080), health)]).await;
        let check = prober(&CheckSpec::Http(HttpCheck {
            port: Some(8080),
            ..HttpCheck::new()
        }))
        .through(Some(Arc::clone(&proxy.env)));
        let outcome = check.probe(SERVER, TIMEOUT, true).await;
        assert!(outcome.ok, "{outcome:?}");
        assert!(outcome.dial.is_some_and(|dial| !dial.ok), "{outcome:?}");
        assert!(
            outcome.reason.ends_with(&format!(
                "; but the service port 192.0.2.10:7000: tcp: proxy {} refused CONNECT to \
                 192.0.2.10:7000: 403 Forbidden",
                proxy.name
            )),
            "{outcome:?}"
        );
        assert_eq!(proxy.connects(), 2);

        let both = FakeProxy::start(vec![
            (at_port(8080), health),
            (SERVER, service.local_addr().unwrap()),
        ])
        .await;
        let outcome = check
            .clone()
            .through(Some(Arc::clone(&both.env)))
            .probe(SERVER, TIMEOUT, true)
            .await;
        assert!(outcome.ok, "{outcome:?}");
        assert!(outcome.dial.is_some_and(|dial| dial.ok), "{outcome:?}");
        assert_eq!(both.connects(), 2);
    }

    #[tokio::test]
    async fn a_server_silent_behind_the_tunnel_fails_the_check_not_the_dial() {
        let silent = silent_server().await;
        let proxy = FakeProxy::start(vec![(SERVER, silent)]).await;
        let timeout = Duration::from_millis(300);
        let start = Instant::now();
        let outcome = prober(&CheckSpec::Http(HttpCheck::new()))
            .through(Some(Arc::clone(&proxy.env)))
            .probe(SERVER, timeout, true)
            .await;
        let elapsed = start.elapsed();
        assert!(!outcome.ok, "{outcome:?}");
        assert_eq!(
            outcome.reason,
            format!("http via proxy {}: no answer within 300.0ms", proxy.name)
        );
        assert!(outcome.dial.is_some_and(|dial| dial.ok), "{outcome:?}");
        assert!(
            elapsed >= timeout && elapsed < timeout + SLACK,
            "{elapsed:?}"
        );
    }

    #[tokio::test]
    async fn https_checks_run_tls_through_the_tunnel() {
        let server = TlsServer::start().await;
        let proxy = FakeProxy::start(vec![(SERVER, server.addr)]).await;
        let name = &proxy.name;
        let via = |check: HttpCheck| {
            prober(&CheckSpec::Http(check)).through(Some(Arc::clone(&proxy.env)))
        };
        let localhost = |check: HttpCheck| HttpCheck {
            host: Some("localhost".to_owned()),
            ..check
        };

        // The certificate's name as SNI, its CA trusted.
        let outcome = via(localhost(https(Some(server.cert()), false)))
            .probe(SERVER, TIMEOUT, true)
            .await;
        assert!(outcome.ok, "{outcome:?}");
        let prefix = format!("https via proxy {name} 200 in ");
        assert!(outcome.reason.starts_with(&prefix), "{outcome:?}");

        // Without `host` the server name is the server's IP, which the
        // certificate does not name: a TLS failure, not a failed dial.
        let outcome = via(https(Some(server.cert()), false))
            .probe(SERVER, TIMEOUT, true)
            .await;
        assert!(!outcome.ok, "{outcome:?}");
        let prefix = format!("https via proxy {name}: tls: ");
        assert!(outcome.reason.starts_with(&prefix), "{outcome:?}");
        assert!(outcome.reason.contains("certificate"), "{outcome:?}");
        assert!(outcome.dial.is_some_and(|dial| dial.ok), "{outcome:?}");

        // The webpki roots do not trust it.
        let outcome = via(localhost(https(None, false)))
            .probe(SERVER, TIMEOUT, true)
            .await;
        assert!(!outcome.ok, "{outcome:?}");
        assert!(outcome.reason.starts_with(&prefix), "{outcome:?}");
        assert!(outcome.reason.contains("UnknownIssuer"), "{outcome:?}");
        assert!(outcome.dial.is_some_and(|dial| dial.ok), "{outcome:?}");

        // insecure: any certificate.
        let outcome = via(https(None, true)).probe(SERVER, TIMEOUT, true).await;
        assert!(outcome.ok, "{outcome:?}");
        assert_eq!(proxy.connects(), 4);
    }
}
