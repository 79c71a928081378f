"""allocate: every auto host gets an address no other served host has, decided by the data alone (not by the order
it arrived in), and a change moves only hosts whose preferred address was contested."""

from __future__ import annotations

import hashlib
import math
import random
from ipaddress import ip_address, ip_network

import pytest

from globaldns.allocate import Pool

AUTO_V4 = ip_network("240.240.0.0/16")
AUTO_V6 = ip_network("2001:2::/48")
SMALL = ip_network("10.0.0.0/28")  # 14 addresses
OLD, NEW = (False, 1.0), (False, 2.0)


def digest(data: bytes) -> int:
    return int.from_bytes(hashlib.sha256(data).digest(), "big")


def probe(network, host: str, index: int):
    """Index `index` of the host's probe sequence, written out from the design: double hashing over the pool."""
    size = network.num_addresses - 2
    step = 1 + digest(b"probe:" + host.encode()) % (size - 1)
    while math.gcd(step, size) != 1:
        step += 1
    return network.network_address + 1 + (digest(host.encode()) + index * step) % size


def colliding(network) -> tuple[str, str]:
    """The first two generated names sharing one preferred address."""
    pool, seen = Pool(network), {}
    for i in range(1000):
        host = f"h{i}.global"
        if pool.preferred(host) in seen:
            return seen[pool.preferred(host)], host
        seen[pool.preferred(host)] = host
    raise AssertionError("no collision found")


def settled(network, hosts: dict[str, tuple], reserved=()) -> Pool:
    pool = Pool(network)
    for address in reserved:
        pool.reserve(address)
    for host, priority in hosts.items():
        pool.want(host, priority)
    pool.settle()
    return pool


def snapshot(pool: Pool, hosts) -> dict[str, object]:
    return {host: pool.address(host) for host in hosts}


def test_preferred_is_the_old_formula_so_upgrading_moves_no_uncontested_host():
    v4, v6 = Pool(AUTO_V4), Pool(AUTO_V6)
    for host in ("a.global", "reviews.default.global", "x" * 60 + ".ns.global"):
        number = digest(host.encode())
        assert v4.preferred(host) == AUTO_V4.network_address + 1 + number % (AUTO_V4.num_addresses - 2)
        assert v6.preferred(host) == AUTO_V6.network_address + 1 + number % (AUTO_V6.num_addresses - 2)
        v4.want(host, OLD)
        assert v4.settle() == {host: v4.preferred(host)}


def test_the_older_of_two_contenders_keeps_the_address_and_the_other_takes_its_probe():
    a, b = colliding(SMALL)
    pool = settled(SMALL, {a: OLD, b: NEW})
    assert pool.address(a) == pool.preferred(a) == probe(SMALL, a, 0) == pool.preferred(b)
    assert pool.address(b) == probe(SMALL, b, 1)
    assert (pool.contested(), pool.exhausted()) == (1, 0)

    pool.want(a, NEW)
    pool.want(b, OLD)  # swapped priorities swap the addresses
    assert pool.settle() == {a: probe(SMALL, a, 1), b: pool.preferred(b)}
    assert pool.address(b) == pool.preferred(b)

    pool.drop(a)  # its probed address is free again
    assert pool.settle() == {}
    assert pool.contested() == 0


def test_hosts_probe_in_priority_order():
    """Two hosts whose preferred addresses are reserved and whose first probes meet: the older one gets it."""
    starts = {f"h{i}.global": (probe(SMALL, f"h{i}.global", 0), probe(SMALL, f"h{i}.global", 1)) for i in range(100)}
    b, c = next(
        (b, c) for b in starts for c in starts if starts[b][1] == starts[c][1] and len({*starts[b], starts[c][0]}) == 3
    )
    reserved = [probe(SMALL, b, 0), probe(SMALL, c, 0)]
    meeting = probe(SMALL, b, 1)

    def second(host):
        return next(probe(SMALL, host, i) for i in range(2, 20) if probe(SMALL, host, i) not in [*reserved, meeting])

    pool = settled(SMALL, {b: OLD, c: NEW}, reserved)
    assert (pool.address(b), pool.address(c)) == (meeting, second(c))
    pool.want(b, NEW)
    pool.want(c, OLD)
    assert pool.settle() == {b: second(b), c: meeting}


