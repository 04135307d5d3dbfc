#!/usr/bin/env bash
# Dumps daas-lb's pinned maps and where its lb_* programs are attached.
#
# Usage: sudo scripts/inspect-maps.sh [BPFFS_DIR]   (default /sys/fs/bpf/daas-lb)
#
# Hash maps (services, rev_nat, if_addrs, xdp_config) and kernel_log (the
# kernel programs' log level, one entry) are dumped whole, maglev, flows and xdp_stats
# are summarised, dials and conns counted; for the arrays (backends, the
# per-CPU stats, backend_dial, failover, backend_conns) only non-zero slots
# are shown (per-CPU values summed), which needs python3; without it every
# slot is dumped.
set -euo pipefail

dir=${1:-/sys/fs/bpf/daas-lb}
die() { echo "error: $*" >&2; exit 1; }
[[ -d $dir ]] || die "$dir does not exist (is daas-lb running, pinning there? see --bpffs-dir)"
command -v bpftool >/dev/null || die "bpftool not found (cargo xtask setup installs it)"

# Reads `bpftool -j map dump` output; prints the slots whose value is not all zero.
nonzero_slots='
import json, sys
entries = json.load(sys.stdin)
def raw(e): return [e["value"]] if "value" in e else [v["value"] for v in e["values"]]
def shown(e):
    f = e.get("formatted", e)
    if "value" in f: return f["value"]
    per_cpu = [v["value"] for v in f["values"]]
    if not all(isinstance(v, dict) for v in per_cpu): return per_cpu
    return {k: sum(v[k] for v in per_cpu) for k in per_cpu[0]}
kept = [e for e in entries if any(int(b, 16) for v in raw(e) for b in v)]
for e in kept: print("[%s] %s" % (e.get("formatted", e)["key"], json.dumps(shown(e))))
print(f"({len(kept)} of {len(entries)} slots non-zero)")
'

# Reads the maglev map: slots per service and backend (the whole table would
# be tens of thousands of lines).
maglev_summary='
import json, sys, collections
entries = json.load(sys.stdin)
owned = collections.Counter()
for e in entries:
    f = e.get("formatted", e)
    owned[(f["key"]["service_id"], f["value"])] += 1
for (service, backend), n in sorted(owned.items()):
    print(f"service {service}: backend {backend} owns {n} slots")
print(f"({len(entries)} slots in use)")
'

# Reads the flows map: how many flows (two entries each) per service.
flows_summary='
import json, sys, collections
entries = json.load(sys.stdin)
forward = collections.Counter()
replies = 0
for e in entries:
    v = e.get("formatted", e)["value"]
    if v["flags"] & 1: replies += 1
    else: forward[v["service_id"]] += 1
for service, n in sorted(forward.items()):
    print(f"service {service}: {n} client->VIP entries")
print(f"({len(entries)} entries: {sum(forward.values())} client->VIP, {replies} reply)")
'

# Reads xdp_stats: per-CPU packet counts summed, by verdict name.
xdp_stats_summary='
import json, sys
names = ["redirect", "tx", "pass_not_ip", "pass_truncated", "pass_ip_options",
         "pass_fragment", "pass_ipv6_ext", "pass_not_tcp_udp", "pass_not_vip", "pass_ttl",
         "pass_no_neigh", "pass_frag_needed", "pass_fib_other", "pass_no_snat_addr",
         "pass_udp6_zero_csum", "drop_no_backend", "drop_snat_ports", "drop_flow_table",
         "drop_unreachable", "redirect_neigh", "drop_orphan_reply", "drop_rewrite",
         "redirect_peer"]
for e in json.load(sys.stdin):
    f = e.get("formatted", e)
    total = sum(v["value"] for v in f["values"])
    if total:
        key = f["key"]
        print(f"{names[key] if key < len(names) else key}: {total}")
'

# Reads flow_stats: flow entries created and removed, per-CPU counts summed
# (what they do not explain of the entries in flows was evicted).
flow_stats_summary='
import json, sys
names = ["created", "removed by the kernel", "removed by the collector",
         "removed by the controller"]
def num(x):  # formatted (BTF) or raw little-endian hex bytes
    return x if isinstance(x, int) else int.from_bytes(bytes(int(b, 16) for b in x), "little")
for e in json.load(sys.stdin):
    f = e.get("formatted", e)
    key = num(f["key"])
    total = sum(num(v["value"]) for v in f["values"])
    print(f"{names[key] if key < len(names) else key}: {total}")
'

# Reads a hash map keyed by socket cookie (dials, conns): only how many
# entries it holds (it may hold tens of thousands).
count_entries='
import json, sys
print(f"({len(json.load(sys.stdin))} entries)")
'

for map in services backends backend_stats service_stats rev_nat maglev xdp_config if_addrs xdp_stats flows \
           flow_stats dials backend_dial failover conns backend_conns kernel_log; do
  echo "== $map ($dir/$map)"
  if [[ ! -e $dir/$map ]]; then
    echo "(not pinned)"
  elif [[ $map == maglev ]] && command -v python3 >/dev/null; then
    bpftool -j map dump pinned "$dir/$map" | python3 -c "$maglev_summary"
  elif [[ $map == flows ]] && command -v python3 >/dev/null; then
    bpftool -j map dump pinned "$dir/$map" | python3 -c "$flows_summary"
  elif [[ $map == dials || $map == conns ]] && command -v python3 >/dev/null; then
    bpftool -j map dump pinned "$dir/$map" | python3 -c "$count_entries"
  elif [[ $map == xdp_stats ]] && command -v python3 >/dev/null; then
    bpftool -j map dump pinned "$dir/$map" | python3 -c "$xdp_stats_summary"
  elif [[ $map == flow_stats ]] && command -v python3 >/dev/null; then
    bpftool -j map dump pinned "$dir/$map" | python3 -c "$flow_stats_summary"
  elif [[ $map == services || $map == rev_nat || $map == maglev || $map == flows || $map == xdp_config || $map == if_addrs || $map == kernel_log ]] || ! command -v python3 >/dev/null; then
    bpftool map dump pinned "$dir/$map"
  else
    bpftool -j map dump pinned "$dir/$map" | python3 -c "$nonzero_slots"
  fi
done

echo "== cgroup attachments of lb_* programs"
# Keeps each cgroup path line that has lb_* programs under it.
bpftool cgroup tree | awk 'NR <= 2 { print; next } /^\// { path = $0; next }
  $NF ~ /^lb_/ { if (path != "") { print path; path = "" } print }'

echo "== XDP attachments (this network namespace)"
# The xdp section of `bpftool net show`: "<interface>(<ifindex>) driver|generic id <prog id>".
bpftool net show | awk '/^xdp:/ { on = 1; next } /^$/ || /^[a-z_]+:$/ { on = 0 } on'

echo "== links of lb_* programs"
lb_prog_ids=" $(bpftool prog show | awk '$3 == "name" && $4 ~ /^lb_/ { sub(":", "", $1); printf "%s ", $1 }')"
# `bpftool link show` prints "<id>: <type>  prog <prog id>" then indented detail lines.
bpftool link show | awk -v ids="$lb_prog_ids" '/^[0-9]+:/ { keep = ($3 == "prog" && index(ids, " " $4 " ")) } keep'
