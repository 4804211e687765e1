"""clood's OpenAPI description (proxy/openapi.py): valid, served at /openapi.json, in step with the routes, and true
of a real clood: schemathesis fuzzes every operation against a garden of simulated hosts (with no API keys)."""

import re

import httpx
import pytest
import schemathesis
from django.urls import resolve
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from proxy import catfight_urls, urls
from proxy.consumers import RelayConsumer
from proxy.endpoints import ENDPOINTS, MAX_TOKENS_LIMIT
from proxy.openapi import EXAMPLE_EMBEDDING_MODEL, EXAMPLE_MODEL, build_spec

# Routes the description leaves out: the catch-alls (any other /v1/* or /api/* answers 404 in that API's shape) and
# the debugging view that is routed only when CLOOD_EXPOSE_INTERNALS is on.
UNDESCRIBED_ROUTES = {"^v1/", "^api/", "_clood/internals"}
SIMULATED_TOKEN_LIMIT = 64
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

schema = schemathesis.openapi.from_dict(build_spec())
# Reproducible and bounded: the same examples on every run, a few dozen per operation.
schema.config.generation.update(max_examples=30, deterministic=True, database="none")


@pytest.fixture(scope="module")
def garden(clood_factory, sims):
    """Two hosts with the models the description's examples use, so that examples reach a host and answer 200."""
    garden = clood_factory()
    for name in ("alpha", "beta"):
        garden.add(name, sims(models=[EXAMPLE_MODEL, EXAMPLE_EMBEDDING_MODEL], reply_tokens=4))
    garden.refresh()
    return garden


def _described_path(route):
    """The OpenAPI path of a proxy/urls.py route: `^v1/models/(?P<model_id>.+)$` is `/v1/models/{model_id}`."""
    pattern = str(route.pattern).removeprefix("^").removesuffix("$")
    return "/" + re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern)


def _api_routes():
    return [route for route in urls.urlpatterns if str(route.pattern) not in UNDESCRIBED_ROUTES]


def test_the_description_is_valid_openapi():
    validate(build_spec())


def test_every_api_route_is_described_with_its_methods():
    paths = build_spec()["paths"]
    for route in _api_routes():
        path = _described_path(route)
        assert path in paths, f"{path} is routed in proxy/urls.py but missing from proxy/openapi.py"
        consumer = route.callback.consumer_class
        expected = {"post"} if issubclass(consumer, RelayConsumer) else {"get"}
        assert set(consumer.methods) >= {m.upper() for m in expected}
        assert set(paths[path]) == expected, path


def test_every_catfight_route_is_described():
    paths = build_spec()["paths"]
    for route in catfight_urls.urlpatterns:
        path = "/catfights" + ("/" + re.sub(r"<\w+:(\w+)>", r"{\1}", str(route.pattern))).rstrip("/")
        assert path in paths, f"{path} is routed in proxy/catfight_urls.py but missing from proxy/openapi.py"


def test_every_endpoint_is_described():
    paths = build_spec()["paths"]
    for endpoint in ENDPOINTS.values():
        assert endpoint.path in paths and "post" in paths[endpoint.path], endpoint.name


def test_every_described_path_is_routed():
    api_routes = _api_routes()
    for path in build_spec()["paths"]:
        concrete = re.sub(r"\{\w+\}", "1", path)
        if path.startswith("/catfights"):
            assert resolve(concrete).url_name, path  # a Django view (raises Resolver404 when not)
        else:
            assert any(route.pattern.match(concrete.lstrip("/")) for route in api_routes), path


def test_api_and_catfight_operations_declare_the_bearer_key_and_401():
    for path, operations in build_spec()["paths"].items():
        for operation in operations.values():
            if path.startswith(("/v1/", "/api/", "/catfights")):
                assert {"bearer": []} in operation["security"] and "401" in operation["responses"], path
            else:
                assert "security" not in operation, path


def test_openapi_json_is_served(garden):
    response = httpx.get(garden.url + "/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == build_spec()


def _spare_the_simulator(case):
    """A simulated host makes every token it is asked for (a real one stops at its context): make the limits small.
    A /v1 limit over MAX_TOKENS_LIMIT stays: clood must refuse it before any host sees it."""
    body = case.body if isinstance(case.body, dict) else {}
    options = body.get("options") if isinstance(body.get("options"), dict) else {}
    passed_on = MAX_TOKENS_LIMIT if case.operation.path.startswith("/v1/") else float("inf")
    for fields, name in ((body, "max_tokens"), (body, "max_completion_tokens"), (options, "num_predict")):
        value = fields.get(name)
        if isinstance(value, int) and SIMULATED_TOKEN_LIMIT < value <= passed_on:
            fields[name] = SIMULATED_TOKEN_LIMIT


@schema.parametrize()
@settings(derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
def test_clood_keeps_its_description(case, garden):
    _spare_the_simulator(case)
    extra = [] if case.operation.path.startswith("/catfights") else [negative_data_rejection]
    case.call_and_validate(base_url=garden.url, checks=CHECKS + extra, timeout=30)


@pytest.mark.parametrize("path", ["/catfights/-1", "/catfights/abc/export.json"])
def test_a_catfight_id_that_is_not_a_number_is_a_json_404(garden, path):
    response = httpx.get(garden.url + path, timeout=10)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")


def test_clood_is_healthy_after_the_fuzzing(garden):
    assert httpx.get(garden.url + "/health", timeout=10).status_code == 200
    assert httpx.get(garden.url + "/ready", timeout=10).json()["usable_hosts"] == ["alpha", "beta"]