def test_a_tie_in_priority_goes_to_the_first_name():
    hosts = colliding(SMALL)
    for order in (hosts, hosts[::-1]):
        pool = settled(SMALL, dict.fromkeys(order, OLD))
        first, second = sorted(hosts)
        assert pool.address(first) == pool.preferred(first)
        assert pool.address(second) == probe(SMALL, second, 1)


def test_a_reserved_address_is_never_given_and_its_release_returns_it_to_the_best_contender():
    a, b = colliding(SMALL)
    preferred = Pool(SMALL).preferred(a)
    pool = settled(SMALL, {a: OLD, b: NEW}, reserved=[preferred, preferred])
    assert preferred not in (pool.address(a), pool.address(b))
    assert pool.address(a) == probe(SMALL, a, 1)
    assert pool.contested() == 2

    pool.release(preferred)  # reserved twice: still reserved
    assert pool.settle() == {}
    pool.release(preferred)
    assert pool.settle() == {a: preferred}
    assert pool.address(b) == probe(SMALL, b, 1)
    with pytest.raises(KeyError):
        pool.release(preferred)


def test_a_probe_skips_reserved_and_held_addresses_and_returns_when_they_are_freed():
    a, b = colliding(SMALL)
    pool = settled(SMALL, {a: OLD, b: NEW}, reserved=[probe(SMALL, b, 1)])
    assert pool.address(b) == probe(SMALL, b, 2)
    pool.release(probe(SMALL, b, 1))
    assert pool.settle() == {b: probe(SMALL, b, 1)}

    c = next(f"c{i}.global" for i in range(1000) if pool.preferred(f"c{i}.global") == probe(SMALL, b, 1))
    pool.want(c, NEW)  # newer than b, yet phase 1 comes first: b's probed address was never its own
    assert pool.settle() == {c: probe(SMALL, b, 1), b: probe(SMALL, b, 2)}
    pool.drop(c)
    assert pool.settle() == {b: probe(SMALL, b, 1)}


def test_addresses_outside_the_pool_never_collide():
    pool = settled(SMALL, {"a.global": OLD}, reserved=[ip_address("10.0.1.1"), ip_address("::1")])
    assert pool.address("a.global") == pool.preferred("a.global")
    pool.release(ip_address("10.0.1.1"))  # ignored, like the reserve
    assert pool.settle() == {}


def test_every_probe_sequence_visits_every_address_of_the_pool():
    size = SMALL.num_addresses - 2  # 14 = 2 * 7: a step sharing a factor would cycle early
    everything = [SMALL.network_address + 1 + offset for offset in range(size)]
    for host in (f"h{i}.global" for i in range(20)):
        pool = settled(SMALL, {host: OLD}, reserved=everything)
        assert pool.address(host) is None
        for free in everything:
            pool.release(free)
            pool.settle()
            assert pool.address(host) == free
            pool.reserve(free)


def test_an_exhausted_pool_gives_none_to_the_last_host_until_one_leaves():
    network = ip_network("10.0.0.0/29")  # 6 addresses
    rng = random.Random(7)
    hosts = {f"h{i}.global": (False, rng.random()) for i in range(7)}
    pool = settled(network, hosts)
    addresses = snapshot(pool, hosts)
    given = [address for address in addresses.values() if address is not None]
    assert len(given) == len(set(given)) == 6
    assert (pool.exhausted(), pool.contested()) == (1, sum(a != pool.preferred(h) for h, a in addresses.items()) - 1)
    unlucky = next(host for host, address in addresses.items() if address is None)
    probed = [host for host, address in addresses.items() if address != pool.preferred(host)]
    assert unlucky == max(probed, key=lambda host: (hosts[host], host))

    preferences = [pool.preferred(host) for host in hosts]
    leaving = next(host for host, a in addresses.items() if a == pool.preferred(host) and preferences.count(a) == 1)
    pool.drop(leaving)
    changes = pool.settle()
    assert pool.address(unlucky) is not None
    assert changes[unlucky] == pool.address(unlucky)
    assert leaving not in changes
    assert pool.exhausted() == 0
    with pytest.raises(KeyError):
        pool.address(leaving)


