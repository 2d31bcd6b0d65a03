import pytest

from core.ebs import VolumeSpec, check_volume_limits, device_by_id_path
from core.errors import InvalidInputError


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"size_gib": 0}, "size_gib"),
        ({"size_gib": -5}, "size_gib"),
        ({"size_gib": 16_385}, "size_gib"),
        ({"size_gib": 100, "iops": 2_999}, "iops"),
        ({"size_gib": 100, "iops": 16_001}, "iops"),
        ({"size_gib": 4, "iops": 3_000}, "iops"),  # > 500 IOPS per GiB
        ({"size_gib": 100, "throughput": 124}, "throughput"),
        ({"size_gib": 100, "throughput": 1_001}, "throughput"),
        ({"size_gib": 100, "throughput": 1_000}, "throughput"),  # needs 4,000 IOPS, default is 3,000
        ({"size_gib": 100, "volume_type": "gp2", "iops": 3_000}, "iops"),
        ({"size_gib": 100, "volume_type": "io2"}, "iops"),  # io2 needs IOPS
        ({"size_gib": 100, "volume_type": "st1"}, "size_gib"),  # st1 starts at 125 GiB
        ({"size_gib": 200, "volume_type": "sc1", "throughput": 200}, "throughput"),
    ],
)
def test_out_of_range_values_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        VolumeSpec(name="data", **kwargs)
    assert err.value.field == field
    assert field in str(err.value)


def test_valid_specs_pass() -> None:
    assert VolumeSpec(name="data", size_gib=500).iops is None  # gp3's baseline is AWS's default
    fast = VolumeSpec(name="data", size_gib=500, iops=16_000, throughput=1_000)
    assert (fast.iops, fast.throughput) == (16_000, 1_000)
    assert VolumeSpec(name="data", size_gib=100, volume_type="io2", iops=100_000).volume_type == "io2"
    check_volume_limits("st1", 125, None, None)  # the smallest st1 volume raises nothing


def test_defaults_are_safe() -> None:
    spec = VolumeSpec(name="data", size_gib=10)
    assert spec.volume_type == "gp3"
    assert spec.encrypted is True
    assert spec.persistent is True


def test_unknown_type_lists_the_valid_ones() -> None:
    with pytest.raises(InvalidInputError, match="gp3"):
        check_volume_limits("gp9", 10, None, None)


def test_device_path_is_the_nitro_by_id_name() -> None:
    assert device_by_id_path("vol-0abc") == "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0abc"
