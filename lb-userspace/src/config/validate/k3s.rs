//! The `k3s` block (K3s's data directory, program name, balancer port,
//! family, the balancers followed) and its checks against `services`: a
//! followed balancer's VIP or name must not be a configured service's too.

use std::path::PathBuf;

use serde_saphyr::Spanned;

use super::{Checker, ServiceDraft};
use crate::config::{K3sBalancer, K3sSettings, Protocol, raw::RawK3s};

impl Checker {
    /// Checks the `k3s` block and fills in its defaults.
    pub(super) fn k3s(&mut self, raw: &Spanned<RawK3s>) -> Option<K3sSettings> {
        let block = &raw.value;
        let data_dir = match &block.data_dir {
            None => Some(PathBuf::from(K3sSettings::DEFAULT_DATA_DIR)),
            Some(dir) => self.absolute_path(dir, "k3s.data_dir"),
        };
        let program = match &block.program {
            None => data_dir.as_ref().map(|dir| {
                // RKE2 keeps its data in /var/lib/rancher/rke2.
                if dir.file_name().is_some_and(|name| name == "rke2") {
                    "rke2".to_owned()
                } else {
                    "k3s".to_owned()
                }
            }),
            Some(program) => match program.value.trim() {
                word @ ("k3s" | "rke2") => Some(word.to_owned()),
                other => {
                    self.report(
                        program.referenced,
                        "k3s.program",
                        format!("unknown program {other:?}; expected k3s or rke2"),
                    );
                    None
                }
            },
        };
        let lb_server_port = match &block.lb_server_port {
            None => Some(K3sSettings::DEFAULT_LB_SERVER_PORT),
            Some(port) => self
                .whole_number(port, "k3s.lb_server_port", u64::from(u16::MAX), |text| {
                    format!("invalid port {text:?}; expected a port from 2 to 65535")
                })
                .and_then(|port| u16::try_from(port).ok())
                .filter(|port| {
                    let ok = *port >= 2;
                    if !ok {
                        self.report(
                            block.lb_server_port.as_ref().map_or(raw.referenced, |p| p.referenced),
                            "k3s.lb_server_port",
                            format!("{port} is out of range; expected a port from 2 to 65535 (the api-server balancer listens one below)"),
                        );
                    }
                    ok
                }),
        };
        let ipv6 = match &block.ipv6 {
            None => Some(false),
            Some(flag) => self.boolean(flag, "k3s.ipv6"),
        };
        let balancers = match &block.balancers {
            None => Some(vec![
                K3sBalancer::Supervisor,
                K3sBalancer::ApiServer,
                K3sBalancer::Etcd,
            ]),
            Some(list) => self.k3s_balancers(list),
        };
        let reread_interval = match &block.reread_interval {
            None => Some(K3sSettings::DEFAULT_REREAD_INTERVAL),
            Some(interval) => self.duration_in_range(
                interval,
                "k3s.reread_interval",
                K3sSettings::MIN_REREAD_INTERVAL,
                K3sSettings::MAX_REREAD_INTERVAL,
            ),
        };
        Some(K3sSettings {
            data_dir: data_dir?,
            program: program?,
            lb_server_port: lb_server_port?,
            ipv6: ipv6?,
            balancers: balancers?,
            reread_interval: reread_interval?,
        })
    }

    /// `k3s.balancers`: at least one, each once.
    fn k3s_balancers(&mut self, list: &Spanned<Vec<Spanned<String>>>) -> Option<Vec<K3sBalancer>> {
        if list.value.is_empty() {
            self.report(
                list.referenced,
                "k3s.balancers",
                "no balancers; list at least one of supervisor, api-server or etcd, or remove the k3s block".to_owned(),
            );
            return None;
        }
        let mut balancers: Vec<K3sBalancer> = Vec::with_capacity(list.value.len());
        let mut ok = true;
        for (index, word) in list.value.iter().enumerate() {
            let path = format!("k3s.balancers[{index}]");
            let Some(balancer) = self.parse::<K3sBalancer>(word, &path) else {
                ok = false;
                continue;
            };
            if let Some(first) = balancers.iter().position(|b| *b == balancer) {
                self.report(
                    word.referenced,
                    &path,
                    format!("duplicate balancer {balancer}, already k3s.balancers[{first}]"),
                );
                ok = false;
                continue;
            }
            balancers.push(balancer);
        }
        ok.then_some(balancers)
    }

    /// A followed balancer's VIP or name must not be a configured service's.
    pub(super) fn check_k3s_against_services(
        &mut self,
        k3s: &K3sSettings,
        drafts: &[ServiceDraft],
    ) {
        for spec in k3s.specs() {
            for draft in drafts {
                if let Some(((vip, Protocol::Tcp), at)) = draft.vip_key()
                    && vip == spec.vip
                {
                    self.report(
                        at,
                        &format!("{}.vip", draft.path),
                        format!(
                            "{vip} is also the VIP of K3s's {} balancer, which the k3s block follows as service {:?}; remove one of them",
                            spec.balancer, spec.name
                        ),
                    );
                }
                if let Some(name) = &draft.name
                    && name.value == spec.name
                {
                    self.report(
                        name.referenced,
                        &format!("{}.name", draft.path),
                        format!(
                            "{:?} is the name of the service the k3s block creates for K3s's {} balancer; pick another name",
                            spec.name, spec.balancer
                        ),
                    );
                }
            }
        }
    }
}
