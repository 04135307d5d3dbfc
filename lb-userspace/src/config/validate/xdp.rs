//! The `xdp` block: interfaces (each a name or `{ name, hook, mode }`),
//! the default hook and attach mode, SNAT addresses and ports, flow
//! timeouts and the flow collector's interval.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use serde_saphyr::{Location, Spanned};

use super::{Checker, MAX_INTERFACE_NAME_LEN, ServiceDraft};
use crate::config::{
    FlowTimeouts, PortRange, XdpAttachMode, XdpHook, XdpInterface, XdpSettings,
    raw::{RawFlowTimeouts, RawInterface, RawXdp},
};

impl Checker {
    /// The `xdp` block.
    pub(super) fn xdp(&mut self, raw: &Spanned<RawXdp>) -> Option<XdpSettings> {
        let xdp = &raw.value;
        let hook = match &xdp.hook {
            None => Some(XdpHook::Auto),
            Some(raw) => self.parse(raw, "xdp.hook"),
        };
        let mode = match &xdp.mode {
            None => Some(XdpAttachMode::Auto),
            Some(raw) => self.parse(raw, "xdp.mode"),
        };
        if let (Some(XdpHook::Tc), Some(raw_mode), Some(m)) = (hook, &xdp.mode, mode)
            && m != XdpAttachMode::Auto
        {
            self.report(raw_mode.referenced, "xdp.mode", tc_has_no_mode(m));
        }
        let interfaces = self
            .required(
                xdp.interfaces.as_ref(),
                raw.referenced,
                "xdp",
                "interfaces",
                ": the interfaces remote clients' packets arrive on, e.g. [eth0]",
            )
            .and_then(|list| {
                self.interfaces(
                    list,
                    hook.unwrap_or(XdpHook::Auto),
                    mode.unwrap_or(XdpAttachMode::Auto),
                )
            });
        let snat_ipv4 = match &xdp.snat_ipv4 {
            None => Some(None),
            Some(raw) => match self.snat_address(raw, "xdp.snat_ipv4", true)? {
                IpAddr::V4(v4) => Some(Some(v4)),
                IpAddr::V6(_) => None,
            },
        };
        let snat_ipv6 = match &xdp.snat_ipv6 {
            None => Some(None),
            Some(raw) => match self.snat_address(raw, "xdp.snat_ipv6", false)? {
                IpAddr::V6(v6) => Some(Some(v6)),
                IpAddr::V4(_) => None,
            },
        };
        let snat_ports = match &xdp.snat_ports {
            None => Some(PortRange::DEFAULT_SNAT),
            Some(raw) => self.port_range(raw, "xdp.snat_ports"),
        };
        let flow_timeouts = match &xdp.flow_timeouts {
            None => Some(FlowTimeouts::DEFAULT),
            Some(raw) => self.flow_timeouts(&raw.value),
        };
        let flow_gc_interval = match &xdp.flow_gc_interval {
            None => Some(FlowTimeouts::DEFAULT_GC_INTERVAL),
            Some(raw) => self.duration_in_range(
                raw,
                "xdp.flow_gc_interval",
                FlowTimeouts::MIN,
                FlowTimeouts::MAX,
            ),
        };
        Some(XdpSettings {
            interfaces: interfaces?,
            hook: hook?,
            mode: mode?,
            snat_ipv4: snat_ipv4?,
            snat_ipv6: snat_ipv6?,
            snat_ports: snat_ports?,
            flow_timeouts: flow_timeouts?,
            flow_gc_interval: flow_gc_interval?,
        })
    }

