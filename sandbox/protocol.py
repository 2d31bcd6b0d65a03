"""Just enough of the AWS wire protocols to answer requests the way AWS does.

The sandbox routes by the SigV4 credential scope (`.../<region>/<service>/aws4_request`), the same thing AWS
uses, so one endpoint serves every service. EC2 speaks the query protocol (form parameters, XML answers);
SSM and Pricing speak JSON 1.1 (`X-Amz-Target: Service.Action`, JSON answers with `__type` errors).
"""

from __future__ import annotations

import io
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

from moto.core import DEFAULT_ACCOUNT_ID
from werkzeug.wrappers import Response

_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request")

EC2_XMLNS = "http://ec2.amazonaws.com/doc/2016-11-15/"

# The sandbox's one account (moto's backends live under it) and the keys of its own callers. Here, not in
# server.py, so the components the server installs need not import the server.
ACCOUNT_ID = DEFAULT_ACCOUNT_ID
DUMMY_ACCESS_KEY = "sandbox-access-key"
DUMMY_SECRET_KEY = "sandbox-secret-key"


@dataclass
class AwsRequest:
    """One incoming request, parsed once; `body` is kept so it can be handed on to moto unchanged."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    service: str | None = None
    query: str = ""  # the raw query string (a signature covers it)
    region: str = "us-east-1"
    action: str | None = None
    # Query protocol (EC2, IAM, STS): query string and form body merged, first value of each key.
    params: dict[str, str] = field(default_factory=dict)
    # JSON protocol (SSM, Pricing): the decoded body.
    json: Any = None

    def param_list(self, prefix: str) -> list[str]:
        """Values of a query-protocol list such as `InstanceId.1`, `InstanceId.2` (in order)."""
        found: list[tuple[int, str]] = []
        pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)$")
        for key, value in self.params.items():
            m = pattern.match(key)
            if m:
                found.append((int(m.group(1)), value))
        return [value for _, value in sorted(found)]


def parse_request(environ: dict[str, Any]) -> AwsRequest:
    """Parse a WSGI environ; rewinds `wsgi.input` so the request can still be passed to moto."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)
    headers = {key[5:].replace("_", "-").lower(): value for key, value in environ.items() if key.startswith("HTTP_")}
    if environ.get("CONTENT_TYPE"):
        headers["content-type"] = environ["CONTENT_TYPE"]
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True).items()}
    req = AwsRequest(
        method=environ.get("REQUEST_METHOD", "GET"),
        path=environ.get("PATH_INFO", "/"),
        headers=headers,
        body=body,
        query=environ.get("QUERY_STRING", ""),
    )
    scope = _SCOPE.search(headers.get("authorization", "")) or _SCOPE.search(
        "Credential=" + query.get("X-Amz-Credential", "")
    )
    if scope:
        req.service = scope.group("service")
        req.region = scope.group("region")
    target = headers.get("x-amz-target")
    if target:
        req.action = target.rsplit(".", 1)[-1]
        try:
            req.json = json.loads(body or b"{}")
        except ValueError:
            req.json = {}
    else:
        params = dict(query)
        if "x-www-form-urlencoded" in headers.get("content-type", "") and body:
            params.update({k: v[0] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()})
        req.params = params
        req.action = params.get("Action")
    return req


def ec2_error(code: str, message: str, status: int = 400) -> Response:
    """An EC2 query-protocol error, as botocore parses it into `ClientError.response["Error"]`."""
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"</Error></Errors><RequestID>{uuid.uuid4()}</RequestID></Response>"
    )
    return Response(xml, status=status, content_type="text/xml")


def ec2_response(action: str, inner_xml: str) -> Response:
    """An EC2 query-protocol success answer with the given inner XML."""
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<{action}Response xmlns="{EC2_XMLNS}"><requestId>{uuid.uuid4()}</requestId>'
        f"{inner_xml}</{action}Response>"
    )
    return Response(xml, status=200, content_type="text/xml")


def json_response(payload: Any, status: int = 200) -> Response:
    """A JSON 1.1 protocol answer (SSM, Pricing)."""
    return Response(
        json.dumps(payload, default=str),
        status=status,
        content_type="application/x-amz-json-1.1",
        headers={"x-amzn-RequestId": str(uuid.uuid4())},
    )


def json_error(code: str, message: str, status: int = 400) -> Response:
    """A JSON 1.1 protocol error: botocore reads the code from `__type`."""
    return json_response({"__type": code, "message": message}, status=status)


def s3_error(code: str, message: str, status: int) -> Response:
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"<RequestId>{uuid.uuid4()}</RequestId></Error>"
    )
    return Response(xml, status=status, content_type="application/xml")


def error_for(req: AwsRequest, code: str, message: str, status: int = 400) -> Response:
    """An error in whichever protocol the request's service speaks."""
    if req.service == "s3":
        return s3_error(code, message, status)
    if req.json is not None:
        return json_error(code, message, status)
    return ec2_error(code, message, status)
