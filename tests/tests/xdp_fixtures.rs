//! Packet fixtures for the XDP forwarder `lb_xdp`, run through
//! `BPF_PROG_TEST_RUN` (Katran style): each test hands the program a frame
//! built from scratch and compares the verdict and every byte of the frame
//! it leaves with a second frame built from scratch with the expected
//! addresses, ports, MACs and TTL, all checksums recomputed over the whole
//! packet (so the program's incremental checksum updates are checked
//! against an independent computation). Each fixture also checks the one
//! `xdp_stats` counter it must move, and for forwarded packets the service
//! and backend counters and the `flows` entries.
//!
//! Every test runs in its own network namespace (only loopback plus the
//! fixture veths, see `lb_tests::xdp_fixture::Network`) and loads the
//! object standalone: nothing is pinned or attached, nothing is left behind.
//! Frames arrive on the client-side veth (or the backend-side veth for
//! replies) through an `xdp_md` context with `ingress_ifindex`.

use std::net::{IpAddr, SocketAddr};

use lb_common::{
    BACKEND_DOWN, FLOW_FIN, FLOW_HOP_PEER, FLOW_REPLY, FLOW_RST, FlowKey, FlowValue, IF_HAS_V4,
    IF_HAS_V6, IF_PEER_NETNS, IfAddrs, NO_BACKEND, PROTO_TCP, PROTO_UDP, SERVICE_REMOTE,
    SERVICE_SPREAD, SNAT_PORT_ATTEMPTS, Service, XDP_DROP_ORPHANS, XDP_SNAT_V4, XDP_SNAT_V6,
    XdpConfig, flow_hash, flow_stat, ip_to_bytes, snat_port,
    xdp_counter::{self, COUNT, NAMES},
};
use lb_tests::{
    NetNs, privileged,
    xdp_fixture::{
        Addrs, BACKEND_IF, BACKEND_IF_MAC, BACKEND_MACS, CLIENT_IF_MAC, CLIENT_MAC, Hook, IPV4_MF,
        L4, NEAR_CLIENT_MAC, Network, PROTO_ICMP, Packet, Run, V4, V6, XDP_DROP, XDP_PASS,
        XDP_REDIRECT, XdpFixture, arp_request, assert_frame_eq, backend, flow_key, mac_string,
        tcp_flags, verdict_name, vlan_tagged,
    },
};
use lb_userspace::policy::flow_expiry::evicted_at_least;

const PORT_MIN: u16 = 20000;
const PORT_MAX: u16 = 29999;
const VIP_PORT: u16 = 80;
const BACKEND_PORT: u16 = 8080;
const CLIENT_PORT: u16 = 43210;
const SERVICE_ID: u32 = 7;

/// One test's namespace, fixture network and loaded object.
struct World {
    fx: XdpFixture,
    net: Network,
    _netns: NetNs,
}

/// A fresh world running `lb_xdp`, or `None` when privileged tests are
/// skipped here.
fn world(test: &str) -> Option<World> {
    world_on(test, Hook::Xdp)
}

/// A fresh world running the program of `hook`.
fn world_on(test: &str, hook: Hook) -> Option<World> {
    if !privileged(test) {
        return None;
    }
    let netns = NetNs::new();
    let net = Network::setup();
    let mut fx = XdpFixture::load().unwrap_or_else(|e| panic!("{e:#}"));
    fx.hook = hook;
    Some(World {
        fx,
        net,
        _netns: netns,
    })
}

fn vip(a: &Addrs) -> SocketAddr {
    SocketAddr::new(a.vip, VIP_PORT)
}

fn client(a: &Addrs) -> SocketAddr {
    SocketAddr::new(a.client, CLIENT_PORT)
}

fn backend_at(a: &Addrs, i: usize) -> SocketAddr {
    SocketAddr::new(a.backends[i], BACKEND_PORT)
}

/// The addresses of `input`'s family.
fn addrs_of(input: &Packet) -> &'static Addrs {
    if input.src.is_ipv4() { &V4 } else { &V6 }
}

/// The `Packet` constructor for `proto`.
fn packet(proto: u8, src: SocketAddr, dst: SocketAddr) -> Packet {
    if proto == PROTO_TCP {
        Packet::tcp(src, dst)
    } else {
        Packet::udp(src, dst)
    }
}

