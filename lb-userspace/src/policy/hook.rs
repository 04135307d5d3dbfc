//! Which hook (native XDP, generic XDP or tc) the forwarder for remote
//! clients uses on an interface, from what the kernel says about the device
//! ([`DeviceFacts`], gathered by `kernel::devices`) and what the config asks
//! for (`hook`, `mode`).
//!
//! The rule that drives it: a packet sent by a local process through a veth,
//! a bridge, a tun/tap or a `virtio_net` guest with checksum offload carries
//! `CHECKSUM_PARTIAL` (the L4 checksum field holds only the pseudo-header
//! sum). Native XDP sees the raw bytes without that metadata, and its
//! incremental checksum update turns the partial sum into a wrong full one:
//! every such flow breaks. Generic XDP (`mode: skb`) and tc see the skb and
//! handle it. So:
//!
//! - `hook: auto` with `mode: auto` takes native XDP only on a physical NIC
//!   (a bus device that is not `virtio_net`), where packets come from a wire;
//!   if its driver refuses native XDP, the attach falls back to tc. Every
//!   other device (veth, bridge, bond, vlan, macvlan, tun/tap, `virtio_net`,
//!   dummy, loopback, ...) gets tc.
//! - Native XDP asked for explicitly (`hook: xdp` with `mode: auto` or
//!   `driver`, or `mode: driver` alone) is refused where partial checksums
//!   can arrive or cannot be ruled out, with the reason and what to use.
//! - `mode: skb` is generic XDP on any device; `hook: tc` is tc.
//!
//! No I/O here: the decision is a pure function of its inputs, tested as a
//! table below.

use std::fmt;

use crate::config::{XdpAttachMode, XdpHook};

/// What the kernel says about one device, as far as the choice needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFacts {
    /// The interface name.
    pub name: String,
    /// What kind of device it is.
    pub kind: DeviceKind,
}

/// The kinds of device the choice tells apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceKind {
    /// A NIC on a bus (PCI, ...) other than virtio: packets come from a wire.
    Physical {
        /// Its driver (`ethtool -i`).
        driver: String,
    },
    /// A `virtio_net` device (a VM's NIC).
    VirtioNet {
        /// Whether the host may hand it partially checksummed packets
        /// (`VIRTIO_NET_F_GUEST_CSUM`, seen as rx checksumming on);
        /// `None` when it could not be read.
        guest_csum: Option<bool>,
    },
    /// One end of a veth pair.
    Veth {
        /// Transmit checksum offload of the other end, whose sends arrive here.
        peer: PeerCsum,
    },
    /// A Linux bridge.
    Bridge,
    /// A tun or tap device.
    TunTap,
    /// The loopback device.
    Loopback,
    /// Any other virtual device: bond, vlan, macvlan, dummy, ...
    OtherVirtual {
        /// Its `IFLA_INFO_KIND` or driver name.
        kind: String,
    },
}

/// Transmit checksum offload of a veth's peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerCsum {
    /// Off: the peer's kernel completes checksums before sending.
    Off,
    /// On: local senders behind the peer send partial checksums.
    On {
        /// The peer's name, for the `ethtool -K <peer> tx off` hint.
        peer: String,
    },
    /// Could not be read (peer in a namespace not found, ...).
    Unknown {
        /// Why not.
        why: String,
    },
}

impl DeviceKind {
    /// A short name for logs and status (`veth`, `physical NIC (ixgbe)`, ...).
    pub fn label(&self) -> String {
        match self {
            Self::Physical { driver } => format!("physical NIC ({driver})"),
            Self::VirtioNet { .. } => "virtio_net".to_owned(),
            Self::Veth { .. } => "veth".to_owned(),
            Self::Bridge => "bridge".to_owned(),
            Self::TunTap => "tun/tap".to_owned(),
            Self::Loopback => "loopback".to_owned(),
            Self::OtherVirtual { kind } => kind.clone(),
        }
    }

    /// Why partial checksums can arrive on this device (or cannot be ruled
    /// out), if they can; `None` when native XDP is safe here.
    fn partial_checksums(&self) -> Option<String> {
        match self {
            Self::Physical { .. }
            | Self::Veth {
                peer: PeerCsum::Off,
            }
            | Self::VirtioNet {
                guest_csum: Some(false),
            } => None,
            Self::Veth {
                peer: PeerCsum::On { peer },
            } => Some(format!(
                "it is a veth whose peer {peer} has transmit checksum offload on"
            )),
            Self::Veth {
                peer: PeerCsum::Unknown { why },
            } => Some(format!(
                "it is a veth whose peer's transmit checksum offload cannot be checked ({why})"
            )),
            Self::VirtioNet { guest_csum } => Some(match guest_csum {
                Some(_) => "it is a virtio_net device with guest checksum offload on".to_owned(),
                None => "it is a virtio_net device whose guest checksum offload cannot be read"
                    .to_owned(),
            }),
            Self::Bridge => {
                Some("it is a bridge, which forwards its local ports' packets as sent".to_owned())
            }
            Self::TunTap => {
                Some("it is a tun/tap device, whose writer may send partial checksums".to_owned())
            }
            Self::Loopback => Some("it is the loopback device".to_owned()),
            Self::OtherVirtual { kind } => Some(format!(
                "it is a virtual device ({kind}) whose packets may come from local senders"
            )),
        }
    }

