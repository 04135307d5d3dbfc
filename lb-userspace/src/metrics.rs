//! Prometheus text exposition (format 0.0.4) of the controller's state.

use std::fmt::Write as _;

use crate::status::{ServerStatus, Status};

/// Escapes a label value (backslash, quote, newline).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric family with a sample per (service, server).
fn per_server(
    out: &mut String,
    status: &Status,
    (name, kind, help): (&str, &str, &str),
    value: impl Fn(&ServerStatus) -> u64,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for service in &status.services {
        for server in &service.servers {
            let _ = writeln!(
                out,
                "{name}{{name=\"{}\",server=\"{}\"}} {}",
                label(&service.name),
                label(&server.address),
                value(server)
            );
        }
    }
}

/// Renders every metric.
pub fn render(status: &Status, selection_changes: &[(String, u64)]) -> String {
    let mut out = String::new();
    per_server(
        &mut out,
        status,
        (
            "k3s_loadbalancer_server_health",
            "gauge",
            "Server state as in the K3s agent load balancer: 0 invalid, 1 failed, 2 standby, 3 unchecked, 4 recovering, 5 healthy, 6 preferred, 7 active.",
        ),
        |server| server.state as u64,
    );
    per_server(
        &mut out,
        status,
        (
            "daas_lb_backend_connects_total",
            "counter",
            "connect() calls the kernel redirected from the VIP to this server.",
        ),
        |server| server.connects,
    );
    per_server(
        &mut out,
        status,
        (
            "daas_lb_backend_sendmsgs_total",
            "counter",
            "Unconnected UDP datagrams the kernel redirected from the VIP to this server.",
        ),
        |server| server.sendmsgs,
    );

    let _ = writeln!(
        out,
        "# HELP daas_lb_service_refused_total Connects and sends to the VIP refused (ECONNREFUSED) because no server was usable."
    );
    let _ = writeln!(out, "# TYPE daas_lb_service_refused_total counter");
    for service in &status.services {
        let _ = writeln!(
            out,
            "daas_lb_service_refused_total{{name=\"{}\"}} {}",
            label(&service.name),
            service.refused
        );
    }
    let _ = writeln!(
        out,
        "# HELP daas_lb_selection_changes_total Times the selected backend of the service changed."
    );
    let _ = writeln!(out, "# TYPE daas_lb_selection_changes_total counter");
    for (name, changes) in selection_changes {
        let _ = writeln!(
            out,
            "daas_lb_selection_changes_total{{name=\"{}\"}} {changes}",
            label(name)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        selection::ServerState,
        status::{ServerStatus, ServiceStatus},
    };

    #[test]
    fn renders_health_as_k3s_state_numbers_and_counters() {
        let status = Status {
            services: vec![ServiceStatus {
                name: "sup\"er".into(),
                vip: "127.0.0.1:6444".into(),
                protocol: "tcp".into(),
                selected: Some("10.0.0.1:1".into()),
                refused: 4,
                servers: vec![
                    ServerStatus {
                        address: "10.0.0.1:1".into(),
                        state: ServerState::Active,
                        healthy: true,
                        default: false,
                        connects: 9,
                        sendmsgs: 0,
                        last_check: None,
                    },
                    ServerStatus {
                        address: "10.0.0.2:1".into(),
                        state: ServerState::Failed,
                        healthy: false,
                        default: false,
                        connects: 0,
                        sendmsgs: 0,
                        last_check: None,
                    },
                ],
            }],
        };
        let text = render(&status, &[("sup\"er".into(), 2)]);
        assert!(text.contains(
            "k3s_loadbalancer_server_health{name=\"sup\\\"er\",server=\"10.0.0.1:1\"} 7"
        ));
        assert!(text.contains(
            "k3s_loadbalancer_server_health{name=\"sup\\\"er\",server=\"10.0.0.2:1\"} 1"
        ));
        assert!(text.contains(
            "daas_lb_backend_connects_total{name=\"sup\\\"er\",server=\"10.0.0.1:1\"} 9"
        ));
        assert!(text.contains("daas_lb_service_refused_total{name=\"sup\\\"er\"} 4"));
        assert!(text.contains("daas_lb_selection_changes_total{name=\"sup\\\"er\"} 2"));
        assert!(text.contains("# TYPE daas_lb_backend_connects_total counter"));
    }
}
