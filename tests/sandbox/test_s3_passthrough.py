"""S3 goes to moto through the middleware unchanged: sizes, bodies and ranges as S3 answers them."""

from sandbox import Sandbox


def test_head_reports_the_object_length_and_get_the_bytes(cloud: Sandbox) -> None:
    s3 = cloud.client("s3")
    s3.create_bucket(Bucket="passthrough")
    s3.put_object(Bucket="passthrough", Key="ünï/k.bin", Body=b"x" * 1234)
    assert s3.head_object(Bucket="passthrough", Key="ünï/k.bin")["ContentLength"] == 1234
    assert s3.get_object(Bucket="passthrough", Key="ünï/k.bin", Range="bytes=0-9")["Body"].read() == b"x" * 10
