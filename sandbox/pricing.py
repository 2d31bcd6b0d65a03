"""The AWS Price List API (service `pricing`, JSON 1.1) for a documented set of EC2 products.

moto has no Pricing API, so the sandbox answers `GetProducts`, `DescribeServices` and `GetAttributeValues` itself,
in the real wire shape: `PriceList` is a list of JSON *strings*, each one product with its OnDemand terms
(`<sku>.JRTCKXETXF` offer term, `<sku>.JRTCKXETXF.6YS6EN2CT7` price dimension), as AWS publishes them.

Documented price set (USD, us-east-1, Linux, shared tenancy, on-demand; close to AWS list prices in 2024-2025):

    instance        $/hour   vCPU  memory    GPU
    t3.micro        0.0104   2     1 GiB     -
    t3.small        0.0208   2     2 GiB     -
    t3.medium       0.0416   2     4 GiB     -
    t3.large        0.0832   2     8 GiB     -
    m5.large        0.096    2     8 GiB     -
    m5.xlarge       0.192    4     16 GiB    -
    m5.2xlarge      0.384    8     32 GiB    -
    c5.large        0.085    2     4 GiB     -
    c5.xlarge       0.17     4     8 GiB     -
    c5.2xlarge      0.34     8     16 GiB    -
    r5.large        0.126    2     16 GiB    -
    g4dn.xlarge     0.526    4     16 GiB    1 x T4
    g4dn.2xlarge    0.752    8     32 GiB    1 x T4
    g5.xlarge       1.006    4     16 GiB    1 x A10G
    g5.2xlarge      1.212    8     32 GiB    1 x A10G
    g5.4xlarge      1.624    16    64 GiB    1 x A10G
    g5.12xlarge     5.672    48    192 GiB   4 x A10G
    g6.xlarge       0.8048   4     16 GiB    1 x L4
    g6.2xlarge      0.9776   8     32 GiB    1 x L4
    p3.2xlarge      3.06     8     61 GiB    1 x V100
    p3.8xlarge      12.24    32    244 GiB   4 x V100
    p4d.24xlarge    32.7726  96    1152 GiB  8 x A100

    EBS (productFamily "Storage", unit GB-Mo): gp2 0.10, gp3 0.08, io1 0.125, io2 0.125, st1 0.045, sc1 0.015,
    standard 0.05; gp3 IOPS above 3000 0.005 IOPS-Mo, io1/io2 IOPS 0.065 IOPS-Mo ("System Operation");
    gp3 throughput above 125 MiB/s 40.96 GiBps-mo ("Provisioned Throughput": AWS's unit is GiBps-mo while its
    description says $0.040 per MiBps-month, 40.96 / 1024); snapshots 0.05 GB-Mo ("Storage Snapshot").
    S3 (service AmazonS3, productFamily "Storage", volumeType "Standard"): 0.023 / 0.022 / 0.021 GB-Mo in three
    tiers (first 50 TB, next 450 TB, over 500 TB), one product with three price dimensions, as AWS lists it.

These figures are the dated fallback table of core/cost.py (the sandbox imports nothing of ours:
tests/core/test_cost.py checks that the two agree).

Regions: us-east-1, us-east-2, us-west-2 (factor 1.0), eu-west-1 (1.12), eu-central-1 (1.16); the factor scales
every price of the region. Each instance type is listed for Linux and Windows (Windows adds $0.046 per vCPU-hour,
as AWS's licence-included prices do) and, like the real list, with three `capacitystatus` values: `Used` (the
on-demand price), `UnusedCapacityReservation` (same price) and `AllocatedCapacityReservation` (0.00) — so cost
code that forgets the `capacitystatus=Used` filter is caught here as it would be on AWS.

`on_demand_price()` and `ebs_price()` are the one source of truth: the EC2 spot price history derives from them.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Response

from sandbox.protocol import AwsRequest, json_error, json_response

if TYPE_CHECKING:
    from sandbox.server import Sandbox

PUBLICATION_DATE = "2025-01-15T00:00:00Z"
VERSION = "20250115000000"
EFFECTIVE_DATE = "2025-01-01T00:00:00Z"
ON_DEMAND_TERM = "JRTCKXETXF"
PRICE_DIMENSION = "6YS6EN2CT7"
WINDOWS_PER_VCPU_HOUR = 0.046


@dataclass(frozen=True)
class InstanceSpec:
    price: float  # us-east-1, Linux, shared tenancy, $/hour
    vcpu: int
    memory: str
    family: str
    processor: str
    network: str
    gpu: int = 0
    gpu_memory: str = ""


@dataclass(frozen=True)
class Region:
    code: str
    location: str
    usage_prefix: str  # AWS prefixes usage types outside us-east-1 with a region abbreviation
    factor: float


REGIONS: dict[str, Region] = {
    r.code: r
    for r in (
        Region("us-east-1", "US East (N. Virginia)", "", 1.0),
        Region("us-east-2", "US East (Ohio)", "USE2-", 1.0),
        Region("us-west-2", "US West (Oregon)", "USW2-", 1.0),
        Region("eu-west-1", "EU (Ireland)", "EU-", 1.12),
        Region("eu-central-1", "EU (Frankfurt)", "EUC1-", 1.16),
    )
}

_GP = "General purpose"
_CO = "Compute optimized"
_MO = "Memory optimized"
_GPU = "GPU instance"
_INTEL = "Intel Xeon Platinum 8175"
_INTEL_C5 = "Intel Xeon Platinum 8124M"
_AMD = "AMD EPYC 7R32"
_AMD_G6 = "AMD EPYC 7R13 Processor"
_BROADWELL = "Intel Xeon E5-2686 v4 (Broadwell)"
_CASCADE = "Intel Xeon Platinum 8275L"

INSTANCE_TYPES: dict[str, InstanceSpec] = {
    "t3.micro": InstanceSpec(0.0104, 2, "1 GiB", _GP, "Intel Skylake E5 2686 v5", "Up to 5 Gigabit"),
    "t3.small": InstanceSpec(0.0208, 2, "2 GiB", _GP, "Intel Skylake E5 2686 v5", "Up to 5 Gigabit"),
    "t3.medium": InstanceSpec(0.0416, 2, "4 GiB", _GP, "Intel Skylake E5 2686 v5", "Up to 5 Gigabit"),
    "t3.large": InstanceSpec(0.0832, 2, "8 GiB", _GP, "Intel Skylake E5 2686 v5", "Up to 5 Gigabit"),
    "m5.large": InstanceSpec(0.096, 2, "8 GiB", _GP, _INTEL, "Up to 10 Gigabit"),
    "m5.xlarge": InstanceSpec(0.192, 4, "16 GiB", _GP, _INTEL, "Up to 10 Gigabit"),
    "m5.2xlarge": InstanceSpec(0.384, 8, "32 GiB", _GP, _INTEL, "Up to 10 Gigabit"),
    "c5.large": InstanceSpec(0.085, 2, "4 GiB", _CO, _INTEL_C5, "Up to 10 Gigabit"),
    "c5.xlarge": InstanceSpec(0.17, 4, "8 GiB", _CO, _INTEL_C5, "Up to 10 Gigabit"),
    "c5.2xlarge": InstanceSpec(0.34, 8, "16 GiB", _CO, _INTEL_C5, "Up to 10 Gigabit"),
    "r5.large": InstanceSpec(0.126, 2, "16 GiB", _MO, _INTEL, "Up to 10 Gigabit"),
    "g4dn.xlarge": InstanceSpec(0.526, 4, "16 GiB", _GPU, "Intel Xeon Family", "Up to 25 Gigabit", 1, "16 GB"),
    "g4dn.2xlarge": InstanceSpec(0.752, 8, "32 GiB", _GPU, "Intel Xeon Family", "Up to 25 Gigabit", 1, "16 GB"),
    "g5.xlarge": InstanceSpec(1.006, 4, "16 GiB", _GPU, _AMD, "Up to 10 Gigabit", 1, "24 GB"),
    "g5.2xlarge": InstanceSpec(1.212, 8, "32 GiB", _GPU, _AMD, "Up to 10 Gigabit", 1, "24 GB"),
    "g5.4xlarge": InstanceSpec(1.624, 16, "64 GiB", _GPU, _AMD, "Up to 25 Gigabit", 1, "24 GB"),
    "g5.12xlarge": InstanceSpec(5.672, 48, "192 GiB", _GPU, _AMD, "40 Gigabit", 4, "96 GB"),
    "g6.xlarge": InstanceSpec(0.8048, 4, "16 GiB", _GPU, _AMD_G6, "Up to 10 Gigabit", 1, "24 GB"),
    "g6.2xlarge": InstanceSpec(0.9776, 8, "32 GiB", _GPU, _AMD_G6, "Up to 10 Gigabit", 1, "24 GB"),
    "p3.2xlarge": InstanceSpec(3.06, 8, "61 GiB", _GPU, _BROADWELL, "Up to 10 Gigabit", 1, "16 GB"),
    "p3.8xlarge": InstanceSpec(12.24, 32, "244 GiB", _GPU, _BROADWELL, "10 Gigabit", 4, "64 GB"),
    "p4d.24xlarge": InstanceSpec(32.7726, 96, "1152 GiB", _GPU, _CASCADE, "400 Gigabit", 8, "320 GB"),
}


@dataclass(frozen=True)
class EbsSpec:
    price: float  # us-east-1 $/GB-month
    volume_type: str  # the price list's human name
    usage_suffix: str
    media: str
    max_size: str
    max_iops: str
    max_throughput: str


EBS_VOLUME_TYPES: dict[str, EbsSpec] = {
    "gp2": EbsSpec(0.10, "General Purpose", "gp2", "SSD-backed", "16 TiB", "16000", "250 MiB/s"),
    "gp3": EbsSpec(0.08, "General Purpose", "gp3", "SSD-backed", "16 TiB", "16000", "1000 MiB/s"),
    "io1": EbsSpec(0.125, "Provisioned IOPS", "piops", "SSD-backed", "16 TiB", "64000", "1000 MiB/s"),
    "io2": EbsSpec(0.125, "Provisioned IOPS", "io2", "SSD-backed", "16 TiB", "64000", "1000 MiB/s"),
    "st1": EbsSpec(0.045, "Throughput Optimized HDD", "st1", "HDD-backed", "16 TiB", "500", "500 MiB/s"),
    "sc1": EbsSpec(0.015, "Cold HDD", "sc1", "HDD-backed", "16 TiB", "250", "250 MiB/s"),
    "standard": EbsSpec(0.05, "Magnetic", "", "HDD-backed", "1 TiB", "40 - 200", "40 - 90 MB/sec"),
}

# Extra EBS dimensions: (productFamily, volumeApiName, usage type suffix, unit, us-east-1 price, group, description).
_EBS_EXTRAS: tuple[tuple[str, str, str, str, float, str, str], ...] = (
    ("System Operation", "gp3", "EBS:VolumeP-IOPS.gp3", "IOPS-Mo", 0.005, "EBS IOPS", "IOPS-month provisioned (gp3)"),
    ("System Operation", "io1", "EBS:VolumeP-IOPS.piops", "IOPS-Mo", 0.065, "EBS IOPS", "IOPS-month provisioned (io1)"),
    ("System Operation", "io2", "EBS:VolumeP-IOPS.io2", "IOPS-Mo", 0.065, "EBS IOPS", "IOPS-month provisioned (io2)"),
    (
        "Provisioned Throughput",
        "gp3",
        "EBS:VolumeP-Throughput.gp3",
        "GiBps-mo",
        40.96,
        "EBS Throughput",
        "provisioned MiBps-month of gp3 ($0.040 per MiBps-month)",
    ),
    ("Storage Snapshot", "", "EBS:SnapshotUsage", "GB-Mo", 0.05, "", "GB-month of snapshot data stored"),
)

_CAPACITY_STATUSES = ("Used", "UnusedCapacityReservation", "AllocatedCapacityReservation")
_OPERATING_SYSTEMS = (("Linux", "RunInstances"), ("Windows", "RunInstances:0002"))


# -- the source of truth ---------------------------------------------------------------------------------------
def _region(region: str) -> Region:
    found = REGIONS.get(region)
    if found is None:
        raise KeyError(f"sandbox pricing has no data for region {region!r} (known: {', '.join(REGIONS)})")
    return found


def on_demand_price(instance_type: str, region: str = "us-east-1", operating_system: str = "Linux") -> float | None:
    """On-demand $/hour of a shared-tenancy instance, or None for a type outside the documented set."""
    spec = INSTANCE_TYPES.get(instance_type)
    if spec is None or region not in REGIONS:
        return None
    price = spec.price * REGIONS[region].factor
    if operating_system == "Windows":
        price += WINDOWS_PER_VCPU_HOUR * spec.vcpu
    return round(price, 4)


def ebs_price(volume_type: str, region: str = "us-east-1") -> float | None:
    """EBS storage $/GB-month, or None for an unknown volume type or region."""
    spec = EBS_VOLUME_TYPES.get(volume_type)
    if spec is None or region not in REGIONS:
        return None
    return round(spec.price * REGIONS[region].factor, 4)


# -- the price list --------------------------------------------------------------------------------------------
def _sku(*parts: str) -> str:
    """A stable 16-character SKU in AWS's alphabet (upper-case letters and digits)."""
    digest = hashlib.sha256("|".join(parts).encode()).digest()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return "".join(alphabet[b % len(alphabet)] for b in digest[:16])