    /// `xdp.flow_timeouts`: each one optional (default
    /// [`FlowTimeouts::DEFAULT`]), from [`FlowTimeouts::MIN`] to
    /// [`FlowTimeouts::MAX`]; every bad one is reported.
    fn flow_timeouts(&mut self, raw: &RawFlowTimeouts) -> Option<FlowTimeouts> {
        let mut one = |field: &Option<Spanned<String>>, name: &str, default: Duration| match field {
            None => Some(default),
            Some(raw) => self.duration_in_range(
                raw,
                &format!("xdp.flow_timeouts.{name}"),
                FlowTimeouts::MIN,
                FlowTimeouts::MAX,
            ),
        };
        let defaults = FlowTimeouts::DEFAULT;
        let tcp = one(&raw.tcp, "tcp", defaults.tcp);
        let tcp_closing = one(&raw.tcp_closing, "tcp_closing", defaults.tcp_closing);
        let tcp_unreplied = one(&raw.tcp_unreplied, "tcp_unreplied", defaults.tcp_unreplied);
        let udp = one(&raw.udp, "udp", defaults.udp);
        Some(FlowTimeouts {
            tcp: tcp?,
            tcp_closing: tcp_closing?,
            tcp_unreplied: tcp_unreplied?,
            udp: udp?,
        })
    }

    /// `xdp.interfaces`: a non-empty list of distinct, well-formed names,
    /// each written alone (the block's `hook` and `mode`) or as
    /// `{ name, hook, mode }`.
    pub(super) fn interfaces(
        &mut self,
        list: &Spanned<Vec<Spanned<RawInterface>>>,
        block_hook: XdpHook,
        block_mode: XdpAttachMode,
    ) -> Option<Vec<XdpInterface>> {
        let path = "xdp.interfaces";
        if list.value.is_empty() {
            self.report(
                list.referenced,
                path,
                "must not be empty; list the interfaces remote clients' packets arrive on, e.g. [eth0]"
                    .to_owned(),
            );
            return None;
        }
        let mut seen: Vec<(String, u64)> = Vec::with_capacity(list.value.len());
        let mut entries = Vec::with_capacity(list.value.len());
        let mut valid = true;
        for (index, raw) in list.value.iter().enumerate() {
            let entry_path = format!("{path}[{index}]");
            let Some((name, at, name_path, entry)) =
                self.interface_entry(raw, &entry_path, block_hook, block_mode)
            else {
                valid = false;
                continue;
            };
            if let Some(problem) = interface_name_problem(&name) {
                self.report(at, &name_path, problem);
                valid = false;
            } else if let Some(first) = seen.iter().position(|(other, _)| *other == name) {
                self.report(
                    at,
                    &name_path,
                    format!(
                        "duplicate interface {name}, already listed as {path}[{first}] (line {})",
                        seen[first].1
                    ),
                );
                valid = false;
            }
            seen.push((name, at.line()));
            entries.push(entry);
        }
        valid.then_some(entries)
    }

    /// One entry of `xdp.interfaces`: its trimmed name, where the name is
    /// written and its path, and the entry with the defaults applied.
    fn interface_entry(
        &mut self,
        raw: &Spanned<RawInterface>,
        entry_path: &str,
        block_hook: XdpHook,
        block_mode: XdpAttachMode,
    ) -> Option<(String, Location, String, XdpInterface)> {
        let defaults = |name: &str| XdpInterface {
            name: name.to_owned(),
            hook: block_hook,
            mode: if block_hook == XdpHook::Tc {
                XdpAttachMode::Auto
            } else {
                block_mode
            },
        };
        match &raw.value {
            RawInterface::Name(name) => {
                let name = name.trim();
                Some((
                    name.to_owned(),
                    raw.referenced,
                    entry_path.to_owned(),
                    defaults(name),
                ))
            }
            RawInterface::Map(map) => {
                let name = self.required(
                    map.name.as_ref(),
                    raw.referenced,
                    entry_path,
                    "name",
                    ": the interface's name, e.g. { name: eth0, hook: tc }",
                );
                let hook = match &map.hook {
                    None => Some(block_hook),
                    Some(raw) => self.parse(raw, &format!("{entry_path}.hook")),
                };
                let mode = match (&map.mode, hook) {
                    (None, Some(XdpHook::Tc)) => Some(XdpAttachMode::Auto),
                    (None, _) => Some(block_mode),
                    (Some(raw), hook) => {
                        let mode_path = format!("{entry_path}.mode");
                        let mode: Option<XdpAttachMode> = self.parse(raw, &mode_path);
                        if let (Some(XdpHook::Tc), Some(m)) = (hook, mode)
                            && m != XdpAttachMode::Auto
                        {
                            self.report(raw.referenced, &mode_path, tc_has_no_mode(m));
                            None
                        } else {
                            mode
                        }
                    }
                };
                let name = name?;
                let trimmed = name.value.trim().to_owned();
                Some((
                    trimmed.clone(),
                    name.referenced,
                    format!("{entry_path}.name"),
                    XdpInterface {
                        name: trimmed,
                        hook: hook?,
                        mode: mode?,
                    },
                ))
            }
        }
    }

