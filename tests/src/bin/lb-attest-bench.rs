//! What a `nautilus` health check costs, next to what the checks it adds to
//! cost: verifying one signed performance attestation, verifying the
//! recorded Nitro attestation document, a fresh `Attester::check` (two
//! `GetObject` over gRPC, `GET /health_check`, `POST /process_data`, the
//! signature and policy), the same with the Nitro document, and a cached
//! verdict; the baselines are a plain HTTP `GET /health_check` on a reused
//! client (what an `http` check's request costs) and gRPC round trips to the
//! full node.
//!
//! Everything runs in this process on loopback: a fake Sui full node and a
//! fake enclave on `127.0.0.1:0`, no root needed. `cargo xtask bench
//! nautilus` runs it from a release build; prints a markdown table on
//! stdout, progress on stderr.
//!
//! ```text
//! lb-attest-bench [--reps N (50, over the network)] [--fast-reps N (200, in process)]
//! ```

use std::{
    fmt::Write as _,
    hint::black_box,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use lb_userspace::{
    config::NautilusCheck,
    demo::{
        fake_deployment::{
            APP, FakeDeployment, config_id, fake_address, node_key, publish_config, publish_enclave,
        },
        fake_enclave::{WEATHER_ATTESTATION_VALID_AT_MS, generate_key, weather_attestation},
    },
    health::nautilus::{Attester, Clock, NodeEnclave, Verdict, system_clock},
    nautilus::{
        attestation::{
            self, Expected, IntentMessage, PROCESS_DATA_INTENT, PerformanceAttestation, Policy,
            Rejection, sign,
        },
        document,
        enclave::{self, Pcrs},
    },
};
use sui_rpc::proto::sui::rpc::v2::GetServiceInfoRequest;

/// The check's (and every request's) timeout.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Untimed calls before each network measurement (connections, caches).
const WARMUP: usize = 5;

const USAGE: &str = "usage: lb-attest-bench [--reps 1..=10000] [--fast-reps 1..=100000]";

fn main() -> ExitCode {
    let (mut reps, mut fast_reps) = (50usize, 200usize);
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).and_then(|v| v.parse::<usize>().ok());
        match (pair[0].as_str(), value) {
            ("--reps", Some(v)) if (1..=10_000).contains(&v) => reps = v,
            ("--fast-reps", Some(v)) if (1..=100_000).contains(&v) => fast_reps = v,
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("lb-attest-bench: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(reps, fast_reps)) {
        Ok(table) => {
            print!("{table}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lb-attest-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One measured step.
struct Row {
    step: &'static str,
    /// Sorted.
    durations: Vec<Duration>,
    notes: String,
}

impl Row {
    fn new(step: &'static str, mut durations: Vec<Duration>, notes: impl Into<String>) -> Self {
        durations.sort();
        Self {
            step,
            durations,
            notes: notes.into(),
        }
    }

    fn min(&self) -> Duration {
        self.durations.first().copied().unwrap_or_default()
    }

    fn median(&self) -> Duration {
        self.durations
            .get(self.durations.len() / 2)
            .copied()
            .unwrap_or_default()
    }
}

async fn run(reps: usize, fast_reps: usize) -> Result<String> {
    let mut rows = Vec::new();

    progress(format_args!("in process: attestation::verify ×{fast_reps}"));
    rows.push(bench_verify(fast_reps)?);
    progress(format_args!(
        "in process: document::verify_enclave ×{fast_reps}"
    ));
    rows.push(bench_document(fast_reps)?);

    let setup = FakeDeployment::start("attest-bench").await?;
    progress(format_args!(
        "fake full node {}, fake enclave {}; network steps ×{reps} (+{WARMUP} warm-up)",
        setup.chain.url(),
        setup.enclave.url()
    ));

    let http_get = bench_http_get(&setup, reps).await?;
    let service_info = bench_service_info(&setup, reps).await?;
    let get_object = bench_get_object(&setup, reps).await?;
    let fresh = bench_fresh_check(&setup, reps).await?;
    let document_check = bench_document_check(&setup, reps).await?;
    let cached = bench_cached_check(&setup, reps.max(fast_reps)).await?;
    rows.extend([
        http_get,
        service_info,
        get_object,
        fresh,
        document_check,
        cached,
    ]);

    let base = rows
        .iter()
        .find(|row| row.step == HTTP_GET)
        .map(Row::median)
        .context("no HTTP GET baseline")?;
    let mut out = format!(
        "\n### Nautilus checks on loopback: min / median of {reps} (network) or {fast_reps} \
         (in process; cached verdict: {})\n\n\
         | step | min | median | median / HTTP GET | notes |\n|---|---:|---:|---:|---|\n",
        reps.max(fast_reps)
    );
    for row in &rows {
        let ratio = row.median().as_secs_f64() / base.as_secs_f64();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            row.step,
            human(row.min()),
            human(row.median()),
            ratio_text(ratio),
            row.notes
        );
    }
    Ok(out)
}

fn progress(what: std::fmt::Arguments<'_>) {
    eprintln!("[lb-attest-bench] {what}");
}

/// `12.3 µs` below a millisecond, `1.23 ms` above.
fn human(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1e-3 {
        format!("{:.1} µs", secs * 1e6)
    } else {
        format!("{:.2} ms", secs * 1e3)
    }
}

fn ratio_text(ratio: f64) -> String {
    if ratio < 0.1 {
        format!("{ratio:.3}×")
    } else {
        format!("{ratio:.2}×")
    }
}

/// Runs `f` `reps` times; its durations (unsorted).
fn time<T>(reps: usize, mut f: impl FnMut() -> Result<T>) -> Result<Vec<Duration>> {
    let mut durations = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        black_box(f()?);
        durations.push(start.elapsed());
    }
    Ok(durations)
}

/// Runs `f` [`WARMUP`] times untimed, then `reps` times timed.
async fn time_async<T>(
    reps: usize,
    mut f: impl AsyncFnMut() -> Result<T>,
) -> Result<Vec<Duration>> {
    for _ in 0..WARMUP {
        f().await?;
    }
    let mut durations = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        black_box(f().await?);
        durations.push(start.elapsed());
    }
    Ok(durations)
}

fn bench_verify(reps: usize) -> Result<Row> {
    let key = generate_key()?;
    let now_ms = system_clock()();
    let node = node_key();
    let signed = sign(
        IntentMessage {
            intent: PROCESS_DATA_INTENT,
            timestamp_ms: now_ms,
            data: PerformanceAttestation {
                node,
                performance_score: 9_000,
                reputation_score: 9_000,
                stake_amount: 5_000,
                valid_until_ms: now_ms + 60_000,
            },
        },
        &key,
    );
    let expected = Expected {
        public_key: key.verifying_key().to_bytes(),
        node,
        chain_stake: 5_000,
    };
    let policy = Policy::default();
    let durations = time(reps, || {
        attestation::verify(black_box(&signed), &expected, &policy, now_ms).map_err(Into::into)
    })?;
    Ok(Row::new(
        "`attestation::verify`: one signed PerformanceAttestation",
        durations,
        "hex decode, BCS re-encode, Ed25519 `verify_strict`, policy",
    ))
}

fn bench_document(reps: usize) -> Result<Row> {
    let doc = weather_attestation();
    let parsed = document::verify_document(&doc, WEATHER_ATTESTATION_VALID_AT_MS)?;
    let pcr = |i| parsed.pcr(i).context("weather document lacks a PCR");
    let public_key = parsed
        .public_key
        .as_deref()
        .context("weather document attests no key")?;
    let expected = document::Expected {
        pcrs: [pcr(0)?, pcr(1)?, pcr(2)?],
        public_key,
    };
    let durations = time(reps, || {
        document::verify_enclave(black_box(&doc), WEATHER_ATTESTATION_VALID_AT_MS, &expected)
            .map_err(Into::into)
    })?;
    Ok(Row::new(
        "`document::verify_enclave`: the recorded Nitro document",
        durations,
        format!(
            "{} bytes of CBOR: COSE ES384 signature, ECDSA P-384 certificate chain to the \
             AWS root, PCRs and key compared; at its recorded time",
            doc.len()
        ),
    ))
}

const HTTP_GET: &str = "baseline: HTTP `GET /health_check` (reused reqwest client)";

async fn bench_http_get(setup: &FakeDeployment, reps: usize) -> Result<Row> {
    progress(format_args!("baseline: HTTP GET /health_check"));
    let client = reqwest::Client::builder().timeout(TIMEOUT).build()?;
    let url = format!("{}/health_check", setup.enclave.url());
    let durations = time_async(reps, async || {
        let response = client.get(&url).send().await?.error_for_status()?;
        Ok(response.bytes().await?)
    })
    .await?;
    Ok(Row::new(
        HTTP_GET,
        durations,
        "what an `http` check's request costs: one HTTP/1.1 keep-alive round trip, body read",
    ))
}

async fn bench_service_info(setup: &FakeDeployment, reps: usize) -> Result<Row> {
    progress(format_args!("baseline: gRPC GetServiceInfo"));
    let mut client = sui_rpc::Client::new(setup.chain.url())?;
    let durations = time_async(reps, async || {
        Ok(client
            .ledger_client()
            .get_service_info(GetServiceInfoRequest::default())
            .await?
            .into_inner())
    })
    .await?;
    Ok(Row::new(
        "baseline: gRPC `GetServiceInfo` (one channel)",
        durations,
        "the `sui_sync` check's request to one full node",
    ))
}

const GET_OBJECT: &str = "gRPC `GetObject` of the `EnclaveConfig` + BCS decode";

async fn bench_get_object(setup: &FakeDeployment, reps: usize) -> Result<Row> {
    progress(format_args!("baseline: gRPC GetObject(EnclaveConfig)"));
    let mut client = sui_rpc::Client::new(setup.chain.url())?;
    let durations = time_async(reps, async || {
        enclave::fetch_config(&mut client, config_id(), TIMEOUT)
            .await
            .map_err(anyhow::Error::from)
    })
    .await?;
    Ok(Row::new(
        GET_OBJECT,
        durations,
        "a fresh check does two (config, enclave)",
    ))
}

/// A check that always asks: no verdict reuse.
const UNCACHED: NautilusCheck = NautilusCheck {
    cache_ttl: Duration::ZERO,
    ..NautilusCheck::DEFAULT
};

async fn bench_fresh_check(setup: &FakeDeployment, reps: usize) -> Result<Row> {
    progress(format_args!("Attester::check, cache_ttl 0"));
    let attester = setup.attester(true, system_clock());
    let durations = time_async(reps, async || {
        expect_ok(attester.check(&UNCACHED, &setup.node, TIMEOUT).await)
    })
    .await?;
    Ok(Row::new(
        "`Attester::check`, fresh (`cache_ttl: 0s`)",
        durations,
        "2 × GetObject, `GET /health_check`, `POST /process_data`, verify; verdict ok",
    ))
}

/// With `verify_attestation_document`. The fake enclave serves the recorded
/// weather document, which attests the weather enclave's key, not the
/// fake's: with the config's PCRs set to the document's and the clock at
/// the document's time, the check does all the work (fetch, chain,
/// COSE signature, PCRs) and fails only at the final key comparison.
async fn bench_document_check(setup: &FakeDeployment, reps: usize) -> Result<Row> {
    progress(format_args!(
        "Attester::check, cache_ttl 0, verify_attestation_document (clock at the document's time)"
    ));
    let doc = document::verify_document(&weather_attestation(), WEATHER_ATTESTATION_VALID_AT_MS)?;
    let pcr = |i| {
        doc.pcr(i)
            .map(<[u8]>::to_vec)
            .context("weather document lacks a PCR")
    };
    let pcrs = Pcrs(pcr(0)?, pcr(1)?, pcr(2)?);
    // A second config (and enclave) with the weather PCRs, so the fresh
    // check above keeps its own.
    let (config, enclave) = (fake_address(0x22, 2), fake_address(0x33, 2));
    publish_config(&setup.chain, config, pcrs, 0);
    publish_enclave(&setup.chain, enclave, setup.enclave.public_key(), 0, APP);
    let clock: Clock = Arc::new(|| WEATHER_ATTESTATION_VALID_AT_MS);
    let attester = Attester::new(&setup.chain.url(), config, true, clock);
    let check = NautilusCheck {
        verify_attestation_document: true,
        // The fake signs with today's clock, the check's clock is in 2025.
        max_age: Duration::from_hours(24 * 3650),
        ..UNCACHED
    };
    let node = NodeEnclave {
        enclave_id: enclave,
        ..setup.node.clone()
    };
    let durations = time_async(reps, async || {
        let verdict = attester.check(&check, &node, TIMEOUT).await;
        match &verdict.result {
            Err(Rejection::BadDocument(why)) if why.starts_with("attested public key is") => {
                Ok(verdict)
            }
            other => anyhow::bail!(
                "expected the document to fail only at the key comparison, got {other:?}"
            ),
        }
    })
    .await?;
    Ok(Row::new(
        "`Attester::check`, fresh, `verify_attestation_document: true`",
        durations,
        "+ `GET /get_attestation` (~9 KB hex) and `verify_enclave`; clock injected at the \
         recorded document's time, PCRs published to match: ends at the key comparison \
         (the document attests the weather enclave's key, not the fake's)",
    ))
}

async fn bench_cached_check(setup: &FakeDeployment, reps: usize) -> Result<Row> {
    progress(format_args!(
        "Attester::check, cache_ttl 30s, cached verdict ×{reps}"
    ));
    let attester = setup.attester(true, system_clock());
    let check = NautilusCheck {
        cache_ttl: Duration::from_secs(30),
        ..NautilusCheck::DEFAULT
    };
    expect_ok(attester.check(&check, &setup.node, TIMEOUT).await)?;
    let durations = time_async(reps, async || {
        let verdict = attester.check(&check, &setup.node, TIMEOUT).await;
        ensure!(verdict.cached, "the verdict was not reused");
        expect_ok(verdict)
    })
    .await?;
    Ok(Row::new(
        "`Attester::check`, cached (`cache_ttl: 30s`, later calls)",
        durations,
        "cache lookup (key clone + hash, mutex), validity and `max_age` checks; no I/O",
    ))
}

fn expect_ok(verdict: Verdict) -> Result<Verdict> {
    match &verdict.result {
        Ok(_) => Ok(verdict),
        Err(rejection) => anyhow::bail!("check failed: {}", rejection.reason()),
    }
}
