"""Routing decisions on hand-built snapshots: each strategy, and who is never a candidate."""

import pytest

from hosts.snapshot import HostView, ModelView, Snapshot
from proxy.routing import choose_hosts
from proxy.stats import LiveStats


def model(name="llama3.2:1b", loaded=False, bench_ttft_ms=None):
    return ModelView(
        name=name, remote_name=name, digest="d", size=1, family="llama", parameter_size="1B", quantization="Q4",
        capabilities=(), context_length=None, loaded=loaded, loaded_until=None, size_vram=None, last_seen_at=None,
        bench_ttft_ms=bench_ttft_ms,
    )  # fmt: skip


def host(name, *, models=("llama3.2:1b",), loaded=(), priority=100, latency=10.0, online=True, enabled=True,
         circuit="closed", backend="ollama", slots=2, bench=None):  # fmt: skip
    """A HostView; `bench` is the benchmark TTFT (ms) of each of its models."""
    return HostView(
        id=hash(name), name=name, base_url=f"http://{name}", backend=backend, priority=priority, enabled=enabled,
        online=online, circuit=circuit, latency_ms=latency, max_concurrency=slots, api_key="", version="0.6.5",
        last_checked_at=None, last_error="", hardware_cpu="", hardware_gpu="", hardware_memory="", notes="",
        models={m: model(m, loaded=m in loaded, bench_ttft_ms=bench) for m in models},
    )  # fmt: skip


def order(hosts, strategy="smart", in_flight=None, stats=None, model_name="llama3.2:1b", **kwargs):
    decision = choose_hosts(model_name, Snapshot(hosts=tuple(hosts)), stats or LiveStats(), in_flight or {},
                            strategy=strategy, **kwargs)  # fmt: skip
    return [c.host.name for c in decision.candidates], decision


def test_smart_prefers_a_warm_host_over_a_faster_cold_one():
    names, decision = order([host("fast-cold", latency=1), host("slow-warm", latency=50, loaded=["llama3.2:1b"])])
    assert names == ["slow-warm", "fast-cold"]
    assert "has it loaded" in decision.reason


def test_smart_prefers_a_free_slot_among_warm_hosts():
    hosts = [host("busy", loaded=["llama3.2:1b"], latency=1), host("free", loaded=["llama3.2:1b"], latency=50)]
    names, _ = order(hosts, in_flight={"busy": 2})
    assert names == ["free", "busy"]


def test_smart_then_speed_then_priority():
    names, _ = order([host("a", latency=80, priority=1), host("b", latency=5, priority=9)])
    assert names == ["b", "a"]
    names, _ = order([host("a", latency=5, priority=9), host("b", latency=5, priority=1)])
    assert names == ["b", "a"]


def test_smart_treats_small_speed_differences_as_noise():
    names, _ = order([host("a", latency=3, priority=1), host("b", latency=2, priority=9)])
    assert names == ["a", "b"]


def test_observed_ttft_beats_health_check_latency():
    stats = LiveStats()
    stats.host("a").ttft_ms.extend([500, 600])
    names, _ = order([host("a", latency=1), host("b", latency=20)], stats=stats)
    assert names == ["b", "a"]


@pytest.mark.parametrize("strategy", ["fastest", "smart"])
def test_a_benchmarked_fast_host_wins_when_no_live_traffic_measured_either(strategy):
    # By health check "slow-bench" looks faster; its benchmark says it takes 900 ms to the first token.
    hosts = [host("slow-bench", latency=1, bench=900.0), host("fast-bench", latency=40, bench=60.0)]
    names, decision = order(hosts, strategy=strategy)
    assert names == ["fast-bench", "slow-bench"]
    candidates = {c["host"]: c for c in decision.as_dict()["candidates"]}
    assert candidates["fast-bench"]["speed_source"] == "benchmark" and candidates["fast-bench"]["speed_ms"] == 60.0


@pytest.mark.parametrize("strategy", ["fastest", "smart"])
def test_live_traffic_overrides_a_benchmark(strategy):
    stats = LiveStats()
    for ms in (20, 20):
        stats.host("slow-bench").observe_ttft(ms, "llama3.2:1b")  # this model, measured fast since the benchmark
    hosts = [host("slow-bench", latency=1, bench=900.0), host("fast-bench", latency=40, bench=60.0)]
    names, decision = order(hosts, strategy=strategy, stats=stats)
    assert names == ["slow-bench", "fast-bench"]
    sources = {c["host"]: c["speed_source"] for c in decision.as_dict()["candidates"]}
    assert sources == {"slow-bench": "observed", "fast-bench": "benchmark"}