    /// `xdp.snat_ipv4` (`v4`) or `xdp.snat_ipv6`: a unicast address literal
    /// of that family.
    pub(super) fn snat_address(
        &mut self,
        raw: &Spanned<String>,
        path: &str,
        v4: bool,
    ) -> Option<IpAddr> {
        let text = raw.value.trim();
        let (family, other, example) = if v4 {
            ("IPv4", "snat_ipv6", "192.0.2.10")
        } else {
            ("IPv6", "snat_ipv4", "2001:db8::10")
        };
        let problem = match text.parse::<IpAddr>() {
            Err(_) => format!(
                "invalid address {text:?}; expected an {family} address literal such as {example} (no port, host names are not resolved)"
            ),
            Ok(ip) if ip.is_ipv4() != v4 => {
                format!("{ip} is not an {family} address; write it in `{other}`")
            }
            Ok(ip) if ip.is_unspecified() => format!(
                "{ip} is the unspecified address; the SNAT source must be a unicast address of this node"
            ),
            Ok(ip) if ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) => format!(
                "{ip} is a multicast or broadcast address; the SNAT source must be a unicast address of this node"
            ),
            Ok(ip) => return Some(ip),
        };
        self.report(raw.referenced, path, problem);
        None
    }

    /// `first-last`, 1 <= first <= last <= 65535.
    pub(super) fn port_range(&mut self, raw: &Spanned<String>, path: &str) -> Option<PortRange> {
        let text = raw.value.trim();
        let parsed = text.split_once('-').and_then(|(first, last)| {
            Some((
                first.trim().parse::<u64>().ok()?,
                last.trim().parse::<u64>().ok()?,
            ))
        });
        let problem = match parsed {
            None => format!("invalid port range {text:?}; expected first-last, e.g. 61000-65535"),
            Some((first, last)) if first == 0 || last == 0 => {
                format!("{first}-{last}: port 0 is not allowed; expected ports from 1 to 65535")
            }
            Some((first, last)) if first > 65535 || last > 65535 => {
                format!("{first}-{last}: ports go up to 65535")
            }
            Some((first, last)) if first > last => {
                format!("{first}-{last} is empty: the first port is above the last")
            }
            Some((first, last)) => {
                return Some(PortRange {
                    first: first as u16,
                    last: last as u16,
                });
            }
        };
        self.report(raw.referenced, path, problem);
        None
    }

    /// `remote: true` needs the `xdp` block (called when it is absent).
    pub(super) fn check_remote_needs_xdp(&mut self, drafts: &[ServiceDraft]) {
        for draft in drafts {
            if let Some(remote) = &draft.remote
                && remote.value
            {
                self.report(
                    remote.referenced,
                    &format!("{}.remote", draft.path),
                    "`remote: true` needs the top-level `xdp` block (the interfaces remote clients' packets arrive on)"
                        .to_owned(),
                );
            }
        }
    }
}

/// The complaint about `mode: <mode>` next to `hook: tc`.
fn tc_has_no_mode(mode: XdpAttachMode) -> String {
    format!(
        "`mode: {mode}` is an XDP attach mode and `hook: tc` has none; drop `mode`, or use `hook: xdp` (or `auto`) for XDP in mode {mode}"
    )
}

/// Why `name` cannot be a Linux network interface name, if it cannot
/// (the kernel's `dev_valid_name`).
pub(super) fn interface_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("interface name must not be empty".to_owned())
    } else if name.len() > MAX_INTERFACE_NAME_LEN {
        Some(format!(
            "interface name {name:?} is {} bytes long; Linux allows at most {MAX_INTERFACE_NAME_LEN}",
            name.len()
        ))
    } else if name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.contains(char::is_whitespace)
    {
        Some(format!(
            "invalid interface name {name:?}; it may not be . or .. nor contain /, : or spaces"
        ))
    } else {
        None
    }
}
