"""SendGrid conformance (issue 17, first slice): Postern's answers to
SendGrid's documented requests, validated against SendGrid's own OpenAPI
specification (tests/conformance/sendgrid-oai, MIT) with a JSON Schema
library. One test per operation, named by SendGrid's operationId, so the
report names each deviation.

Known deviations are listed in docs/sendgrid-deviations.md with their
reason. The test compares both ways: an operation that deviates without
being listed fails, and so does a listed one that now conforms (the list
must be kept true). The operations below are those Postern serves that
need no object made first; the rest of the spec's operations are the next
slices of issue 17."""

import json
import re
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from conftest import api

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "tests" / "conformance" / "sendgrid-oai"
DEVIATIONS = ROOT / "docs" / "sendgrid-deviations.md"


def nullable_as_null(node):
    """OpenAPI 3.0's `nullable: true` as JSON Schema's `"null"` type."""
    if isinstance(node, dict):
        node = {k: nullable_as_null(v) for k, v in node.items()}
        if node.pop("nullable", False) is True and "type" in node:
            t = node["type"]
            node["type"] = (t if isinstance(t, list) else [t]) + ["null"]
        return node
    if isinstance(node, list):
        return [nullable_as_null(v) for v in node]
    return node


def load_registry():
    resources = []
    for path in SPEC.rglob("*.json"):
        doc = nullable_as_null(json.loads(path.read_text()))
        resources.append((path.as_uri(), Resource.from_contents(doc, default_specification=DRAFT202012)))
    return Registry().with_resources(resources)


REGISTRY = load_registry()
ENTRY = (SPEC / "oas_v3.json").as_uri()


def resolve(uri, ref):
    """The node `ref` names, read from the document at `uri`; with the
    URI of the document it is in (relative references inside it resolve
    from there)."""
    resolver = REGISTRY.resolver(base_uri=uri)
    resolved = resolver.lookup(ref)
    return resolved.contents, resolved.resolver


def operation(path, method):
    """SendGrid's operation object for `method path`, with a resolver
    anchored where it is defined."""
    entry, resolver = resolve(ENTRY, "#/paths/" + path.replace("~", "~0").replace("/", "~1"))
    if "$ref" in entry:
        resolved = resolver.lookup(entry["$ref"])
        entry, resolver = resolved.contents, resolved.resolver
    return entry[method.lower()], resolver


def response_schema(op, resolver, status):
    """The JSON schema SendGrid gives for `status`, the resolver for its
    references; None when the spec gives that status no JSON body."""
    responses = op.get("responses", {})
    resp = responses.get(str(status))
    if resp is None:
        return "undocumented", resolver
    if "$ref" in resp:
        r = resolver.lookup(resp["$ref"])
        resp, resolver = r.contents, r.resolver
    content = resp.get("content", {})
    media = content.get("application/json") or next(iter(content.values()), None)
    if not media or "schema" not in media:
        return None, resolver
    return media["schema"], resolver


def example_body(op, resolver):
    body = op.get("requestBody")
    if not body:
        return None
    if "$ref" in body:
        r = resolver.lookup(body["$ref"])
        body, resolver = r.contents, r.resolver
    media = body.get("content", {}).get("application/json", {})
    if "example" in media:
        return media["example"]
    schema = media.get("schema", {})
    if "$ref" in schema:
        schema = resolver.lookup(schema["$ref"]).contents
    return schema.get("example")


def problems(op, resolver, status, body):
    """What is wrong with a response, against the spec: [] when it
    conforms."""
    schema, resolver = response_schema(op, resolver, status)
    if schema == "undocumented":
        return [f"status {status} is not among the documented {sorted(op.get('responses', {}))}"]
    if schema is None:
        return []
    # The schema's relative references resolve from the document it came
    # from: it is given an id beside that document's.
    wrapped = {"$schema": "https://json-schema.org/draft/2020-12/schema",
               "$id": resolver._base_uri.split("#")[0] + "?response", "$ref": "#/$defs/x", "$defs": {"x": schema}}
    validator = Draft202012Validator(wrapped, registry=REGISTRY)
    return sorted({f"{'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message[:160]}"
                   for e in validator.iter_errors(body)})