def _price_string(value: float) -> str:
    return f"{value:.10f}"


def _dollars(value: float) -> str:
    return f"${value:.4f}".rstrip("0").rstrip(".") if value else "$0.00"


def _entry(
    product_family: str, attributes: dict[str, str], unit: str, price: float, description: str
) -> dict[str, Any]:
    sku = _sku(product_family, *(f"{k}={v}" for k, v in sorted(attributes.items())))
    term = f"{sku}.{ON_DEMAND_TERM}"
    rate = f"{term}.{PRICE_DIMENSION}"
    return {
        "product": {"productFamily": product_family, "attributes": attributes, "sku": sku},
        "serviceCode": "AmazonEC2",
        "terms": {
            "OnDemand": {
                term: {
                    "priceDimensions": {
                        rate: {
                            "unit": unit,
                            "endRange": "Inf",
                            "description": description,
                            "appliesTo": [],
                            "rateCode": rate,
                            "beginRange": "0",
                            "pricePerUnit": {"USD": _price_string(price)},
                        }
                    },
                    "sku": sku,
                    "effectiveDate": EFFECTIVE_DATE,
                    "offerTermCode": ON_DEMAND_TERM,
                    "termAttributes": {},
                }
            }
        },
        "version": VERSION,
        "publicationDate": PUBLICATION_DATE,
    }