@pytest.mark.parametrize("strategy", ["fastest", "smart"])
def test_traffic_of_another_model_does_not_override_this_model_s_benchmark(strategy):
    stats = LiveStats()
    for ms in (20, 20):
        stats.host("slow-bench").observe_ttft(ms, "tinyllama:1b")  # a tiny model is fast: says nothing of this one
    hosts = [host("slow-bench", latency=1, bench=900.0), host("fast-bench", latency=40, bench=60.0)]
    names, decision = order(hosts, strategy=strategy, stats=stats)
    assert names == ["fast-bench", "slow-bench"]
    sources = {c["host"]: c["speed_source"] for c in decision.as_dict()["candidates"]}
    assert sources == {"slow-bench": "benchmark", "fast-bench": "benchmark"}
    # Without a benchmark, the host's other models are the best evidence there is (better than a health check).
    names, decision = order([host("slow-bench", latency=1), host("fast-bench", latency=40)], strategy=strategy,
                            stats=stats)  # fmt: skip
    sources = {c["host"]: c["speed_source"] for c in decision.as_dict()["candidates"]}
    assert sources == {"slow-bench": "observed (other models)", "fast-bench": "health check"}
    assert names == ["slow-bench", "fast-bench"]


def test_without_traffic_or_benchmark_the_health_check_latency_is_the_speed():
    _, decision = order([host("a", latency=7)], strategy="fastest")
    (candidate,) = decision.as_dict()["candidates"]
    assert candidate["speed_ms"] == 7.0 and candidate["speed_source"] == "health check"
    assert "health check" in decision.reason


def test_priority_strategy():
    names, decision = order([host("a", priority=5), host("b", priority=1)], strategy="priority")
    assert names == ["b", "a"] and "best priority" in decision.reason


def test_fastest_strategy():
    names, _ = order([host("a", latency=9), host("b", latency=3), host("c", latency=None)], strategy="fastest")
    assert names == ["b", "a", "c"]


def test_least_loaded_strategy():
    hosts = [host("a", slots=4), host("b", slots=2)]
    names, _ = order(hosts, strategy="least-loaded", in_flight={"a": 1, "b": 1})
    assert names == ["a", "b"]


def test_round_robin_takes_turns():
    hosts = [host("a"), host("b"), host("c")]
    firsts = {order(hosts, strategy="round-robin")[0][0] for _ in range(3)}
    assert firsts == {"a", "b", "c"}


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (host("x", enabled=False), "disabled"),
        (host("x", online=False), "offline"),
        (host("x", online=None), "not checked yet"),
        (host("x", circuit="open"), "circuit open"),
        (host("x", models=("llama3.2:3b",)), "does not have the model"),
        (host("x", backend="openai"), "cannot serve this endpoint"),
    ],
)
def test_unusable_hosts_are_never_candidates(bad, why):
    names, decision = order([bad, host("good")], backends=("ollama",))
    assert names == ["good"]
    assert why in decision.excluded["x"]


def test_never_a_host_with_a_similar_model_only():
    names, decision = order([host("x", models=("qwen2.5-coder:7b",))], model_name="qwen2.5-coder:3b")
    assert names == [] and "no usable host" in decision.reason


def test_proxy_side_circuit_opens_after_failures_and_lets_one_probe_through(settings):
    settings.CLOOD_CIRCUIT_THRESHOLD = 2
    settings.CLOOD_CIRCUIT_COOLDOWN = 0
    stats = LiveStats()
    stats.upstream_failed("x")
    assert order([host("x")], stats=stats)[0] == ["x"]
    stats.upstream_failed("x")
    assert stats.host("x").circuit_state() == "half-open"  # cooldown 0: straight to half-open
    assert order([host("x")], stats=stats)[0] == ["x"]
    stats.attempt_started("x")  # the probe
    names, decision = order([host("x")], stats=stats)
    assert names == [] and "requests failing" in decision.excluded["x"]
    stats.upstream_succeeded("x")
    assert order([host("x")], stats=stats)[0] == ["x"]


def test_decision_carries_candidates_scores_and_reason():
    _, decision = order([host("a", loaded=["llama3.2:1b"]), host("b")])
    described = decision.as_dict()
    assert described["candidates"][0]["host"] == "a"
    assert described["candidates"][0]["loaded"] is True
    assert described["candidates"][0]["rank"] == 1 and "key" in described["candidates"][0]
    assert described["reason"].startswith("a has it loaded") and "fallbacks: b" in described["reason"]
    assert len(described["id"]) == 12