# (SendGrid's operationId, method, path, body): operations Postern serves
# that need no object made first. A body of None sends the spec's own
# example, if it has one.
OPERATIONS = [
    ("create-api-keys", "POST", "/v3/api_keys", {"name": "conformance key", "scopes": ["mail.send"]}),
    ("GET_api_keys", "GET", "/v3/api_keys", None),
    ("GET_scopes", "GET", "/v3/scopes", None),
    ("GET_suppression-bounces", "GET", "/v3/suppression/bounces", None),
    ("GET_subusers", "GET", "/v3/subusers", None),
    ("GET_whitelabel-domains", "GET", "/v3/whitelabel/domains", None),
    ("GET_verified_senders", "GET", "/v3/verified_senders", None),
    ("GET_access_settings-whitelist", "GET", "/v3/access_settings/whitelist", None),
    ("GET-messages", "GET", "/v3/messages?limit=10", None),
    ("GET-webhooks-event-settings-all", "GET", "/v3/user/webhooks/event/settings/all", None),
]


def deviations():
    """operationId -> reason, from the table in docs/sendgrid-deviations.md."""
    out = {}
    for line in DEVIATIONS.read_text().splitlines():
        m = re.match(r"\|\s*`([A-Za-z0-9_-]+)`\s*\|\s*(.+?)\s*\|\s*$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from conftest import Postern, Sink
    sink = Sink()
    p = Postern(tmp_path_factory.mktemp("conformance"), sink.port).start()
    p.read_admin_key()
    yield p
    p.stop()
    sink.stop()


@pytest.mark.parametrize("op_id,method,path,body", OPERATIONS, ids=[o[0] for o in OPERATIONS])
def test_the_answer_matches_sendgrid_spec(server, op_id, method, path, body):
    spec_path = path.split("?")[0]
    op, resolver = operation(spec_path, method)
    assert op.get("operationId") == op_id, (op.get("operationId"), op_id)
    if body is None and method in ("POST", "PUT", "PATCH"):
        body = example_body(op, resolver)
    status, data = api(server, server.admin_key, method, path, body)
    found = problems(op, resolver, status, data)
    listed = deviations()
    if op_id in listed:
        assert found, f"{op_id} now conforms: take it out of docs/sendgrid-deviations.md"
    else:
        assert not found, f"{op_id} deviates from SendGrid's spec (status {status}): {found}"


def test_every_listed_deviation_names_an_operation_this_test_sends():
    sent = {o[0] for o in OPERATIONS}
    stray = set(deviations()) - sent
    assert not stray, f"docs/sendgrid-deviations.md lists operations not tested here: {stray}"


def test_the_check_finds_what_does_not_conform():
    """The validation is not a formality: a list of keys with a number for
    a name, an object where the spec has a list, and an undocumented
    status are all reported."""
    op, resolver = operation("/v3/api_keys", "GET")
    assert problems(op, resolver, 200, {"result": [{"name": "k", "api_key_id": "abc"}]}) == []
    assert problems(op, resolver, 200, {"result": [{"name": 5, "api_key_id": "abc"}]})
    assert problems(op, resolver, 200, {"result": {"name": "k"}})
    assert problems(op, resolver, 418, {})[0].startswith("status 418 is not among the documented")
    op, resolver = operation("/v3/subusers", "GET")
    # SendGrid's subuser ids are numbers (a string one deviates).
    good = [{"disabled": False, "id": 1, "username": "u", "email": "u@example.com"}]
    assert problems(op, resolver, 200, good) == []
    assert problems(op, resolver, 200, [dict(good[0], id="1")])
