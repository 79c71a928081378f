#!/usr/bin/env bash
# Prints the cluster DNS configuration that forwards the `global` zone to globaldns.
#   scripts/stub-zone.sh [-k|-c|-a] [-z ZONE]... [-n NAMESPACE] [-s SERVICE] [IP]
# IP is the globaldns Service's ClusterIP; without it the script asks the cluster:
#   kubectl -n NAMESPACE get svc SERVICE -o jsonpath='{.spec.clusterIP}'   (defaults: istio-system, globaldns)
# What it prints (all three when no option is given):
#   -k  kube-dns and NodeLocal DNSCache: the kube-system/kube-dns ConfigMap with stubDomains (YAML)
#   -c  CoreDNS: the server block to add to the Corefile (kube-system/coredns, key Corefile)
#   -a  AKS: the kube-system/coredns-custom ConfigMap with the same server block (YAML)
# -z is repeatable (default global): add the reverse zones of the addresses, e.g. -z global -z 240.in-addr.arpa.
# -k and -a print one manifest each, ready for `| kubectl apply -f -`. Exit 2 on bad usage or no IP.
set -euo pipefail

usage() {
  sed -n '2,12s/^# \{0,1\}//p' "$0" >&2
  exit "${1:-2}"
}

zones=() namespace=istio-system service=globaldns what=""
while getopts "kcaz:n:s:h" option; do
  case $option in
    k | c | a) what="$what$option" ;;
    z) zones+=("${OPTARG%.}") ;;
    n) namespace=$OPTARG ;;
    s) service=$OPTARG ;;
    h) usage 0 ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[ $# -le 1 ] || usage
[ -n "$what" ] || what=kca
[ ${#zones[@]} -gt 0 ] || zones=(global)
zone=${zones[0]}

if [ $# -eq 1 ]; then
  ip=$1
else
  if ! command -v kubectl >/dev/null 2>&1; then
    echo "stub-zone.sh: no IP given and no kubectl to look up svc/$service in $namespace" >&2
    exit 2
  fi
  ip=$(kubectl -n "$namespace" get svc "$service" -o jsonpath='{.spec.clusterIP}') || {
    echo "stub-zone.sh: could not read the ClusterIP of svc/$service in namespace $namespace" >&2
    exit 2
  }
fi
case $ip in
  *[!0-9a-fA-F.:]* | "")
    echo "stub-zone.sh: '$ip' is not an IP address (a headless Service has none)" >&2
    exit 2
    ;;
esac
# CoreDNS wants an IPv6 upstream in brackets with the port.
case $ip in
  *:*) forward_to="[$ip]:53" ;;
  *) forward_to=$ip ;;
esac

server_block() {
  printf '%s:53 ' "${zones[@]}"
  printf '{\n    errors\n    cache 30\n    forward . %s\n}\n' "$forward_to"
}

stub_domains() {
  # {"global": ["IP"], "240.in-addr.arpa": ["IP"]}
  local separator="" each
  printf '{'
  for each in "${zones[@]}"; do
    printf '%s"%s": ["%s"]' "$separator" "$each" "$ip"
    separator=", "
  done
  printf '}\n'
}

kube_dns() {
  cat <<EOF
# kube-dns and NodeLocal DNSCache: forward ${zones[*]} to globaldns ($ip). If kube-dns already has
# stubDomains, add these to that JSON instead of replacing it.
apiVersion: v1
kind: ConfigMap
metadata:
  name: kube-dns
  namespace: kube-system
data:
  stubDomains: |
    $(stub_domains)
EOF
}

aks() {
  cat <<EOF
# AKS: CoreDNS imports every *.server key of kube-system/coredns-custom as a server block.
apiVersion: v1
kind: ConfigMap
metadata:
  name: coredns-custom
  namespace: kube-system
data:
  $zone.server: |
EOF
  server_block | sed 's/^/    /'
}

first=1
section() {
  # With several outputs, a separator between them (YAML documents stay valid on their own).
  [ "$first" -eq 1 ] || printf -- '---\n'
  first=0
}
case $what in *k*) section && kube_dns ;; esac
case $what in
  *c*)
    section
    echo "# CoreDNS: add this server block to the Corefile (kubectl -n kube-system edit configmap coredns)."
    server_block
    ;;
esac
case $what in *a*) section && aks ;; esac