    /// The `ethtool` fix for the refusal, where there is one.
    fn ethtool_hint(&self) -> Option<String> {
        match self {
            Self::Veth {
                peer: PeerCsum::On { peer },
            } => Some(format!(
                "`ethtool -K {peer} tx off` in the peer's network namespace"
            )),
            Self::Veth {
                peer: PeerCsum::Unknown { .. },
            } => Some("`ethtool -K <peer> tx off` on the veth's peer".to_owned()),
            _ => None,
        }
    }
}

/// How the forwarder gets attached to one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// `lb_tc` on tc ingress.
    Tc,
    /// `lb_xdp` in native (driver) mode; `on_refusal` says what to do when
    /// the driver refuses it.
    XdpDriver {
        /// What a refusal by the driver leads to.
        on_refusal: OnRefusal,
    },
    /// `lb_xdp` in generic (skb) mode.
    XdpSkb,
}

/// What a native XDP attach the driver refuses leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRefusal {
    /// Start fails (`mode: driver`).
    Fail,
    /// tc, with a warning (`hook: auto`, `mode: auto`).
    Tc,
    /// Generic XDP, with a warning (`hook: xdp`, `mode: auto`).
    Skb,
}

/// A plan and why it was chosen (`auto: veth -> tc`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What to attach.
    pub plan: Plan,
    /// Why, for logs, status and metrics.
    pub why: String,
}

/// Why native XDP was refused on a device, and what to use instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The hook for `device` given the `hook` and `mode` asked for, or the
/// refusal of an unsafe native XDP request.
///
/// # Errors
///
/// [`Refusal`] when native XDP is asked for explicitly on a device where
/// partial checksums can arrive (or cannot be ruled out).
pub fn decide(
    device: &DeviceFacts,
    hook: XdpHook,
    mode: XdpAttachMode,
) -> Result<Decision, Refusal> {
    let label = device.kind.label();
    let decision = |plan, why: String| Ok(Decision { plan, why });
    match (hook, mode) {
        (XdpHook::Tc, _) => decision(Plan::Tc, "hook: tc".to_owned()),
        (_, XdpAttachMode::Skb) => decision(Plan::XdpSkb, "mode: skb -> generic XDP".to_owned()),
        (XdpHook::Auto, XdpAttachMode::Auto) => match device.kind {
            DeviceKind::Physical { .. } => decision(
                Plan::XdpDriver {
                    on_refusal: OnRefusal::Tc,
                },
                format!("auto: {label} -> native XDP"),
            ),
            _ => decision(Plan::Tc, format!("auto: {label} -> tc")),
        },
        (XdpHook::Auto | XdpHook::Xdp, XdpAttachMode::Driver)
        | (XdpHook::Xdp, XdpAttachMode::Auto) => {
            if let Some(reason) = device.kind.partial_checksums() {
                return Err(refusal(device, hook, mode, &reason));
            }
            let (on_refusal, why) = if mode == XdpAttachMode::Driver {
                (OnRefusal::Fail, format!("mode: driver on {label}"))
            } else {
                (OnRefusal::Skb, format!("hook: xdp on {label}"))
            };
            decision(Plan::XdpDriver { on_refusal }, why)
        }
    }
}

fn refusal(device: &DeviceFacts, hook: XdpHook, mode: XdpAttachMode, reason: &str) -> Refusal {
    let asked = match (hook, mode) {
        (XdpHook::Xdp, _) => format!("`hook: xdp, mode: {mode}`"),
        _ => format!("`mode: {mode}`"),
    };
    let ethtool = device
        .kind
        .ethtool_hint()
        .map(|hint| format!(", or {hint}"))
        .unwrap_or_default();
    Refusal(format!(
        "interface {name}: {asked} asks for native XDP, which is refused because {reason}: packets \
         from local senders arrive with CHECKSUM_PARTIAL, native XDP cannot see that, and its \
         incremental checksum update turns them into wrong checksums (every such flow breaks); \
         use `hook: tc` (or `hook: auto`), or `mode: skb`{ethtool}",
        name = device.name,
    ))
}

