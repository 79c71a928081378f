#!/usr/bin/env bash
# Smoke test of a running globaldns (or of any DNS server that forwards the zone to it) with dig.
#   scripts/smoke.sh -s SERVER [-p PORT] -H HOST -a ADDRESS [-f NAME] [-n ABSENT] [-z ZONE]
#   -s SERVER   address of the DNS server to ask (globaldns's Service IP, or kube-dns's to test the path
#               pods take)
#   -p PORT     its port (53)
#   -H HOST     a ServiceEntry host it serves, e.g. httpbin.bar.global
#   -a ADDRESS  an address HOST must answer: IPv4 (checked with A) or IPv6 (checked with AAAA)
#   -f NAME     a name outside the zone that must be forwarded and answered; without it that check is skipped
#   -n ABSENT   a name in the zone that must not exist (globaldns-smoke-absent.ZONE)
#   -z ZONE     the zone (the last label of HOST)
# Checks, one line each; the first failure ends the run with exit status 1 (2: bad usage, no dig):
#   the address of HOST; the other address type of HOST (TXT if it has both) is NODATA (NOERROR, no
#   answer, SOA in authority);
#   ABSENT is NXDOMAIN with the SOA; the address again over TCP; NAME forwarded (NOERROR with an answer).
# Needs only bash and dig, so it also runs from standard input in a pod (deploy/README.md, "The smoke test"):
#   kubectl run smoke -i --rm --restart=Never --command \
#     --image=registry.k8s.io/e2e-test-images/jessie-dnsutils:1.3 -- bash -s -- -s 10.96.0.10 -H httpbin.bar.global -a 240.0.0.2 < scripts/smoke.sh
set -u

usage() {
  awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]:-}" >&2 2>/dev/null ||
    echo "usage: smoke.sh -s SERVER [-p PORT] -H HOST -a ADDRESS [-f NAME] [-n ABSENT] [-z ZONE]" >&2
  exit "${1:-2}"
}

ok() { printf 'ok   %s\n' "$*"; }
skip() { printf 'skip %s\n' "$*"; }
fail() {
  printf 'FAIL %s\n' "$*"
  exit 1
}

# ask TYPE NAME [dig options]: one query. Sets status (NOERROR, NXDOMAIN...), answers (the rdata of the
# answer records of TYPE, space-separated), nanswers (all answer records) and soa (1 if the authority
# section has an SOA). Returns 1 with the reason in error when no reply came.
ask() {
  local type=$1 name=$2 output
  shift 2
  # stdin from /dev/null: when this script itself is read from standard input (bash -s), dig must not eat it.
  if ! output=$(dig "@$server" -p "$port" +time=2 +tries=2 +noall +comments +answer +authority \
    "$@" "$name" "$type" </dev/null 2>&1); then
    error="no reply from $server port $port ($(printf '%s\n' "$output" | grep -v '^$' | tail -n 1))"
    return 1
  fi
  status=$(printf '%s\n' "$output" | sed -n 's/^;; ->>HEADER<<-.* status: \([A-Z]*\),.*/\1/p' | head -n 1)
  if [ -z "$status" ]; then
    error="no DNS reply in dig's output: $(printf '%s\n' "$output" | grep -v '^$' | tail -n 1)"
    return 1
  fi
  # Records as "section type rdata"; dig prints "name ttl class type rdata".
  local records
  records=$(printf '%s\n' "$output" | awk '
    /^;; ANSWER SECTION:/ { section = "answer"; next }
    /^;; AUTHORITY SECTION:/ { section = "authority"; next }
    /^;; ADDITIONAL SECTION:/ { section = "additional"; next }
    /^;/ || NF < 5 { next }
    section != "" { print section, $4, $5 }')
  answers=$(printf '%s\n' "$records" | awk -v t="$type" '$1 == "answer" && $2 == t { printf "%s ", $3 }')
  answers=${answers% }
  nanswers=$(printf '%s\n' "$records" | awk '$1 == "answer" { n++ } END { print n + 0 }')
  soa=$(printf '%s\n' "$records" | awk '$1 == "authority" && $2 == "SOA" { found = 1 } END { print found + 0 }')
  return 0
}

# expect_address TYPE NAME ADDRESS LABEL [dig options]
expect_address() {
  local type=$1 name=$2 address=$3 label=$4
  shift 4
  ask "$type" "$name" "$@" || fail "$label $name: $error"
  [ "$status" = NOERROR ] || fail "$label $name: expected NOERROR with $address, got $status"
  case " $answers " in
    *" $address "*) ok "$label $name -> $answers" ;;
    *) fail "$label $name: expected $address, got ${answers:-no answer}" ;;
  esac
}

main() {
  server="" port=53 host="" address="" forwarded="" absent="" zone=""
  local option OPTIND=1
  while getopts "s:p:H:a:f:n:z:h" option; do
    case $option in
      s) server=$OPTARG ;;
      p) port=$OPTARG ;;
      H) host=${OPTARG%.} ;;
      a) address=$OPTARG ;;
      f) forwarded=${OPTARG%.} ;;
      n) absent=${OPTARG%.} ;;
      z) zone=${OPTARG%.} ;;
      h) usage 0 ;;
      *) usage ;;
    esac
  done
  shift $((OPTIND - 1))
  if [ $# -ne 0 ] || [ -z "$server" ] || [ -z "$host" ] || [ -z "$address" ]; then
    usage
  fi
  command -v dig >/dev/null 2>&1 || {
    echo "smoke.sh: dig not found (Debian/Ubuntu: apt-get install bind9-dnsutils)" >&2
    exit 2
  }
  [ -n "$zone" ] || zone=${host##*.}
  [ -n "$absent" ] || absent="globaldns-smoke-absent.$zone"
  local type other
  case $address in
    *:*) type=AAAA other=A ;;
    *) type=A other=AAAA ;;
  esac

  expect_address "$type" "$host" "$address" "$type"

  # NODATA: the other address type, or TXT when HOST has both (dual stack).
  ask "$other" "$host" || fail "$other $host: $error"
  if [ "$status" = NOERROR ] && [ "$nanswers" -gt 0 ]; then
    ok "$other $host -> $answers (dual stack)"
    other=TXT
    ask "$other" "$host" || fail "$other $host: $error"
  fi
  if [ "$status" != NOERROR ] || [ "$nanswers" -ne 0 ] || [ "$soa" -ne 1 ]; then
    fail "$other $host: expected NODATA (NOERROR, no answer, SOA), got $status, $nanswers answers, SOA: $soa"
  fi
  ok "$other $host -> NODATA (NOERROR, no answer, SOA)"

  ask A "$absent" || fail "NXDOMAIN $absent: $error"
  if [ "$status" != NXDOMAIN ] || [ "$soa" -ne 1 ]; then
    fail "NXDOMAIN $absent: expected NXDOMAIN with SOA, got $status (SOA: $soa)"
  fi
  ok "NXDOMAIN $absent (SOA)"

  expect_address "$type" "$host" "$address" "TCP $type" +tcp

  if [ -z "$forwarded" ]; then
    skip "forwarded: no -f NAME given (a name outside $zone that the upstream resolves)"
  else
    ask A "$forwarded" || fail "forwarded A $forwarded: $error"
    if [ "$status" != NOERROR ] || [ "$nanswers" -eq 0 ]; then
      fail "forwarded A $forwarded: expected NOERROR with an answer, got $status, $nanswers answers"
    fi
    ok "forwarded A $forwarded -> ${answers:-(CNAME only)}"
  fi
}

# The whole script is read before anything runs, so a truncated pipe never runs half of it.
main "$@"