def _instance_entries(region: Region) -> Iterator[dict[str, Any]]:
    for instance_type, spec in INSTANCE_TYPES.items():
        for operating_system, operation in _OPERATING_SYSTEMS:
            price = on_demand_price(instance_type, region.code, operating_system) or 0.0
            for capacity in _CAPACITY_STATUSES:
                usage = {
                    "Used": "BoxUsage",
                    "UnusedCapacityReservation": "UnusedBox",
                    "AllocatedCapacityReservation": "Reservation",
                }[capacity]
                attributes = {
                    "servicecode": "AmazonEC2",
                    "servicename": "Amazon Elastic Compute Cloud",
                    "location": region.location,
                    "locationType": "AWS Region",
                    "regionCode": region.code,
                    "instanceType": instance_type,
                    "instanceFamily": spec.family,
                    "currentGeneration": "Yes",
                    "vcpu": str(spec.vcpu),
                    "memory": spec.memory,
                    "physicalProcessor": spec.processor,
                    "processorArchitecture": "64-bit",
                    "networkPerformance": spec.network,
                    "storage": "EBS only",
                    "tenancy": "Shared",
                    "operatingSystem": operating_system,
                    "licenseModel": "No License required",
                    "preInstalledSw": "NA",
                    "capacitystatus": capacity,
                    "marketoption": "OnDemand",
                    "operation": operation,
                    "usagetype": f"{region.usage_prefix}{usage}:{instance_type}",
                    "availabilityzone": "NA",
                }
                if spec.gpu:
                    attributes["gpu"] = str(spec.gpu)
                    attributes["gpuMemory"] = spec.gpu_memory
                value = 0.0 if capacity == "AllocatedCapacityReservation" else price
                what = {"Used": "On Demand", "UnusedCapacityReservation": "Unused Reservation"}.get(
                    capacity, "Reservation"
                )
                description = f"{_dollars(value)} per {what} {operating_system} {instance_type} Instance Hour"
                yield _entry("Compute Instance", attributes, "Hrs", value, description)