/// The decision after the driver refused the native XDP attach of
/// `decision` (`errno` names the error), or `None` when the start must
/// fail (`mode: driver`, or a plan that is not native XDP).
pub fn after_refusal(decision: &Decision, errno: &str) -> Option<Decision> {
    let Plan::XdpDriver { on_refusal } = decision.plan else {
        return None;
    };
    let (plan, to) = match on_refusal {
        OnRefusal::Fail => return None,
        OnRefusal::Tc => (Plan::Tc, "tc"),
        OnRefusal::Skb => (Plan::XdpSkb, "generic XDP"),
    };
    Some(Decision {
        plan,
        why: format!("{}; the driver refused it ({errno}) -> {to}", decision.why),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(kind: DeviceKind) -> DeviceFacts {
        DeviceFacts {
            name: "if0".to_owned(),
            kind,
        }
    }

    fn kinds() -> Vec<(&'static str, DeviceKind)> {
        vec![
            (
                "physical",
                DeviceKind::Physical {
                    driver: "ixgbe".to_owned(),
                },
            ),
            (
                "virtio csum on",
                DeviceKind::VirtioNet {
                    guest_csum: Some(true),
                },
            ),
            (
                "virtio csum off",
                DeviceKind::VirtioNet {
                    guest_csum: Some(false),
                },
            ),
            ("virtio csum ?", DeviceKind::VirtioNet { guest_csum: None }),
            (
                "veth peer off",
                DeviceKind::Veth {
                    peer: PeerCsum::Off,
                },
            ),
            (
                "veth peer on",
                DeviceKind::Veth {
                    peer: PeerCsum::On {
                        peer: "eth0".to_owned(),
                    },
                },
            ),
            (
                "veth peer ?",
                DeviceKind::Veth {
                    peer: PeerCsum::Unknown {
                        why: "peer namespace not found".to_owned(),
                    },
                },
            ),
            ("bridge", DeviceKind::Bridge),
            ("tun", DeviceKind::TunTap),
            ("lo", DeviceKind::Loopback),
            (
                "bond",
                DeviceKind::OtherVirtual {
                    kind: "bond".to_owned(),
                },
            ),
        ]
    }

    /// Short form of an outcome: `tc`, `skb`, `driver/fail`, `driver/tc`,
    /// `driver/skb` or `refused`.
    fn outcome(result: &Result<Decision, Refusal>) -> &'static str {
        match result {
            Err(_) => "refused",
            Ok(Decision { plan: Plan::Tc, .. }) => "tc",
            Ok(Decision {
                plan: Plan::XdpSkb, ..
            }) => "skb",
            Ok(Decision {
                plan: Plan::XdpDriver { on_refusal },
                ..
            }) => match on_refusal {
                OnRefusal::Fail => "driver/fail",
                OnRefusal::Tc => "driver/tc",
                OnRefusal::Skb => "driver/skb",
            },
        }
    }

    /// Every device kind against every (hook, mode) the config allows.
    #[test]
    fn decision_table() {
        use XdpAttachMode::{Auto as MA, Driver as MD, Skb as MS};
        use XdpHook::{Auto as HA, Tc as HT, Xdp as HX};
        let asks = [
            (HA, MA),
            (HA, MD),
            (HA, MS),
            (HX, MA),
            (HX, MD),
            (HX, MS),
            (HT, MA),
        ];
        // Columns in the order of `asks`.
        let table: [(&str, [&str; 7]); 11] = [
            (
                "physical",
                [
                    "driver/tc",
                    "driver/fail",
                    "skb",
                    "driver/skb",
                    "driver/fail",
                    "skb",
                    "tc",
                ],
            ),
            (
                "virtio csum on",
                ["tc", "refused", "skb", "refused", "refused", "skb", "tc"],
            ),
            (
                "virtio csum off",
                [
                    "tc",
                    "driver/fail",
                    "skb",
                    "driver/skb",
                    "driver/fail",
                    "skb",
                    "tc",
                ],
            ),
            (
                "virtio csum ?",
                ["tc", "refused", "skb", "refused", "refused", "skb", "tc"],
            ),
            (
                "veth peer off",
                [
                    "tc",
                    "driver/fail",
                    "skb",
                    "driver/skb",
                    "driver/fail",
                    "skb",
                    "tc",
                ],
            ),
            (
                "veth peer on",
                ["tc", "refused", "skb", "refused", "refused", "skb", "tc"],
            ),
            (
                "veth peer ?",
                ["tc", "refused", "skb", "refused", "refused", "skb", "tc"],
            ),
            (
                "bridge",
                ["tc", "refused", "skb", "refused", "refused", "skb", "tc"],
            ),
            (
                "tun",
                ["tc", "refused", "skb", "refused", "refused", "skb", "tc"],
            ),
            (
                "lo",
                ["tc", "refused", "skb", "refused", "refused", "skb", "tc"],
            ),
            (
                "bond",
                ["tc", "refused", "skb", "refused", "refused", "skb", "tc"],
            ),
        ];
        let kinds = kinds();
        assert_eq!(kinds.len(), table.len());
        for ((name, kind), (row, expected)) in kinds.into_iter().zip(table) {
            assert_eq!(name, row);
            let device = device(kind);
            for ((hook, mode), want) in asks.into_iter().zip(expected) {
                let got = decide(&device, hook, mode);
                assert_eq!(
                    outcome(&got),
                    want,
                    "{name} with hook {hook}, mode {mode}: {got:?}"
                );
            }
        }
    }

    #[test]
    fn reasons_name_the_device_kind() {
        let veth = device(DeviceKind::Veth {
            peer: PeerCsum::Off,
        });
        assert_eq!(
            decide(&veth, XdpHook::Auto, XdpAttachMode::Auto)
                .unwrap()
                .why,
            "auto: veth -> tc"
        );
        let nic = device(DeviceKind::Physical {
            driver: "mlx5_core".to_owned(),
        });
        assert_eq!(
            decide(&nic, XdpHook::Auto, XdpAttachMode::Auto)
                .unwrap()
                .why,
            "auto: physical NIC (mlx5_core) -> native XDP"
        );
        assert_eq!(
            decide(&nic, XdpHook::Tc, XdpAttachMode::Auto).unwrap().why,
            "hook: tc"
        );
        assert_eq!(
            decide(&veth, XdpHook::Xdp, XdpAttachMode::Skb).unwrap().why,
            "mode: skb -> generic XDP"
        );
    }

    #[test]
    fn refusals_say_why_and_what_to_use() {
        let veth = device(DeviceKind::Veth {
            peer: PeerCsum::On {
                peer: "eth0".to_owned(),
            },
        });
        let text = decide(&veth, XdpHook::Xdp, XdpAttachMode::Driver)
            .unwrap_err()
            .to_string();
        for part in [
            "interface if0: `hook: xdp, mode: driver` asks for native XDP",
            "it is a veth whose peer eth0 has transmit checksum offload on",
            "CHECKSUM_PARTIAL",
            "use `hook: tc` (or `hook: auto`), or `mode: skb`, or `ethtool -K eth0 tx off` in the peer's network namespace",
        ] {
            assert!(text.contains(part), "{part:?} missing from: {text}");
        }
        let bridge = device(DeviceKind::Bridge);
        let text = decide(&bridge, XdpHook::Auto, XdpAttachMode::Driver)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("interface if0: `mode: driver` asks"),
            "{text}"
        );
        assert!(text.contains("it is a bridge"), "{text}");
        assert!(text.ends_with("or `mode: skb`"), "{text}");
        let unknown = device(DeviceKind::Veth {
            peer: PeerCsum::Unknown {
                why: "peer namespace not found".to_owned(),
            },
        });
        let text = decide(&unknown, XdpHook::Xdp, XdpAttachMode::Auto)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("cannot be checked (peer namespace not found)"),
            "{text}"
        );
    }

    #[test]
    fn refused_native_attaches_fall_back_only_when_chosen_automatically() {
        let nic = device(DeviceKind::Physical {
            driver: "e1000".to_owned(),
        });
        let auto = decide(&nic, XdpHook::Auto, XdpAttachMode::Auto).unwrap();
        let fallback = after_refusal(&auto, "EOPNOTSUPP").unwrap();
        assert_eq!(fallback.plan, Plan::Tc);
        assert_eq!(
            fallback.why,
            "auto: physical NIC (e1000) -> native XDP; the driver refused it (EOPNOTSUPP) -> tc"
        );
        let xdp_auto = decide(&nic, XdpHook::Xdp, XdpAttachMode::Auto).unwrap();
        assert_eq!(
            after_refusal(&xdp_auto, "ERANGE").unwrap().plan,
            Plan::XdpSkb
        );
        let driver = decide(&nic, XdpHook::Xdp, XdpAttachMode::Driver).unwrap();
        assert_eq!(after_refusal(&driver, "EOPNOTSUPP"), None);
        let skb = decide(&nic, XdpHook::Auto, XdpAttachMode::Skb).unwrap();
        assert_eq!(after_refusal(&skb, "EOPNOTSUPP"), None);
        let tc = decide(&nic, XdpHook::Tc, XdpAttachMode::Auto).unwrap();
        assert_eq!(after_refusal(&tc, "EOPNOTSUPP"), None);
    }
}