def test_unknown_hosts_raise_and_wanting_again_alike_is_a_no_op():
    pool = settled(SMALL, {"a.global": OLD})
    with pytest.raises(KeyError):
        pool.drop("b.global")
    pool.want("b.global", OLD)
    with pytest.raises(KeyError):
        pool.address("b.global")  # not settled yet
    pool.settle()
    pool.want("a.global", OLD)
    assert pool.settle() == {}


def test_a_pool_without_room_is_refused():
    with pytest.raises(ValueError):
        Pool(ip_network("10.0.0.0/31"))


def test_an_ipv6_pool_probes_with_a_step_coprime_to_its_huge_size():
    size = AUTO_V6.num_addresses - 2
    hosts = {f"h{i}.global": (False, float(i)) for i in range(200)}
    reserved = [Pool(AUTO_V6).preferred(host) for host in list(hosts)[:50]]
    pool = settled(AUTO_V6, hosts, reserved)
    addresses = snapshot(pool, hosts)
    assert len(set(addresses.values())) == 200
    assert pool.contested() == 50
    for host in list(hosts)[:50]:
        address = addresses[host]
        assert address in AUTO_V6
        assert address == probe(AUTO_V6, host, 1)
        assert math.gcd((int(address) - int(pool.preferred(host))) % size, size) == 1


# Properties, over the real IPv4 pool: thousands of hosts collide by the hundreds (the birthday bound).


def population(seed: int, count: int = 5000) -> tuple[dict[str, tuple], list]:
    """Hosts with random priorities, and reserved addresses: random ones, and some hosts' preferred ones."""
    rng = random.Random(seed)
    hosts = {f"svc{i}-{rng.getrandbits(32):08x}.ns{i % 7}.global": (False, rng.random()) for i in range(count)}
    pool = Pool(AUTO_V4)
    reserved = [AUTO_V4.network_address + 1 + rng.randrange(AUTO_V4.num_addresses - 2) for _ in range(100)]
    reserved += [pool.preferred(host) for host in rng.sample(sorted(hosts), 100)]
    return hosts, reserved


def assert_valid(pool: Pool, hosts, reserved) -> dict[str, object]:
    addresses = snapshot(pool, hosts)
    assert None not in addresses.values()
    assert len(set(addresses.values())) == len(addresses)
    assert not set(addresses.values()) & set(reserved)
    assert pool.contested() == sum(address != pool.preferred(host) for host, address in addresses.items())
    assert pool.exhausted() == 0
    return addresses


def assert_reported(changes, before: dict, after: dict) -> None:
    assert changes == {host: address for host, address in after.items() if before.get(host, "new") != address}


def test_no_two_hosts_share_an_address_and_none_is_reserved():
    hosts, reserved = population(1)
    pool = settled(AUTO_V4, hosts, reserved)
    assert_valid(pool, hosts, reserved)
    assert pool.contested() > 200  # the collisions were real


def test_the_result_depends_on_the_data_not_the_order_it_arrived_in():
    hosts, reserved = population(2)
    expected = snapshot(settled(AUTO_V4, hosts, reserved), hosts)
    for seed in (3, 4):
        rng = random.Random(seed)
        operations = [(Pool.want, host, priority) for host, priority in hosts.items()]
        operations += [(Pool.reserve, address) for address in reserved]
        rng.shuffle(operations)
        pool = Pool(AUTO_V4)
        for operation, *arguments in operations:
            operation(pool, *arguments)
        pool.settle()
        assert snapshot(pool, hosts) == expected


