"""The model's typed access to readings, and the constants every stage shares."""

from __future__ import annotations

import dataclasses

import pytest

from exporter import catalog
from exporter.model import health, vocabulary, xid
from exporter.model.gpu import Gpu, MigDevice, Sample
from exporter.push import definitions

GPU = Gpu(index=0, uuid="GPU-0", samples=(
    Sample(catalog.MEMORY_USED, 4e9), Sample(catalog.ECC_ERRORS, 1, ("corrected",)),
    Sample(catalog.ECC_ERRORS, 2, ("uncorrected",)), Sample(catalog.CLOCK_EVENT, 1, ("sw_power_cap",)),
    Sample(catalog.CLOCK_EVENT, 0, ("gpu_idle",)), Sample(catalog.NVLINK_LINK_ERRORS, 3, ("0", "replay")),
))


def test_readings_by_metric_and_label_names():
    r = GPU.readings
    assert r.get(catalog.MEMORY_USED) == 4e9
    assert r.get(catalog.POWER) is None  # not read
    assert r.get(catalog.ECC_ERRORS, type="uncorrected") == 2
    assert r.get(catalog.NVLINK_LINK_ERRORS, link="0", type="replay") == 3
    assert r.get(catalog.NVLINK_LINK_ERRORS, link="1", type="replay") is None
    assert r.by(catalog.ECC_ERRORS, "type") == {"corrected": 1, "uncorrected": 2}
    assert r.by(catalog.CLOCK_EVENT, "reason") == {"sw_power_cap": 1, "gpu_idle": 0}
    assert r.by(catalog.PIPE_ACTIVE, "pipe") == {}


@pytest.mark.parametrize("read", [
    lambda r: r.get(catalog.ECC_ERRORS, tpye="uncorrected"),  # a typo
    lambda r: r.get(catalog.ECC_ERRORS),  # a label left out
    lambda r: r.get(catalog.MEMORY_USED, type="x"),  # a label the metric does not have
    lambda r: r.get(catalog.NVLINK_LINK_ERRORS, link="0"),
    lambda r: r.by(catalog.NVLINK_LINK_ERRORS, "link"),  # two labels: not one value per link
    lambda r: r.by(catalog.ECC_ERRORS, "kind"),
])
def test_a_wrong_label_name_raises_instead_of_reading_as_absent(read):
    with pytest.raises(ValueError):
        read(GPU.readings)


def test_readings_follow_the_samples_of_a_changed_copy():
    down = dataclasses.replace(GPU, up=False, samples=(Sample(catalog.MEMORY_USED, 1.0),))
    assert down.readings.get(catalog.MEMORY_USED) == 1.0 and down.readings.get(catalog.ECC_ERRORS, type="corrected") is None
    mig = MigDevice("MIG-0", 1, 0, "1g.10gb", samples=(Sample(catalog.MIG_MEMORY_USED, 5.0),))
    assert mig.readings.get(catalog.MIG_MEMORY_USED) == 5.0
    assert GPU == dataclasses.replace(GPU)  # readings take no part in equality


def test_shared_constants_are_defined_once_and_agree():
    reasons = [name for name, _ in vocabulary.CLOCK_EVENT_REASONS]
    assert set(health.THROTTLE_REASONS) < set(reasons)
    # the rules and the push path read them through push/definitions: the same objects
    for name in ("EVENT_WINDOW_SECONDS", "GPU_LOST_FOR_SECONDS", "TEMPERATURE_MARGIN_CELSIUS", "THROTTLE_REASONS"):
        assert getattr(definitions, name) is getattr(health, name)
    for name in ("XID_TIERS", "XID_ZERO_CODES", "xid_tier", "XID_RESET"):
        assert getattr(definitions, name) is getattr(xid, name)
