"""Device profiles and fleets: spec values, overrides, largest-remainder assignment, clear errors."""

from collections import Counter

import pytest

from fedmoe.fl.devices import (
    DEVICES,
    FLEETS,
    DeviceProfile,
    Fleet,
    GiB,
    get_device,
    get_fleet,
)


def test_required_profiles_exist_with_spec_sheet_numbers():
    assert get_device("rtx-3060-12gb").memory_bytes == 12 * GiB
    assert get_device("rtx-3090-24gb").memory_bytes == 24 * GiB
    assert get_device("l20-48gb").memory_bytes == 48 * GiB
    assert get_device("l20-48gb").bf16_flops == pytest.approx(119.5e12)
    assert get_device("rtx-3090-24gb").bf16_flops == pytest.approx(71e12)
    assert get_device("a100-80gb").bf16_flops == pytest.approx(312e12)
    # RTX 3060: 28 SMs x 1.777 GHz x 512 FLOP/clk/SM.
    assert get_device("rtx-3060-12gb").bf16_flops == pytest.approx(28 * 1.777e9 * 512, rel=1e-3)
    # PCIe 4.0 x16 links at 31.5 GB/s (16 GT/s x 16 lanes, 128b/130b); copies reach ~25 GB/s of it.
    assert get_device("rtx-3060-12gb").host_device_bandwidth == pytest.approx(25e9)
    # Home broadband 20 Mbit/s up, 100 Mbit/s down.
    assert get_device("rtx-3060-12gb").net_up == pytest.approx(2.5e6)
    assert get_device("rtx-3060-12gb").net_down == pytest.approx(12.5e6)
    edge = get_device("jetson-orin-nx-16gb")
    assert edge.memory_bytes == edge.host_memory_bytes == 16 * GiB and edge.unified_memory  # unified memory
    assert edge.bf16_flops < get_device("rtx-3060-12gb").bf16_flops
    for profile in DEVICES.values():
        assert profile.description and 0 < profile.mfu <= 1


def test_effective_flops_and_override():
    d = get_device("rtx-3090-24gb")
    assert d.effective_flops == pytest.approx(71e12 * 0.4)
    faster = d.replace(net_up=1e9, mfu=0.5)
    assert faster.net_up == 1e9 and faster.effective_flops == pytest.approx(71e12 * 0.5)
    assert d.net_up == pytest.approx(2.5e6)  # original unchanged


def test_get_device_unknown_lists_names():
    with pytest.raises(KeyError, match="rtx-3060-12gb"):
        get_device("gtx-1080")


def test_invalid_profile_rejected():
    with pytest.raises(ValueError, match="mfu"):
        get_device("l20-48gb").replace(mfu=1.5)
    with pytest.raises(ValueError, match="net_up"):
        DeviceProfile("x", 1, 1.0, 1.0, 0.0, 1.0, 0)


def test_counts_largest_remainder():
    fleet = get_fleet("consumer")  # 0.3 / 0.5 / 0.2
    assert fleet.counts(10) == [3, 5, 2]
    # 7 clients: quotas 2.1, 3.5, 1.4 -> floors 2, 3, 1 (6); the one left goes to the largest remainder (0.5).
    assert fleet.counts(7) == [2, 4, 1]
    # 3 clients: quotas 0.9, 1.5, 0.6 -> floors 0, 1, 0; remainders .9, .5, .6 -> +1 to first and third.
    assert fleet.counts(3) == [1, 1, 1]
    assert fleet.counts(0) == [0, 0, 0]
    # Thirds: ties broken by mix order.
    assert get_fleet("uniform").counts(4) == [2, 1, 1]
    assert get_fleet("uniform").counts(3) == [1, 1, 1]
    heavy = get_fleet("heavy-tail")  # 0.6 / 0.3 / 0.1
    assert heavy.counts(20) == [12, 6, 2]
    for fleet in FLEETS.values():
        for n in range(0, 40):
            assert sum(fleet.counts(n)) == n


def test_assign_deterministic_shuffled_with_right_counts():
    fleet = get_fleet("consumer")
    a = fleet.assign(20, seed=0)
    assert a == fleet.assign(20, seed=0)
    assert Counter(p.name for p in a) == {"rtx-3060-12gb": 6, "rtx-3090-24gb": 10, "jetson-orin-nx-16gb": 4}
    orders = {tuple(p.name for p in fleet.assign(20, seed=s)) for s in range(5)}
    assert len(orders) > 1  # the seed changes the order
    sorted_order = tuple(p.name for (p, _), n in zip(fleet.mix, fleet.counts(20), strict=True) for _ in range(n))
    assert tuple(p.name for p in a) != sorted_order


def test_fleet_validation_and_lookup():
    with pytest.raises(ValueError, match="sum to 1"):
        Fleet.of("bad", {"rtx-3060-12gb": 0.5, "rtx-3090-24gb": 0.6})
    with pytest.raises(ValueError, match=">= 0"):
        Fleet.of("bad", {"rtx-3060-12gb": 1.5, "rtx-3090-24gb": -0.5})
    with pytest.raises(ValueError, match="no devices"):
        Fleet("empty", ())
    assert get_fleet("datacenter").assign(3, seed=1) == [get_device("l20-48gb")] * 3
    assert get_fleet("a100-80gb").counts(5) == [5]  # a device name gives a homogeneous fleet
    with pytest.raises(KeyError, match="heavy-tail"):
        get_fleet("cloud")


def test_replace_all_overrides_every_profile():
    fleet = get_fleet("consumer").replace_all(net_up=1e8)
    assert all(p.net_up == 1e8 for p, _ in fleet.mix)
    assert [f for _, f in fleet.mix] == [0.3, 0.5, 0.2]