def test_settling_one_by_one_ends_where_settling_all_at_once_does():
    hosts, reserved = population(5)
    pool = Pool(AUTO_V4)
    for address in reserved:
        pool.reserve(address)
    reported: dict[str, object] = {}  # every address as settle() told it
    for count, (host, priority) in enumerate(hosts.items(), 1):
        pool.want(host, priority)
        changes = pool.settle()
        assert host in changes
        assert all(reported.get(other, "new") != address for other, address in changes.items())
        reported |= changes
        if count % 500 == 0:
            assert reported == snapshot(pool, reported)
    assert reported == snapshot(settled(AUTO_V4, hosts, reserved), hosts)


def test_newer_hosts_move_no_host_that_held_its_preferred_address():
    hosts, reserved = population(6)
    pool = settled(AUTO_V4, hosts, reserved)
    before = snapshot(pool, hosts)
    rng = random.Random(6)
    newer = {f"new{i}.ns.global": (False, 2.0 + rng.random()) for i in range(1000)}
    for host, priority in newer.items():
        pool.want(host, priority)
    changes = pool.settle()
    after = assert_valid(pool, hosts | newer, reserved)
    assert_reported(changes, before, after)
    moved = [host for host in hosts if after[host] != before[host]]
    assert all(before[host] != pool.preferred(host) for host in moved)
    assert after == snapshot(settled(AUTO_V4, hosts | newer, reserved), hosts | newer)


def test_removing_hosts_moves_no_host_that_held_its_preferred_address():
    hosts, reserved = population(8)
    pool = settled(AUTO_V4, hosts, reserved)
    before = snapshot(pool, hosts)
    leaving = random.Random(8).sample(sorted(hosts), 1000)
    for host in leaving:
        pool.drop(host)
    changes = pool.settle()
    staying = {host: priority for host, priority in hosts.items() if host not in set(leaving)}
    after = assert_valid(pool, staying, reserved)
    assert_reported(changes, {host: before[host] for host in staying}, after)
    moved = [host for host in staying if after[host] != before[host]]
    assert moved  # some contested hosts got their preferred address back, or probed anew
    assert all(before[host] != pool.preferred(host) for host in moved)
    assert after == snapshot(settled(AUTO_V4, staying, reserved), staying)


def test_random_changes_move_only_contested_hosts_and_match_a_pool_built_from_scratch():
    hosts, reserved = population(9, count=3000)
    pool = settled(AUTO_V4, hosts, reserved)
    rng = random.Random(9)
    for turn in range(10):
        before = snapshot(pool, hosts)
        for i in range(100):  # hosts of any age, also older ones that take a preferred address from its holder
            host = f"turn{turn}-{i}.global"
            hosts[host] = (False, rng.random())
            pool.want(host, hosts[host])
        for host in rng.sample(sorted(hosts), 50):
            if rng.random() < 0.5:
                hosts[host] = (False, rng.random())
                pool.want(host, hosts[host])
            else:
                del hosts[host]
                pool.drop(host)
        for address in rng.sample(reserved, 10):
            reserved.remove(address)
            pool.release(address)
        for host in rng.sample(sorted(hosts), 10):
            reserved.append(pool.preferred(host))
            pool.reserve(reserved[-1])
        changes = pool.settle()
        after = assert_valid(pool, hosts, reserved)
        assert_reported(changes, {host: before[host] for host in hosts if host in before}, after)
        for host in after.keys() & before.keys():
            preferred = pool.preferred(host)
            if before[host] == preferred and after[host] != preferred:  # lost it: to a reservation or an elder
                rivals = [other for other in hosts if pool.preferred(other) == preferred and other != host]
                assert preferred in reserved or any((hosts[r], r) < (hosts[host], host) for r in rivals)
        assert after == snapshot(settled(AUTO_V4, hosts, reserved), hosts)
