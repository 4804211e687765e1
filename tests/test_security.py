"""The web side's protections as `./clood run` serves them (a real daphne with the default, production settings):
security headers, cookies, CSRF, no debug pages, logins for pages, static files still served."""

import httpx
import pytest

from tests.conftest import CloodProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = CloodProcess(tmp_path_factory.mktemp("clood-security")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def https_server(tmp_path_factory):
    server = CloodProcess(tmp_path_factory.mktemp("clood-https"), env={"CLOOD_HTTPS": "true"}).start()
    yield server
    server.stop()


def test_pages_carry_security_headers(server):
    response = httpx.get(server.url + "/admin/login/")
    assert response.status_code == 200
    headers = response.headers
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "same-origin"
    assert headers["cross-origin-opener-policy"] == "same-origin"
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "http" not in csp
    assert "strict-transport-security" not in headers  # plain HTTP: no HSTS


def test_session_and_csrf_cookies_are_http_only_and_same_site(server):
    response = httpx.get(server.url + "/admin/login/")
    csrf = response.headers["set-cookie"]
    assert "SameSite=Lax" in csrf and "Secure" not in csrf


def test_login_without_a_csrf_token_is_refused(server):
    response = httpx.post(server.url + "/admin/login/", data={"username": "admin", "password": "x"})
    assert response.status_code == 403 and "CSRF" in response.text


def test_debug_is_off(server):
    response = httpx.get(server.url + "/no-such-page")
    assert response.status_code == 404
    assert "URLconf" not in response.text and "Traceback" not in response.text and "DEBUG" not in response.text


def test_static_files_are_served_without_debug(server):
    response = httpx.get(server.url + "/static/clood.css")
    assert response.status_code == 200 and "text/css" in response.headers["content-type"]


PAGES = ["/atc/", "/atc/history", "/atc/history.csv", "/atc/chat", "/atc/catfights", "/admin/"]


@pytest.mark.parametrize("path", PAGES)
def test_pages_need_a_login(server, path):
    response = httpx.get(server.url + path)
    assert response.status_code == 302 and "/admin/login/" in response.headers["location"]


def test_behind_https_cookies_are_secure_and_hsts_is_sent(https_server):
    response = httpx.get(https_server.url + "/admin/login/", headers={"x-forwarded-proto": "https"})
    assert response.status_code == 200
    assert "Secure" in response.headers["set-cookie"]
    assert response.headers["strict-transport-security"].startswith("max-age=31536000")


def test_every_middleware_keeps_the_stack_async(settings):
    # One sync-only middleware moves every async view into a thread with a loop of its own, which ends with the
    # request: catfights started by POST /catfights would die with it.
    from django.utils.module_loading import import_string

    for path in settings.MIDDLEWARE:
        assert getattr(import_string(path), "async_capable", False), path