/// A client frame to the VIP as it arrives on the client-side interface.
fn client_frame(a: &Addrs, proto: u8) -> Packet {
    packet(proto, client(a), vip(a))
        .macs(CLIENT_MAC, CLIENT_IF_MAC)
        .payload(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n")
}

/// `input` as the program must leave it after rewriting it to `src → dst`
/// and handing it to the next hop: new MACs, TTL one less, everything else
/// (IP id, flags, TCP fields, payload) as it was; checksums from scratch.
fn rewritten(
    input: &Packet,
    src: SocketAddr,
    dst: SocketAddr,
    smac: [u8; 6],
    dmac: [u8; 6],
) -> Packet {
    Packet {
        eth_src: smac,
        eth_dst: dmac,
        src: src.ip(),
        dst: dst.ip(),
        src_port: src.port(),
        dst_port: dst.port(),
        ttl: input.ttl - 1,
        ..input.clone()
    }
}

fn flow_value(
    src: SocketAddr,
    dst: SocketAddr,
    backend_id: u32,
    service_id: u32,
    flags: u32,
) -> FlowValue {
    let (src_bytes, _) = ip_to_bytes(src.ip());
    let (dst_bytes, _) = ip_to_bytes(dst.ip());
    FlowValue {
        src: src_bytes,
        dst: dst_bytes,
        src_port: src.port(),
        dst_port: dst.port(),
        backend_id,
        service_id,
        flags,
        ..FlowValue::default()
    }
}

/// The nonzero entries of `after - before`, by counter name.
fn delta(
    before: &[u64; COUNT as usize],
    after: &[u64; COUNT as usize],
) -> Vec<(&'static str, u64)> {
    (0..COUNT as usize)
        .filter(|&i| after[i] != before[i])
        .map(|i| (NAMES[i], after[i].wrapping_sub(before[i])))
        .collect()
}

impl World {
    /// `xdp_config`: SNAT source = the node's backend-side address of each
    /// family, ports `PORT_MIN..=PORT_MAX`.
    fn configure(&mut self) {
        let (snat_v4, _) = ip_to_bytes(V4.node_backend_side);
        let (snat_v6, _) = ip_to_bytes(V6.node_backend_side);
        self.fx.configure(XdpConfig {
            snat_v4,
            snat_v6,
            port_min: PORT_MIN,
            port_max: PORT_MAX,
            flags: XDP_SNAT_V4 | XDP_SNAT_V6,
            ..XdpConfig::default()
        });
    }

    /// Backend slots 1..=4 of service `SERVICE_ID`: `a.backends[0..4]` on
    /// `BACKEND_PORT`.
    fn backends(&mut self, a: &Addrs) {
        for i in 0..4 {
            let id = i as u32 + 1;
            self.fx
                .set_backend(id, backend(backend_at(a, i), SERVICE_ID, 0));
        }
    }

    /// Service `SERVICE_ID` on the VIP (`flags`) with backend 1 =
    /// `a.backends[0]`, backends 2..=4 = `a.backends[1..4]` (unused by it).
    /// Tests that need another service entry call [`World::backends`] and
    /// write it themselves.
    fn service(&mut self, a: &Addrs, proto: u8, flags: u32) {
        self.backends(a);
        self.fx.set_service(
            vip(a),
            proto,
            Service {
                id: SERVICE_ID,
                backend_id: 1,
                flags,
                table_size: 0,
            },
        );
    }

    /// Runs `lb_xdp` on `frame` arriving on `ingress`, and returns the run
    /// and what it did to the counters.
    fn run(&self, frame: &[u8], ingress: Option<u32>) -> (Run, Vec<(&'static str, u64)>) {
        let before = self.fx.xdp_counters();
        let run = self.fx.run(frame, ingress);
        let after = self.fx.xdp_counters();
        (run, delta(&before, &after))
    }

    /// The SNAT port the program picks for a new flow `key` to `backend`
    /// from `snat`: the first of its attempts whose reply entry is free in
    /// `flows` right now.
    fn predict_snat_port(&self, key: &FlowKey, snat: IpAddr, backend: SocketAddr) -> u16 {
        let hash = flow_hash(key);
        (0..SNAT_PORT_ATTEMPTS)
            .map(|attempt| snat_port(hash, attempt, PORT_MIN, PORT_MAX))
            .find(|port| {
                let reply = flow_key(backend, SocketAddr::new(snat, *port), key.proto);
                self.fx.flow_rewrite(&reply).is_none()
            })
            .expect("a free SNAT port")
    }

    /// Asserts that `frame` (arriving on the client side) is passed
    /// unchanged, counted once under `counter`, with no flow stored.
    fn assert_pass(&self, what: &str, frame: &[u8], counter: u32) {
        self.assert_untouched(what, frame, XDP_PASS, counter);
    }

    /// Asserts verdict `verdict`, the frame unchanged, one count under
    /// `counter` and no new `flows` entry.
    fn assert_untouched(&self, what: &str, frame: &[u8], verdict: u32, counter: u32) {
        let entries = self.fx.flow_count();
        let (run, moved) = self.run(frame, Some(self.net.client_if));
        assert_eq!(
            verdict_name(run.verdict),
            verdict_name(verdict),
            "{what}: verdict"
        );
        assert_frame_eq(what, &run.frame, frame);
        assert_eq!(
            moved,
            vec![(NAMES[counter as usize], 1)],
            "{what}: xdp_stats"
        );
        assert_eq!(self.fx.flow_count(), entries, "{what}: flows entries");
    }

    /// Runs `input` arriving on `ingress` and asserts it is redirected as
    /// `expected`, counted once under `redirect`.
    fn expect_redirect(&self, what: &str, input: &Packet, ingress: u32, expected: &Packet) {
        let (run, counted) = self.run(&input.bytes(), Some(ingress));
        assert_eq!(verdict_name(run.verdict), "XDP_REDIRECT", "{what}: verdict");
        assert_frame_eq(what, &run.frame, &expected.bytes());
        assert_eq!(counted, vec![("redirect", 1)], "{what}: xdp_stats");
    }

    /// Sends `input` (client side) of a flow established to backend
    /// `index` of its family (slot `index + 1`, see [`World::service`])
    /// from `snat`, expecting it forwarded as before: the same frame
    /// rewrite, both its `flows` entries unchanged and no new flow counted
    /// on the service.
    fn expect_kept_flow(&self, what: &str, input: &Packet, index: usize, snat: SocketAddr) {
        let backend = backend_at(addrs_of(input), index);
        let reply_key = flow_key(backend, snat, input.proto());
        let entry = self.fx.flow_rewrite(&input.flow_key());
        let reply = self.fx.flow_rewrite(&reply_key);
        assert!(reply.is_some(), "{what}: no reply entry before");
        let flows = self.fx.service_counters(SERVICE_ID).xdp_flows;
        let expected = rewritten(input, snat, backend, BACKEND_IF_MAC, BACKEND_MACS[index]);
        self.expect_redirect(what, input, self.net.client_if, &expected);
        assert_eq!(
            self.fx.flow_rewrite(&input.flow_key()),
            entry,
            "{what}: flow entry kept as is"
        );
        assert_eq!(
            self.fx.flow_rewrite(&reply_key),
            reply,
            "{what}: reply entry kept as is"
        );
        assert_eq!(
            self.fx.service_counters(SERVICE_ID).xdp_flows,
            flows,
            "{what}: no new flow"
        );
    }

    /// Sends a new flow of `input` (client side) expecting it forwarded to
    /// backend `index` of its family (slot `index + 1`, see
    /// [`World::service`]) from `snat`; checks the frame, both `flows`
    /// entries and the counter; returns the SNAT port.
    fn expect_new_flow(&self, what: &str, input: &Packet, index: usize, snat: IpAddr) -> u16 {
        let backend = backend_at(addrs_of(input), index);
        let backend_mac = BACKEND_MACS[index];
        let backend_id = index as u32 + 1;
        let key = input.flow_key();
        let port = self.predict_snat_port(&key, snat, backend);
        let snat_addr = SocketAddr::new(snat, port);
        let expected = rewritten(input, snat_addr, backend, BACKEND_IF_MAC, backend_mac);
        self.expect_redirect(what, input, self.net.client_if, &expected);
        assert_eq!(
            self.fx.flow_rewrite(&key),
            Some(flow_value(snat_addr, backend, backend_id, SERVICE_ID, 0)),
            "{what}: forward flow entry"
        );
        assert_eq!(
            self.fx
                .flow_rewrite(&flow_key(backend, snat_addr, input.proto())),
            Some(flow_value(
                input.destination(),
                input.source(),
                backend_id,
                SERVICE_ID,
                FLOW_REPLY
            )),
            "{what}: reply flow entry"
        );
        port
    }
}

/// New flow, established flow and reply for one family and protocol: the
/// first packet picks the service's backend and a SNAT port (predicted with
/// `lb_common::snat_port`), stores both `flows` entries and leaves through
/// the backend-side veth with the backend's MAC; the second packet of the
/// flow (other TCP flags, other payload) is rewritten the same way from the
/// table; the backend's reply to the SNAT address:port becomes VIP →
/// client and leaves through the client-side veth. Three `redirect`
/// counts, one flow, packets and bytes on the service and backend.
fn forward_round_trip(test: &str, hook: Hook, a: &Addrs, proto: u8) {
    let Some(mut w) = world_on(test, hook) else {
        return;
    };
    w.configure();
    w.service(a, proto, SERVICE_REMOTE);
    let first = client_frame(a, proto);
    let snat = a.node_backend_side;
    let port = w.expect_new_flow("new flow", &first, 0, snat);
    let snat_addr = SocketAddr::new(snat, port);

    // Second packet of the same flow.
    let mut second = client_frame(a, proto).payload(b"second segment, other length");
    if let L4::Tcp { seq, flags, .. } = &mut second.l4 {
        *seq += 31;
        *flags = tcp_flags::ACK | tcp_flags::FIN;
    }
    second.ttl = 17;
    let expected = rewritten(
        &second,
        snat_addr,
        backend_at(a, 0),
        BACKEND_IF_MAC,
        BACKEND_MACS[0],
    );
    w.expect_redirect("established flow", &second, w.net.client_if, &expected);

    // The backend's reply.
    let reply = packet(proto, backend_at(a, 0), snat_addr)
        .macs(BACKEND_MACS[0], BACKEND_IF_MAC)
        .payload(b"HTTP/1.1 200 OK\r\n\r\nhello");
    let expected = rewritten(&reply, vip(a), client(a), CLIENT_IF_MAC, CLIENT_MAC);
    w.expect_redirect("reply", &reply, w.net.backend_if, &expected);

    let bytes = (first.bytes().len() + second.bytes().len() + reply.bytes().len()) as u64;
    let service = w.fx.service_counters(SERVICE_ID);
    assert_eq!(
        (service.xdp_packets, service.xdp_bytes, service.xdp_flows),
        (3, bytes, 1),
        "service counters (packets, bytes, flows)"
    );
    let backend = w.fx.backend_counters(1);
    assert_eq!(
        (backend.xdp_packets, backend.xdp_bytes, backend.xdp_flows),
        (3, bytes, 1),
        "backend counters (packets, bytes, flows)"
    );
    assert_eq!(w.fx.flow_count(), 2, "two flows entries for one flow");
}

/// TCP over IPv4: new flow, established flow, reply (see `forward_round_trip`).
#[test]
fn tcp4_new_established_reply() {
    forward_round_trip("tcp4_new_established_reply", Hook::Xdp, &V4, PROTO_TCP);
}

/// TCP over IPv4 through `lb_tc`: new flow, established flow, reply.
#[test]
fn tc_tcp4_new_established_reply() {
    forward_round_trip("tc_tcp4_new_established_reply", Hook::Tc, &V4, PROTO_TCP);
}

/// TCP over IPv6: new flow, established flow, reply.
#[test]
fn tcp6_new_established_reply() {
    forward_round_trip("tcp6_new_established_reply", Hook::Xdp, &V6, PROTO_TCP);
}

/// TCP over IPv6 through `lb_tc`: new flow, established flow, reply.
#[test]
fn tc_tcp6_new_established_reply() {
    forward_round_trip("tc_tcp6_new_established_reply", Hook::Tc, &V6, PROTO_TCP);
}

/// UDP over IPv4 (with checksum): new flow, established flow, reply.
#[test]
fn udp4_new_established_reply() {
    forward_round_trip("udp4_new_established_reply", Hook::Xdp, &V4, PROTO_UDP);
}

/// UDP over IPv4 through `lb_tc`: new flow, established flow, reply.
#[test]
fn tc_udp4_new_established_reply() {
    forward_round_trip("tc_udp4_new_established_reply", Hook::Tc, &V4, PROTO_UDP);
}

/// UDP over IPv6: new flow, established flow, reply.
#[test]
fn udp6_new_established_reply() {
    forward_round_trip("udp6_new_established_reply", Hook::Xdp, &V6, PROTO_UDP);
}

/// UDP over IPv6 through `lb_tc`: new flow, established flow, reply.
#[test]
fn tc_udp6_new_established_reply() {
    forward_round_trip("tc_udp6_new_established_reply", Hook::Tc, &V6, PROTO_UDP);
}

/// A client on the backend subnet: its packet arrives on the backend-side
/// veth and the FIB sends it out of the same one, so the verdict is
/// `XDP_TX` (counted as `tx`), for the request and for the reply back to it.
#[test]
fn same_interface_is_xdp_tx() {
    same_interface_is_xdp_tx_on(Hook::Xdp);
}

/// `same_interface_is_xdp_tx` through `lb_tc`.
#[test]
fn tc_same_interface_is_xdp_tx() {
    same_interface_is_xdp_tx_on(Hook::Tc);
}

fn same_interface_is_xdp_tx_on(hook: Hook) {
    let Some(mut w) = world_on("same_interface_is_xdp_tx", hook) else {
        return;
    };
    w.configure();
    for a in [V4, V6] {
        w.service(&a, PROTO_TCP, SERVICE_REMOTE);
        let near = SocketAddr::new(a.near_client, CLIENT_PORT);
        let input = Packet::tcp(near, vip(&a))
            .macs(NEAR_CLIENT_MAC, BACKEND_IF_MAC)
            .payload(b"near");
        let key = input.flow_key();
        let port = w.predict_snat_port(&key, a.node_backend_side, backend_at(&a, 0));
        let snat_addr = SocketAddr::new(a.node_backend_side, port);
        let expected = rewritten(
            &input,
            snat_addr,
            backend_at(&a, 0),
            BACKEND_IF_MAC,
            BACKEND_MACS[0],
        );
        let (run, counted) = w.run(&input.bytes(), Some(w.net.backend_if));
        // tc sends it with bpf_redirect to the ingress interface's egress.
        let tx = if hook == Hook::Xdp {
            "XDP_TX"
        } else {
            "XDP_REDIRECT"
        };
        assert_eq!(verdict_name(run.verdict), tx, "{}: request", a.vip);
        assert_frame_eq("request via XDP_TX", &run.frame, &expected.bytes());
        assert_eq!(counted, vec![("tx", 1)]);

        let reply = Packet::tcp(backend_at(&a, 0), snat_addr)
            .macs(BACKEND_MACS[0], BACKEND_IF_MAC)
            .payload(b"back");
        let expected = rewritten(&reply, vip(&a), near, BACKEND_IF_MAC, NEAR_CLIENT_MAC);
        let (run, counted) = w.run(&reply.bytes(), Some(w.net.backend_if));
        assert_eq!(verdict_name(run.verdict), tx, "{}: reply", a.vip);
        assert_frame_eq("reply via XDP_TX", &run.frame, &expected.bytes());
        assert_eq!(counted, vec![("tx", 1)]);
    }
}

/// Without an `xdp_md` context the test run's ingress device is the
/// namespace's loopback: the FIB still routes to the backend-side veth, so
/// the packet is redirected there.
#[test]
fn loopback_ingress_redirects() {
    loopback_ingress_redirects_on(Hook::Xdp);
}

/// `loopback_ingress_redirects` through `lb_tc`.
#[test]
fn tc_loopback_ingress_redirects() {
    loopback_ingress_redirects_on(Hook::Tc);
}

fn loopback_ingress_redirects_on(hook: Hook) {
    let Some(mut w) = world_on("loopback_ingress_redirects", hook) else {
        return;
    };
    w.configure();
    w.service(&V4, PROTO_TCP, SERVICE_REMOTE);
    let input = client_frame(&V4, PROTO_TCP);
    let port = w.predict_snat_port(&input.flow_key(), V4.node_backend_side, backend_at(&V4, 0));
    let expected = rewritten(
        &input,
        SocketAddr::new(V4.node_backend_side, port),
        backend_at(&V4, 0),
        BACKEND_IF_MAC,
        BACKEND_MACS[0],
    );
    let (run, counted) = w.run(&input.bytes(), None);
    assert_eq!(verdict_name(run.verdict), "XDP_REDIRECT");
    assert_frame_eq("loopback ingress", &run.frame, &expected.bytes());
    assert_eq!(counted, vec![("redirect", 1)]);
}

/// A `spread` service: each new flow goes to the backend in Maglev slot
/// `flow_hash(key) % table_size` of its service; a missing slot and a
/// slot holding `NO_BACKEND` fall back to the service's `backend_id`.
/// At least 60 flows (until every slot is hit) over IPv4 TCP and IPv6 UDP,
/// each compared byte for byte, every backend reached, `xdp_flows` per
/// backend as predicted.
#[test]
fn spread_picks_maglev_slot() {
    spread_picks_maglev_slot_on(Hook::Xdp);
}

/// `spread_picks_maglev_slot` through `lb_tc`.
#[test]
fn tc_spread_picks_maglev_slot() {
    spread_picks_maglev_slot_on(Hook::Tc);
}

fn spread_picks_maglev_slot_on(hook: Hook) {
    const TABLE: u32 = 13;
    const MISSING_SLOT: u32 = 5;
    const EMPTY_SLOT: u32 = 9;
    let Some(mut w) = world_on("spread_picks_maglev_slot", hook) else {
        return;
    };
    w.configure();
    for (a, proto) in [(V4, PROTO_TCP), (V6, PROTO_UDP)] {
        w.fx.clear_flows();
        w.backends(&a);
        w.fx.set_service(
            vip(&a),
            proto,
            Service {
                id: SERVICE_ID,
                backend_id: 4,
                flags: SERVICE_REMOTE | SERVICE_SPREAD,
                table_size: TABLE,
            },
        );
        let slot_owner = |slot: u32| match slot {
            MISSING_SLOT => None,
            EMPTY_SLOT => Some(NO_BACKEND),
            _ => Some(1 + slot % 3),
        };
        for slot in 0..TABLE {
            if let Some(id) = slot_owner(slot) {
                w.fx.set_maglev(SERVICE_ID, slot, id);
            }
        }
        let before: Vec<u64> = (1..=4)
            .map(|id| w.fx.backend_counters(id).xdp_flows)
            .collect();
        let mut flows_to = [0_u64; 4];
        let mut slots_seen = [false; TABLE as usize];
        // At least 60 flows, and on until every slot (the missing and the
        // empty one included) has been hit; the hash is fixed, so this
        // always takes the same flows.
        for n in 0..2000_u16 {
            if n >= 60 && slots_seen.iter().all(|seen| *seen) {
                break;
            }
            let input = packet(proto, SocketAddr::new(a.client, 30000 + n * 7), vip(&a))
                .macs(CLIENT_MAC, CLIENT_IF_MAC)
                .payload(&n.to_be_bytes());
            let slot = (flow_hash(&input.flow_key()) % u64::from(TABLE)) as u32;
            slots_seen[slot as usize] = true;
            let id = match slot_owner(slot) {
                None | Some(NO_BACKEND) => 4,
                Some(id) => id,
            };
            let index = id as usize - 1;
            w.expect_new_flow(
                &format!("{} flow {n} (slot {slot})", a.vip),
                &input,
                index,
                a.node_backend_side,
            );
            flows_to[index] += 1;
        }
        assert!(
            slots_seen[MISSING_SLOT as usize] && slots_seen[EMPTY_SLOT as usize],
            "2000 flows did not reach the missing and the empty slot: {slots_seen:?}"
        );
        for id in 1..=4_u32 {
            let got = w.fx.backend_counters(id).xdp_flows - before[id as usize - 1];
            assert_eq!(
                got,
                flows_to[id as usize - 1],
                "{}: xdp_flows of backend {id}",
                a.vip
            );
            assert!(got > 0, "{}: backend {id} reached by no flow", a.vip);
        }
    }
}

/// An established flow whose backend became unusable for it (marked
/// `BACKEND_DOWN`, or its slot reused by another service) while the
/// service now selects backend 2 is handled as a new flow on its next
/// packet: re-hashed to backend 2, with a fresh reply entry and the flow
/// entry replaced; the old reply entry is removed (it would keep its SNAT
/// port claimed), so the table still holds two entries.
#[test]
fn invalid_backend_rehashes_established_flow() {
    invalid_backend_rehashes_established_flow_on(Hook::Xdp);
}

/// `invalid_backend_rehashes_established_flow` through `lb_tc`.
#[test]
fn tc_invalid_backend_rehashes_established_flow() {
    invalid_backend_rehashes_established_flow_on(Hook::Tc);
}

fn invalid_backend_rehashes_established_flow_on(hook: Hook) {
    let Some(mut w) = world_on("invalid_backend_rehashes_established_flow", hook) else {
        return;
    };
    w.configure();
    for (a, proto) in [(V4, PROTO_TCP), (V6, PROTO_UDP)] {
        for (what, invalidated) in [
            ("down", backend(backend_at(&a, 0), SERVICE_ID, BACKEND_DOWN)),
            ("slot reused", backend(backend_at(&a, 0), SERVICE_ID + 1, 0)),
        ] {
            w.fx.clear_flows();
            w.service(&a, proto, SERVICE_REMOTE);
            let input = client_frame(&a, proto);
            let snat = a.node_backend_side;
            let flows = w.fx.service_counters(SERVICE_ID).xdp_flows;
            let port = w.expect_new_flow(&format!("{}: before {what}", a.vip), &input, 0, snat);
            let old_reply = flow_key(backend_at(&a, 0), SocketAddr::new(snat, port), proto);
            w.fx.set_backend(1, invalidated);
            w.fx.set_service(
                vip(&a),
                proto,
                Service {
                    id: SERVICE_ID,
                    backend_id: 2,
                    flags: SERVICE_REMOTE,
                    table_size: 0,
                },
            );
            w.expect_new_flow(&format!("{}: after {what}", a.vip), &input, 1, snat);
            assert_eq!(
                w.fx.service_counters(SERVICE_ID).xdp_flows,
                flows + 2,
                "{what}: both packets counted as new flows"
            );
            assert_eq!(
                w.fx.flow_rewrite(&old_reply),
                None,
                "{}: {what}: old reply entry removed",
                a.vip
            );
            assert_eq!(
                w.fx.flow_count(),
                2,
                "{}: {what}: one forward and one reply entry",
                a.vip
            );
        }
    }
}

/// The old reply entry goes before the rebuilt flow claims its SNAT port:
/// re-hashed to a slot holding the same address and port (the server
/// re-added under a new slot), the flow gets its old SNAT port back. And
/// an old reply entry that by now translates for another flow (after an
/// LRU eviction the port was claimed again) is left alone.
#[test]
fn rehash_frees_old_reply_entry() {
    rehash_frees_old_reply_entry_on(Hook::Xdp);
}

/// `rehash_frees_old_reply_entry` through `lb_tc`.
#[test]
fn tc_rehash_frees_old_reply_entry() {
    rehash_frees_old_reply_entry_on(Hook::Tc);
}

fn rehash_frees_old_reply_entry_on(hook: Hook) {
    let Some(mut w) = world_on("rehash_frees_old_reply_entry", hook) else {
        return;
    };
    w.configure();
    for (a, proto) in [(V4, PROTO_UDP), (V6, PROTO_TCP)] {
        let snat = a.node_backend_side;
        let select = |w: &mut World, backend_id| {
            w.fx.set_service(
                vip(&a),
                proto,
                Service {
                    id: SERVICE_ID,
                    backend_id,
                    flags: SERVICE_REMOTE,
                    table_size: 0,
                },
            );
        };

        // Same address and port under slot 2: the same SNAT port again.
        w.fx.clear_flows();
        w.service(&a, proto, SERVICE_REMOTE);
        let input = client_frame(&a, proto);
        let port = w.expect_new_flow(&format!("{}: first", a.vip), &input, 0, snat);
        let snat_addr = SocketAddr::new(snat, port);
        let old_reply = flow_key(backend_at(&a, 0), snat_addr, proto);
        let reply_value = w.fx.flow_rewrite(&old_reply);
        w.fx.set_backend(1, backend(backend_at(&a, 0), SERVICE_ID, BACKEND_DOWN));
        w.fx.set_backend(2, backend(backend_at(&a, 0), SERVICE_ID, 0));
        select(&mut w, 2);
        let expected = rewritten(
            &input,
            snat_addr,
            backend_at(&a, 0),
            BACKEND_IF_MAC,
            BACKEND_MACS[0],
        );
        w.expect_redirect(
            &format!("{}: moved to slot 2", a.vip),
            &input,
            w.net.client_if,
            &expected,
        );
        assert_eq!(
            w.fx.flow_rewrite(&input.flow_key()),
            Some(flow_value(snat_addr, backend_at(&a, 0), 2, SERVICE_ID, 0)),
            "{}: forward entry on slot 2, same SNAT port",
            a.vip
        );
        assert_eq!(
            w.fx.flow_rewrite(&old_reply),
            reply_value.map(|r| FlowValue { backend_id: 2, ..r }),
            "{}: reply entry rewritten for slot 2",
            a.vip
        );
        assert_eq!(w.fx.flow_count(), 2, "{}: two entries", a.vip);

        // The old reply entry now serves another flow: kept as it is.
        w.fx.clear_flows();
        w.service(&a, proto, SERVICE_REMOTE);
        let port = w.expect_new_flow(&format!("{}: second", a.vip), &input, 0, snat);
        let old_reply = flow_key(backend_at(&a, 0), SocketAddr::new(snat, port), proto);
        let other = w.fx.flow_rewrite(&old_reply).map(|r| FlowValue {
            dst_port: r.dst_port + 1,
            ..r
        });
        w.fx.flows
            .insert(old_reply, other.expect("reply entry"), 0)
            .expect("rewrite the reply entry");
        w.fx.set_backend(1, backend(backend_at(&a, 0), SERVICE_ID, BACKEND_DOWN));
        select(&mut w, 2);
        w.expect_new_flow(&format!("{}: re-hashed", a.vip), &input, 1, snat);
        assert_eq!(
            w.fx.flow_rewrite(&old_reply),
            other,
            "{}: another flow's reply entry kept",
            a.vip
        );
        assert_eq!(w.fx.flow_count(), 3, "{}: three entries", a.vip);
    }
}

/// `flow_stats` counts every entry the programs create and remove, so the
/// entries they do not explain are the evicted ones: a new flow creates two;
/// its later packets none; a forward entry lost behind the counters' back
/// (as the LRU evicts) is re-created with its old SNAT port (one created)
/// and shows as one eviction; a move to another backend removes the old
/// reply entry (one removed by the kernel) and creates the new one.
#[test]
fn flow_stats_count_every_entry_created_and_removed() {
    flow_stats_count_every_entry_created_and_removed_on(Hook::Xdp);
}

#[test]
fn tc_flow_stats_count_every_entry_created_and_removed() {
    flow_stats_count_every_entry_created_and_removed_on(Hook::Tc);
}

fn flow_stats_count_every_entry_created_and_removed_on(hook: Hook) {
    let Some(mut w) = world_on("flow_stats_count_every_entry_created_and_removed", hook) else {
        return;
    };
    w.configure();
    let a = V4;
    let snat = a.node_backend_side;
    w.service(&a, PROTO_TCP, SERVICE_REMOTE);
    let totals = |w: &World| {
        let t = w.fx.flow_totals();
        (
            t[flow_stat::CREATED as usize],
            t[flow_stat::REMOVED_KERNEL as usize],
            evicted_at_least(&t, &t, w.fx.flow_count() as u64),
        )
    };
    assert_eq!(totals(&w), (0, 0, 0), "nothing counted before any packet");

    let input = client_frame(&a, PROTO_TCP);
    let port = w.expect_new_flow("new flow", &input, 0, snat);
    assert_eq!(totals(&w), (2, 0, 0), "a new flow creates two entries");
    // Later packets, and the flow re-created on its own reply entry, keep
    // the SNAT port.
    let expected = rewritten(
        &input,
        SocketAddr::new(snat, port),
        backend_at(&a, 0),
        BACKEND_IF_MAC,
        BACKEND_MACS[0],
    );
    w.expect_redirect("second packet", &input, w.net.client_if, &expected);
    assert_eq!(totals(&w), (2, 0, 0), "an established packet creates none");

    w.fx.remove_flow(&input.flow_key());
    w.expect_redirect("forward entry lost", &input, w.net.client_if, &expected);
    assert_eq!(w.fx.flow_count(), 2, "forward entry back, same reply entry");
    assert_eq!(
        totals(&w),
        (3, 0, 1),
        "the forward entry re-created; the lost one is the one eviction"
    );

    // Backend 1 down, the service picks backend 2 (another address): the
    // flow moves, its old reply entry goes.
    w.fx.set_backend(1, backend(backend_at(&a, 0), SERVICE_ID, BACKEND_DOWN));
    w.fx.set_service(
        vip(&a),
        PROTO_TCP,
        Service {
            id: SERVICE_ID,
            backend_id: 2,
            flags: SERVICE_REMOTE,
            table_size: 0,
        },
    );
    w.expect_new_flow("moved", &input, 1, snat);
    assert_eq!(w.fx.flow_count(), 2, "forward and new reply entry");
    assert_eq!(
        totals(&w),
        (4, 1, 1),
        "the new reply entry created, the old one removed by the kernel"
    );
}

/// The real LRU: 140,000 new flows (280,000 entries) into a table of
/// 262,144 make it evict. The programs still count exactly two created
/// entries per new flow, and the eviction bound from the counts and the
/// entries left is at least what the capacity forces out.
#[test]
fn lru_evictions_show_in_the_counts() {
    let Some(mut w) = world("lru_evictions_show_in_the_counts") else {
        return;
    };
    let a = V4;
    let (snat_v4, _) = ip_to_bytes(a.node_backend_side);
    w.fx.configure(XdpConfig {
        snat_v4,
        port_min: 1024,
        port_max: 65535,
        flags: XDP_SNAT_V4,
        ..XdpConfig::default()
    });
    // Four backends behind a 4-slot spread table: 4 × 64,512 SNAT
    // address:port pairs, room for every reply entry.
    w.backends(&a);
    for slot in 0..4 {
        w.fx.set_maglev(SERVICE_ID, slot, slot + 1);
    }
    w.fx.set_service(
        vip(&a),
        PROTO_TCP,
        Service {
            id: SERVICE_ID,
            backend_id: 1,
            flags: SERVICE_REMOTE | SERVICE_SPREAD,
            table_size: 4,
        },
    );
    let IpAddr::V4(base) = a.client else {
        panic!("V4.client is IPv4");
    };
    let flows: u32 = 140_000;
    let started = std::time::Instant::now();
    let mut redirected = 0u64;
    for i in 0..flows {
        let src = SocketAddr::new(
            std::net::Ipv4Addr::from(u32::from(base) + (i / 50_000) * 256).into(),
            10_000 + (i % 50_000) as u16,
        );
        let frame = Packet::tcp(src, vip(&a))
            .macs(CLIENT_MAC, CLIENT_IF_MAC)
            .bytes();
        if w.fx.run(&frame, Some(w.net.client_if)).verdict == XDP_REDIRECT {
            redirected += 1;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_mins(1),
            "{i} flows after 60 s"
        );
    }
    let new_flows = w.fx.service_counters(SERVICE_ID).xdp_flows;
    assert_eq!(
        new_flows, redirected,
        "every redirected packet was a new flow"
    );
    assert!(
        new_flows > u64::from(flows) * 99 / 100,
        "{new_flows} of {flows} flows made it (SNAT ports: {:?})",
        delta(&[0; COUNT as usize], &w.fx.xdp_counters())
    );
    let totals = w.fx.flow_totals();
    let present = w.fx.flow_count() as u64;
    let capacity = u64::from(lb_common::MAX_FLOWS);
    assert_eq!(
        totals[flow_stat::CREATED as usize],
        2 * new_flows,
        "two entries created per new flow, evictions or not"
    );
    assert_eq!(totals[flow_stat::REMOVED_KERNEL as usize], 0);
    assert!(
        present <= capacity,
        "{present} entries in a table of {capacity}"
    );
    let evicted = evicted_at_least(&totals, &totals, present);
    assert_eq!(evicted, 2 * new_flows - present, "a quiet table: exact");
    assert!(
        evicted >= 2 * new_flows - capacity,
        "{evicted} evictions counted, the capacity forces at least {}",
        2 * new_flows - capacity
    );
    eprintln!(
        "{new_flows} flows, {present} entries left, {evicted} evicted, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// An egress interface whose peer lives in another namespace (`if_addrs`
/// says [`IF_PEER_NETNS`]): tc hands the packet to the peer with
/// `bpf_redirect_peer` (counted `redirect_peer`) and caches that with the
/// next hop ([`FLOW_HOP_PEER`]), so later packets go the same way from the
/// cache; once the flag is gone and the generation moves on, plain
/// `bpf_redirect` again. XDP, which has no such redirect, ignores the flag.
#[test]
fn tc_sends_straight_into_a_peer_in_another_namespace() {
    peer_in_another_namespace_on(Hook::Tc, "redirect_peer");
}

#[test]
fn xdp_ignores_a_peer_in_another_namespace() {
    peer_in_another_namespace_on(Hook::Xdp, "redirect");
}

fn peer_in_another_namespace_on(hook: Hook, verdict: &str) {
    let Some(mut w) = world_on("peer_in_another_namespace", hook) else {
        return;
    };
    w.reconfigure(0, 1);
    let a = V4;
    w.service(&a, PROTO_TCP, SERVICE_REMOTE);
    w.fx.set_if_addrs(
        w.net.backend_if,
        IfAddrs {
            flags: IF_PEER_NETNS,
            ..IfAddrs::default()
        },
    );
    let input = client_frame(&a, PROTO_TCP);
    let key = input.flow_key();
    let peer = hook == Hook::Tc;
    for what in ["new flow", "cached next hop"] {
        let (run, counted) = w.run(&input.bytes(), Some(w.net.client_if));
        assert_eq!(verdict_name(run.verdict), "XDP_REDIRECT", "{what}: verdict");
        assert_eq!(counted, vec![(verdict, 1)], "{what}: xdp_stats");
        let entry = w.entry(what, &key);
        assert_eq!(entry.hop_ifindex, w.net.backend_if, "{what}: {entry:?}");
        assert_eq!(entry.flags & FLOW_HOP_PEER != 0, peer, "{what}: {entry:?}");
    }
    // The interface has no peer elsewhere any more, and the controller
    // moved the generation on (as on a link change).
    w.fx.set_if_addrs(w.net.backend_if, IfAddrs::default());
    w.reconfigure(0, 2);
    let (_, counted) = w.run(&input.bytes(), Some(w.net.client_if));
    assert_eq!(counted, vec![("redirect", 1)], "after the change");
    let entry = w.entry("after the change", &key);
    assert_eq!(entry.flags & FLOW_HOP_PEER, 0, "{entry:?}");
    assert_eq!(entry.hop_gen, 2, "{entry:?}");
}

/// Fail-open: a `BACKEND_DOWN` backend that the service still selects
/// (the controller picks a failed server when nothing better exists) keeps
/// its established flow as it is (same SNAT port, no new flow counted) and
/// takes new flows.
#[test]
fn down_backend_still_selected_keeps_flows() {
    down_backend_still_selected_keeps_flows_on(Hook::Xdp);
}

/// `down_backend_still_selected_keeps_flows` through `lb_tc`.
#[test]
fn tc_down_backend_still_selected_keeps_flows() {
    down_backend_still_selected_keeps_flows_on(Hook::Tc);
}

fn down_backend_still_selected_keeps_flows_on(hook: Hook) {
    let Some(mut w) = world_on("down_backend_still_selected_keeps_flows", hook) else {
        return;
    };
    w.configure();
    for (a, proto) in [(V4, PROTO_UDP), (V6, PROTO_TCP)] {
        w.service(&a, proto, SERVICE_REMOTE);
        let input = client_frame(&a, proto);
        let snat = a.node_backend_side;
        let port = w.expect_new_flow(&format!("{}: established", a.vip), &input, 0, snat);
        w.fx.set_backend(1, backend(backend_at(&a, 0), SERVICE_ID, BACKEND_DOWN));
        w.expect_kept_flow(
            &format!("{}: kept flow", a.vip),
            &input,
            0,
            SocketAddr::new(snat, port),
        );

        let mut other = client_frame(&a, proto);
        other.src_port += 1;
        w.expect_new_flow(
            &format!("{}: new flow to the failed selection", a.vip),
            &other,
            0,
            snat,
        );
    }
}

/// Drain (weight 0): a backend that leaves a `spread` service's Maglev
/// table but stays up keeps its established flows (same entry, same SNAT
/// port, no new flow counted) while every new flow goes to the backends
/// still in the table.
#[test]
fn drained_backend_keeps_its_flows() {
    drained_backend_keeps_its_flows_on(Hook::Xdp);
}

/// `drained_backend_keeps_its_flows` through `lb_tc`.
#[test]
fn tc_drained_backend_keeps_its_flows() {
    drained_backend_keeps_its_flows_on(Hook::Tc);
}

fn drained_backend_keeps_its_flows_on(hook: Hook) {
    const TABLE: u32 = 7;
    let Some(mut w) = world_on("drained_backend_keeps_its_flows", hook) else {
        return;
    };
    w.configure();
    for (a, proto) in [(V4, PROTO_TCP), (V6, PROTO_UDP)] {
        w.fx.clear_flows();
        w.backends(&a);
        w.fx.set_service(
            vip(&a),
            proto,
            Service {
                id: SERVICE_ID,
                backend_id: 1,
                flags: SERVICE_REMOTE | SERVICE_SPREAD,
                table_size: TABLE,
            },
        );
        for slot in 0..TABLE {
            w.fx.set_maglev(SERVICE_ID, slot, 1);
        }
        let input = client_frame(&a, proto);
        let snat = a.node_backend_side;
        let port = w.expect_new_flow(&format!("{}: before the drain", a.vip), &input, 0, snat);
        // Backend 1 drained: the table now holds only backend 2; the
        // service's fallback stays backend 1, as the controller leaves it.
        for slot in 0..TABLE {
            w.fx.set_maglev(SERVICE_ID, slot, 2);
        }
        w.expect_kept_flow(
            &format!("{}: drained backend's flow", a.vip),
            &input,
            0,
            SocketAddr::new(snat, port),
        );
        for offset in 1..=5 {
            let mut other = client_frame(&a, proto);
            other.src_port += offset;
            w.expect_new_flow(
                &format!("{}: new flow {offset} after the drain", a.vip),
                &other,
                1,
                snat,
            );
        }
    }
}

/// UDP over IPv4 without a checksum (0) is forwarded with the checksum
/// still 0, both ways.
#[test]
fn udp4_zero_checksum_stays_zero() {
    udp4_zero_checksum_stays_zero_on(Hook::Xdp);
}

/// `udp4_zero_checksum_stays_zero` through `lb_tc`.
#[test]
fn tc_udp4_zero_checksum_stays_zero() {
    udp4_zero_checksum_stays_zero_on(Hook::Tc);
}

fn udp4_zero_checksum_stays_zero_on(hook: Hook) {
    let Some(mut w) = world_on("udp4_zero_checksum_stays_zero", hook) else {
        return;
    };
    w.configure();
    w.service(&V4, PROTO_UDP, SERVICE_REMOTE);
    let mut input = client_frame(&V4, PROTO_UDP);
    input.l4 = L4::Udp {
        zero_checksum: true,
    };
    assert_eq!(input.bytes()[40..42], [0, 0], "fixture has checksum 0");
    let port = w.expect_new_flow("zero checksum", &input, 0, V4.node_backend_side);
    let mut reply = Packet::udp(
        backend_at(&V4, 0),
        SocketAddr::new(V4.node_backend_side, port),
    )
    .macs(BACKEND_MACS[0], BACKEND_IF_MAC)
    .payload(b"pong");
    reply.l4 = L4::Udp {
        zero_checksum: true,
    };
    let expected = rewritten(&reply, vip(&V4), client(&V4), CLIENT_IF_MAC, CLIENT_MAC);
    w.expect_redirect("zero-checksum reply", &reply, w.net.backend_if, &expected);
}

/// A UDP rewrite whose new checksum computes to 0 is written as 0xffff
/// (RFC 768; 0 would mean "no checksum"): the payload is chosen so that the
/// rewritten packet's one's-complement sum is exactly 0xffff.
#[test]
fn udp_checksum_computing_to_zero_is_ffff() {
    udp_checksum_computing_to_zero_is_ffff_on(Hook::Xdp);
}

/// `udp_checksum_computing_to_zero_is_ffff` through `lb_tc`.
#[test]
fn tc_udp_checksum_computing_to_zero_is_ffff() {
    udp_checksum_computing_to_zero_is_ffff_on(Hook::Tc);
}

fn udp_checksum_computing_to_zero_is_ffff_on(hook: Hook) {
    let Some(mut w) = world_on("udp_checksum_computing_to_zero_is_ffff", hook) else {
        return;
    };
    w.configure();
    for a in [V4, V6] {
        w.service(&a, PROTO_UDP, SERVICE_REMOTE);
        let mut input = client_frame(&a, PROTO_UDP).payload(&[0, 0, 1, 2, 3]);
        let key = input.flow_key();
        let port = w.predict_snat_port(&key, a.node_backend_side, backend_at(&a, 0));
        let snat_addr = SocketAddr::new(a.node_backend_side, port);
        let probe = rewritten(
            &input,
            snat_addr,
            backend_at(&a, 0),
            BACKEND_IF_MAC,
            BACKEND_MACS[0],
        );
        let udp = if a.vip.is_ipv4() { 14 + 20 } else { 14 + 40 };
        // With payload word 0 the checksum is !sum; putting that word in
        // the payload makes the sum 0xffff, i.e. a computed checksum of 0.
        let check = probe.bytes()[udp + 6..udp + 8].to_vec();
        input.payload[..2].copy_from_slice(&check);
        let expected = rewritten(
            &input,
            snat_addr,
            backend_at(&a, 0),
            BACKEND_IF_MAC,
            BACKEND_MACS[0],
        );
        assert_eq!(
            expected.bytes()[udp + 6..udp + 8],
            [0xff, 0xff],
            "fixture: computed 0"
        );
        w.expect_redirect(
            &format!("{}: UDP checksum computing to 0", a.vip),
            &input,
            w.net.client_if,
            &expected,
        );
    }
}

/// UDP over IPv6 with checksum 0 is invalid: passed unchanged to the stack
/// (which drops it), counted `pass_udp6_zero_csum`, no flow.
#[test]
fn udp6_zero_checksum_passes() {
    udp6_zero_checksum_passes_on(Hook::Xdp);
}

/// `udp6_zero_checksum_passes` through `lb_tc`.
#[test]
fn tc_udp6_zero_checksum_passes() {
    udp6_zero_checksum_passes_on(Hook::Tc);
}

fn udp6_zero_checksum_passes_on(hook: Hook) {
    let Some(mut w) = world_on("udp6_zero_checksum_passes", hook) else {
        return;
    };
    w.configure();
    w.service(&V6, PROTO_UDP, SERVICE_REMOTE);
    let mut input = client_frame(&V6, PROTO_UDP);
    input.l4 = L4::Udp {
        zero_checksum: true,
    };
    w.assert_pass(
        "udp6 zero checksum",
        &input.bytes(),
        xdp_counter::PASS_UDP6_ZERO_CSUM,
    );
}

/// Without a configured SNAT address (`xdp_config.flags` 0) the source is
/// the egress interface's address from `if_addrs`; an interface without an
/// address of the packet's family passes it (`pass_no_snat_addr`).
#[test]
fn snat_from_if_addrs() {
    snat_from_if_addrs_on(Hook::Xdp);
}

/// `snat_from_if_addrs` through `lb_tc`.
#[test]
fn tc_snat_from_if_addrs() {
    snat_from_if_addrs_on(Hook::Tc);
}

fn snat_from_if_addrs_on(hook: Hook) {
    let Some(mut w) = world_on("snat_from_if_addrs", hook) else {
        return;
    };
    w.fx.configure(XdpConfig {
        port_min: PORT_MIN,
        port_max: PORT_MAX,
        ..XdpConfig::default()
    });
    let (v4, _) = ip_to_bytes(V4.node_backend_side2);
    let (v6, _) = ip_to_bytes(V6.node_backend_side2);
    w.fx.set_if_addrs(
        w.net.backend_if,
        IfAddrs {
            v4,
            v6: [0; 16],
            flags: IF_HAS_V4,
            pad: 0,
        },
    );
    w.service(&V4, PROTO_TCP, SERVICE_REMOTE);
    w.expect_new_flow(
        "v4 from if_addrs",
        &client_frame(&V4, PROTO_TCP),
        0,
        V4.node_backend_side2,
    );
    w.service(&V6, PROTO_TCP, SERVICE_REMOTE);
    w.assert_pass(
        "v6 without a v6 address in if_addrs",
        &client_frame(&V6, PROTO_TCP).bytes(),
        xdp_counter::PASS_NO_SNAT_ADDR,
    );
    w.fx.set_if_addrs(
        w.net.backend_if,
        IfAddrs {
            v4,
            v6,
            flags: IF_HAS_V4 | IF_HAS_V6,
            pad: 0,
        },
    );
    w.expect_new_flow(
        "v6 from if_addrs",
        &client_frame(&V6, PROTO_TCP),
        0,
        V6.node_backend_side2,
    );
}

/// A backend the FIB routes to but whose MAC is unknown: passed unchanged
/// (`pass_no_neigh`, the stack resolves it), nothing stored.
#[test]
fn no_neighbour_passes() {
    let Some(mut w) = world("no_neighbour_passes") else {
        return;
    };
    w.configure();
    for a in [V4, V6] {
        w.service(&a, PROTO_TCP, SERVICE_REMOTE);
        w.fx.set_backend(
            1,
            backend(SocketAddr::new(a.no_neigh, BACKEND_PORT), SERVICE_ID, 0),
        );
        w.assert_pass(
            "no neighbour",
            &client_frame(&a, PROTO_TCP).bytes(),
            xdp_counter::PASS_NO_NEIGH,
        );
    }
}

/// A backend in a blackhole route: dropped (`drop_unreachable`, and the
/// service's `xdp_drop_unreachable`), frame untouched, nothing stored.
#[test]
fn blackholed_backend_drops() {
    blackholed_backend_drops_on(Hook::Xdp);
}

/// `blackholed_backend_drops` through `lb_tc`.
#[test]
fn tc_blackholed_backend_drops() {
    blackholed_backend_drops_on(Hook::Tc);
}

fn blackholed_backend_drops_on(hook: Hook) {
    let Some(mut w) = world_on("blackholed_backend_drops", hook) else {
        return;
    };
    w.configure();
    for a in [V4, V6] {
        w.service(&a, PROTO_TCP, SERVICE_REMOTE);
        w.fx.set_backend(
            1,
            backend(SocketAddr::new(a.blackholed, BACKEND_PORT), SERVICE_ID, 0),
        );
        w.assert_untouched(
            "blackhole",
            &client_frame(&a, PROTO_TCP).bytes(),
            XDP_DROP,
            xdp_counter::DROP_UNREACHABLE,
        );
    }
    assert_eq!(w.fx.service_counters(SERVICE_ID).xdp_drop_unreachable, 2);
}

/// TTL / hop limit 1 would expire here: passed unchanged (`pass_ttl`, the
/// stack sends the ICMP error), before anything is stored.
#[test]
fn ttl_one_passes() {
    ttl_one_passes_on(Hook::Xdp);
}

/// `ttl_one_passes` through `lb_tc`.
#[test]
fn tc_ttl_one_passes() {
    ttl_one_passes_on(Hook::Tc);
}

fn ttl_one_passes_on(hook: Hook) {
    let Some(mut w) = world_on("ttl_one_passes", hook) else {
        return;
    };
    w.configure();
    for a in [V4, V6] {
        w.service(&a, PROTO_TCP, SERVICE_REMOTE);
        let mut input = client_frame(&a, PROTO_TCP);
        input.ttl = 1;
        w.assert_pass("ttl 1", &input.bytes(), xdp_counter::PASS_TTL);
        input.ttl = 0;
        w.assert_pass("ttl 0", &input.bytes(), xdp_counter::PASS_TTL);
    }
}

/// No usable backend: `backend_id` 0, an unused backend slot, a backend of
/// the other family, a backend slot of another service: dropped (`drop_no_backend`
/// and the service's `xdp_drop_no_backend`), frame untouched, nothing stored.
#[test]
fn no_backend_drops() {
    no_backend_drops_on(Hook::Xdp);
}

/// `no_backend_drops` through `lb_tc`.
#[test]
fn tc_no_backend_drops() {
    no_backend_drops_on(Hook::Tc);
}

fn no_backend_drops_on(hook: Hook) {
    let Some(mut w) = world_on("no_backend_drops", hook) else {
        return;
    };
    w.configure();
    let mut drops = 0;
    for (a, other) in [(V4, V6), (V6, V4)] {
        w.backends(&a);
        let frame = client_frame(&a, PROTO_TCP).bytes();
        let cases = [
            ("backend id 0", NO_BACKEND, None),
            ("unused backend slot", 100, None),
            (
                "backend of the other family",
                1,
                Some(backend(backend_at(&other, 0), SERVICE_ID, 0)),
            ),
            (
                "backend of another service",
                1,
                Some(backend(backend_at(&a, 0), SERVICE_ID + 1, 0)),
            ),
        ];
        for (what, id, slot) in cases {
            if let Some(slot) = slot {
                w.fx.set_backend(id, slot);
            }
            w.fx.set_service(
                vip(&a),
                PROTO_TCP,
                Service {
                    id: SERVICE_ID,
                    backend_id: id,
                    flags: SERVICE_REMOTE,
                    table_size: 0,
                },
            );
            w.assert_untouched(what, &frame, XDP_DROP, xdp_counter::DROP_NO_BACKEND);
            drops += 1;
        }
    }
    assert_eq!(w.fx.service_counters(SERVICE_ID).xdp_drop_no_backend, drops);
}

/// Frames cut short are passed unchanged (`pass_truncated`): Ethernet
/// header only, IPv4/IPv6 header cut, IPv4 IHL < 5, IPv4 total length
/// beyond the frame, TCP header < 20 and UDP header < 8 bytes with the IP
/// length matching. Frames shorter than an Ethernet header never reach the
/// program: the kernel's test run refuses them (as drivers never deliver them);
/// for tc it also refuses frames whose IP header is cut.
#[test]
fn truncated_frames_pass() {
    truncated_frames_pass_on(Hook::Xdp);
}

/// `truncated_frames_pass` through `lb_tc`.
#[test]
fn tc_truncated_frames_pass() {
    truncated_frames_pass_on(Hook::Tc);
}

fn truncated_frames_pass_on(hook: Hook) {
    let Some(mut w) = world_on("truncated_frames_pass", hook) else {
        return;
    };
    w.configure();
    w.service(&V4, PROTO_TCP, SERVICE_REMOTE);
    w.service(&V6, PROTO_TCP, SERVICE_REMOTE);
    let counter = xdp_counter::PASS_TRUNCATED;
    let v4 = client_frame(&V4, PROTO_TCP).bytes();
    let v6 = client_frame(&V6, PROTO_TCP).bytes();
    assert!(
        w.fx.run_program(hook.program(), &v4[..13], Some(w.net.client_if), 1)
            .is_err(),
        "a 13-byte frame should be refused by BPF_PROG_TEST_RUN"
    );
    // An skb test run refuses a frame whose IP header is cut (the kernel
    // checks it while building the skb), so for tc those cases must be
    // refused; every other case must be passed.
    let cut = |what: &str, frame: &[u8]| {
        if hook == Hook::Xdp {
            w.assert_pass(what, frame, counter);
        } else {
            assert!(
                w.fx.run_program(hook.program(), frame, Some(w.net.client_if), 1)
                    .is_err(),
                "{what}: should be refused by BPF_PROG_TEST_RUN for tc"
            );
        }
    };
    cut("ethernet header only (IPv4)", &v4[..14]);
    cut("ethernet header only (IPv6)", &v6[..14]);
    cut("IPv4 header cut at 19 bytes", &v4[..14 + 19]);
    cut("IPv6 header cut at 39 bytes", &v6[..14 + 39]);
    w.assert_pass(
        "IPv4 total length beyond the frame",
        &v4[..v4.len() - 1],
        counter,
    );
    let mut ihl4 = v4.clone();
    ihl4[14] = 0x44;
    w.assert_pass("IPv4 IHL 4", &ihl4, counter);
    for a in [V4, V6] {
        for (proto, len) in [(PROTO_TCP, 19), (PROTO_UDP, 7)] {
            let short = Packet::new(
                client(&a),
                vip(&a),
                L4::Raw {
                    proto,
                    bytes: vec![0xab; len],
                },
            )
            .macs(CLIENT_MAC, CLIENT_IF_MAC);
            w.assert_pass(
                &format!("{} proto {proto}: {len}-byte header", a.vip),
                &short.bytes(),
                counter,
            );
        }
    }
}

/// IPv4 with options (IHL 6) to the VIP: passed unchanged (`pass_ip_options`).
#[test]
fn ipv4_options_pass() {
    ipv4_options_pass_on(Hook::Xdp);
}

/// `ipv4_options_pass` through `lb_tc`.
#[test]
fn tc_ipv4_options_pass() {
    ipv4_options_pass_on(Hook::Tc);
}

fn ipv4_options_pass_on(hook: Hook) {
    let Some(mut w) = world_on("ipv4_options_pass", hook) else {
        return;
    };
    w.configure();
    w.service(&V4, PROTO_TCP, SERVICE_REMOTE);
    let mut input = client_frame(&V4, PROTO_TCP);
    input.ipv4_options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
    w.assert_pass("IPv4 options", &input.bytes(), xdp_counter::PASS_IP_OPTIONS);
}

/// IPv4 fragments to the VIP (first fragment with MF, a later fragment with
/// an offset, the last fragment with an offset and no MF): passed unchanged
/// (`pass_fragment`).
#[test]
fn ipv4_fragments_pass() {
    ipv4_fragments_pass_on(Hook::Xdp);
}

/// `ipv4_fragments_pass` through `lb_tc`.
#[test]
fn tc_ipv4_fragments_pass() {
    ipv4_fragments_pass_on(Hook::Tc);
}

fn ipv4_fragments_pass_on(hook: Hook) {
    let Some(mut w) = world_on("ipv4_fragments_pass", hook) else {
        return;
    };
    w.configure();
    w.service(&V4, PROTO_TCP, SERVICE_REMOTE);
    for (what, frag) in [
        ("first fragment (MF)", IPV4_MF),
        ("middle fragment (MF, offset 185)", IPV4_MF | 0x00b9),
        ("last fragment (offset 185)", 0x00b9),
    ] {
        let mut input = client_frame(&V4, PROTO_TCP);
        input.ipv4_frag = frag;
        w.assert_pass(what, &input.bytes(), xdp_counter::PASS_FRAGMENT);
    }
}

/// IPv6 with an extension header before TCP (hop-by-hop, and the same
/// 8-byte header relabelled routing, fragment, destination options): passed
/// unchanged (`pass_ipv6_ext`).
#[test]
fn ipv6_extension_header_passes() {
    ipv6_extension_header_passes_on(Hook::Xdp);
}

/// `ipv6_extension_header_passes` through `lb_tc`.
#[test]
fn tc_ipv6_extension_header_passes() {
    ipv6_extension_header_passes_on(Hook::Tc);
}

fn ipv6_extension_header_passes_on(hook: Hook) {
    let Some(mut w) = world_on("ipv6_extension_header_passes", hook) else {
        return;
    };
    w.configure();
    w.service(&V6, PROTO_TCP, SERVICE_REMOTE);
    let mut input = client_frame(&V6, PROTO_TCP);
    input.ipv6_hop_by_hop = true;
    let frame = input.bytes();
    assert_eq!(frame[14 + 6], 0, "next header: hop-by-hop");
    for next_header in [0_u8, 43, 44, 60] {
        let mut frame = frame.clone();
        frame[14 + 6] = next_header;
        w.assert_pass(
            &format!("next header {next_header}"),
            &frame,
            xdp_counter::PASS_IPV6_EXT,
        );
    }
}

/// `vip_filter` gates the `services` lookup: with the VIP's bit cleared a
/// remote service's new and established packets are passed as non-VIP
/// traffic (no flow stored); with the bit set again the established flow
/// is forwarded as before. A test that fails if the forwarder ignored the
/// filter (or read the wrong bit: the VIP would then never be forwarded).
#[test]
fn vip_filter_gates_the_lookup() {
    vip_filter_gates_the_lookup_on(Hook::Xdp);
}

/// `vip_filter_gates_the_lookup` through `lb_tc`.
#[test]
fn tc_vip_filter_gates_the_lookup() {
    vip_filter_gates_the_lookup_on(Hook::Tc);
}

fn vip_filter_gates_the_lookup_on(hook: Hook) {
    let Some(mut w) = world_on("vip_filter_gates_the_lookup", hook) else {
        return;
    };
    w.configure();
    for a in [V4, V6] {
        w.fx.clear_flows();
        w.service(&a, PROTO_TCP, SERVICE_REMOTE);
        let snat = a.node_backend_side;
        let input = client_frame(&a, PROTO_TCP);
        let port = w.expect_new_flow(&format!("{}: new", a.vip), &input, 0, snat);
        w.fx.clear_vip_filter();
        let other = Packet::tcp(SocketAddr::new(a.client, client(&a).port() + 1), vip(&a));
        w.assert_pass(
            &format!("{}: new flow, bit clear", a.vip),
            &other.bytes(),
            xdp_counter::PASS_NOT_VIP,
        );
        w.assert_pass(
            &format!("{}: established, bit clear", a.vip),
            &input.bytes(),
            xdp_counter::PASS_NOT_VIP,
        );
        w.service(&a, PROTO_TCP, SERVICE_REMOTE);
        w.expect_kept_flow(
            &format!("{}: bit set again", a.vip),
            &input,
            0,
            SocketAddr::new(snat, port),
        );
    }
}

/// Traffic that is no VIP flow: another destination, the VIP on another
/// port, the VIP with the other protocol, a packet to the SNAT address on a
/// port no flow uses; all passed unchanged (`pass_not_vip`).
#[test]
fn non_vip_passes() {
    non_vip_passes_on(Hook::Xdp);
}

/// `non_vip_passes` through `lb_tc`.
#[test]
fn tc_non_vip_passes() {
    non_vip_passes_on(Hook::Tc);
}

fn non_vip_passes_on(hook: Hook) {
    let Some(mut w) = world_on("non_vip_passes", hook) else {
        return;
    };
    w.configure();
    for a in [V4, V6] {
        w.service(&a, PROTO_TCP, SERVICE_REMOTE);
        let frames = [
            (
                "other destination",
                Packet::tcp(client(&a), SocketAddr::new(a.not_vip, VIP_PORT)),
            ),
            (
                "VIP, other port",
                Packet::tcp(client(&a), SocketAddr::new(a.vip, VIP_PORT + 1)),
            ),
            ("VIP, UDP", Packet::udp(client(&a), vip(&a))),
            (
                "SNAT address, no flow",
                Packet::tcp(
                    backend_at(&a, 0),
                    SocketAddr::new(a.node_backend_side, PORT_MIN),
                ),
            ),
        ];
        for (what, frame) in frames {
            let frame = frame.macs(CLIENT_MAC, CLIENT_IF_MAC).payload(b"x");
            w.assert_pass(
                &format!("{}: {what}", a.vip),
                &frame.bytes(),
                xdp_counter::PASS_NOT_VIP,
            );
        }
    }
}

/// A service without `SERVICE_REMOTE` (local clients only): its VIP's
/// packets from the wire are passed unchanged (`pass_not_vip`).
#[test]
fn service_without_remote_passes() {
    service_without_remote_passes_on(Hook::Xdp);
}

/// `service_without_remote_passes` through `lb_tc`.
#[test]
fn tc_service_without_remote_passes() {
    service_without_remote_passes_on(Hook::Tc);
}

fn service_without_remote_passes_on(hook: Hook) {
    let Some(mut w) = world_on("service_without_remote_passes", hook) else {
        return;
    };
    w.configure();
    for a in [V4, V6] {
        w.service(&a, PROTO_TCP, 0);
        w.assert_pass(
            "not remote",
            &client_frame(&a, PROTO_TCP).bytes(),
            xdp_counter::PASS_NOT_VIP,
        );
        w.service(&a, PROTO_TCP, SERVICE_SPREAD);
        w.fx.set_maglev(SERVICE_ID, 0, 1);
        w.assert_pass(
            "spread, not remote",
            &client_frame(&a, PROTO_TCP).bytes(),
            xdp_counter::PASS_NOT_VIP,
        );
    }
}

/// ICMP echo to the VIP, `ICMPv6` echo to the VIP, and IPv6 "no next header":
/// passed unchanged (`pass_not_tcp_udp`).
#[test]
fn icmp_to_vip_passes() {
    icmp_to_vip_passes_on(Hook::Xdp);
}

/// `icmp_to_vip_passes` through `lb_tc`.
#[test]
fn tc_icmp_to_vip_passes() {
    icmp_to_vip_passes_on(Hook::Tc);
}

fn icmp_to_vip_passes_on(hook: Hook) {
    let Some(mut w) = world_on("icmp_to_vip_passes", hook) else {
        return;
    };
    w.configure();
    for a in [V4, V6] {
        w.service(&a, PROTO_TCP, SERVICE_REMOTE);
        let echo = Packet::icmp_echo(a.client, a.vip)
            .macs(CLIENT_MAC, CLIENT_IF_MAC)
            .payload(b"ping");
        assert_eq!(echo.proto() == PROTO_ICMP, a.vip.is_ipv4());
        w.assert_pass("echo request", &echo.bytes(), xdp_counter::PASS_NOT_TCP_UDP);
    }
    let no_next = Packet::new(
        client(&V6),
        vip(&V6),
        L4::Raw {
            proto: 59,
            bytes: Vec::new(),
        },
    )
    .macs(CLIENT_MAC, CLIENT_IF_MAC);
    w.assert_pass(
        "IPv6 no next header",
        &no_next.bytes(),
        xdp_counter::PASS_NOT_TCP_UDP,
    );
}

/// Not IP: an ARP request for the VIP and a VLAN-tagged TCP packet to the
/// VIP are passed unchanged (`pass_not_ip`).
#[test]
fn arp_and_vlan_pass() {
    arp_and_vlan_pass_on(Hook::Xdp);
}

/// `arp_and_vlan_pass` through `lb_tc`.
#[test]
fn tc_arp_and_vlan_pass() {
    arp_and_vlan_pass_on(Hook::Tc);
}

fn arp_and_vlan_pass_on(hook: Hook) {
    let Some(mut w) = world_on("arp_and_vlan_pass", hook) else {
        return;
    };
    w.configure();
    w.service(&V4, PROTO_TCP, SERVICE_REMOTE);
    let (IpAddr::V4(client_ip), IpAddr::V4(vip_ip)) = (V4.client, V4.vip) else {
        unreachable!("V4 holds IPv4 addresses");
    };
    w.assert_pass(
        "ARP",
        &arp_request(CLIENT_MAC, client_ip, vip_ip),
        xdp_counter::PASS_NOT_IP,
    );
    let tagged = vlan_tagged(&client_frame(&V4, PROTO_TCP).bytes(), 42);
    w.assert_pass("VLAN-tagged TCP", &tagged, xdp_counter::PASS_NOT_IP);
}

/// Before the controller writes `xdp_config` (port range 0) everything is
/// passed unchanged (`pass_not_vip`), even to a configured remote service.
#[test]
fn unconfigured_passes_everything() {
    unconfigured_passes_everything_on(Hook::Xdp);
}

/// `unconfigured_passes_everything` through `lb_tc`.
#[test]
fn tc_unconfigured_passes_everything() {
    unconfigured_passes_everything_on(Hook::Tc);
}

fn unconfigured_passes_everything_on(hook: Hook) {
    let Some(mut w) = world_on("unconfigured_passes_everything", hook) else {
        return;
    };
    for (a, proto) in [(V4, PROTO_TCP), (V6, PROTO_UDP)] {
        w.service(&a, proto, SERVICE_REMOTE);
        w.assert_pass(
            "unconfigured",
            &client_frame(&a, proto).bytes(),
            xdp_counter::PASS_NOT_VIP,
        );
    }
}

/// The fixture builder itself: checksums computed from scratch verify
/// (sum over header / pseudo-header and segment is 0xffff), so a mismatch
/// in the tests above is the program's, not the builder's. Needs no root.
#[test]
fn builder_checksums_verify() {
    fn sum(bytes: &[u8]) -> u32 {
        let mut s: u32 = bytes
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s
    }
    for a in [V4, V6] {
        for proto in [PROTO_TCP, PROTO_UDP] {
            let frame = client_frame(&a, proto).bytes();
            let (l4, pseudo) = if a.vip.is_ipv4() {
                assert_eq!(sum(&frame[14..34]), 0xffff, "IPv4 header checksum");
                let l4 = &frame[34..];
                let mut pseudo = frame[26..34].to_vec();
                pseudo.extend_from_slice(&[0, proto]);
                pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
                (l4, pseudo)
            } else {
                let l4 = &frame[54..];
                let mut pseudo = frame[22..54].to_vec();
                pseudo.extend_from_slice(&(l4.len() as u32).to_be_bytes());
                pseudo.extend_from_slice(&[0, 0, 0, proto]);
                (l4, pseudo)
            };
            let mut all = pseudo;
            all.extend_from_slice(l4);
            assert_eq!(sum(&all), 0xffff, "{} proto {proto}: L4 checksum", a.vip);
        }
    }
    // An independent known value: the IPv4 header 4500 0073 0000 4000 4011
    // xxxx c0a8 0001 c0a8 00c7 has the checksum 0xb861.
    let mut known = Packet::udp(
        "192.168.0.1:1000".parse().unwrap(),
        "192.168.0.199:2000".parse().unwrap(),
    )
    .payload(&[0; 0x73 - 28]);
    known.ipv4_id = 0;
    let frame = known.bytes();
    assert_eq!(frame[14..18], [0x45, 0x00, 0x00, 0x73]);
    assert_eq!(frame[24..26], [0xb8, 0x61], "IPv4 header checksum");
}

/// The kernel's coarse monotonic clock (`bpf_ktime_get_coarse_ns`'s clock).
fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec the call fills in.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC_COARSE)");
    u64::try_from(ts.tv_sec).expect("seconds") * 1_000_000_000
        + u64::try_from(ts.tv_nsec).expect("nanoseconds")
}

impl World {
    /// Sets `xdp_config`'s flags (besides the SNAT flags of
    /// [`World::configure`]) and next-hop generation.
    fn reconfigure(&mut self, extra_flags: u32, hop_gen: u32) {
        self.configure();
        let mut config = self.fx.xdp_config.get(&0, 0).expect("read xdp_config");
        config.flags |= extra_flags;
        config.hop_gen = hop_gen;
        self.fx.configure(config);
    }

    /// The whole `flows` entry of `key` (it must exist).
    fn entry(&self, what: &str, key: &FlowKey) -> FlowValue {
        self.fx
            .flow(key)
            .unwrap_or_else(|| panic!("{what}: no flows entry"))
    }
}

/// A TCP packet of `input`'s flow with `flags`.
fn with_tcp_flags(input: &Packet, flags: u8) -> Packet {
    let mut out = input.clone();
    if let L4::Tcp { flags: f, .. } = &mut out.l4 {
        *f = flags;
    }
    out
}

fn tcp_lifecycle_on(hook: Hook) {
    let Some(mut w) = world_on("tcp_fin_rst_bits_and_syn_clears", hook) else {
        return;
    };
    w.configure();
    for a in [V4, V6] {
        w.fx.clear_flows();
        w.service(&a, PROTO_TCP, SERVICE_REMOTE);
        let input = client_frame(&a, PROTO_TCP);
        let snat = a.node_backend_side;
        let port = w.expect_new_flow(&format!("{}: new", a.vip), &input, 0, snat);
        let key = input.flow_key();
        let snat_addr = SocketAddr::new(snat, port);
        let reply_key = flow_key(backend_at(&a, 0), snat_addr, PROTO_TCP);
        let flags = |w: &World, k: &FlowKey| w.entry("flags", k).flags;
        assert_eq!(flags(&w, &key), 0, "{}: new forward entry", a.vip);
        assert_eq!(flags(&w, &reply_key), FLOW_REPLY, "{}: new reply", a.vip);

        // FIN from the client: the forward entry only.
        let fin = with_tcp_flags(&input, tcp_flags::FIN | tcp_flags::ACK);
        let expected = rewritten(
            &fin,
            snat_addr,
            backend_at(&a, 0),
            BACKEND_IF_MAC,
            BACKEND_MACS[0],
        );
        w.expect_redirect("client FIN", &fin, w.net.client_if, &expected);
        assert_eq!(flags(&w, &key), FLOW_FIN, "{}: forward after FIN", a.vip);
        assert_eq!(
            flags(&w, &reply_key),
            FLOW_REPLY,
            "{}: reply after client FIN",
            a.vip
        );

        // RST from the backend: the reply entry only.
        let rst = Packet::tcp(backend_at(&a, 0), snat_addr).macs(BACKEND_MACS[0], BACKEND_IF_MAC);
        let rst = with_tcp_flags(&rst, TCP_RST);
        let expected = rewritten(&rst, vip(&a), client(&a), CLIENT_IF_MAC, CLIENT_MAC);
        w.expect_redirect("backend RST", &rst, w.net.backend_if, &expected);
        assert_eq!(
            flags(&w, &reply_key),
            FLOW_REPLY | FLOW_RST,
            "{}: reply after RST",
            a.vip
        );
        assert_eq!(flags(&w, &key), FLOW_FIN, "{}: forward after RST", a.vip);

        // The client reuses the port: its SYN clears the forward entry's
        // bits, the backend's SYN+ACK the reply entry's.
        let syn = with_tcp_flags(&input, tcp_flags::SYN);
        let expected = rewritten(
            &syn,
            snat_addr,
            backend_at(&a, 0),
            BACKEND_IF_MAC,
            BACKEND_MACS[0],
        );
        w.expect_redirect("client SYN", &syn, w.net.client_if, &expected);
        assert_eq!(flags(&w, &key), 0, "{}: forward after SYN", a.vip);
        assert_eq!(
            flags(&w, &reply_key),
            FLOW_REPLY | FLOW_RST,
            "{}: reply after client SYN",
            a.vip
        );
        let syn_ack = with_tcp_flags(&rst, tcp_flags::SYN | tcp_flags::ACK);
        let expected = rewritten(&syn_ack, vip(&a), client(&a), CLIENT_IF_MAC, CLIENT_MAC);
        w.expect_redirect("backend SYN+ACK", &syn_ack, w.net.backend_if, &expected);
        assert_eq!(
            flags(&w, &reply_key),
            FLOW_REPLY,
            "{}: reply after SYN+ACK",
            a.vip
        );
    }
}

/// TCP RST flag bit.
const TCP_RST: u8 = 0x04;

/// FIN and RST set `FLOW_FIN`/`FLOW_RST` on the entry of the direction
/// they went (and only there); a client SYN (no ACK) clears the forward
/// entry's bits, a backend SYN+ACK the reply entry's (a reused port).
#[test]
fn tcp_fin_rst_bits_and_syn_clears() {
    tcp_lifecycle_on(Hook::Xdp);
}

/// `tcp_fin_rst_bits_and_syn_clears` through `lb_tc`.
#[test]
fn tc_tcp_fin_rst_bits_and_syn_clears() {
    tcp_lifecycle_on(Hook::Tc);
}

fn last_seen_on(hook: Hook) {
    let Some(mut w) = world_on("last_seen_refresh_and_reply_recreated", hook) else {
        return;
    };
    w.configure();
    for (a, proto) in [(V4, PROTO_UDP), (V6, PROTO_TCP)] {
        w.fx.clear_flows();
        w.service(&a, proto, SERVICE_REMOTE);
        let input = client_frame(&a, proto);
        let snat = a.node_backend_side;
        let before = coarse_now_ns();
        let port = w.expect_new_flow(&format!("{}: new", a.vip), &input, 0, snat);
        let after = coarse_now_ns();
        let key = input.flow_key();
        let snat_addr = SocketAddr::new(snat, port);
        let reply_key = flow_key(backend_at(&a, 0), snat_addr, proto);
        for (what, k) in [("forward", &key), ("reply", &reply_key)] {
            let seen = w.entry(what, k).last_seen;
            assert!(
                (before..=after).contains(&seen),
                "{}: {what} last_seen {seen} not within {before}..={after}",
                a.vip
            );
        }
        let expected = rewritten(
            &input,
            snat_addr,
            backend_at(&a, 0),
            BACKEND_IF_MAC,
            BACKEND_MACS[0],
        );

        // Seen half a second ago: not rewritten (FLOW_TOUCH_NS is 1 s).
        let recent = coarse_now_ns() - 500_000_000;
        let entry = w.entry("forward", &key);
        w.fx.set_flow(
            &key,
            FlowValue {
                last_seen: recent,
                ..entry
            },
        );
        w.expect_redirect("recent", &input, w.net.client_if, &expected);
        assert_eq!(
            w.entry("forward", &key).last_seen,
            recent,
            "{}: recent entry untouched",
            a.vip
        );

        // Seen 2 s ago, and its reply entry evicted: last_seen refreshed
        // and the reply entry re-created as it was.
        let reply = w.fx.flow_rewrite(&reply_key);
        w.fx.remove_flow(&reply_key);
        let old = coarse_now_ns() - 2_000_000_000;
        w.fx.set_flow(
            &key,
            FlowValue {
                last_seen: old,
                ..entry
            },
        );
        let before = coarse_now_ns();
        w.expect_redirect("stale", &input, w.net.client_if, &expected);
        let seen = w.entry("forward", &key).last_seen;
        assert!(
            seen >= before,
            "{}: last_seen {seen} refreshed (>= {before})",
            a.vip
        );
        assert_eq!(
            w.fx.flow_rewrite(&reply_key),
            reply,
            "{}: reply entry re-created",
            a.vip
        );
        assert!(
            w.entry("reply", &reply_key).last_seen >= before,
            "{}: re-created reply seen now",
            a.vip
        );

        // The backend's reply goes through again.
        let back =
            packet(proto, backend_at(&a, 0), snat_addr).macs(BACKEND_MACS[0], BACKEND_IF_MAC);
        let expected = rewritten(&back, vip(&a), client(&a), CLIENT_IF_MAC, CLIENT_MAC);
        w.expect_redirect(
            "reply after re-creation",
            &back,
            w.net.backend_if,
            &expected,
        );
        assert_eq!(w.fx.flow_count(), 2, "{}: two entries", a.vip);
    }
}

/// `last_seen` is the coarse monotonic time of the entry's last packet,
/// rewritten only when older than `FLOW_TOUCH_NS`; a forward packet that
/// refreshes it also re-creates a reply entry the LRU evicted.
#[test]
fn last_seen_refresh_and_reply_recreated() {
    last_seen_on(Hook::Xdp);
}

/// `last_seen_refresh_and_reply_recreated` through `lb_tc`.
#[test]
fn tc_last_seen_refresh_and_reply_recreated() {
    last_seen_on(Hook::Tc);
}

fn evicted_forward_on(hook: Hook) {
    let Some(mut w) = world_on("evicted_forward_entry_reuses_its_snat_port", hook) else {
        return;
    };
    w.configure();
    for (a, proto) in [(V4, PROTO_TCP), (V6, PROTO_UDP)] {
        w.fx.clear_flows();
        w.service(&a, proto, SERVICE_REMOTE);
        let input = client_frame(&a, proto);
        let snat = a.node_backend_side;
        let port = w.expect_new_flow(&format!("{}: new", a.vip), &input, 0, snat);
        let snat_addr = SocketAddr::new(snat, port);
        let flows = w.fx.service_counters(SERVICE_ID).xdp_flows;
        w.fx.remove_flow(&input.flow_key());
        let expected = rewritten(
            &input,
            snat_addr,
            backend_at(&a, 0),
            BACKEND_IF_MAC,
            BACKEND_MACS[0],
        );
        w.expect_redirect("forward entry evicted", &input, w.net.client_if, &expected);
        assert_eq!(
            w.fx.flow_rewrite(&input.flow_key()),
            Some(flow_value(snat_addr, backend_at(&a, 0), 1, SERVICE_ID, 0)),
            "{}: forward entry back on the same SNAT port",
            a.vip
        );
        assert_eq!(w.fx.flow_count(), 2, "{}: two entries", a.vip);
        assert_eq!(
            w.fx.service_counters(SERVICE_ID).xdp_flows,
            flows + 1,
            "{}: a new flow",
            a.vip
        );
    }
}

/// A new flow whose forward entry the LRU evicted while its reply entry
/// stayed takes the same SNAT port again (the reply entry translates for
/// this very client), instead of claiming a second port.
#[test]
fn evicted_forward_entry_reuses_its_snat_port() {
    evicted_forward_on(Hook::Xdp);
}

/// `evicted_forward_entry_reuses_its_snat_port` through `lb_tc`.
#[test]
fn tc_evicted_forward_entry_reuses_its_snat_port() {
    evicted_forward_on(Hook::Tc);
}

fn orphans_on(hook: Hook) {
    let Some(mut w) = world_on("orphan_replies_dropped_only_with_the_flag", hook) else {
        return;
    };
    for a in [V4, V6] {
        w.configure();
        w.service(&a, PROTO_TCP, SERVICE_REMOTE);
        let to = |addr: IpAddr, port: u16| {
            Packet::tcp(backend_at(&a, 0), SocketAddr::new(addr, port))
                .macs(BACKEND_MACS[0], BACKEND_IF_MAC)
                .bytes()
        };
        let snat = a.node_backend_side;
        let in_range = to(snat, PORT_MIN + 7);
        let ingress = w.net.backend_if;
        let untouched = |w: &World, what: &str, frame: &[u8], verdict: u32, counter: u32| {
            let (run, moved) = w.run(frame, Some(ingress));
            assert_eq!(
                verdict_name(run.verdict),
                verdict_name(verdict),
                "{}: {what}: verdict",
                a.vip
            );
            assert_frame_eq(what, &run.frame, frame);
            assert_eq!(
                moved,
                vec![(NAMES[counter as usize], 1)],
                "{}: {what}: xdp_stats",
                a.vip
            );
        };
        untouched(
            &w,
            "no flag",
            &in_range,
            XDP_PASS,
            xdp_counter::PASS_NOT_VIP,
        );
        w.reconfigure(XDP_DROP_ORPHANS, 0);
        untouched(
            &w,
            "orphan",
            &in_range,
            XDP_DROP,
            xdp_counter::DROP_ORPHAN_REPLY,
        );
        untouched(
            &w,
            "port below the range",
            &to(snat, PORT_MIN - 1),
            XDP_PASS,
            xdp_counter::PASS_NOT_VIP,
        );
        untouched(
            &w,
            "port above the range",
            &to(snat, PORT_MAX + 1),
            XDP_PASS,
            xdp_counter::PASS_NOT_VIP,
        );
        untouched(
            &w,
            "another address",
            &to(a.node_backend_side2, PORT_MIN),
            XDP_PASS,
            xdp_counter::PASS_NOT_VIP,
        );

        // Without a configured SNAT address, the ingress interface's.
        let mut config = w.fx.xdp_config.get(&0, 0).expect("read xdp_config");
        config.flags &= !(XDP_SNAT_V4 | XDP_SNAT_V6);
        w.fx.configure(config);
        let (v4, _) = ip_to_bytes(V4.node_backend_side2);
        let (v6, _) = ip_to_bytes(V6.node_backend_side2);
        w.fx.set_if_addrs(
            ingress,
            IfAddrs {
                v4,
                v6,
                flags: IF_HAS_V4 | IF_HAS_V6,
                pad: 0,
            },
        );
        untouched(
            &w,
            "orphan to if_addrs",
            &to(a.node_backend_side2, PORT_MAX),
            XDP_DROP,
            xdp_counter::DROP_ORPHAN_REPLY,
        );
        untouched(
            &w,
            "configured address no longer SNAT",
            &in_range,
            XDP_PASS,
            xdp_counter::PASS_NOT_VIP,
        );
        assert_eq!(w.fx.flow_count(), 0, "{}: nothing stored", a.vip);
        w.fx.if_addrs.remove(&ingress).expect("remove if_addrs");
    }
}

/// With `XDP_DROP_ORPHANS`, a packet without flow entry to the SNAT
/// address (configured, else the ingress interface's `if_addrs`) and a
/// port of the SNAT range is dropped (`drop_orphan_reply`); without the
/// flag, or to another port or address, it is passed (`pass_not_vip`).
#[test]
fn orphan_replies_dropped_only_with_the_flag() {
    orphans_on(Hook::Xdp);
}

/// `orphan_replies_dropped_only_with_the_flag` through `lb_tc`.
#[test]
fn tc_orphan_replies_dropped_only_with_the_flag() {
    orphans_on(Hook::Tc);
}

fn hop_cache_on(hook: Hook) {
    let Some(mut w) = world_on("cached_next_hop_until_the_generation_changes", hook) else {
        return;
    };
    for a in [V4, V6] {
        w.reconfigure(0, 41);
        w.fx.clear_flows();
        w.service(&a, PROTO_TCP, SERVICE_REMOTE);
        let input = client_frame(&a, PROTO_TCP);
        let snat = a.node_backend_side;
        let port = w.expect_new_flow(&format!("{}: new", a.vip), &input, 0, snat);
        let snat_addr = SocketAddr::new(snat, port);
        let key = input.flow_key();
        let entry = w.entry("forward", &key);
        assert_eq!(
            (
                entry.hop_ifindex,
                entry.hop_gen,
                entry.hop_dmac,
                entry.hop_smac
            ),
            (w.net.backend_if, 41, BACKEND_MACS[0], BACKEND_IF_MAC),
            "{}: next hop cached with the flow",
            a.vip
        );

        // The neighbour changes its MAC: the cache still sends to the old one.
        let moved_mac = [0x02, 0, 0, 0, 0xee, 0x01];
        let family = if a.client.is_ipv4() { "-4" } else { "-6" };
        lb_tests::sh(
            "ip",
            &[
                family,
                "neigh",
                "replace",
                &a.backends[0].to_string(),
                "lladdr",
                &mac_string(moved_mac),
                "nud",
                "permanent",
                "dev",
                BACKEND_IF,
            ],
        );
        let old = rewritten(
            &input,
            snat_addr,
            backend_at(&a, 0),
            BACKEND_IF_MAC,
            BACKEND_MACS[0],
        );
        w.expect_redirect("cached", &input, w.net.client_if, &old);

        // A new generation: the FIB again, and the new MAC cached.
        w.reconfigure(0, 42);
        let new = rewritten(
            &input,
            snat_addr,
            backend_at(&a, 0),
            BACKEND_IF_MAC,
            moved_mac,
        );
        w.expect_redirect("new generation", &input, w.net.client_if, &new);
        let entry = w.entry("forward", &key);
        assert_eq!(
            (entry.hop_gen, entry.hop_dmac),
            (42, moved_mac),
            "{}: cache refreshed",
            a.vip
        );
        lb_tests::sh(
            "ip",
            &[
                family,
                "neigh",
                "replace",
                &a.backends[0].to_string(),
                "lladdr",
                &mac_string(BACKEND_MACS[0]),
                "nud",
                "permanent",
                "dev",
                BACKEND_IF,
            ],
        );
    }
}

/// An established packet uses the next hop cached in its entry while the
/// entry's `hop_gen` equals `xdp_config.hop_gen` (no FIB: a changed
/// neighbour MAC is not seen), and asks the FIB and caches the answer
/// again once the controller bumps the generation.
#[test]
fn cached_next_hop_until_the_generation_changes() {
    hop_cache_on(Hook::Xdp);
}

/// `cached_next_hop_until_the_generation_changes` through `lb_tc`.
#[test]
fn tc_cached_next_hop_until_the_generation_changes() {
    hop_cache_on(Hook::Tc);
}

fn slot_reuse_on(hook: Hook) {
    let Some(mut w) = world_on("slot_reused_for_another_server_moves_the_flow", hook) else {
        return;
    };
    w.configure();
    for (a, proto) in [(V4, PROTO_TCP), (V6, PROTO_UDP)] {
        w.fx.clear_flows();
        w.service(&a, proto, SERVICE_REMOTE);
        let input = client_frame(&a, proto);
        let snat = a.node_backend_side;
        let port = w.expect_new_flow(&format!("{}: new", a.vip), &input, 0, snat);
        let old_reply = flow_key(backend_at(&a, 0), SocketAddr::new(snat, port), proto);
        // Slot 1 now holds another server of the same service, up.
        w.fx.set_backend(1, backend(backend_at(&a, 2), SERVICE_ID, 0));
        let key = input.flow_key();
        let new_port = w.predict_snat_port(&key, snat, backend_at(&a, 2));
        let snat_addr = SocketAddr::new(snat, new_port);
        let expected = rewritten(
            &input,
            snat_addr,
            backend_at(&a, 2),
            BACKEND_IF_MAC,
            BACKEND_MACS[2],
        );
        w.expect_redirect("slot reused", &input, w.net.client_if, &expected);
        assert_eq!(
            w.fx.flow_rewrite(&key),
            Some(flow_value(snat_addr, backend_at(&a, 2), 1, SERVICE_ID, 0)),
            "{}: the flow moved to the slot's new server",
            a.vip
        );
        assert_eq!(
            w.fx.flow_rewrite(&old_reply),
            None,
            "{}: old reply entry removed",
            a.vip
        );
        assert_eq!(w.fx.flow_count(), 2, "{}: two entries", a.vip);
    }
}

/// A backend slot reused for another server of the same service (another
/// address, not down) does not inherit the old server's flows: the flow
/// is rebuilt towards the slot's new server on its next packet.
#[test]
fn slot_reused_for_another_server_moves_the_flow() {
    slot_reuse_on(Hook::Xdp);
}

/// `slot_reused_for_another_server_moves_the_flow` through `lb_tc`.
#[test]
fn tc_slot_reused_for_another_server_moves_the_flow() {
    slot_reuse_on(Hook::Tc);
}

/// tc: the FIB knows the route but not the neighbour: the rewritten
/// packet (MACs untouched) leaves with `bpf_redirect_neigh`, counted
/// `redirect_neigh`, and no next hop is cached (XDP passes it instead, see
/// `no_neighbour_passes`).
#[test]
fn tc_no_neighbour_redirects_neigh() {
    let Some(mut w) = world_on("tc_no_neighbour_redirects_neigh", Hook::Tc) else {
        return;
    };
    w.configure();
    for a in [V4, V6] {
        w.fx.clear_flows();
        w.service(&a, PROTO_TCP, SERVICE_REMOTE);
        let server = SocketAddr::new(a.no_neigh, BACKEND_PORT);
        w.fx.set_backend(1, backend(server, SERVICE_ID, 0));
        let input = client_frame(&a, PROTO_TCP);
        let key = input.flow_key();
        let port = w.predict_snat_port(&key, a.node_backend_side, server);
        let snat_addr = SocketAddr::new(a.node_backend_side, port);
        let expected = rewritten(&input, snat_addr, server, input.eth_src, input.eth_dst);
        let (run, counted) = w.run(&input.bytes(), Some(w.net.client_if));
        assert_eq!(
            verdict_name(run.verdict),
            "XDP_REDIRECT",
            "{}: verdict",
            a.vip
        );
        assert_frame_eq("no neighbour", &run.frame, &expected.bytes());
        assert_eq!(counted, vec![("redirect_neigh", 1)], "{}: xdp_stats", a.vip);
        assert_eq!(
            w.entry("forward", &key).hop_ifindex,
            0,
            "{}: nothing cached",
            a.vip
        );
    }
}
