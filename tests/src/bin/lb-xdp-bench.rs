//! `lb-xdp-bench`: nanoseconds per packet of the forwarder's two programs,
//! `lb_xdp` and `lb_tc`, through `BPF_PROG_TEST_RUN`, each next to its empty
//! baseline (`lb_xdp_empty` returns `XDP_PASS`, `lb_tc_empty` `TC_ACT_OK`,
//! and nothing else) measured in the same run the same way.
//!
//! Runs as root in its own network namespace (unshared for the main thread,
//! gone at exit) with the fixture network of `lb_tests::xdp_fixture`, so the
//! FIB lookups answer like on a router. Cases, all IPv4 TCP arriving on the
//! client-side interface:
//!
//! - established: the second and later packets of one flow (`flows` hit,
//!   cached next hop, rewrite, redirect);
//! - new flow: a fresh source address/port per packet to a `spread`
//!   service (4 backends, Maglev table of 16381 slots): hash, Maglev slot,
//!   FIB lookup, SNAT port, two `flows` inserts, rewrite;
//! - non-VIP: a packet to an address that is no VIP (passed).
//!
//! Each case runs for `lb_xdp` and then for `lb_tc` (the tc program gets an
//! skb built by the kernel from the same frame, on the same interface).
//!
//! The time is the kernel's own `duration` of each test run (no syscall
//! overhead). A test run with `repeat > 1` reruns the program on the buffer
//! the previous run rewrote, so the main table uses `repeat = 1` calls in a
//! loop, alternating `lb_xdp` and `lb_xdp_empty` call by call; there the
//! empty program's time is mostly the kernel timer's overhead of one run.
//! A second table amortises that overhead with `repeat = 200` where a rerun
//! is meaningful: the non-VIP frame (passed unchanged) and an established
//! flow made to ping-pong (an extra `flows` entry keyed by the rewritten
//! packet rewrites it back; the VIP gets a route and neighbour on the
//! client side, so every second run is an `XDP_TX`; a tc redirect).
//!
//! Usage: `lb-xdp-bench [--packets N] [--calls N]`: packets per case and
//! program (default 20000, at most 200000; about 3 s by default, 6 s at
//! the maximum) and amortised calls per program and case (default 25, at
//! most 1000; each takes tens of ms).

use std::{
    net::{IpAddr, SocketAddr},
    process::ExitCode,
    time::Instant,
};

use anyhow::{Context as _, bail};
use lb_common::{
    AF_INET, FLOW_REPLY, FlowValue, PROTO_TCP, SERVICE_REMOTE, SERVICE_SPREAD, Service,
    XDP_SNAT_V4, XdpConfig, ip_from_bytes, ip_to_bytes,
};
use lb_tests::{
    NetNs, sh,
    xdp_fixture::{
        CLIENT_IF, CLIENT_IF_MAC, CLIENT_MAC, Hook, Network, Packet, TC_ACT_OK, TC_ACT_REDIRECT,
        V4, XDP_PASS, XDP_REDIRECT, XDP_TX, XdpFixture, backend, flow_key, mac_string,
        verdict_name,
    },
};
use lb_userspace::policy::maglev::{self, MaglevBackend};

const DEFAULT_PACKETS: u32 = 20_000;
const MAX_PACKETS: u32 = 200_000;
const WARMUP: u32 = 1_000;
const TABLE_SIZE: u32 = 16381;
/// Runs per test-run call in the amortised variants (the ping-pong frame
/// starts with TTL 255).
const REPEAT: u32 = 200;
/// Calls per program in the amortised variants, unless `--calls` says
/// otherwise (at most [`MAX_REPEAT_CALLS`]).
const DEFAULT_REPEAT_CALLS: u32 = 25;
/// The most `--calls` may ask for (each call takes tens of ms of wall time).
const MAX_REPEAT_CALLS: u32 = 1000;
/// MAC of the VIP's neighbour entry on the client side (ping-pong case).
const VIP_NEIGH_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xc1, 0x99];
/// New flows between two clean-ups of the `flows` map (two entries each; the
/// map holds 262144), so SNAT ports and the LRU never run short.
const FLOWS_PER_BATCH: u32 = 16_384;

/// Per-packet times of one program in one case, in nanoseconds.
#[derive(Default)]
struct Samples(Vec<u64>);

impl Samples {
    fn push(&mut self, ns: u64) {
        self.0.push(ns);
    }

