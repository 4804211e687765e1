"""Property-based fuzz of the catfight request parser (proxy/catfight.py `parse_spec`, behind POST /catfights).

Whatever the body holds, parse_spec returns a clean spec or raises a 400 ApiError that renders as JSON: never
anything else (which would be a 500). Derandomized, like tests/proxy/test_parser_fuzz.py.
"""

import pytest
from asgiref.sync import async_to_sync
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hosts import snapshot
from hosts.models import Host, HostModel
from hosts.names import normalize_model_name
from proxy.catfight import parse_spec
from proxy.errors import ApiError
from proxy.models import ChallengeSet
from tests.proxy.test_parser_fuzz import assert_renders_as_json, json_scalars, json_values, model_names

pytestmark = pytest.mark.django_db(transaction=True)

FUZZ = settings(
    derandomize=True, database=None, max_examples=300, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)  # fmt: skip


@pytest.fixture
def garden():
    for name in ("a", "b"):
        host = Host.objects.create(name=name, base_url=f"http://127.0.0.1:9/{name}", online=True)
        HostModel.objects.create(host=host, name="llama3.2:1b", remote_name="llama3.2:1b")
    async_to_sync(snapshot.refresh)()
    return ChallengeSet.objects.create(name="set", prompts=["one", "two"], rubric="be brief")


valid_contestants = st.sampled_from(
    [
        {"model": "llama3.2:1b", "host": "a"},
        {"model": "llama3.2:1b", "host": "b"},
        {"model": "LLAMA3.2:1B", "host": "b"},
    ]
)
contestants = valid_contestants | st.fixed_dictionaries(
    {}, optional={"model": model_names | json_scalars, "host": st.sampled_from(["a", "b", "c"]) | json_scalars}
) | json_values  # fmt: skip
judges = (
    st.none()
    | json_values
    | st.fixed_dictionaries(
        {"model": model_names | st.just("llama3.2:1b") | json_scalars},
        optional={"host": json_scalars, "rubric": json_scalars | json_values},
    )
)
specs = st.fixed_dictionaries(
    {},
    optional={
        "prompt": st.text(max_size=20) | st.just("which is faster?") | json_values,
        "challenge_set": st.none() | st.integers(-2, 2**70) | json_scalars,
        "contestants": st.lists(valid_contestants, min_size=2, max_size=3)
        | st.lists(contestants, max_size=5)
        | json_values,
        "temperature": json_scalars | st.integers(-5, 2**70),
        "seed": json_scalars | st.integers(-(2**70), 2**70),
        "max_tokens": json_scalars | st.integers(-2, 2**70),
        "rank_by": st.sampled_from(["fastest", "tokens_per_s", "judge", "nope"]) | json_scalars,
        "judge": judges,
        "system": st.text(max_size=10) | json_values,
        "parallel_same_host": json_values,
    },
)


# A valid spec, with any of the optional fields valid or not.
near_valid_specs = st.fixed_dictionaries(
    {
        "prompt": st.just("which is faster?"),
        "contestants": st.lists(valid_contestants, min_size=2, max_size=2, unique_by=lambda c: c["host"]),
    },
    optional={
        "temperature": st.floats(0, 2) | json_scalars,
        "seed": st.integers(0, 2**31) | json_scalars,
        "max_tokens": st.integers(1, 4096) | json_scalars,
        "rank_by": st.sampled_from(["fastest", "tokens_per_s"]) | json_scalars,
        "judge": st.none() | st.just({"model": "llama3.2:1b", "host": "a", "rubric": "short"}) | judges,
        "system": st.text(max_size=10) | json_scalars,
        "parallel_same_host": st.booleans() | json_values,
    },
)


@FUZZ
@given(payload=specs | near_valid_specs | json_values)
@example(payload={"challenge_set": 1, "judge": "not an object", "contestants": []})
@example(payload={"challenge_set": True, "contestants": [{"model": "llama3.2:1b", "host": "a"}] * 2})
@example(
    payload={
        "prompt": "p",
        "contestants": [{"model": "llama3.2:1b", "host": "a"}, {"model": "llama3.2:1b", "host": "b"}],
        "judge": {"model": 5},
    }
)
@example(
    payload={
        "prompt": "p",
        "contestants": [{"model": "llama3.2:1b", "host": "a"}, {"model": "LLAMA3.2:1B", "host": "a"}],
    }
)  # one contestant, twice
def test_parse_spec_takes_any_body(garden, payload):
    if isinstance(payload, dict) and payload.get("challenge_set") == 1:
        payload["challenge_set"] = garden.pk
    try:
        spec = parse_spec(payload)
    except ApiError as error:
        assert error.status == 400, (error.status, error.message)
        assert error.param is None or isinstance(error.param, str)
        assert_renders_as_json(error)
        return
    assert spec["prompts"] and all(isinstance(p, str) for p in spec["prompts"])
    same = {(normalize_model_name(model), host) for model, host in spec["contestants"]}
    assert 2 <= len(spec["contestants"]) == len(same)
    assert isinstance(spec["system"], str) and isinstance(spec["rubric"], str)