def _ebs_entries(region: Region) -> Iterator[dict[str, Any]]:
    base = {
        "servicecode": "AmazonEC2",
        "servicename": "Amazon Elastic Compute Cloud",
        "location": region.location,
        "locationType": "AWS Region",
        "regionCode": region.code,
        "operation": "",
    }
    for api_name, spec in EBS_VOLUME_TYPES.items():
        usage = f"{region.usage_prefix}EBS:VolumeUsage" + (f".{spec.usage_suffix}" if spec.usage_suffix else "")
        attributes = {
            **base,
            "storageMedia": spec.media,
            "volumeType": spec.volume_type,
            "volumeApiName": api_name,
            "maxVolumeSize": spec.max_size,
            "maxIopsvolume": spec.max_iops,
            "maxThroughputvolume": spec.max_throughput,
            "usagetype": usage,
        }
        price = ebs_price(api_name, region.code) or 0.0
        description = (
            f"{_dollars(price)} per GB-month of {spec.volume_type} ({api_name}) provisioned storage - {region.location}"
        )
        yield _entry("Storage", attributes, "GB-Mo", price, description)
    for family, api_name, usage, unit, price, group, what in _EBS_EXTRAS:
        attributes = {**base, "usagetype": f"{region.usage_prefix}{usage}"}
        if api_name:
            attributes["volumeApiName"] = api_name
        if group:
            attributes["group"] = group
        if family == "Storage Snapshot":
            attributes["storageMedia"] = "Amazon S3"
        value = round(price * region.factor, 4)
        yield _entry(family, attributes, unit, value, f"{_dollars(value)} per {what} - {region.location}")