    #[expect(
        clippy::cast_precision_loss,
        reason = "nanosecond sums and sample counts stay far below 2^52"
    )]
    fn mean(&self) -> f64 {
        let sum: u64 = self.0.iter().sum();
        sum as f64 / self.0.len().max(1) as f64
    }

    fn median(&mut self) -> u64 {
        self.0.sort_unstable();
        self.0.get(self.0.len() / 2).copied().unwrap_or(0)
    }
}

struct Case {
    name: &'static str,
    lb: Samples,
    empty: Samples,
    unexpected: u32,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb-xdp-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--packets` and `--calls`.
struct Args {
    packets: u32,
    calls: u32,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut packets = DEFAULT_PACKETS;
    let mut calls = DEFAULT_REPEAT_CALLS;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--packets" => {
                let value = args.next().context("--packets needs a value")?;
                packets = value
                    .parse()
                    .with_context(|| format!("--packets {value}: not a number"))?;
                if !(1..=MAX_PACKETS).contains(&packets) {
                    bail!("--packets must be 1..={MAX_PACKETS}");
                }
            }
            "--calls" => {
                let value = args.next().context("--calls needs a value")?;
                calls = value
                    .parse()
                    .with_context(|| format!("--calls {value}: not a number"))?;
                if !(1..=MAX_REPEAT_CALLS).contains(&calls) {
                    bail!("--calls must be 1..={MAX_REPEAT_CALLS}");
                }
            }
            "-h" | "--help" => {
                println!(
                    "usage: lb-xdp-bench [--packets N] [--calls N]   (defaults {DEFAULT_PACKETS} \
                     packets per case, {DEFAULT_REPEAT_CALLS} amortised calls)"
                );
                std::process::exit(0);
            }
            other => {
                bail!("unknown argument {other} (usage: lb-xdp-bench [--packets N] [--calls N])")
            }
        }
    }
    Ok(Args { packets, calls })
}

/// Keeps this thread on the CPU it runs on now (less noise, and the
/// per-CPU counters stay on one CPU).
fn pin_to_current_cpu() {
    // SAFETY: sched_getcpu has no preconditions; the cpu_set_t is a plain
    // bit array zeroed here and only touched through the libc macros, and
    // sched_setaffinity(0, ...) only affects the calling thread.
    unsafe {
        let cpu = libc::sched_getcpu();
        if cpu < 0 {
            return;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set);
    }
}

/// The verdict `hook`'s program returns where `lb_xdp` returns `xdp`.
const fn verdict_of(hook: Hook, xdp: u32) -> u32 {
    match (hook, xdp) {
        (Hook::Xdp, _) => xdp,
        (Hook::Tc, XDP_PASS) => TC_ACT_OK,
        (Hook::Tc, XDP_REDIRECT | XDP_TX) => TC_ACT_REDIRECT,
        (Hook::Tc, _) => u32::MAX,
    }
}

fn print_table(hook: Hook, cases: &mut [&mut Case]) {
    let (lb, empty) = (hook.program(), hook.empty_program());
    println!(
        "| case | {lb} mean ns/pkt | {empty} mean ns/pkt | ratio | {lb} median | empty median | unexpected verdicts |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for case in cases {
        let (lb, empty) = (case.lb.mean(), case.empty.mean());
        println!(
            "| {} | {lb:.1} | {empty:.1} | {:.2} | {} | {} | {} |",
            case.name,
            lb / empty.max(1.0),
            case.lb.median(),
            case.empty.median(),
            case.unexpected
        );
    }
}

fn run() -> anyhow::Result<()> {
    let Args { packets, calls } = parse_args()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (BPF_PROG_TEST_RUN and a network namespace)");
    }
    let started = Instant::now();
    pin_to_current_cpu();
    let _netns = NetNs::new();
    let net = Network::setup();
    let mut fx = XdpFixture::load()?;

    let (snat, _) = ip_to_bytes(V4.node_backend_side);
    fx.configure(XdpConfig {
        snat_v4: snat,
        port_min: 1024,
        port_max: 65535,
        flags: XDP_SNAT_V4,
        ..XdpConfig::default()
    });
    // Service 1: one backend (established flows). Service 2: spread over
    // backends 2..=5 with a real Maglev table.
    let vip_single = SocketAddr::new(V4.vip, 80);
    let vip_spread = SocketAddr::new(V4.vip, 443);
    fx.set_backend(1, backend(SocketAddr::new(V4.backends[0], 8080), 1, 0));
    fx.set_service(
        vip_single,
        PROTO_TCP,
        Service {
            id: 1,
            backend_id: 1,
            flags: SERVICE_REMOTE,
            table_size: 0,
        },
    );
    let mut members = Vec::new();
    for (i, addr) in V4.backends.iter().enumerate() {
        let id = 2 + u32::try_from(i)?;
        let server = SocketAddr::new(*addr, 8443);
        fx.set_backend(id, backend(server, 2, 0));
        members.push(MaglevBackend {
            id,
            key: server.to_string().into_bytes(),
            weight: 1,
        });
    }
    let table = maglev::build(&members, TABLE_SIZE, None)?;
    for (slot, id) in table.iter().enumerate() {
        fx.set_maglev(2, u32::try_from(slot)?, *id);
    }
    fx.set_service(
        vip_spread,
        PROTO_TCP,
        Service {
            id: 2,
            backend_id: 2,
            flags: SERVICE_REMOTE | SERVICE_SPREAD,
            table_size: TABLE_SIZE,
        },
    );
    let ingress = Some(net.client_if);
    let measure =
        |fx: &XdpFixture, hook: Hook, frame: &[u8], case: &mut Case, expect: u32, repeat: u32| {
            let lb = fx
                .run_program(hook.program(), frame, ingress, repeat)
                .unwrap_or_else(|e| panic!("test run of {}: {e:#}", hook.program()));
            let empty = fx
                .run_program(hook.empty_program(), frame, ingress, repeat)
                .unwrap_or_else(|e| panic!("test run of {}: {e:#}", hook.empty_program()));
            if lb.verdict != verdict_of(hook, expect) {
                case.unexpected += 1;
            }
            case.lb.push(lb.duration.as_nanos() as u64);
            case.empty.push(empty.duration.as_nanos() as u64);
        };
    let new_case = |name| Case {
        name,
        lb: Samples::default(),
        empty: Samples::default(),
        unexpected: 0,
    };

    let client = SocketAddr::new(V4.client, 40000);
    let established = Packet::tcp(client, vip_single)
        .macs(CLIENT_MAC, CLIENT_IF_MAC)
        .payload(&[0x42; 64])
        .bytes();
    let not_vip = Packet::tcp(client, SocketAddr::new(V4.not_vip, 80))
        .macs(CLIENT_MAC, CLIENT_IF_MAC)
        .payload(&[0x42; 64])
        .bytes();
    let IpAddr::V4(base) = V4.client else {
        bail!("V4.client is not IPv4");
    };
    let base = u32::from(base);
    let mut single = Vec::new();
    for hook in [Hook::Xdp, Hook::Tc] {
        fx.hook = hook;
        // (a) Established flow: the first packet creates it.
        let first = fx.run(&established, ingress);
        if first.verdict != XDP_REDIRECT {
            bail!(
                "{}: the first packet of the established case got {} instead of a redirect: \
                 the fixture network or the program is broken",
                hook.program(),
                verdict_name(first.verdict)
            );
        }
        let mut warm = new_case("warm-up");
        for _ in 0..WARMUP {
            measure(&fx, hook, &established, &mut warm, XDP_REDIRECT, 1);
        }
        let mut case_a = new_case("established flow");
        for _ in 0..packets {
            measure(&fx, hook, &established, &mut case_a, XDP_REDIRECT, 1);
        }

        // (b) A new flow per packet: source address 10.2.x.y, port 1024.. .
        let mut case_b = new_case("new flow, Maglev (16381 slots, 4 backends)");
        fx.clear_flows();
        for i in 0..packets {
            if i > 0 && i % FLOWS_PER_BATCH == 0 {
                fx.clear_flows();
            }
            let host = base + (i / 60_000) * 256;
            let port = 1024 + (i % 60_000) as u16;
            let src = SocketAddr::new(std::net::Ipv4Addr::from(host).into(), port);
            let frame = Packet::tcp(src, vip_spread)
                .macs(CLIENT_MAC, CLIENT_IF_MAC)
                .payload(&[0x42; 64])
                .bytes();
            measure(&fx, hook, &frame, &mut case_b, XDP_REDIRECT, 1);
        }
        fx.clear_flows();

        // (c) Not a VIP.
        let mut case_c = new_case("non-VIP (pass)");
        for _ in 0..packets {
            measure(&fx, hook, &not_vip, &mut case_c, XDP_PASS, 1);
        }
        single.push((hook, [case_a, case_b, case_c]));
    }

    // Amortised variants: `repeat` runs on one buffer, which only works
    // when running the program again on its own output is meaningful. The
    // non-VIP frame is passed unchanged; the established flow is made to
    // ping-pong: an extra (reply-flagged) entry keyed by the rewritten
    // packet (SNAT address:port -> backend) rewrites it back to
    // client -> VIP, routed back out of the client-side veth (XDP_TX; tc
    // redirects). TTL 255 leaves room for REPEAT decrements.
    let IpAddr::V4(vip_v4) = V4.vip else {
        bail!("V4.vip is not IPv4");
    };
    sh(
        "ip",
        &["route", "add", &format!("{vip_v4}/32"), "dev", CLIENT_IF],
    );
    sh(
        "ip",
        &[
            "neigh",
            "add",
            &vip_v4.to_string(),
            "lladdr",
            &mac_string(VIP_NEIGH_MAC),
            "nud",
            "permanent",
            "dev",
            CLIENT_IF,
        ],
    );
    fx.hook = Hook::Xdp;
    let again = fx.run(&established, ingress);
    if again.verdict != XDP_REDIRECT {
        bail!(
            "the established flow got {} instead of XDP_REDIRECT",
            verdict_name(again.verdict)
        );
    }
    let forward = fx
        .flow(&flow_key(client, vip_single, PROTO_TCP))
        .context("the established flow is missing from flows")?;
    let rewritten_src = SocketAddr::new(ip_from_bytes(forward.src, AF_INET), forward.src_port);
    let rewritten_dst = SocketAddr::new(ip_from_bytes(forward.dst, AF_INET), forward.dst_port);
    let (client_bytes, _) = ip_to_bytes(client.ip());
    let (vip_bytes, _) = ip_to_bytes(vip_single.ip());
    fx.flows.insert(
        flow_key(rewritten_src, rewritten_dst, PROTO_TCP),
        FlowValue {
            src: client_bytes,
            dst: vip_bytes,
            src_port: client.port(),
            dst_port: vip_single.port(),
            backend_id: 1,
            service_id: 1,
            flags: FLOW_REPLY,
            ..FlowValue::default()
        },
        0,
    )?;
    let mut ping_pong = Packet::tcp(client, vip_single)
        .macs(CLIENT_MAC, CLIENT_IF_MAC)
        .payload(&[0x42; 64]);
    ping_pong.ttl = 255;
    let ping_pong = ping_pong.bytes();
    // Each call with repeat > 1 also swaps the program into the kernel's
    // XDP dispatcher and back (tens of ms of wall time, outside the
    // measured duration): a few calls keep the run short.
    let mut amortised = Vec::new();
    for hook in [Hook::Xdp, Hook::Tc] {
        let mut ping_pong_case = new_case("established flow, ping-pong");
        let mut pass_repeat_case = new_case("non-VIP (pass)");
        for _ in 0..calls {
            measure(&fx, hook, &ping_pong, &mut ping_pong_case, XDP_TX, REPEAT);
            measure(&fx, hook, &not_vip, &mut pass_repeat_case, XDP_PASS, REPEAT);
        }
        amortised.push((hook, [ping_pong_case, pass_repeat_case]));
    }

    let mut backends_hit = 0;
    for id in 2..=5 {
        if fx.backend_counters(id).xdp_flows > 0 {
            backends_hit += 1;
        }
    }

    for (hook, cases) in &mut single {
        println!(
            "\n{} vs {}, BPF_PROG_TEST_RUN kernel duration, repeat=1 per call, \
             {packets} packets per case and program, IPv4 TCP 118-byte frames, one CPU\n",
            hook.program(),
            hook.empty_program()
        );
        let [a, b, c] = cases;
        print_table(*hook, &mut [a, b, c]);
    }
    for (hook, cases) in &mut amortised {
        println!(
            "\n{} amortised: repeat={REPEAT} runs on one buffer per call ({calls} calls; the \
             kernel divides its time by {REPEAT}, so the timer overhead mostly vanishes)\n",
            hook.program()
        );
        let [a, b] = cases;
        print_table(*hook, &mut [a, b]);
    }
    println!(
        "\nnew flows reached {backends_hit} of 4 backends; total time {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let unexpected = single
        .iter()
        .flat_map(|(_, cases)| cases.iter())
        .chain(amortised.iter().flat_map(|(_, cases)| cases.iter()))
        .any(|case| case.unexpected > 0);
    if unexpected {
        bail!("some packets got an unexpected verdict (see the tables)");
    }
    Ok(())
}
