"""The tripwire that searches clood's output for canary secrets: it must see a canary wherever it appears, or the
suite's "no secret leaked" result would mean nothing."""

import logging

import httpx

from clood_site.tripwire import Tripwire, TripwireLogFilter
from hosts.simulator import SimModel
from tests.conftest import wait_until


def test_a_canary_split_across_chunks_is_found(tmp_path):
    report = tmp_path / "report.txt"
    tripwire = Tripwire(["sk-split-secret"], str(report))
    tail = tripwire.scan("http /x", b"data: {sk-spl")
    tripwire.scan("http /x", b"it-secret}\n", tail)
    assert report.read_text().startswith("canary #0 in http /x")
    assert "sk-split-secret" not in report.read_text()


def test_clean_output_reports_nothing(tmp_path):
    report = tmp_path / "report.txt"
    tripwire = Tripwire(["sk-split-secret"], str(report))
    tail = tripwire.scan("http /x", b"sk-split-")
    tripwire.scan("http /x", b"other", tail)
    assert not report.exists()


def test_log_filter_reports_messages_and_tracebacks(tmp_path, settings):
    report = tmp_path / "report.txt"
    settings.CLOOD_TRIPWIRES = ["sk-in-a-traceback"]
    settings.CLOOD_TRIPWIRE_REPORT = str(report)
    wire = TripwireLogFilter()
    try:
        raise ValueError("connecting with sk-in-a-traceback failed")
    except ValueError as exc:
        record = logging.LogRecord("proxy", logging.ERROR, __file__, 1, "failed", (), (type(exc), exc, None))
    assert wire.filter(record) is True  # never drops a record
    assert "in log proxy" in report.read_text()


def test_a_running_clood_reports_a_canary_in_a_response(clood_server, sim_host, tmp_path):
    report = tmp_path / "report.txt"
    sim = sim_host(models=[SimModel(name="tripwire-model:1b")])
    server = clood_server(env={"CLOOD_TRIPWIRES": "tripwire-model", "CLOOD_TRIPWIRE_REPORT": str(report)})
    server.manage("hosts", "add", "box", sim.url)
    server.manage("hosts", "refresh")
    assert "tripwire-model" not in (report.read_text() if report.exists() else "")
    models = wait_until(lambda: httpx.get(server.url + "/v1/models").json()["data"], what="the model to be listed")
    assert models[0]["id"] == "tripwire-model:1b"
    assert "in http /v1/models" in report.read_text()