# S3 Standard storage tiers: (beginRange GB, endRange GB, us-east-1 $/GB-month).
S3_STANDARD_TIERS: tuple[tuple[str, str, float], ...] = (
    ("0", "51200", 0.023),
    ("51200", "512000", 0.022),
    ("512000", "Inf", 0.021),
)


def _s3_entry(region: Region) -> dict[str, Any]:
    """S3 Standard storage of a region: one product, a tiered price (three dimensions), as AWS lists it."""
    attributes = {
        "servicecode": "AmazonS3",
        "servicename": "Amazon Simple Storage Service",
        "location": region.location,
        "locationType": "AWS Region",
        "regionCode": region.code,
        "storageClass": "General Purpose",
        "volumeType": "Standard",
        "availability": "99.99%",
        "durability": "99.999999999%",
        "usagetype": f"{region.usage_prefix}TimedStorage-ByteHrs",
        "operation": "",
    }
    entry = _entry("Storage", attributes, "GB-Mo", 0.0, "")
    entry["serviceCode"] = "AmazonS3"
    (term,) = entry["terms"]["OnDemand"].values()
    sku = entry["product"]["sku"]
    dimensions = {}
    for index, (begin, end, price) in enumerate(S3_STANDARD_TIERS):
        value = round(price * region.factor, 4)
        rate = f"{sku}.{ON_DEMAND_TERM}.{_sku('s3-tier', str(index))[:10]}"
        dimensions[rate] = {
            "unit": "GB-Mo",
            "endRange": end,
            "description": f"{_dollars(value)} per GB - storage from {begin} GB ({region.location})",
            "appliesTo": [],
            "rateCode": rate,
            "beginRange": begin,
            "pricePerUnit": {"USD": _price_string(value)},
        }
    term["priceDimensions"] = dimensions
    return entry


@cache
def price_list() -> tuple[dict[str, Any], ...]:
    """Every product of the sandbox's price list (all regions), built once."""
    entries: list[dict[str, Any]] = []
    for region in REGIONS.values():
        entries.extend(_instance_entries(region))
        entries.extend(_ebs_entries(region))
        entries.append(_s3_entry(region))
    return tuple(entries)


# -- the API ---------------------------------------------------------------------------------------------------
class PricingError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_FILTER_TYPES = ("TERM_MATCH", "EQUALS", "CONTAINS", "ANY_OF", "NONE_OF")


def _field(product: dict[str, Any], field: str) -> str | None:
    """A product's value for a filter field: attributes by case-insensitive name, plus productFamily and sku."""
    lowered = field.lower()
    if lowered == "productfamily":
        return str(product["productFamily"])
    if lowered == "sku":
        return str(product["sku"])
    for key, value in product["attributes"].items():
        if key.lower() == lowered:
            return str(value)
    return None


def _matches(entry: dict[str, Any], filters: list[dict[str, Any]]) -> bool:
    product = entry["product"]
    for flt in filters:
        value = _field(product, str(flt.get("Field", "")))
        wanted = str(flt.get("Value", ""))
        kind = flt.get("Type", "TERM_MATCH")
        if kind in ("TERM_MATCH", "EQUALS"):
            ok = value is not None and value.lower() == wanted.lower()
        elif kind == "CONTAINS":
            ok = value is not None and wanted.lower() in value.lower()
        elif kind == "ANY_OF":
            ok = value is not None and value.lower() in {w.strip().lower() for w in wanted.split(",")}
        else:  # NONE_OF
            ok = value is None or value.lower() not in {w.strip().lower() for w in wanted.split(",")}
        if not ok:
            return False
    return True


