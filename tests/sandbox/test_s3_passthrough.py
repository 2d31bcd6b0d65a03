"""S3 goes to moto through the middleware unchanged: sizes, bodies and ranges as S3 answers them."""

import io

from sandbox import Sandbox


def test_head_reports_the_object_length_and_get_the_bytes(cloud: Sandbox) -> None:
    s3 = cloud.client("s3")
    s3.create_bucket(Bucket="passthrough")
    s3.put_object(Bucket="passthrough", Key="ünï/k.bin", Body=b"x" * 1234)
    assert s3.head_object(Bucket="passthrough", Key="ünï/k.bin")["ContentLength"] == 1234
    assert s3.get_object(Bucket="passthrough", Key="ünï/k.bin", Range="bytes=0-9")["Body"].read() == b"x" * 10


def test_checksums_and_kms_etags_as_s3_gives_them(cloud: Sandbox) -> None:
    """An upload that sends no checksum (s5cmd's) gets a full-object CRC64NVME, multipart too; a KMS-encrypted
    object's ETag is no MD5 of its bytes, nor, for a multipart upload under a KMS bucket default, of part MD5s;
    HeadObject says whether a checksum covers the whole object or its parts (COMPOSITE, `value-N`)."""
    import base64
    import hashlib
    import os

    from awscrt import checksums

    def crc64(data: bytes) -> str:
        return base64.b64encode(checksums.crc64nvme(data).to_bytes(8, "big")).decode()

    # A client that sends no checksum of its own (boto3 sends a CRC32 by default).
    s3 = cloud.client("s3", request_checksum_calculation="when_required")
    s3.create_bucket(Bucket="sums")
    small, big = b"hello", os.urandom(11 * 1024 * 1024)

    def multipart(key: str) -> None:
        upload = s3.create_multipart_upload(Bucket="sums", Key=key)["UploadId"]
        parts = [
            {
                "PartNumber": n,
                "ETag": s3.upload_part(Bucket="sums", Key=key, UploadId=upload, PartNumber=n, Body=chunk)["ETag"],
            }
            for n, chunk in ((1, big[: 6 * 1024 * 1024]), (2, big[6 * 1024 * 1024 :]))
        ]
        s3.complete_multipart_upload(Bucket="sums", Key=key, UploadId=upload, MultipartUpload={"Parts": parts})

    def head(key: str) -> dict[str, str]:
        return s3.head_object(Bucket="sums", Key=key, ChecksumMode="ENABLED")

    s3.put_object(Bucket="sums", Key="plain", Body=small)
    multipart("plain-mp")
    assert (head("plain")["ChecksumCRC64NVME"], head("plain")["ETag"]) == (
        crc64(small),
        f'"{hashlib.md5(small, usedforsecurity=False).hexdigest()}"',
    )
    assert head("plain-mp")["ChecksumCRC64NVME"] == crc64(big)  # of the whole object, not of its parts
    plain_mp_etag = head("plain-mp")["ETag"]

    s3.put_object(Bucket="sums", Key="kms", Body=small, ServerSideEncryption="aws:kms")
    rule = {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms"}}
    s3.put_bucket_encryption(Bucket="sums", ServerSideEncryptionConfiguration={"Rules": [rule]})
    multipart("kms-mp")
    kms, kms_mp = head("kms"), head("kms-mp")
    assert kms["ServerSideEncryption"] == kms_mp["ServerSideEncryption"] == "aws:kms"
    assert kms["ETag"].strip('"') != hashlib.md5(small, usedforsecurity=False).hexdigest()
    assert kms_mp["ETag"] != plain_mp_etag and kms_mp["ETag"].endswith('-2"')
    assert (kms["ChecksumCRC64NVME"], kms_mp["ChecksumCRC64NVME"]) == (crc64(small), crc64(big))
    listed = {o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket="sums")["Contents"]}
    assert (listed["kms"], listed["kms-mp"]) == (kms["ETag"], kms_mp["ETag"])

    # What the checksum covers: the whole object, or (boto3's multipart uploads: a CRC32 per part) the parts.
    assert head("plain")["ChecksumType"] == head("plain-mp")["ChecksumType"] == "FULL_OBJECT"
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=6 * 1024 * 1024)
    cloud.client("s3").upload_fileobj(io.BytesIO(big), "sums", "boto3-mp", Config=config)
    composite = head("boto3-mp")
    assert composite["ChecksumType"] == "COMPOSITE" and composite["ChecksumCRC32"].endswith("-2")