def _encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def _decode_token(token: str) -> int:
    try:
        offset = int(json.loads(base64.urlsafe_b64decode(token.encode()))["offset"])
    except (ValueError, KeyError, TypeError) as exc:
        raise PricingError("InvalidNextTokenException", "The pagination token is invalid.") from exc
    if offset < 0:
        raise PricingError("InvalidNextTokenException", "The pagination token is invalid.")
    return offset


def _max_results(body: dict[str, Any], default: int) -> int:
    value = body.get("MaxResults", default)
    if not isinstance(value, int) or not 1 <= value <= 100:
        raise PricingError("InvalidParameterException", "MaxResults must be between 1 and 100.")
    return value


def get_products(body: dict[str, Any]) -> dict[str, Any]:
    service = body.get("ServiceCode")
    if not service:
        raise PricingError("InvalidParameterException", "Input validation error: ServiceCode is required.")
    filters = body.get("Filters") or []
    for flt in filters:
        if not isinstance(flt, dict) or "Field" not in flt or "Value" not in flt:
            raise PricingError("InvalidParameterException", "Input validation error: a filter needs Field and Value.")
        if flt.get("Type", "TERM_MATCH") not in _FILTER_TYPES:
            raise PricingError(
                "InvalidParameterException", f"Input validation error: unknown filter type {flt['Type']}."
            )
    max_results = _max_results(body, 100)
    offset = _decode_token(body["NextToken"]) if body.get("NextToken") else 0
    # EC2 (instances, EBS) and S3 Standard storage are priced here; any other service has no products.
    matching = [e for e in price_list() if e["serviceCode"] == service and _matches(e, filters)]
    page = matching[offset : offset + max_results]
    result: dict[str, Any] = {"FormatVersion": "aws_v1", "PriceList": [json.dumps(e) for e in page]}
    if offset + max_results < len(matching):
        result["NextToken"] = _encode_token(offset + max_results)
    return result


_SERVICES = ("AmazonEC2", "AmazonS3")


def _attribute_names(service: str) -> list[str]:
    names: set[str] = set()
    for entry in price_list():
        if entry["serviceCode"] == service:
            names.update(entry["product"]["attributes"])
    names.add("productFamily")
    return sorted(names)


def describe_services(body: dict[str, Any]) -> dict[str, Any]:
    wanted = body.get("ServiceCode")
    services = [{"ServiceCode": code, "AttributeNames": _attribute_names(code)} for code in _SERVICES]
    if wanted:
        services = [s for s in services if s["ServiceCode"] == wanted]
    return {"Services": services, "FormatVersion": "aws_v1"}


def get_attribute_values(body: dict[str, Any]) -> dict[str, Any]:
    service, name = body.get("ServiceCode"), body.get("AttributeName")
    if not service or not name:
        raise PricingError("InvalidParameterException", "ServiceCode and AttributeName are required.")
    if service not in _SERVICES:
        raise PricingError("NotFoundException", f"Service {service} was not found.")
    values = sorted(
        {v for e in price_list() if e["serviceCode"] == service and (v := _field(e["product"], str(name))) is not None}
    )
    if not values:
        raise PricingError("NotFoundException", f"Attribute {name} was not found.")
    max_results = _max_results(body, 100)
    offset = _decode_token(body["NextToken"]) if body.get("NextToken") else 0
    result: dict[str, Any] = {"AttributeValues": [{"Value": v} for v in values[offset : offset + max_results]]}
    if offset + max_results < len(values):
        result["NextToken"] = _encode_token(offset + max_results)
    return result


_HANDLERS = {
    "GetProducts": get_products,
    "DescribeServices": describe_services,
    "GetAttributeValues": get_attribute_values,
}


def _hook(req: AwsRequest) -> Response | None:
    handler = _HANDLERS.get(req.action or "")
    if handler is None:
        return None
    body = req.json if isinstance(req.json, dict) else {}
    try:
        return json_response(handler(body))
    except PricingError as exc:
        return json_error(exc.code, exc.message)


def install(sandbox: Sandbox) -> None:
    for action in _HANDLERS:
        sandbox.before("pricing", action, _hook)
